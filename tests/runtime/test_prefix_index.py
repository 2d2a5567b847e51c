"""PrefixIndex: the pure bookkeeping of the prefix cache, against a brute-force model."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeweave.errors import ConfigError
from edgeweave.runtime.prefix import MIN_TAIL, PrefixIndex

BLOCK = 4


def common(a, b) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


# sequences over a 3-token alphabet share long prefixes often, as prompts with one template do
seqs = st.lists(st.integers(0, 2), min_size=0, max_size=40)
ops = st.lists(st.tuples(st.sampled_from(["insert", "lookup"]), seqs,
                         st.sampled_from(["", "lora"])), min_size=1, max_size=40)


@settings(max_examples=150, deadline=None)
@given(ops=ops, budget_tokens=st.integers(0, 120))
def test_lookups_find_the_longest_shared_prefix_and_the_budget_holds(ops, budget_tokens):
    # Prepare: an index charging 1 byte per token, and a brute-force model of what it holds
    index = PrefixIndex(budget_tokens, BLOCK)
    held: dict[str, tuple[tuple[int, ...], str]] = {}
    n = 0
    for op, ids, ns in ops:
        if op == "insert":
            # Execute
            if not index.worth(ids, ns):
                # Assert: refused only when it adds nothing (or cannot be held at all)
                assert (budget_tokens == 0 or len(ids) < BLOCK
                        or any(t[:len(ids)] == tuple(ids) for t, s in held.values() if s == ns))
                continue
            donor = f"d{n}"
            n += 1
            freed = index.insert(ids, donor, len(ids), ns)
            held[donor] = (tuple(ids), ns)
            for d in freed:
                held.pop(d)
            if len(ids) > budget_tokens:
                assert freed == [donor]
        else:
            hit = index.lookup(ids, ns)
            best = max((common(t, ids) for t, s in held.values() if s == ns), default=0)
            if best < BLOCK or len(ids) - MIN_TAIL < 1:
                assert hit is None
            else:
                assert hit is not None
                assert hit.length == min(best, len(ids) - MIN_TAIL)
                tokens, space = held[hit.donor]
                assert space == ns and common(tokens, ids) >= hit.length
        # Assert: the index holds what the model holds, within the budget, with no donor
        # that another one of its namespace makes redundant
        assert set(index.donors()) == set(held)
        assert index.nbytes == sum(len(t) for t, _ in held.values()) <= budget_tokens
        for a, (ta, sa) in held.items():
            for b, (tb, sb) in held.items():
                if a != b and sa == sb:
                    assert tb[:len(ta)] != ta, f"{a} is a prefix of {b}"


def test_least_recently_used_donors_leave_first():
    # Prepare: three donors of 8 bytes under a 24-byte budget
    index = PrefixIndex(24, BLOCK)
    for k in range(3):
        assert index.insert([k] * 8, f"d{k}", 8) == []
    # Execute: use d0, then add a fourth
    assert index.lookup([0] * 8 + [1]).donor == "d0"
    freed = index.insert([3] * 8, "d3", 8)
    # Assert: d1 was the least recently used
    assert freed == ["d1"]
    assert index.donors() == ["d2", "d0", "d3"]


def test_a_longer_prompt_supersedes_the_donor_it_extends_and_partial_hits_stop_at_the_fork():
    index = PrefixIndex(1000, BLOCK)
    turn1 = list(range(10))
    index.insert(turn1, "t1", 10)
    # a second turn of the same conversation holds everything the first did
    assert index.insert(turn1 + [50, 51, 52], "t2", 13) == ["t1"]
    # a prompt that forks after 6 tokens reuses exactly 6 (not block-aligned), the last
    # two prompt tokens are always left to compute
    assert index.lookup(turn1[:6] + [99, 98]).length == 6
    assert index.lookup(turn1 + [50, 51, 52]).length == 11
    # an adapter's donors are its own
    assert index.lookup(turn1 + [50], "lora") is None
    assert index.queried_tokens == 8 + 13 + 11 and index.hit_tokens == 0
    index.hit(6)
    assert index.usage().hit_tokens == 6


def test_a_hash_collision_never_hands_out_another_prompts_cache(monkeypatch):
    # Prepare: every block hashes alike, so the chain cannot tell prompts apart
    index = PrefixIndex(1000, BLOCK)
    monkeypatch.setattr(index, "_chain", lambda ids, ns: [7] * (len(ids) // BLOCK))
    index.insert([1, 1, 1, 1, 1], "a", 5)
    # Execute / Assert: the tokens are compared before a hit is handed out
    assert index.lookup([2, 2, 2, 2, 2]) is None
    assert index.lookup([1, 1, 1, 1, 9, 9]).length == 4


def test_bad_budgets_are_refused_with_the_fix():
    with pytest.raises(ConfigError, match="0 disables"):
        PrefixIndex(-1)
    with pytest.raises(ConfigError, match="at least 1 token"):
        PrefixIndex(10, 0)
    index = PrefixIndex(10, BLOCK)
    index.insert([1] * 4, "a", 4)
    with pytest.raises(ConfigError, match="indexed already"):
        index.insert([2] * 4, "a", 4)
