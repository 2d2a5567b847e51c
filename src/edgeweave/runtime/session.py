"""A coordinator session: one sequence through the pipeline, a ``LogitsEngine``.

Its interface to the coordinator is public on both sides: a step runs through
``Coordinator.run`` (the plan's read lock, a newer plan generation, failover and retry live
there), the coordinator calls ``rebuild`` and ``note_failover`` back, and the session's
figures are a typed :class:`SessionStats` (``counters``) reported as the ``stats`` dict.

It records the input of every stage for every step (the bytes that stage received), which is
what makes replay exact: a stage rebuilt elsewhere gets the same chunks in the same order.
See ``runtime.coordinator`` for the plan changes and failover that use the records.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeweave.errors import EdgeweaveError, RuntimeStageError
from edgeweave.runtime import codec as codecs
from edgeweave.runtime.payload import Payload, cut_records, merge_payloads, x_tokens
from edgeweave.runtime.transport.base import NodeError
from edgeweave.runtime.transport.frame import ErrorCode, Frame, Op, pack_batch, unpack_batch
from edgeweave.types import Plan

if TYPE_CHECKING:
    from edgeweave.runtime.coordinator import Coordinator
    from edgeweave.runtime.planstate import PlanView
    from edgeweave.runtime.sampling import SamplingParams


@dataclass
class SessionStats:
    """What one session reports (``stats``, copied into generation metrics): bytes on the
    wire, steps, failovers it went through and what they cost. Reports only: no decision
    reads them."""

    bytes_sent: int = 0
    bytes_received: int = 0
    hidden_bytes: int = 0
    steps: int = 0
    failovers: int = 0
    recovery_s: float = 0.0
    stall_s: float = 0.0
    replayed_tokens: int = 0
    evictions_restored: int = 0


class Session:
    """One sequence through the pipeline: the ``LogitsEngine`` of a request."""

    def __init__(self, coord: Coordinator, session_id: str, max_len: int,
                 adapter: str | None = None) -> None:
        self.coord = coord
        self.id = session_id
        self.max_len = max_len
        self.adapter = adapter  # a LoRA adapter the coordinator sent every stage, or None
        self.length = 0  # committed tokens, held by every stage
        self.records: list[list[Payload]] = []  # per stage index: the inputs it received
        self.opened = False
        self.counters = SessionStats()
        self._hop_rtt: list[float] = []
        self._hop_compute: list[float] = []
        self._keep: list[int] | None = None  # a prompt to keep before the caches change
        self._cut: int | None = None  # a rewind the nodes have not been told of yet
        self._logits_codec: str | None = None  # None: the coordinator's (configure_sampling)

    # -- LogitsEngine --------------------------------------------------------------------
    @property
    def logits_codec(self) -> str:
        """How the last stage sends this session's logits: the coordinator's codec, or
        ``top1`` where the request's sampling needs no more (``configure_sampling``)."""
        return self._logits_codec or self.coord.logits_codec

    def configure_sampling(self, params: SamplingParams) -> None:
        """A greedy request without a penalty, logprobs or an output format only ever
        reads the argmax: its logits travel as ``top1`` (the largest logit and its index, 8
        bytes a row, not the vocabulary's 196 KB in fp32), which picks the same token. Over a
        slow link the full row was most of each token's bytes; ``top1`` rather than ``top64``
        because finding 64 right after a run cost the last stage 0.19-0.26 ms a token."""
        from edgeweave.runtime.sampling import GREEDY_BELOW

        argmax_only = (params.temperature < GREEDY_BELOW and params.repetition_penalty == 1.0
                       and params.logprobs is None and params.output is None)
        self._logits_codec = self._argmax_codec() if argmax_only else None

    def _argmax_codec(self) -> str | None:
        """``top1``, or ``top64`` where the last stage's node is of a build without it (a
        fleet in the middle of an upgrade: ``dial`` keeps what INFO announced; links
        made otherwise, in-process ones too, are of this build)."""
        last = self.coord.plan.stages[-1].device
        link = self.coord.links.get(last)
        known = getattr(link, "reply_codecs", None)
        if known is None or "top1" in known:
            return "top1"
        return "top64" if "top64" in known else None

    def prefill(self, ids: list[int]) -> np.ndarray:
        self._kept()
        self.coord.run(self._open_all, self.counters)
        self.length = 0
        return self._step(ids)

    def decode(self, token: int) -> np.ndarray:
        return self._step([token])

    def extend(self, ids: list[int]) -> np.ndarray:
        """Append a chunk of the prompt (chunked prefill): one recorded step, replayed as it
        ran."""
        return self._step(list(ids))

    def verify(self, ids: list[int]) -> np.ndarray:
        """Append ``ids`` and return the logits after each of them, ``(len(ids), vocab)``:
        one recorded step whose last stage answers every position (``Op.VERIFY``), which is
        how speculative decoding scores drafted tokens in one pass."""
        return self._step(list(ids), Op.VERIFY)

    def rewind(self, length: int) -> None:
        """Keep only the first ``length`` tokens at every stage (rejected draft tokens);
        the records are cut to match, so a later replay rebuilds exactly what is kept."""
        if not 0 <= length <= self.length:
            raise RuntimeStageError(f"session {self.id} holds {self.length} tokens: rewind to "
                                    f"0..{self.length}, not {length}")
        self._kept()  # a prompt waiting for the prefix cache is copied before any cut
        if length == self.length:
            return
        # cut here at once; the stages get their TRUNCATE just ahead of the next step's frame
        # on the same stream (``_send_cut``), so a rewind costs no round trip of its own:
        # speculation rewinds after every rejected draft, 2 x the link's delay each time
        self.records = [cut_records(rec, length) for rec in self.records]
        self.length = length
        self._cut = length if self._cut is None else min(self._cut, length)

    def _send_cut(self, view: PlanView) -> list[Any]:
        """Send a pending rewind's TRUNCATE to every stage without waiting; returns the
        waiters of their answers. A node serves one coordinator's frames in order, so the
        frames sent after these find the caches cut."""
        length, self._cut = self._cut, None
        if length is None:
            return []
        return [self.coord.submit(st.device, Frame(Op.TRUNCATE, key, self.id, arg=length),
                                  self.coord.deadline_s)
                for st, key in zip(view.plan.stages, view.keys, strict=True)]

    def _flush_cut(self) -> None:
        """Tell the stages of a pending rewind now, and wait for them (before any request
        that is not a step of this session's own)."""
        if self._cut is not None:
            def cut(view: PlanView) -> None:
                for wait in self._send_cut(view):
                    wait()
            self.coord.run(cut, self.counters)

    def reuse_prefix(self, ids: list[int]) -> int:
        """Open the session holding the longest prefix of ``ids`` the plan's prefix cache
        has, at every stage; return its length (0: none, the next step starts afresh)."""
        prefixes = self.coord.prefixes
        return 0 if prefixes is None else prefixes.reuse(self, list(ids))

    def keep_prefix(self, ids: list[int]) -> None:
        """The session holds exactly ``ids`` (its prompt): offer it to the prefix cache.
        The copies wait until the caches are about to change (the next step, or ``close``),
        so the first token does not wait for them."""
        if self.coord.prefixes is not None:
            self._keep = list(ids)

    def _kept(self) -> None:
        prefixes = self.coord.prefixes
        if self._keep is not None and prefixes is not None:
            self._flush_cut()  # the copy is of what the session holds after its rewinds
            ids, self._keep = self._keep, None
            prefixes.keep(self, ids)

    def adopt_prefix(self, length: int, records: list[list[Payload]]) -> None:
        """Every stage was filled with a donor's first ``length`` tokens (``runtime.
        prefix_plan``); ``records`` are the inputs its stages received for them, so replay
        rebuilds this session as if it had computed them itself."""
        self.length = length
        self.records = [list(r) for r in records]
        self.opened = True

    def close(self) -> None:
        try:
            self._kept()
        finally:
            self.coord.close_session(self)

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- batched steps ---------------------------------------------------------------------
    @property
    def batch_key(self) -> int:
        """Sessions with the same key can step together (``forward_many``): one plan."""
        return id(self.coord)

    @staticmethod
    def forward_many(sessions: list[Session], steps: list[Any]
                     ) -> list[np.ndarray | BaseException]:
        """One step of several sessions of one coordinator: each stage gets one
        FORWARD_BATCH frame carrying every session's input (``steps[j]``: ``ids`` and
        ``fresh`` as ``sequence.StepInput``; a fresh one opens its caches first). A failover
        retries the whole step on the new plan; a session refused by a node fails alone."""
        coord = sessions[0].coord
        out: list[Any] = [None] * len(sessions)
        run: list[int] = []
        for j, (s, st) in enumerate(zip(sessions, steps, strict=True)):
            try:
                s._kept()
                if st.fresh:
                    coord.run(s._open_all, s.counters)
                if s.length + len(st.ids) > s.max_len:
                    raise RuntimeStageError(f"session {s.id} holds {s.max_len} tokens; start "
                                            "a new session with a larger max_len")
                run.append(j)
            except Exception as e:  # noqa: BLE001 - this session only
                out[j] = e
        if not run:
            return out
        xs = [Payload(codecs.IDS.id, (1, len(steps[j].ids)),
                      codecs.IDS.encode(np.array([steps[j].ids], dtype=np.int64))) for j in run]
        group = [sessions[j] for j in run]
        ys = coord.run(lambda view: _forward_batch(view, group, xs))
        for j, y in zip(run, ys, strict=True):
            out[j] = y if isinstance(y, BaseException) else \
                codecs.get(y.codec).decode(y.data, y.shape)[0]
        return out

    # -- what the coordinator calls --------------------------------------------------------
    def note_failover(self, recovery_s: float) -> None:
        """A failover happened while this session was open (it was replayed if needed)."""
        self.counters.failovers += 1
        self.counters.recovery_s = recovery_s

    # -- steps ---------------------------------------------------------------------------
    def _open_all(self, view: PlanView) -> None:
        coord = self.coord
        for st, key in zip(view.plan.stages, view.keys, strict=True):
            coord.open_stage(st, key, self.id, self.max_len, self.adapter)
        self.records = [[] for _ in view.plan.stages]
        self.length = 0
        self.opened = True
        self._cut = None  # opened afresh: nothing left to cut

    def _step(self, ids: list[int], last_op: Op = Op.FORWARD) -> np.ndarray:
        self._kept()
        if self.length + len(ids) > self.max_len:
            raise RuntimeStageError(f"session {self.id} holds {self.max_len} tokens; "
                                    "start a new session with a larger max_len")
        x = Payload(codecs.IDS.id, (1, len(ids)), codecs.IDS.encode(np.array([ids], dtype=np.int64)))
        out = self.coord.run(lambda view: self._forward_all(view, x, last_op), self.counters)
        self.counters.steps += 1
        return codecs.get(out.codec).decode(out.data, out.shape)[0]

    def _forward_all(self, view: PlanView, x: Payload, last_op: Op = Op.FORWARD) -> Payload:
        from edgeweave.runtime import pipeline  # it builds on this module's types

        cuts = self._send_cut(view)
        try:
            # a long prompt over 2+ nodes; a verify step is a few tokens and needs every row
            if last_op == Op.FORWARD and pipeline.pipelines(self.coord, view, x_tokens(x)):
                return pipeline.forward_pipelined(self, view, x)
            inputs = []
            last = len(view.keys) - 1
            for i, key in enumerate(view.keys):
                inputs.append(x)
                x = self._forward(view.plan, i, key, x, self.length, record=True,
                                  op=last_op if i == last else Op.FORWARD)
            for rec, inp in zip(self.records, inputs, strict=True):
                rec.append(inp)
            self.length += x_tokens(inputs[0])
            return x
        finally:
            for wait in cuts:  # answered before the step's frames; a failed cut raises here
                wait()

    def request(self, plan: Plan, i: int, key: str, x: Payload, pos: int,
                op: Op = Op.FORWARD) -> tuple[Frame, float]:
        """The frame that steps stage ``i`` (key ``key``) on ``x`` at position ``pos``, and
        how long to wait for its answer; no side effects (``pipeline`` sends it from its
        worker threads)."""
        coord = self.coord
        st = plan.stages[i]
        reply = codecs.get(self.logits_codec if i == len(plan.stages) - 1 else st.codec).id
        req = Frame(op, key, self.id, arg=pos, codec=x.codec, reply_codec=reply,
                    shape=x.shape, payload=x.data)
        return req, coord.deadline_s + coord.per_token_s * x_tokens(x)

    def _forward(self, plan: Plan, i: int, key: str, x: Payload, pos: int,
                 record: bool = False, op: Op = Op.FORWARD) -> Payload:
        coord = self.coord
        st = plan.stages[i]
        last = i == len(plan.stages) - 1
        req, timeout = self.request(plan, i, key, x, pos, op)
        t0 = time.perf_counter()
        try:
            resp = coord.call(st.device, req, timeout)
        except NodeError as e:
            if e.code != ErrorCode.SESSION_MISSING or not record:
                raise
            self._restore(plan, i, key)  # evicted under memory pressure: replay, then retry
            resp = coord.call(st.device, req, timeout)
        if record and x_tokens(x) == 1:  # per-token figures: decode hops only, not prefill
            self._hop_rtt.append(time.perf_counter() - t0)
            self._hop_compute.append(resp.arg / 1e6)
        if record:
            self.counters.bytes_sent += req.wire_size
            self.counters.bytes_received += resp.wire_size
            if not last:
                self.counters.hidden_bytes += len(resp.payload)
        return Payload(resp.codec, resp.shape, resp.payload)

    def _drop_step(self, view: PlanView, stages: int) -> None:
        """Stages ``[0, stages)`` ran a step that failed further on: forget it there."""
        for st, key in list(zip(view.plan.stages, view.keys, strict=True))[:stages]:
            with contextlib.suppress(EdgeweaveError):
                self.coord.call(st.device, Frame(Op.TRUNCATE, key, self.id, arg=self.length),
                                self.coord.deadline_s)

    def _restore(self, plan: Plan, i: int, key: str) -> None:
        coord = self.coord
        coord.open_stage(plan.stages[i], key, self.id, self.max_len, self.adapter)
        pos = 0
        for inp in self.records[i]:
            self._forward(plan, i, key, inp, pos)
            pos += x_tokens(inp)
        self.counters.replayed_tokens += pos
        self.counters.evictions_restored += 1

    def rebuild(self, plan: Plan, keys: list[str], k: int) -> None:
        """Make ``plan``'s stages hold this session's tokens (the coordinator calls this
        under the write lock of a plan change).

        Stages before ``k`` are unchanged and only drop a half-done step; stages from ``k``
        on start empty and get the recorded inputs of stage ``k``, chunk by chunk as they
        first ran, so their caches come out bit-identical (``replay="exact"``), or in one
        chunk (``replay="batched"``: one prefill-sized step per stage, much faster for long
        sessions, equal only up to float rounding)."""
        if not self.opened:
            return
        self._cut = None  # the records are cut already; every stage is made to match them
        coord = self.coord
        for i, (st, key) in enumerate(zip(plan.stages, keys, strict=True)):
            if i < k:
                coord.call(st.device, Frame(Op.TRUNCATE, key, self.id, arg=self.length),
                           coord.deadline_s)
            else:
                coord.open_stage(st, key, self.id, self.max_len, self.adapter)
        records = self.records[:k] + [[] for _ in plan.stages[k:]]
        pos = 0
        chunks = self.records[k] if k < len(self.records) else []
        if coord.replay == "batched" and len(chunks) > 1:
            chunks = [merge_payloads(chunks)]
        for chunk in chunks:
            x = chunk
            for i in range(k, len(plan.stages)):
                records[i].append(x)
                x = self._forward(plan, i, keys[i], x, pos)
            pos += x_tokens(chunk)
        self.records = records
        self.counters.replayed_tokens += pos

    @property
    def stats(self) -> dict[str, float]:
        """Counters plus mean round trip, compute and overhead (round trip minus the node's
        compute time) per decode hop, and the overhead's median and 90th percentile (one
        descheduled hop moves the mean on a busy host); ``generate`` copies this into
        ``metrics.extra``."""
        c = self.counters
        out = {k: float(v) for k, v in asdict(c).items()}
        n = len(self._hop_rtt)
        if n:
            rtt, comp = sum(self._hop_rtt) / n, sum(self._hop_compute) / n
            over = sorted(a - b for a, b in zip(self._hop_rtt, self._hop_compute, strict=True))
            out.update(hop_rtt_ms=1e3 * rtt, hop_compute_ms=1e3 * comp,
                       hop_overhead_ms=1e3 * (rtt - comp), hops=float(n),
                       hop_overhead_median_ms=1e3 * over[n // 2],
                       hop_overhead_p90_ms=1e3 * over[min(n - 1, int(0.9 * n))])
        if c.steps:
            out["bytes_per_token"] = (c.bytes_sent + c.bytes_received) / max(self.length, 1)
        return out


def _forward_batch(view: PlanView, sessions: list[Session], xs: list[Payload]
                   ) -> list[Payload | BaseException]:
    """``Session.forward_many``'s step under the read lock: stage by stage, one frame for
    every session still running; nothing is committed (records, lengths) until the last
    stage answered, so a failover retry or a rebuild sees the step as never taken."""
    coord = sessions[0].coord
    cuts = [wait for s in sessions for wait in s._send_cut(view)]  # ahead of the batch
    try:
        return _forward_batch_cut(view, sessions, xs, coord)
    finally:
        for wait in cuts:
            wait()


def _forward_batch_cut(view: PlanView, sessions: list[Session], xs: list[Payload],
                       coord: Coordinator) -> list[Payload | BaseException]:
    cur = list(xs)
    inputs: list[list[Payload]] = [[] for _ in sessions]
    errors: dict[int, BaseException] = {}
    alive = list(range(len(sessions)))
    n = len(view.plan.stages)
    for i, (st, key) in enumerate(zip(view.plan.stages, view.keys, strict=True)):
        last = i == n - 1
        items = [Frame(Op.FORWARD, "", sessions[j].id, arg=sessions[j].length,
                       codec=cur[j].codec, shape=cur[j].shape, payload=cur[j].data,
                       reply_codec=codecs.get(sessions[j].logits_codec if last
                                              else st.codec).id) for j in alive]
        tokens = sum(x_tokens(cur[j]) for j in alive)
        t0 = time.perf_counter()
        resp = coord.call(st.device, Frame(Op.FORWARD_BATCH, key, payload=pack_batch(items)),
                          coord.deadline_s + coord.per_token_s * tokens)
        rtt = time.perf_counter() - t0
        answers = unpack_batch(resp.payload)
        if len(answers) != len(items):
            raise RuntimeStageError(f"node {st.device} answered {len(answers)} of a batch of "
                                    f"{len(items)}: run the same edgeweave version everywhere")
        still = []
        for j, item, ans in zip(alive, items, answers, strict=True):
            s = sessions[j]
            inputs[j].append(cur[j])
            if ans.op == Op.ERROR and ans.arg == ErrorCode.SESSION_MISSING:
                try:  # evicted under memory pressure: replay it, then its step alone
                    s._restore(view.plan, i, key)
                    cur[j] = s._forward(view.plan, i, key, cur[j], s.length, record=True)
                except EdgeweaveError as e:
                    errors[j] = e
                    continue
            elif ans.op == Op.ERROR:
                err = NodeError(f"node {st.device}: {ans.payload.decode(errors='replace')}")
                err.code = ans.arg
                errors[j] = err
                continue
            else:
                if x_tokens(cur[j]) == 1:  # per-token figures: decode hops only
                    s._hop_rtt.append(rtt)
                    s._hop_compute.append(ans.arg / 1e6)
                s.counters.bytes_sent += item.wire_size
                s.counters.bytes_received += ans.wire_size
                if not last:
                    s.counters.hidden_bytes += len(ans.payload)
                cur[j] = Payload(ans.codec, ans.shape, ans.payload)
            still.append(j)
        alive = still
        if not alive:
            break
    out: list[Payload | BaseException] = []
    for j, s in enumerate(sessions):
        if j in errors:
            s._drop_step(view, len(inputs[j]) - 1)
            out.append(errors[j])
            continue
        for rec, inp in zip(s.records, inputs[j], strict=True):
            rec.append(inp)
        s.length += x_tokens(inputs[j][0])
        s.counters.steps += 1
        out.append(cur[j])
    return out
