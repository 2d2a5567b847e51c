"""Speculative decoding: a small draft where the user is proposes, the full model verifies.

A :class:`SpeculativeSession` is a ``LogitsEngine`` over two others: the *target* (a
coordinator session over the fleet, or a local whole-model session) and the *draft* (a
whole-model session of a small model with the same vocabulary, in this process). One round:

1. the draft catches up with the committed tokens and proposes ``k`` tokens ``d1..dk``,
   each drawn from its own distribution ``q`` (greedy: its argmax);
2. the target scores ``[x, d1..dk]`` (``x`` the token just committed) in **one** step that
   returns every position's logits (``verify``: one network round trip for k + 1 tokens);
3. ``decode(x)`` returns the logits after ``x``; the logits after each ``di`` wait in a
   queue with ``di`` and its ``q``.

The caller samples every token from the *target's* logits, exactly as without speculation,
and asks :meth:`proposal` for the queued draft token of that position:
``runtime.sequence.Generation`` applies the standard rule there
(``sampling.speculative_pick``: accept ``d`` with probability ``min(1, p(d) / q(d))``,
otherwise sample the residual ``max(p - q, 0)``), so the output follows the target's
distribution; under greedy decoding the pick is the target's argmax, so the text is the
one plain decoding gives. When the next ``decode(t)`` brings the queued token, its logits
are already there (no step at all); any other token ends the round: the target and the
draft rewind past the rejected tokens (``rewind``: KV caches truncated, the coordinator's
replay records cut) and a new round starts from ``t``. A caller that never asks for
proposals (``generate_step``) still gets exact target logits: only fewer tokens hit.

``k`` is adaptive unless fixed (:class:`SpeculationConfig`): the acceptance rate and the
measured times of a draft step and of a verify pass (round trips included) go into the
planner's cost model (``plan.speculation.best_k``), which switches speculation off
(``k = 0``: plain steps) where it does not pay, probing now and then whether it does again.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from edgeweave.errors import ConfigError, GenerationError
from edgeweave.plan.speculation import SpecCosts, best_k
from edgeweave.runtime.sampling import GREEDY_BELOW, SamplingParams, distribution, draw
from edgeweave.runtime.sequence import advance as _advance
from edgeweave.runtime.spec_clock import Pace, Timing

MAX_K = 16
PROBE_EVERY = 16  # plain steps before the first probe while speculation is off
MAX_PROBE_EVERY = 256
WARM_PLAIN = 3  # plain steps that measure the pace to beat before the first round
_DECAY = 0.97  # acceptance counts fade, so a change of content shows within ~30 rounds


class Target(Protocol):
    """What the verifier offers: a ``LogitsEngine`` that scores many positions at once."""

    max_len: int

    def prefill(self, ids: list[int]) -> np.ndarray: ...
    def decode(self, token: int) -> np.ndarray: ...
    def verify(self, ids: list[int]) -> np.ndarray: ...
    def rewind(self, length: int) -> None: ...
    def close(self) -> None: ...


@dataclass(frozen=True)
class SpeculationConfig:
    """``k`` draft tokens per round (0: adaptive, at most ``k_max``)."""

    k: int = 0
    k_max: int = 8
    # draft on while the target verifies (a remote target: the link's wait is idle time)
    overlap: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.k <= MAX_K:
            raise ConfigError(f"--draft-k must be in 0..{MAX_K} (got {self.k}): 0 lets the "
                              "acceptance rate and the link's round trip choose")
        if not 1 <= self.k_max <= MAX_K:
            raise ConfigError(f"k_max must be in 1..{MAX_K} (got {self.k_max})")


@dataclass(frozen=True)
class Proposal:
    """The draft's token for the next position and the distribution it was drawn from
    (None under greedy drafting: a one-hot at ``token``)."""

    token: int
    probs: np.ndarray | None


@dataclass
class _Queued:
    token: int
    probs: np.ndarray | None
    logits: np.ndarray  # the target's logits after ``token``


@dataclass
class SpecStats:
    rounds: int = 0
    drafted: int = 0
    accepted: int = 0
    rejected: int = 0
    plain_steps: int = 0
    drafted_ahead: int = 0  # rounds whose proposals were drafted during the pass before
    batched_steps: int = 0  # plain steps taken in one batch with other sessions
    draft_s: float = 0.0
    verify_s: float = 0.0


class SpeculativeSession:
    """A ``LogitsEngine`` that decodes the target's tokens with a draft's help (see module
    docstring); ``draft`` is a whole-model session (``EngineSession``) of the same
    vocabulary."""

    def __init__(self, target: Target, draft: Any, config: SpeculationConfig | None = None
                 ) -> None:
        self.target, self.draft = target, draft
        self.config = config or SpeculationConfig()
        self.max_len = min(target.max_len, draft.max_len)
        self.params = SamplingParams()
        self._rng = np.random.default_rng(0)
        self.tokens: list[int] = []  # the committed sequence (prompt + tokens fed)
        self._prompt_len = 0
        self._target_len = 0  # tokens the target holds (committed + speculated)
        self._draft_tokens: list[int] = []  # tokens the draft holds
        self._queue: deque[_Queued] = deque()
        self.counters = SpecStats()
        self._timing = Timing()
        # a weak prior of 1/2: the first rounds decide (a draft that never agrees is off
        # after 3-4 of them)
        self._acc, self._rej = 0.5, 0.5
        self._k = self.config.k or min(4, self.config.k_max)
        self._since_probe = 0
        self._probe_every = PROBE_EVERY
        self._pace = Pace()
        self._pool: Any = None  # the worker thread verify passes run on (overlap)
        # drafted during the last verify pass: the guess of its bonus token, then proposals
        self._ahead: list[Proposal] = []

    # -- set-up ---------------------------------------------------------------------------
    def configure_sampling(self, params: SamplingParams) -> None:
        """The request's sampling settings: the draft draws its proposals with them (so
        that ``q`` is the distribution ``speculative_pick`` divides by)."""
        self.params = params
        configure = getattr(self.target, "configure_sampling", None)
        if callable(configure):  # the target's logits need no more than the request's
            configure(params)
        seed = None if params.seed is None else (params.seed + 1) % (2 ** 63)
        self._rng = np.random.default_rng(seed)  # the draft's own stream

    @property
    def batch_key(self) -> int | None:
        """The target's key: speculative sessions of one target step in one batch when
        several need it at once (:meth:`forward_many`); None where the target cannot."""
        if not hasattr(type(self.target), "forward_many"):
            return None
        key = getattr(self.target, "batch_key", None)
        return None if key is None else int(key)

    @staticmethod
    def forward_many(sessions: list[SpeculativeSession], steps: list[Any]
                     ) -> list[np.ndarray | BaseException]:
        """One scheduler round of several speculative sessions of one target. A token the
        last round verified is answered from its queue (no step); the others step **plain,
        in one batched target call** (the target's ``forward_many``). A session speculates
        while it is the only one running (``step_batch`` then calls its ``decode``).
        Under load the verifier's compute is the bottleneck: a batch of ``n`` streams costs
        about one step, while speculating each would cost ``n`` verify passes and waste
        the rows of rejected drafts (vLLM turns speculation off by batch size for the same
        reason). The drafts catch up when a session is alone again (``_draft``)."""
        out: list[Any] = [None] * len(sessions)
        need: list[int] = []
        for j, (s, st) in enumerate(zip(sessions, steps, strict=True)):
            try:
                hit = s._answer(st)
            except Exception as e:  # noqa: BLE001 - this session only
                out[j] = e
                continue
            if hit is None:
                need.append(j)
            else:
                out[j] = hit
        if not need:
            return out
        group = [sessions[j] for j in need]
        for s, j in zip(group, need, strict=True):
            s._plain_batched(steps[j])
        targets, inputs = [s.target for s in group], [steps[j] for j in need]
        try:
            ys: list[Any] = list(type(targets[0]).forward_many(targets, inputs))
        except Exception:  # noqa: BLE001 - the batch failed as a whole: find who, one by one
            ys = []
            for t, st in zip(targets, inputs, strict=True):
                try:
                    ys.append(_advance(t, st))
                except Exception as e:  # noqa: BLE001 - this session only
                    ys.append(e)
        for s, j, y in zip(group, need, ys, strict=True):
            out[j] = y
            if not isinstance(y, BaseException):
                s._target_len = len(s.tokens)
        return out

    # -- LogitsEngine ---------------------------------------------------------------------
    def prefill(self, ids: list[int]) -> np.ndarray:
        self._start(list(ids), 0)
        t0 = time.perf_counter()
        logits = self.target.prefill(list(ids))
        self._prefilled(len(ids), time.perf_counter() - t0)
        return logits

    def extend(self, ids: list[int]) -> np.ndarray:
        """A later chunk of the prompt (chunked prefill, or the rest after a prefix hit)."""
        if self._queue or len(self.tokens) != self._prompt_len:
            raise GenerationError("extend takes prompt chunks before the first token only")
        extend = getattr(self.target, "extend", None)
        if extend is None:
            raise GenerationError(f"{type(self.target).__name__} cannot take a prompt in "
                                  "chunks: prefill it whole")
        self.tokens.extend(ids)
        self._prompt_len = len(self.tokens)
        t0 = time.perf_counter()
        logits = extend(list(ids))
        self._prefilled(len(ids), time.perf_counter() - t0)
        return logits

    def reuse_prefix(self, ids: list[int]) -> int:
        reuse = getattr(self.target, "reuse_prefix", None)
        n = int(reuse(list(ids))) if callable(reuse) else 0
        self._start(list(ids[:n]), n)
        return n

    def keep_prefix(self, ids: list[int]) -> None:
        keep = getattr(self.target, "keep_prefix", None)
        if callable(keep):
            keep(list(ids))

    def proposal(self) -> Proposal | None:
        """The draft's token for the position the last logits predict, if one is queued."""
        if not self._queue:
            return None
        head = self._queue[0]
        return Proposal(head.token, head.probs)

    def decode(self, token: int) -> np.ndarray:
        hit = self._take(token)
        return self._round() if hit is None else hit

    def _take(self, token: int) -> np.ndarray | None:
        """Commit ``token``: its logits if the last round verified it, else None (a step
        is needed; what was drafted after a rejected token is void too)."""
        if self._queue and self._queue[0].token == token:  # accepted: verified already
            self.tokens.append(token)
            self.counters.accepted += 1
            self._acc += 1
            return self._queue.popleft().logits
        if self._queue:
            self.counters.rejected += 1
            self._rej += 1
            self._queue.clear()
        self.tokens.append(token)
        return None

    def _answer(self, step: Any) -> np.ndarray | None:
        """A batched round's input: a decode step answered from the queue, or None with
        the bookkeeping of a step the target has to take (a prompt, or a token to score)."""
        ids = list(step.ids)
        if step.fresh:
            self._start(ids, 0)
            return None
        if len(ids) > 1:
            if self._queue or len(self.tokens) != self._prompt_len:
                raise GenerationError("extend takes prompt chunks before the first token only")
            self.tokens.extend(ids)
            self._prompt_len = len(self.tokens)
            return None
        return self._take(ids[0])

    def _plain_batched(self, step: Any) -> None:
        """Ready the target for a plain step in a batch: it must hold what comes before
        the step's tokens. The pace clock restarts after it (a batched step says nothing of
        this session's own pace, nor does the time the others take)."""
        keep = len(self.tokens) - len(step.ids)
        if not step.fresh and self._target_len > keep:
            self.target.rewind(keep)
            self._target_len = keep
        if not step.fresh and len(step.ids) == 1:
            self.counters.plain_steps += 1
            self.counters.batched_steps += 1
        self._pace.pause()

    def close(self) -> None:
        try:
            self.target.close()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
            self.draft.close()

    def __enter__(self) -> SpeculativeSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def stats(self) -> dict[str, float]:
        inner = getattr(self.target, "stats", None)
        out = dict(inner() if callable(inner) else inner or {})
        c = self.counters
        tried = c.accepted + c.rejected
        out.update(spec_k=float(self._k), spec_rounds=float(c.rounds),
                   spec_drafted=float(c.drafted), spec_accepted=float(c.accepted),
                   spec_plain_steps=float(c.plain_steps),
                   spec_rounds_drafted_ahead=float(c.drafted_ahead),
                   spec_batched_steps=float(c.batched_steps),
                   spec_acceptance=c.accepted / tried if tried else 0.0,
                   spec_tokens_per_round=(c.accepted + c.rounds) / c.rounds if c.rounds else 0.0,
                   spec_draft_s=c.draft_s, spec_verify_s=c.verify_s)
        return out

    # -- rounds ---------------------------------------------------------------------------
    def _start(self, tokens: list[int], held: int) -> None:
        self._queue.clear()
        self.tokens = tokens
        self._prompt_len = len(tokens)
        self._target_len = held
        self._draft_tokens = []

    def _prefilled(self, tokens: int, seconds: float) -> None:
        self._target_len = len(self.tokens)
        self._prefill_token_s = seconds / max(tokens, 1)

    def _round(self) -> np.ndarray:
        keep = len(self.tokens) - 1  # the target must hold everything before the new token
        if self._target_len > keep:
            self.target.rewind(keep)
        self._target_len = keep
        self._pace.lap(len(self.tokens))
        k = self._choose_k()
        self._pace.speculating = k > 0
        last = self.tokens[-1]
        if k == 0:
            t0 = time.perf_counter()
            logits = self.target.decode(last)
            self._timing.target(1, time.perf_counter() - t0)
            self._target_len += 1
            self.counters.plain_steps += 1
            return logits
        drafted = self._drafted_ahead(k) or self._draft(k)
        t0 = time.perf_counter()
        ids = [last, *(d.token for d in drafted)]
        if self.config.overlap and self._may_draft_ahead():
            rows = self._verify_drafting_ahead(ids, t0)
        else:
            rows = self.target.verify(ids)
        dt = time.perf_counter() - t0
        self._timing.target(len(ids), dt)
        self.counters.verify_s += dt
        self.counters.rounds += 1
        self.counters.drafted += len(drafted)
        self._target_len += len(ids)
        for d, row in zip(drafted, rows[1:], strict=True):
            self._queue.append(_Queued(d.token, d.probs, row))
        return rows[0]

    # -- drafting while the target verifies ------------------------------------------------
    def _verify_drafting_ahead(self, ids: list[int], t0: float) -> np.ndarray:
        """``target.verify(ids)`` on a worker thread while the draft goes on from the last
        drafted token: its guess of the token after it, then proposals after that guess,
        for as long as the verify pass is expected to take. If the target accepts every
        drafted token and picks that guess, the next round starts with its proposals ready
        (sampled requests too: the proposals after the guess are drawn from the draft's
        distribution given it, which is all the rejection rule asks of them, whether or not
        the guess is then right). A remote target waits for the link, so the draft's steps
        cost no time there."""
        from concurrent.futures import ThreadPoolExecutor

        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="edgeweave-verify")
        job = self._pool.submit(self.target.verify, ids)
        self._ahead = []
        try:
            self._draft_ahead(ids, job, t0)
        finally:
            rows = job.result()  # a failed verify raises here, after the draft has stopped
        return rows

    def _draft_ahead(self, ids: list[int], job: Any, t0: float) -> None:
        fit, step = self._timing.fit(), self._timing.draft_token_s
        if fit is None or step is None:
            return  # nothing measured yet: no idea how long the pass takes
        expected = fit[0] + fit[1] * len(ids)
        held = list(self.tokens[:-1]) + ids[:-1]  # what the draft holds after _draft
        if self._draft_tokens[:len(held)] != held:
            return
        if len(self._draft_tokens) > len(held):  # guesses of the round before, unused
            self.draft.rewind(len(held))
            self._draft_tokens = held
        history, token = held, ids[-1]
        # tokens the request can still use after this pass's, and what the caches hold
        useful = self.params.max_tokens - (len(held) + 1 - self._prompt_len)
        limit = min(self.config.k_max, useful, self.max_len - len(held) - 1)
        while not job.done() and len(self._ahead) < limit:
            if time.perf_counter() - t0 + step > expected:
                break  # the pass is about to return: do not keep it waiting
            t = time.perf_counter()
            logits = self.draft.decode(token)
            history = [*history, token]
            # the guess is the draft's argmax; what follows it is drawn as _draft draws
            p = self._pick(logits, history) if self._ahead else Proposal(int(np.argmax(logits)), None)
            token = p.token
            self._ahead.append(p)
            self._timing.draft(time.perf_counter() - t, 1)
        self._draft_tokens = history  # the last guess was never fed

    def _may_draft_ahead(self) -> bool:
        """Greedy requests, and sampled ones without a seed: how far the draft gets
        during a pass depends on the clock, and with it which proposals the request's
        random stream meets, so a seeded request would no longer repeat itself."""
        return self.params.temperature < GREEDY_BELOW or self.params.seed is None

    def _drafted_ahead(self, k: int) -> list[Proposal] | None:
        """The proposals drafted ahead during the last verify, if that round went as the
        draft guessed: its first guess is the token just committed."""
        ahead, self._ahead = self._ahead, []
        n = len(self.tokens)
        if len(ahead) < 2 or self._draft_tokens[:n] != self.tokens:
            return None
        self.counters.drafted_ahead += 1
        return ahead[1:k + 1]

    def _draft(self, k: int) -> list[Proposal]:
        """``k`` proposals after the committed tokens; the draft's cache is brought in line
        first (rewound past its own rejected tokens, then fed what it has not seen)."""
        t_start = time.perf_counter()
        have, want = self._draft_tokens, self.tokens
        m = 0
        for a, b in zip(have, want, strict=False):
            if a != b:
                break
            m += 1
        m = min(m, len(want) - 1)  # feed at least one token: its logits start the chain
        if m == 0:
            logits = self.draft.prefill(list(want))
        else:
            self.draft.rewind(m)
            logits = self.draft.extend(list(want[m:])) if len(want) - m > 1 \
                else self.draft.decode(want[-1])
        # a step's cost is what the decode steps take: a catch-up of many tokens (the
        # prompt at the first round) would make drafting look dearer than it is
        fed_one = len(want) - m == 1
        t_chain = time.perf_counter()
        if len(want) - m > 2:  # a real catch-up, not the usual one or two tokens
            self._pace.sunk(t_chain - t_start)
        history = list(want)
        out: list[Proposal] = []
        for j in range(k):
            p = self._pick(logits, history)
            out.append(p)
            history.append(p.token)
            if j < k - 1:
                logits = self.draft.decode(p.token)
        self._draft_tokens = history[:-1]  # the last proposal was never fed
        end = time.perf_counter()
        steps = k - 1 + int(fed_one)
        if steps:
            self._timing.draft(end - (t_start if fed_one else t_chain), steps)
        self.counters.draft_s += end - t_start
        return out

    def _pick(self, logits: np.ndarray, history: list[int]) -> Proposal:
        if self.params.temperature < GREEDY_BELOW:
            return Proposal(int(np.argmax(logits)), None)
        q = distribution(logits, self.params, history)
        return Proposal(draw(q, self._rng), q)

    def _room(self) -> int:
        """Draft tokens that can still be useful: the caches' room and max_tokens left."""
        generated = len(self.tokens) - self._prompt_len
        left = self.params.max_tokens - generated - 1
        return max(min(left, self.max_len - len(self.tokens) - 1), 0)

    def _choose_k(self) -> int:
        room = self._room()
        if self.config.k:
            return min(self.config.k, room)
        self._acc *= _DECAY
        self._rej *= _DECAY
        k = self._adaptive()
        if k:
            self._probe_every = PROBE_EVERY
        else:
            self._since_probe += 1
            if self._since_probe >= self._probe_every:  # is it worth it again?
                # each probe that leaves it off waits twice as long for the next: a draft
                # that never agrees costs almost nothing after a few probes
                self._since_probe = 0
                self._probe_every = min(2 * self._probe_every, MAX_PROBE_EVERY)
                k = 1
        self._k = k
        return min(k, room)

    def _adaptive(self) -> int:
        if self._pace.plain_s is None and self.counters.plain_steps < WARM_PLAIN:
            return 0  # a few plain steps first: the pace speculation has to beat
        fit = self._timing.fit()
        if fit is None or self._timing.draft_token_s is None:
            return self.config.k or min(4, self.config.k_max)  # nothing measured: try
        a, b = fit
        alpha = min(self._acc / (self._acc + self._rej), 0.999)
        # a pass of n tokens takes a + b*n: plain decoding costs a + b per token
        costs = SpecCosts(draft_token_s=self._timing.draft_token_s, verify_token_s=a + b,
                          verify_extra_token_s=b, rtt_s=0.0)
        choice = best_k(alpha, costs, k_max=self.config.k_max)
        if choice.k and self._pace.slower():
            return 0  # the model says it pays, the clock says it does not
        if choice.k and len(self._timing.passes) % 8 == 0 and choice.k > 1:
            return choice.k - 1  # now and then another size, so that b stays measurable
        return choice.k
