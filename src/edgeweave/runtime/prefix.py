"""Prefix KV cache: prompts that start alike reuse the keys and values already computed.

IoT prompts share long prefixes (the instructions and the same kNN demonstrations before a
new sensor reading), and every request would prefill them again. A *donor* is a cache held
in a stage engine that is never stepped, only copied from (``StageEngine.save_prefix`` /
``load_prefix``): after a prompt's prefill its whole cache is kept as a donor; a later
prompt that starts with the same tokens gets its session filled from the donor and only
computes the rest. Causal attention makes that exact: the keys and values of a position
depend on the tokens up to it and nothing after.

:class:`PrefixIndex` is the pure bookkeeping (no engine): which donor holds the longest
prefix of a prompt, under a byte budget with least-recently-used eviction. Prompts are cut
into blocks of ``block_tokens`` tokens with chained hashes (block ``k``'s hash covers
blocks ``0..k``, as vLLM's prefix caching does), so a lookup walks the prompt's blocks
through a dictionary instead of comparing it with every donor; the tokens themselves are
compared once at the end, so a hash collision can never hand out another prompt's cache.
Donors live in namespaces (a LoRA adapter changes every key and value: its sessions only
share with each other).

:class:`PrefixStore` binds an index to one in-process stage engine (the single-process
``serve``/``generate`` path); ``runtime.prefix_plan`` does the same across the stages of a
distributed plan.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from edgeweave.errors import ConfigError, EdgeweaveError

if TYPE_CHECKING:
    from edgeweave.runtime.engines.base import StageEngine

log = logging.getLogger(__name__)

# vLLM's default block size; a shared prefix shorter than one block is not worth a donor
BLOCK_TOKENS = 16
# What `edgeweave serve` keeps by default: SmolLM2-135M's fp32 KV is 46 KB per token, so
# 256 MiB holds about 5,700 tokens, a dozen 400-token instruction + demonstration prefixes.
DEFAULT_BUDGET_MB = 256


# Prompt tokens a hit always leaves to compute. One would give fresh logits, but a one-token
# step takes the single-row (GEMV) path of the low-bit MatMul kernels, which rounds
# differently from the prefill path: measured on the bundled int4 model, up to 0.93 in a
# logit for one token, 0.0 for two or more. Two keep greedy output equal to a full prefill.
MIN_TAIL = 2


@dataclass(frozen=True)
class PrefixHit:
    """Copy the first ``length`` tokens of ``donor``: always at least :data:`MIN_TAIL`
    fewer than the prompt has, so the prompt's last tokens are computed, logits and all."""

    donor: str
    length: int


@dataclass(frozen=True)
class PrefixUsage:
    """Cumulative prompt tokens looked up (``queried``) and found (``hit``), the bytes and
    the number of donors held now: what ``/metrics`` reports (vLLM counts tokens too)."""

    queried_tokens: int = 0
    hit_tokens: int = 0
    nbytes: int = 0
    donors: int = 0


@dataclass(frozen=True)
class _Entry:
    donor: str
    namespace: str
    tokens: tuple[int, ...]
    hashes: tuple[int, ...]  # chained hashes of its full blocks
    nbytes: int
    data: Any  # what the owner keeps beside the cache (a plan: every stage's inputs)


