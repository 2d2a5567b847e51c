"""Coordinator: runs prefill and decode through the stages of a :class:`~edgeweave.types.Plan`.

Topology is a star: the coordinator sends each stage its input and receives its output
(hidden states encoded by the stage's codec travel through untouched, the last stage returns
fp32 logits). Every session is a :class:`~edgeweave.runtime.engine.LogitsEngine`, so
``runtime.generate.stream_generate`` runs on it unchanged, and has a ``stats`` dict (bytes on
the wire, per-hop timings, failovers) that generation copies into its metrics.

Replay is exact: a session records the input of every stage for every step (the bytes that
stage received), so a stage rebuilt on another node, after a plan change or an eviction,
gets the same chunks in the same order and ends with a bit-identical cache. Failover: a node
that breaks its stream or misses the deadline is marked failed, the plan is re-planned on
the survivors (``replan``), sessions are replayed from the first changed stage and the
interrupted step is retried: no token is lost or doubled.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from edgeweave.errors import ConfigError, RuntimeStageError
from edgeweave.runtime import codec as codecs
from edgeweave.runtime.replan import first_change, reassign_failed
from edgeweave.runtime.transport.base import Link, StageUnavailable
from edgeweave.runtime.transport.frame import ErrorCode, Frame, Op
from edgeweave.types import Plan

log = logging.getLogger(__name__)

Replanner = Callable[[Plan, Collection[str], Collection[str]], Plan]


@dataclass(frozen=True)
class Payload:
    """A tensor as it travels: codec id, shape, encoded bytes."""

    codec: int
    shape: tuple[int, ...]
    data: bytes


class _RWLock:
    """Many session steps at once, or one plan change alone."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._writer)
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._writer)
            self._writer = True
            self._cond.wait_for(lambda: self._readers == 0)
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


