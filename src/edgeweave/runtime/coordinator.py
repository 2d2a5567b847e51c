"""Coordinator: runs prefill and decode through the stages of a :class:`~edgeweave.types.Plan`.

Topology is a star: the coordinator sends each stage its input and receives its output
(hidden states encoded by the stage's codec travel through untouched, the last stage returns
fp32 logits). Every session is a :class:`~edgeweave.runtime.engine.LogitsEngine`, so
``runtime.generate.stream_generate`` runs on it unchanged, and has a ``stats`` dict (bytes on
the wire, per-hop timings, failovers) that generation copies into its metrics.

Replay is exact: a session (``runtime.session``) records the input of every stage for every
step (the bytes that stage received), so a stage rebuilt on another node, after a plan change
or an eviction, gets the same chunks in the same order and ends with a bit-identical cache. Failover: a node
that breaks its stream or misses the deadline is marked failed, the plan is re-planned on
the survivors (``replan``), sessions are replayed from the first changed stage and the
interrupted step is retried: no token is lost or doubled.

The plan state (plan, stage keys, an integer generation, the lock) belongs to one
:class:`~edgeweave.runtime.planstate.PlanState`; sessions step through :meth:`Coordinator.run`
and fail over through :meth:`Coordinator.fail_over`, and several sessions step together
(``Session.forward_many``: one FORWARD_BATCH frame per stage).
LoRA adapters (``add_adapter``) are sent to every stage as it is loaded (``Op.ADAPTER``, each
stage gets its blocks' factors), so a stage rebuilt on another node after a failover has them
too; a session opened with an adapter names it in its OPEN frames and runs it unmerged.
With ``prefix_cache_bytes`` > 0, prompts that start alike reuse the keys and values of
earlier ones at every stage (``runtime.prefix_plan``).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import time
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass
from typing import TypeVar

from edgeweave.errors import ConfigError, EdgeweaveError, RuntimeStageError
from edgeweave.runtime.adapters import Adapter, to_bytes
from edgeweave.runtime.engines.base import check_batch_invariant
from edgeweave.runtime.payload import Payload
from edgeweave.runtime.pipeline import PIPELINE_CHUNK
from edgeweave.runtime.planstate import PlanState, PlanView
from edgeweave.runtime.prefix_plan import PlanPrefixes
from edgeweave.runtime.replan import first_change, reassign_failed
from edgeweave.runtime.session import Session, SessionStats
from edgeweave.runtime.transport.base import Link, NodeError, StageUnavailable
from edgeweave.runtime.transport.frame import ErrorCode, Frame, Op
from edgeweave.types import Plan, Stage

log = logging.getLogger(__name__)

__all__ = ["Coordinator", "CoordinatorStats", "Payload", "PlanState", "PlanView", "Replanner",
           "Session", "SessionStats"]

Replanner = Callable[[Plan, Collection[str], Collection[str]], Plan]


T = TypeVar("T")


@dataclass
class CoordinatorStats:
    """What the coordinator reports (``/health``, the demo): counters, never control state."""

    failovers: int = 0
    plan_changes: int = 0
    recovery_s: float = 0.0


class Coordinator:
    """Runs sessions over ``plan``; ``connect(device) -> Link`` reaches a device's node."""

    def __init__(self, plan: Plan, model: str, connect: Callable[[str], Link], *,
                 max_len: int = 2048, deadline_s: float = 20.0, per_token_s: float = 0.05,
                 replan: Replanner = reassign_failed, backend: str = "torch",
                 addresses: dict[str, str] | None = None, replay: str = "exact",
                 logits_codec: str = "fp32", prefix_cache_bytes: int = 0,
                 pipeline_chunk: int = PIPELINE_CHUNK, batch_invariant: bool = False) -> None:
        if replay not in ("exact", "batched"):
            raise ConfigError(f"replay must be 'exact' or 'batched' (got {replay!r})")
        if logits_codec not in ("fp32", "fp16", "top64"):
            raise ConfigError(f"logits_codec must be fp32, fp16 or top64 (got {logits_codec!r})")
        if pipeline_chunk < 0:
            raise ConfigError(f"pipeline_chunk must be >= 0 tokens (0: no pipelined prefill; "
                              f"got {pipeline_chunk})")
        self.replay = replay
        # prompt tokens per chunk of a pipelined prefill over nodes (runtime.pipeline); 0: off
        self.pipeline_chunk = pipeline_chunk
        # how the last stage returns logits: fp32 is exact for any sampling; top64 keeps
        # greedy exact and cuts the last hop from 4 * vocab bytes to 512
        self.logits_codec = logits_codec
        self.model = model
        self.max_len = max_len
        self.deadline_s, self.per_token_s = deadline_s, per_token_s
        self.replan = replan
        self.backend = backend
        check_batch_invariant(backend, batch_invariant)
        # every stage loads as a batch-invariant engine (EngineConfig.batch_invariant)
        self.batch_invariant = batch_invariant
        self._connect = connect
        self.links: dict[str, Link] = {}
        # attach(): where each device's node listens (the same dict its connect() reads)
        self.addresses: dict[str, str] = addresses if addresses is not None else {}
        self.failed: set[str] = set()
        self.closed = False  # a plan change in flight gives up once this is set
        self._sessions: dict[str, Session] = {}
        self._ids = itertools.count()
        self.counters = CoordinatorStats()
        self.adapters: dict[str, Adapter] = {}  # sent to every stage _prepare loads
        self.state = PlanState(plan, self._prepare(plan))
        # donors at every stage (runtime.prefix_plan); None: no prefix cache
        self.prefixes = PlanPrefixes(self, prefix_cache_bytes) if prefix_cache_bytes > 0 \
            else None

    @property
    def plan(self) -> Plan:
        return self.state.view.plan

    @property
    def stats(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self.counters).items()}

    # -- nodes and stages -----------------------------------------------------------------
    def link(self, device: str) -> Link:
        if device not in self.links:
            self.links[device] = self._connect(device)
        return self.links[device]

    def _load_frame(self, st: Stage) -> Frame:
        spec = {"model": self.model, "shard": {"start": st.shard.start, "end": st.shard.end,
                                               "n_layers": st.shard.n_layers},
                "variant": st.variant, "backend": self.backend}
        if self.batch_invariant:  # absent otherwise: a node of before this still loads
            spec["batch_invariant"] = True
        return Frame(Op.LOAD, payload=Frame.json_bytes(spec))

    def _load(self, st: Stage) -> str:
        """LOAD one stage on its node with every added adapter; returns its key."""
        key = self.call(st.device, self._load_frame(st), 600.0).stage
        for adapter in self.adapters.values():  # the node skips what it holds already
            self._send_adapter(st, key, adapter)
        return key

    def _prepare(self, plan: Plan) -> list[str]:
        """Make sure every stage is loaded on its node; return the stage keys. Nodes load
        at the same time (one thread per device), each its own stages in order."""

        def load_on(device: str) -> dict[int, str]:
            return {i: self._load(st) for i, st in enumerate(plan.stages)
                    if st.device == device}

        keys: dict[int, str] = {}
        for part in _each_device(plan, load_on):
            keys.update(part)
        return [keys[i] for i in range(len(plan.stages))]

    def preload(self, plan: Plan) -> float:
        """Load ``plan``'s stages beside the running plan, which keeps serving: each node
        builds them over a link of its own (a node answers one stream's requests in order,
        so a load on the serving link would queue the tokens behind it) and outside its
        request lock (``StageHost.load``). Best effort: what fails here is met again, and
        handled, by the switch. Returns the seconds it took."""
        t0 = time.perf_counter()

        def load_on(device: str) -> None:
            if self.closed:
                return
            link = self._connect(device)
            try:
                for st in plan.stages:
                    if st.device == device:
                        link.call(self._load_frame(st), 600.0)
            finally:
                link.close()

        try:
            _each_device(plan, load_on)
        except EdgeweaveError as e:
            log.info("preloading the new plan stopped (%s); the switch loads the rest", e)
        dt = time.perf_counter() - t0
        log.info("preloaded %s in %.2f s while the old plan served", _describe(plan), dt)
        return dt

    def _send_adapter(self, st: Stage, key: str, adapter: Adapter) -> None:
        payload = to_bytes(adapter, st.shard.start, st.shard.end)
        self.call(st.device, Frame(Op.ADAPTER, key, payload=payload), 600.0)

    def add_adapter(self, adapter: Adapter) -> None:
        """Serve ``adapter`` (``runtime.adapters``) on every stage of the plan, now and after
        any plan change; sessions then open with ``new_session(adapter=adapter.name)``."""
        with self.state.changing() as view:
            for st, key in zip(view.plan.stages, view.keys, strict=True):
                self._send_adapter(st, key, adapter)
            self.adapters[adapter.name] = adapter

    def open_stage(self, st: Stage, key: str, session_id: str, max_len: int,
                   adapter: str | None) -> Frame:
        """OPEN a session at one stage; a node that lost the adapter (restarted under the
        same address) is sent it again once."""
        payload = Frame.json_bytes({"adapter": adapter}) if adapter is not None else b""
        frame = Frame(Op.OPEN, key, session_id, arg=max_len, payload=payload)
        try:
            return self.call(st.device, frame, self.deadline_s)
        except NodeError as e:
            if e.code == ErrorCode.NO_STAGE:  # unloaded by another coordinator's re-plan
                self._load(st)
            elif e.code != ErrorCode.NO_ADAPTER or adapter not in self.adapters:
                raise
            else:
                self._send_adapter(st, key, self.adapters[adapter])
            return self.call(st.device, frame, self.deadline_s)

    def call(self, device: str, frame: Frame, timeout: float) -> Frame:
        """One request to ``device``; node-side errors raise, dead nodes raise
        :class:`StageUnavailable` carrying the device name."""
        return self.submit(device, frame, timeout)()

    def submit(self, device: str, frame: Frame, timeout: float) -> Callable[[], Frame]:
        """Send ``frame`` to ``device`` now; the returned function waits for the answer and
        raises as :meth:`call` does. Frames to one node are served in the order sent, so a
        frame sent after this one finds its effect."""
        try:
            wait = self.link(device).submit(frame, timeout)
        except StageUnavailable as e:
            e.device = device
            raise

        def answer() -> Frame:
            try:
                resp = wait()
            except StageUnavailable as e:
                e.device = device
                raise
            if resp.op == Op.ERROR:
                err = NodeError(f"node {device}: {resp.payload.decode(errors='replace')}")
                err.code = resp.arg
                raise err
            return resp

        return answer

    # -- sessions ------------------------------------------------------------------------
    def new_session(self, max_len: int | None = None, adapter: str | None = None) -> Session:
        """A fresh :class:`Session` (a ``LogitsEngine``), running the added adapter
        ``adapter`` (None: the base model); close it when done."""
        if adapter is not None and adapter not in self.adapters:
            raise ConfigError(f"no adapter {adapter!r} was added to this coordinator (it has "
                              f"{sorted(self.adapters)}): add_adapter it first")
        s = Session(self, f"s{next(self._ids)}-{time.monotonic_ns() % 10**9}",
                    min(max_len or self.max_len, self.max_len), adapter)
        self._sessions[s.id] = s
        return s

    def run(self, fn: Callable[[PlanView], T], stats: SessionStats | None = None) -> T:
        """Run one step ``fn`` on the current plan, under the read lock. A plan that changed
        while the step waited (a newer generation) makes it run again on the new one; a dead
        node is failed over (re-plan, replay) and the step retried, the time that took added
        to ``stats.stall_s``."""
        for _attempt in range(8):
            started = self.state.generation
            try:
                with self.state.reading() as view:
                    if view.generation == started:
                        return fn(view)
                    continue  # the plan changed while we waited: run again on the new one
            except StageUnavailable as e:
                t0 = time.perf_counter()
                self.fail_over({e.device})
                if stats is not None:  # detection to retry, incl. a recovery another began
                    stats.stall_s = time.perf_counter() - t0
        raise RuntimeStageError("the session could not complete a step: nodes keep failing")

    def close_session(self, session: Session) -> None:
        """Free ``session`` on every node of the plan (best effort) and forget it."""
        with self.state.reading() as view:
            for dev in {st.device for st in view.plan.stages}:
                # a dead node holds nothing worth freeing
                with contextlib.suppress(RuntimeStageError):
                    self.call(dev, Frame(Op.CLOSE, session=session.id), self.deadline_s)
        self._sessions.pop(session.id, None)

    # -- plan changes --------------------------------------------------------------------
    def apply_plan(self, new_plan: Plan) -> float:
        """Switch to ``new_plan`` between tokens; open sessions are replayed into every stage
        from the first changed one. The new stages load first, while the old plan serves
        (:meth:`preload`); returns the seconds the switch itself held the plan (the stall a
        running stream sees)."""
        self.preload(new_plan)
        with self.state.changing():
            if self.closed:  # closed while the new stages loaded: nothing left to switch
                raise RuntimeStageError("the coordinator was closed before the new plan "
                                        "could be switched to")
            return self._switch(new_plan)

    def add_device(self, device: str, address: str | None = None) -> None:
        """Make ``device`` usable by later plans (control plane: a node announced itself or
        came back); ``address`` is its ``host:port`` for a networked coordinator."""
        with self.state.changing():
            if address is not None:
                self.addresses[device] = address
            self.failed.discard(device)
            old = self.links.pop(device, None)
            if old is not None:
                old.close()

    mark_alive = add_device  # the control plane's name for a device that came back

    def fail_over(self, devices: Collection[str]) -> float:
        """Treat ``devices`` as gone: re-plan on the survivors and replay every open session
        into the changed stages (control plane: last will / missed heartbeats; a step: a
        broken stream). Returns the seconds the recovery took (0 when nothing changed)."""
        with self.state.changing():
            return self._fail_over(set(devices))

    def mark_failed(self, device: str) -> float:
        """Treat ``device`` as gone (control plane: last will / missed heartbeats)."""
        return self.fail_over({device})

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
        self.counters.failovers += 1
        self.counters.recovery_s = dt
        for s in self._sessions.values():  # every open session went through it
            s.note_failover(dt)
        return dt

    def _switch(self, new_plan: Plan) -> float:
        t0 = time.perf_counter()
        old = self.state.view
        if self.prefixes is not None:  # donors live on the old plan's stages
            self.prefixes.drop_all(self.plan)
        for _attempt in range(8):  # a node may die during recovery too
            try:
                if new_plan.n_layers != self.plan.n_layers:
                    raise RuntimeStageError("a new plan must cover the same model")
                keys = self._prepare(new_plan)
                k = first_change(self.plan, new_plan)
                for s in list(self._sessions.values()):
                    s.rebuild(new_plan, keys, k)
                break
            except StageUnavailable as e:
                self.failed.add(e.device)
                link = self.links.pop(e.device, None)
                if link is not None:
                    link.close()
                alive = [d for d in {**self.links, **self.addresses} if d not in self.failed]
                new_plan = self.replan(new_plan, self.failed, alive)
                self.counters.failovers += 1
        else:
            raise RuntimeStageError("could not re-plan: nodes keep failing during recovery")
        self.state.install(new_plan, keys)
        self.counters.plan_changes += 1
        self._unload_unused(old, new_plan, keys)
        dt = time.perf_counter() - t0
        log.info("switched to %s in %.2f s (%d open sessions replayed)", _describe(new_plan),
                 dt, len(self._sessions))
        return dt

    def _unload_unused(self, old: PlanView, new_plan: Plan, keys: list[str]) -> None:
        """Free, on their nodes, the old plan's stages the new one does not use: this
        coordinator's sessions leave them first; a stage another session still holds stays
        (the node refuses). Best effort: a dead node holds nothing."""
        kept = {(st.device, key) for st, key in zip(new_plan.stages, keys, strict=True)}
        for st, key in zip(old.plan.stages, old.keys, strict=True):
            if (st.device, key) in kept or st.device in self.failed:
                continue
            for s in self._sessions.values():
                if s.opened:
                    with contextlib.suppress(EdgeweaveError):  # never opened there: fine
                        self.call(st.device, Frame(Op.CLOSE, key, s.id), self.deadline_s)
            with contextlib.suppress(EdgeweaveError):
                self.call(st.device, Frame(Op.UNLOAD, key), self.deadline_s)

    def close(self) -> None:
        self.closed = True
        for s in list(self._sessions.values()):
            s.close()
        if self.prefixes is not None:
            with contextlib.suppress(EdgeweaveError):  # nodes may be gone already
                self.prefixes.drop_all(self.plan)
        for link in self.links.values():
            link.close()
        self.links.clear()


def _each_device(plan: Plan, fn: Callable[[str], T]) -> list[T]:
    """``fn(device)`` for every device of ``plan`` at once (loads are per node, so they
    overlap); the first error is raised after all have finished."""
    from concurrent.futures import ThreadPoolExecutor

    devices = list(dict.fromkeys(st.device for st in plan.stages))
    if len(devices) == 1:
        return [fn(devices[0])]
    with ThreadPoolExecutor(len(devices), thread_name_prefix="stage-load") as pool:
        futures = [pool.submit(fn, d) for d in devices]
    return [f.result() for f in futures]


def _describe(plan: Plan) -> str:
    return " ".join(f"{st.device}[{st.shard.start},{st.shard.end})" for st in plan.stages)