class PrefixIndex:
    """Donors by the token prefixes they hold (see module docstring); not thread-safe,
    owners lock around it."""

    def __init__(self, budget_bytes: int, block_tokens: int = BLOCK_TOKENS) -> None:
        if budget_bytes < 0:
            raise ConfigError(f"the prefix cache budget must be >= 0 bytes (got "
                              f"{budget_bytes}): 0 disables the cache")
        if block_tokens < 1:
            raise ConfigError(f"prefix blocks must hold at least 1 token (got {block_tokens})")
        self.budget_bytes = budget_bytes
        self.block = block_tokens
        self._entries: OrderedDict[str, _Entry] = OrderedDict()  # least recently used first
        self._by_hash: dict[int, dict[str, None]] = {}  # block hash -> donors holding it
        self.nbytes = 0
        self.queried_tokens = 0
        self.hit_tokens = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, donor: object) -> bool:
        return donor in self._entries

    def donors(self) -> list[str]:
        """Donors held, least recently used first."""
        return list(self._entries)

    def data(self, donor: str) -> Any:
        return self._entries[donor].data

    def usage(self) -> PrefixUsage:
        return PrefixUsage(self.queried_tokens, self.hit_tokens, self.nbytes, len(self))

    # -- lookups -------------------------------------------------------------------------
    def _chain(self, ids: Sequence[int], namespace: str) -> list[int]:
        h = hash(("edgeweave-prefix", namespace))
        out = []
        for k in range(len(ids) // self.block):
            h = hash((h, tuple(ids[k * self.block:(k + 1) * self.block])))
            out.append(h)
        return out

    def _match(self, ids: Sequence[int], namespace: str) -> tuple[_Entry | None, int]:
        """The donor sharing the longest prefix with ``ids`` and that prefix's length (at
        least one block; ``(None, 0)`` when no donor shares a whole block)."""
        deepest, m = None, 0
        for k, h in enumerate(self._chain(ids, namespace)):
            if h not in self._by_hash:
                break
            deepest, m = h, k + 1
        if deepest is None:
            return None, 0
        head = m * self.block
        best, common = None, -1
        # every donor sharing more than ``head`` tokens holds block m - 1 (or would have
        # matched block m too): the longest common prefix is among them; newest first
        for donor in reversed(self._by_hash[deepest]):
            e = self._entries[donor]
            c = head + _common(e.tokens, ids, head)
            if c > common:
                best, common = e, c
        if best is None or best.tokens[:head] != tuple(ids[:head]):  # a hash collision
            return None, 0
        return best, common

    def lookup(self, ids: Sequence[int], namespace: str = "") -> PrefixHit | None:
        """The donor to fill a new session for prompt ``ids`` from, leaving at least
        :data:`MIN_TAIL` tokens to compute; counts the prompt as queried and marks the donor
        used. The owner calls :meth:`hit` once the copy succeeded (the hit rate counts it)."""
        self.queried_tokens += len(ids)
        e, common = self._match(ids, namespace)
        length = min(common, len(ids) - MIN_TAIL)
        if e is None or length < 1:
            return None
        self._entries.move_to_end(e.donor)
        return PrefixHit(e.donor, length)

    def hit(self, tokens: int) -> None:
        self.hit_tokens += tokens

    def worth(self, ids: Sequence[int], namespace: str = "") -> bool:
        """Whether keeping ``ids`` as a new donor adds anything: at least one whole block,
        not already held whole by another donor, and it fits the budget at all."""
        if self.budget_bytes == 0 or len(ids) < self.block:
            return False
        return self._match(ids, namespace)[1] < len(ids)

    # -- changes -------------------------------------------------------------------------
    def insert(self, ids: Sequence[int], donor: str, nbytes: int, namespace: str = "",
               data: Any = None) -> list[str]:
        """Index ``donor`` (holding exactly ``ids``, ``nbytes`` bytes); return the donors
        the owner must now free: ones it makes redundant (their tokens are a prefix of
        ``ids``: any prompt they serve it serves as well), the least recently used ones
        past the budget, or ``donor`` itself when it alone exceeds the budget."""
        if donor in self._entries:
            raise ConfigError(f"prefix donor {donor!r} is indexed already")
        tokens = tuple(int(t) for t in ids)
        if nbytes > self.budget_bytes or len(tokens) < self.block:
            return [donor]
        hashes = tuple(self._chain(tokens, namespace))
        freed, seen = [], set()
        for h in hashes:  # donors that are a prefix of this one register under its blocks
            for other in list(self._by_hash.get(h, ())):
                if other in seen:
                    continue
                seen.add(other)
                e = self._entries[other]
                if len(e.tokens) <= len(tokens) and tokens[:len(e.tokens)] == e.tokens:
                    self.remove(other)
                    freed.append(other)
        self._entries[donor] = _Entry(donor, namespace, tokens, hashes, nbytes, data)
        for h in hashes:
            self._by_hash.setdefault(h, {})[donor] = None
        self.nbytes += nbytes
        for victim in list(self._entries):
            if self.nbytes <= self.budget_bytes:
                break
            if victim != donor:
                self.remove(victim)
                freed.append(victim)
        return freed

    def remove(self, donor: str) -> None:
        """Forget ``donor`` (no error if unknown: an engine or node may have dropped it)."""
        e = self._entries.pop(donor, None)
        if e is None:
            return
        for h in e.hashes:
            holders = self._by_hash[h]
            holders.pop(donor, None)
            if not holders:
                del self._by_hash[h]
        self.nbytes -= e.nbytes

    def clear(self) -> list[str]:
        """Forget every donor; return them, for the owner to free."""
        out = list(self._entries)
        for donor in out:
            self.remove(donor)
        return out


def _common(a: Sequence[int], b: Sequence[int], start: int) -> int:
    """Length of the common prefix of ``a[start:]`` and ``b[start:]``."""
    n = 0
    for x, y in zip(itertools.islice(a, start, None), itertools.islice(b, start, None),
                    strict=False):
        if x != y:
            break
        n += 1
    return n


_donor_ids = itertools.count()


def donor_id() -> str:
    """A name for a new donor, distinct from any session's (``local-<n>``, ``s<n>-<ns>``)."""
    return f"prefix-{next(_donor_ids)}"


class PrefixStore:
    """A :class:`PrefixIndex` over the donors one in-process stage engine holds: what an
    ``EngineSession`` reuses and keeps (``reuse``/``keep``). Thread-safe: the serve
    scheduler steps sessions while ``/metrics`` reads the usage."""

    def __init__(self, engine: StageEngine, budget_bytes: int,
                 block_tokens: int = BLOCK_TOKENS) -> None:
        self.engine = engine
        self.index = PrefixIndex(budget_bytes, block_tokens)
        self._lock = threading.Lock()

    def reuse(self, session_id: str, ids: Sequence[int], namespace: str = "") -> int:
        """Fill the open session ``session_id`` with the longest cached prefix of ``ids``;
        return its length (0: nothing cached, the session is untouched)."""
        with self._lock:
            hit = self.index.lookup(ids, namespace)
            if hit is None:
                return 0
            try:
                self.engine.load_prefix(hit.donor, session_id, hit.length)
            except EdgeweaveError as e:  # a donor the engine lost: compute the prompt
                log.warning("prefix donor %s unusable (%s); prefilling in full", hit.donor, e)
                self.index.remove(hit.donor)
                self.engine.close(hit.donor)
                self.engine.truncate(session_id, 0)
                return 0
            self.index.hit(hit.length)
            return hit.length

    def keep(self, session_id: str, ids: Sequence[int], namespace: str = "") -> bool:
        """The session holds exactly ``ids`` (a prompt just prefilled): keep a copy as a
        donor when it adds to what is cached. True when it was kept."""
        with self._lock:
            if not self.index.worth(ids, namespace):
                return False
            donor = donor_id()
            self.engine.save_prefix(session_id, donor, len(ids))
            freed = self.index.insert(ids, donor, self.engine.session_bytes(donor), namespace)
            for d in freed:
                self.engine.close(d)
            return donor not in freed

    def usage(self) -> PrefixUsage:
        with self._lock:
            return self.index.usage()

    def donors(self) -> set[str]:
        with self._lock:
            return set(self.index.donors())

    def clear(self) -> None:
        with self._lock:
            for d in self.index.clear():
                self.engine.close(d)