class Coordinator:
    """Runs sessions over ``plan``; ``connect(device) -> Link`` reaches a device's node."""

    def __init__(self, plan: Plan, model: str, connect: Callable[[str], Link], *,
                 max_len: int = 2048, deadline_s: float = 20.0, per_token_s: float = 0.05,
                 replan: Replanner = reassign_failed, backend: str = "torch",
                 addresses: dict[str, str] | None = None, replay: str = "exact") -> None:
        if replay not in ("exact", "batched"):
            raise ConfigError(f"replay must be 'exact' or 'batched' (got {replay!r})")
        self.replay = replay
        self.model = model
        self.max_len = max_len
        self.deadline_s, self.per_token_s = deadline_s, per_token_s
        self.replan = replan
        self.backend = backend
        self._connect = connect
        self.links: dict[str, Link] = {}
        # attach(): where each device's node listens (the same dict its connect() reads)
        self.addresses: dict[str, str] = addresses if addresses is not None else {}
        self.failed: set[str] = set()
        self._lock = _RWLock()
        self._sessions: dict[str, Session] = {}
        self._ids = itertools.count()
        self.stats: dict[str, float] = {"failovers": 0.0, "plan_changes": 0.0}
        self.plan = plan
        self._keys = self._prepare(plan)

    # -- nodes and stages -----------------------------------------------------------------
    def link(self, device: str) -> Link:
        if device not in self.links:
            self.links[device] = self._connect(device)
        return self.links[device]

    def _prepare(self, plan: Plan) -> list[str]:
        """Make sure every stage is loaded on its node; return the stage keys."""
        keys = []
        for st in plan.stages:
            spec = {"model": self.model, "shard": {"start": st.shard.start, "end": st.shard.end,
                                                   "n_layers": st.shard.n_layers},
                    "variant": st.variant, "backend": self.backend}
            resp = self.call(st.device, Frame(Op.LOAD, payload=Frame.json_bytes(spec)), 600.0)
            keys.append(resp.stage)
        return keys

    def call(self, device: str, frame: Frame, timeout: float) -> Frame:
        """One request to ``device``; node-side errors raise, dead nodes raise
        :class:`StageUnavailable` carrying the device name."""
        try:
            resp = self.link(device).call(frame, timeout)
        except StageUnavailable as e:
            e.device = device
            raise
        if resp.op == Op.ERROR:
            err = _NodeError(f"node {device}: {resp.payload.decode(errors='replace')}")
            err.code = resp.arg
            raise err
        return resp

    # -- sessions ------------------------------------------------------------------------
    def new_session(self, max_len: int | None = None) -> Session:
        """A fresh :class:`Session` (a ``LogitsEngine``); close it when done."""
        s = Session(self, f"s{next(self._ids)}-{time.monotonic_ns() % 10**9}",
                    min(max_len or self.max_len, self.max_len))
        self._sessions[s.id] = s
        return s

    def _forget(self, session: Session) -> None:
        self._sessions.pop(session.id, None)

    # -- plan changes --------------------------------------------------------------------
    def apply_plan(self, new_plan: Plan) -> float:
        """Switch to ``new_plan`` between tokens; open sessions are replayed into every stage
        from the first changed one. Returns the seconds it took."""
        with self._lock.write():
            return self._switch(new_plan)

    def add_device(self, device: str, address: str | None = None) -> None:
        """Make ``device`` usable by later plans (control plane: a node announced itself or
        came back); ``address`` is its ``host:port`` for a networked coordinator."""
        with self._lock.write():
            if address is not None:
                self.addresses[device] = address
            self.failed.discard(device)
            old = self.links.pop(device, None)
            if old is not None:
                old.close()

    mark_alive = add_device  # the control plane's name for a device that came back

    def mark_failed(self, device: str) -> float:
        """Treat ``device`` as gone (control plane: last will / missed heartbeats)."""
        with self._lock.write():
            return self._fail_over({device})

    def _fail_over(self, devices: set[str]) -> float:
        devices = devices - self.failed
        if not devices:
            return 0.0
        t0 = time.perf_counter()
        self.failed |= devices
        for d in devices:
            link = self.links.pop(d, None)
            if link is not None:
                link.close()
        if not any(st.device in devices for st in self.plan.stages):
            return 0.0
        log.warning("nodes %s failed; re-planning on the survivors", sorted(devices))
        alive = [d for d in {**self.links, **self.addresses} if d not in self.failed]
        self._switch(self.replan(self.plan, self.failed, alive))
        dt = time.perf_counter() - t0
        self.stats["failovers"] += 1
        self.stats["recovery_s"] = dt
        for s in self._sessions.values():  # every open session went through it
            s._stats["failovers"] += 1
            s._stats["recovery_s"] = dt
        return dt

    def _switch(self, new_plan: Plan) -> float:
        t0 = time.perf_counter()
        for _attempt in range(8):  # a node may die during recovery too
            try:
                if new_plan.n_layers != self.plan.n_layers:
                    raise RuntimeStageError("a new plan must cover the same model")
                keys = self._prepare(new_plan)
                k = first_change(self.plan, new_plan)
                for s in list(self._sessions.values()):
                    s._rebuild(new_plan, keys, k)
                break
            except StageUnavailable as e:
                self.failed.add(e.device)
                link = self.links.pop(e.device, None)
                if link is not None:
                    link.close()
                alive = [d for d in {**self.links, **self.addresses} if d not in self.failed]
                new_plan = self.replan(new_plan, self.failed, alive)
                self.stats["failovers"] += 1
        else:
            raise RuntimeStageError("could not re-plan: nodes keep failing during recovery")
        self.plan, self._keys = new_plan, keys
        self.stats["plan_changes"] += 1
        return time.perf_counter() - t0

    def close(self) -> None:
        for s in list(self._sessions.values()):
            s.close()
        for link in self.links.values():
            link.close()
        self.links.clear()


class _NodeError(RuntimeStageError):
    code: int = ErrorCode.GENERIC


