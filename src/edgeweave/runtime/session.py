"""A coordinator session: one sequence through the pipeline, a ``LogitsEngine``.

It records the input of every stage for every step (the bytes that stage received), which is
what makes replay exact: a stage rebuilt elsewhere gets the same chunks in the same order.
See ``runtime.coordinator`` for the plan changes and failover that use the records.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from edgeweave.errors import RuntimeStageError
from edgeweave.runtime import codec as codecs
from edgeweave.runtime.transport.base import NodeError, StageUnavailable
from edgeweave.runtime.transport.frame import ErrorCode, Frame, Op
from edgeweave.types import Plan

if TYPE_CHECKING:
    from edgeweave.runtime.coordinator import Coordinator


@dataclass(frozen=True)
class Payload:
    """A tensor as it travels: codec id, shape, encoded bytes."""

    codec: int
    shape: tuple[int, ...]
    data: bytes


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
        self._stats: dict[str, float] = {
            "bytes_sent": 0.0, "bytes_received": 0.0, "hidden_bytes": 0.0, "steps": 0.0,
            "failovers": 0.0, "recovery_s": 0.0, "stall_s": 0.0, "replayed_tokens": 0.0,
            "evictions_restored": 0.0}
        self._hop_rtt: list[float] = []
        self._hop_compute: list[float] = []

    # -- LogitsEngine --------------------------------------------------------------------
    def prefill(self, ids: list[int]) -> np.ndarray:
        self._run(lambda: self._open_all())
        self.length = 0
        return self._step(ids)

    def decode(self, token: int) -> np.ndarray:
        return self._step([token])

    def close(self) -> None:
        coord = self.coord
        with coord._lock.read():
            for dev in {st.device for st in coord.plan.stages}:
                # a dead node holds nothing worth freeing
                with contextlib.suppress(RuntimeStageError):
                    coord.call(dev, Frame(Op.CLOSE, session=self.id), coord.deadline_s)
        coord._forget(self)

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- steps ---------------------------------------------------------------------------
    def _run(self, fn: Callable[[], np.ndarray | None]) -> np.ndarray | None:
        """Run ``fn`` under the plan's read lock; on a dead node, fail over and retry."""
        for _attempt in range(8):
            gen = self.coord.stats["plan_changes"]
            try:
                with self.coord._lock.read():
                    if gen == self.coord.stats["plan_changes"]:
                        return fn()
                    continue  # the plan changed while we waited: run again on the new one
            except StageUnavailable as e:
                t0 = time.perf_counter()
                with self.coord._lock.write():
                    self.coord._fail_over({e.device})
                # detection to retry, including waiting for a recovery another session began
                self._stats["stall_s"] = time.perf_counter() - t0
        raise RuntimeStageError("the session could not complete a step: nodes keep failing")

    def _open_all(self) -> None:
        coord = self.coord
        for st, key in zip(coord.plan.stages, coord._keys, strict=True):
            coord.open_stage(st, key, self.id, self.max_len, self.adapter)
        self.records = [[] for _ in coord.plan.stages]
        self.length = 0
        self.opened = True

    def _step(self, ids: list[int]) -> np.ndarray:
        if self.length + len(ids) > self.max_len:
            raise RuntimeStageError(f"session {self.id} holds {self.max_len} tokens; "
                                    "start a new session with a larger max_len")
        x = Payload(codecs.IDS.id, (1, len(ids)), codecs.IDS.encode(np.array([ids], dtype=np.int64)))
        out = self._run(lambda: self._forward_all(x))
        self._stats["steps"] += 1
        return codecs.get(out.codec).decode(out.data, out.shape)[0]

    def _forward_all(self, x: Payload) -> Payload:
        coord = self.coord
        inputs = []
        for i, key in enumerate(coord._keys):
            inputs.append(x)
            x = self._forward(coord.plan, i, key, x, self.length, record=True)
        for rec, inp in zip(self.records, inputs, strict=True):
            rec.append(inp)
        self.length += x_tokens(inputs[0])
        return x

    def _forward(self, plan: Plan, i: int, key: str, x: Payload, pos: int,
                 record: bool = False) -> Payload:
        coord = self.coord
        st = plan.stages[i]
        last = i == len(plan.stages) - 1
        reply = codecs.get(coord.logits_codec if last else st.codec).id
        req = Frame(Op.FORWARD, key, self.id, arg=pos, codec=x.codec, reply_codec=reply,
                    shape=x.shape, payload=x.data)
        timeout = coord.deadline_s + coord.per_token_s * x_tokens(x)
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
            self._stats["bytes_sent"] += req.wire_size
            self._stats["bytes_received"] += resp.wire_size
            if not last:
                self._stats["hidden_bytes"] += len(resp.payload)
        return Payload(resp.codec, resp.shape, resp.payload)

    def _restore(self, plan: Plan, i: int, key: str) -> None:
        coord = self.coord
        coord.open_stage(plan.stages[i], key, self.id, self.max_len, self.adapter)
        pos = 0
        for inp in self.records[i]:
            self._forward(plan, i, key, inp, pos)
            pos += x_tokens(inp)
        self._stats["replayed_tokens"] += pos
        self._stats["evictions_restored"] += 1

    def _rebuild(self, plan: Plan, keys: list[str], k: int) -> None:
        """Called under the write lock: make ``plan``'s stages hold this session's tokens.

        Stages before ``k`` are unchanged and only drop a half-done step; stages from ``k``
        on start empty and get the recorded inputs of stage ``k``, chunk by chunk as they
        first ran, so their caches come out bit-identical (``replay="exact"``), or in one
        chunk (``replay="batched"``: one prefill-sized step per stage, much faster for long
        sessions, equal only up to float rounding)."""
        if not self.opened:
            return
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
        self._stats["replayed_tokens"] += pos

    @property
    def stats(self) -> dict[str, float]:
        """Counters plus mean round trip, compute and overhead (round trip minus the node's
        compute time) per decode hop, and the overhead's median and 90th percentile (one
        descheduled hop moves the mean on a busy host); ``generate`` copies this into
        ``metrics.extra``."""
        out = dict(self._stats)
        n = len(self._hop_rtt)
        if n:
            rtt, comp = sum(self._hop_rtt) / n, sum(self._hop_compute) / n
            over = sorted(a - b for a, b in zip(self._hop_rtt, self._hop_compute, strict=True))
            out.update(hop_rtt_ms=1e3 * rtt, hop_compute_ms=1e3 * comp,
                       hop_overhead_ms=1e3 * (rtt - comp), hops=float(n),
                       hop_overhead_median_ms=1e3 * over[n // 2],
                       hop_overhead_p90_ms=1e3 * over[min(n - 1, int(0.9 * n))])
        if self._stats["steps"]:
            out["bytes_per_token"] = (self._stats["bytes_sent"] + self._stats["bytes_received"]) \
                / max(self.length, 1)
        return out


def merge_payloads(chunks: list[Payload]) -> Payload:
    """Concatenate recorded inputs along the token axis; the decoded values travel as
    fp32 (or ids), so the merged chunk holds exactly what the stage received."""
    parts = [codecs.get(c.codec).decode(c.data, c.shape) for c in chunks]
    out = codecs.IDS if chunks[0].codec == codecs.IDS.id else codecs.FP32
    merged = np.concatenate(parts, axis=1)
    return Payload(out.id, tuple(merged.shape), out.encode(merged))


def x_tokens(x: Payload) -> int:
    """Token positions in a payload: (B, T) ids or (B, T, H) hidden states."""
    return x.shape[1]