class Session:
    """One sequence through the pipeline: the ``LogitsEngine`` of a request."""

    def __init__(self, coord: Coordinator, session_id: str, max_len: int) -> None:
        self.coord = coord
        self.id = session_id
        self.max_len = max_len
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
    def prefill(self, ids: list[int]) -> torch.Tensor:
        self._run(lambda: self._open_all())
        self.length = 0
        return self._step(ids)

    def decode(self, token: int) -> torch.Tensor:
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
    def _run(self, fn: Callable[[], torch.Tensor | None]) -> torch.Tensor | None:
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
            coord.call(st.device, Frame(Op.OPEN, key, self.id, arg=self.max_len),
                       coord.deadline_s)
        self.records = [[] for _ in coord.plan.stages]
        self.length = 0
        self.opened = True

    def _step(self, ids: list[int]) -> torch.Tensor:
        if self.length + len(ids) > self.max_len:
            raise RuntimeStageError(f"session {self.id} holds {self.max_len} tokens; "
                                    "start a new session with a larger max_len")
        x = Payload(codecs.IDS.id, (1, len(ids)), codecs.IDS.encode(torch.tensor([ids])))
        out = self._run(lambda: self._forward_all(x))
        self._stats["steps"] += 1
        return codecs.FP32.decode(out.data, out.shape)[0]

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
        reply = codecs.FP32.id if last else codecs.get(st.codec).id
        req = Frame(Op.FORWARD, key, self.id, arg=pos, codec=x.codec, reply_codec=reply,
                    shape=x.shape, payload=x.data)
        timeout = coord.deadline_s + coord.per_token_s * x_tokens(x)
        t0 = time.perf_counter()
        try:
            resp = coord.call(st.device, req, timeout)
        except _NodeError as e:
            if e.code != ErrorCode.SESSION_MISSING or not record:
                raise
            self._restore(plan, i, key)  # evicted under memory pressure: replay, then retry
            resp = coord.call(st.device, req, timeout)
        if record:
            self._hop_rtt.append(time.perf_counter() - t0)
            self._hop_compute.append(resp.arg / 1e6)
            self._stats["bytes_sent"] += req.wire_size
            self._stats["bytes_received"] += resp.wire_size
            if not last:
                self._stats["hidden_bytes"] += len(resp.payload)
        return Payload(resp.codec, resp.shape, resp.payload)

    def _restore(self, plan: Plan, i: int, key: str) -> None:
        coord = self.coord
        coord.call(plan.stages[i].device, Frame(Op.OPEN, key, self.id, arg=self.max_len),
                   coord.deadline_s)
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
            op, arg = (Op.TRUNCATE, self.length) if i < k else (Op.OPEN, self.max_len)
            coord.call(st.device, Frame(op, key, self.id, arg=arg), coord.deadline_s)
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
        compute time) per hop; ``generate`` copies this into ``metrics.extra``."""
        out = dict(self._stats)
        n = len(self._hop_rtt)
        if n:
            rtt, comp = sum(self._hop_rtt) / n, sum(self._hop_compute) / n
            out.update(hop_rtt_ms=1e3 * rtt, hop_compute_ms=1e3 * comp,
                       hop_overhead_ms=1e3 * (rtt - comp), hops=float(n))
        if self._stats["steps"]:
            out["bytes_per_token"] = (self._stats["bytes_sent"] + self._stats["bytes_received"]) \
                / max(self.length, 1)
        return out


def merge_payloads(chunks: list[Payload]) -> Payload:
    """Concatenate recorded inputs along the token axis; the decoded values travel as
    fp32 (or ids), so the merged chunk holds exactly what the stage received."""
    parts = [codecs.get(c.codec).decode(c.data, c.shape) for c in chunks]
    out = codecs.IDS if chunks[0].codec == codecs.IDS.id else codecs.FP32
    merged = torch.cat(parts, dim=1)
    return Payload(out.id, tuple(merged.shape), out.encode(merged))


def x_tokens(x: Payload) -> int:
    """Token positions in a payload: (B, T) ids or (B, T, H) hidden states."""
    return x.shape[1]
