"""A node's stages (:class:`StageHost`): block ranges of a model, a KV cache per session.

:class:`StageHost` is transport-free: it turns a request :class:`Frame` into a response frame
(schema in ``runtime.transport.frame``). The in-process transport calls it directly; the
gRPC server (``runtime.transport.grpc_server.serve``) exposes it as one bidirectional stream method
``/edgeweave.Stage/Stream`` whose messages are packed frames, and the frame socket
(``runtime.transport.frame_socket``) serves the same frames on one TCP connection. Requests on
one stream or connection are answered in order, one at a time, so a coordinator multiplexes
all its sessions over a single one per node.

Memory: every session's cache counts against ``memory_cap_bytes``. OPEN is checked before
anything is allocated: ``max_len`` beyond the model's context is refused (``TOO_LONG``), and
so is a session whose predicted cache alone exceeds the cap (``MEMORY``); a session that fits
evicts the least recently used ones first (the coordinator replays an evicted session when it
comes back, see ``SESSION_MISSING``). The prediction is the engine's own per-token figure
(``session_bytes`` of a one-token probe session, taken when the stage is added), i.e. layers
in the shard x 2 (K and V) x kv_heads x head_dim x dtype bytes, times ``max_len``.

Prefix donors (``runtime.prefix``: SAVE_PREFIX, LOAD_PREFIX) count against the same cap and
are evicted first, least recently used first: they only save compute, while an evicted
session costs a replay. A donor is saved only into room that donors alone can make; it is
never stepped or truncated.

Bad input never takes the stream down: a malformed frame, an unknown codec, a tensor whose
shape does not fit the stage or a step past the session's ``max_len`` is answered with ERROR
(the message names the problem) before the engine sees it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from edgeweave.errors import ConfigError, EdgeweaveError
from edgeweave.runtime import codec as codecs
from edgeweave.runtime.engines.base import (
    EngineConfig,
    SessionNotFound,
    StageEngine,
    create_engine,
    forward_each,
    supports_forward_all,
    supports_prefix,
)
from edgeweave.runtime.local import default_backend
from edgeweave.runtime.threads import ColocatedThreads
from edgeweave.runtime.transport.frame import (
    ErrorCode,
    Frame,
    FrameError,
    Op,
    error,
    pack_batch,
    unpack_batch,
)
from edgeweave.types import CODECS, Shard

log = logging.getLogger(__name__)

_PROBE_SESSION = "\x00kv-probe"  # never a coordinator's id (those are "s<n>-<ns>")


@dataclass(frozen=True)
class StageLimits:
    """What an OPEN of one stage may ask for, known before any cache is allocated."""

    bytes_per_token: int  # KV cache bytes one token of max_len reserves in this stage
    context: int | None  # the model's max_position; None when the engine does not say

    def session_bytes(self, max_len: int) -> int:
        return self.bytes_per_token * max_len


@dataclass
class _Slot:
    nbytes: int  # what the engine reports it reserved
    max_len: int  # what OPEN asked for: a FORWARD past it is refused before decoding
    prefix: bool = False  # a prefix donor (SAVE_PREFIX), not a session


class StageHost:
    """Stages (engines) of one node plus LRU session accounting under a memory cap."""

    def __init__(self, model: str = "", memory_cap_bytes: int = 4 << 30, threads: int = 0,
                 engine_factory: Callable[[EngineConfig], StageEngine] = create_engine,
                 colocated: ColocatedThreads | None = None) -> None:
        if memory_cap_bytes <= 0:
            raise ConfigError(f"the node's memory cap must be positive (got {memory_cap_bytes} "
                              "bytes): pass --memory-mb > 0")
        self.model = model
        self.colocated = colocated  # set when other nodes share this host's cores
        self.frames_port: int | None = None  # the node's frame socket, announced in INFO
        self.memory_cap_bytes = memory_cap_bytes
        self.threads = threads
        self.engines: dict[str, StageEngine] = {}
        self.limits: dict[str, StageLimits] = {}
        self._factory = engine_factory
        self._lru: OrderedDict[tuple[str, str], _Slot] = OrderedDict()  # (stage, session)
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}  # one build at a time per stage
        self._loading_lock = threading.Lock()
        self.evictions = 0
        self.prefix_evictions = 0
        self._adapters: dict[str, dict[str, str]] = {}  # stage -> adapter name -> sha256

    # -- stages -------------------------------------------------------------------------
    def load(self, config: EngineConfig) -> StageEngine:
        """The engine of ``config``, built once. The build (an export, an ONNX session: up to
        seconds) runs outside the request lock, so the stages this node already serves keep
        answering while a re-plan loads the new ones beside them; two LOADs of one stage
        build it once."""
        with self._loading_lock:
            building = self._loading.setdefault(config.key, threading.Lock())
        with building:
            if config.key not in self.engines:
                t0 = time.perf_counter()
                engine = self._factory(config)
                with self._lock:
                    self.add_engine(engine)
                log.info("loaded stage %s of %s in %.1f s", config.key, config.model,
                         time.perf_counter() - t0)
        return self.engines[config.key]

    def add_engine(self, engine: StageEngine) -> None:
        self.limits[engine.config.key] = stage_limits(engine)
        self.engines[engine.config.key] = engine

    def info(self) -> dict[str, Any]:
        from edgeweave.runtime.local import engine_info
        from edgeweave.runtime.policy import current

        return {"model": self.model, "stages": sorted(self.engines), "policy": current().info(),
                "engines": {k: engine_info(e) for k, e in sorted(self.engines.items())},
                "sessions": sum(1 for slot in self._lru.values() if not slot.prefix),
                "memory_bytes": sum(slot.nbytes for slot in self._lru.values()),
                "memory_cap_bytes": self.memory_cap_bytes, "evictions": self.evictions,
                "prefixes": sum(1 for slot in self._lru.values() if slot.prefix),
                "prefix_bytes": sum(slot.nbytes for slot in self._lru.values() if slot.prefix),
                "prefix_evictions": self.prefix_evictions,
                "adapters": {k: sorted(v) for k, v in sorted(self._adapters.items())},
                "blas_threads": self.colocated.current if self.colocated else None,
                "frames_port": self.frames_port, "reply_codecs": list(_REPLY_CODECS)}

    # -- sessions -----------------------------------------------------------------------
    def _open(self, engine: StageEngine, session: str, max_len: int,
              adapter: str | None = None) -> None:
        key = (engine.config.key, session)
        limits = self.limits[engine.config.key]
        if max_len < 1:
            raise _Refused(ErrorCode.TOO_LONG, f"OPEN max_len must be at least 1 token (got "
                           f"{max_len})")
        if limits.context is not None and max_len > limits.context:
            raise _Refused(ErrorCode.TOO_LONG, f"OPEN max_len {max_len} is beyond the model's "
                           f"context of {limits.context} tokens: open the session with "
                           f"max_len <= {limits.context}")
        need = limits.session_bytes(max_len)
        if need > self.memory_cap_bytes:
            raise _Refused(ErrorCode.MEMORY, _too_big(key[0], max_len, need,
                                                      self.memory_cap_bytes, limits))
        if adapter is not None and adapter not in self._adapters.get(engine.config.key, {}):
            raise _Refused(ErrorCode.NO_ADAPTER, f"stage {key[0]} has no adapter {adapter!r}: "
                           "send it (ADAPTER) before opening a session with it")
        self._make_room(key, need)  # before allocating: the caches never pass the cap
        if adapter is None:
            engine.open(session, max_len)
        else:
            engine.open(session, max_len, adapter=adapter)
        got = engine.session_bytes(session)  # more than need when a larger cache is reused
        self._lru[key] = _Slot(got, max_len)
        self._lru.move_to_end(key)
        if not self._make_room(key, got):
            self._close(engine, session)
            raise _Refused(ErrorCode.MEMORY, _too_big(key[0], max_len, got,
                                                      self.memory_cap_bytes, limits))

    def _add_adapter(self, engine: StageEngine, payload: bytes) -> None:
        """Register the LoRA adapter in ``payload`` with ``engine``; the same adapter again
        (a coordinator re-sends its adapters on every plan change) is a no-op."""
        from edgeweave.runtime.adapters import from_bytes

        adapter = from_bytes(payload)
        have = self._adapters.setdefault(engine.config.key, {})
        if have.get(adapter.name) == adapter.sha256:
            return
        if adapter.name in have:
            raise _Refused(ErrorCode.BAD_FRAME, f"stage {engine.config.key} serves another "
                           f"adapter named {adapter.name!r} already: give it another name")
        add = getattr(engine, "add_adapter", None)
        if add is None:
            raise _Refused(ErrorCode.BAD_FRAME, f"the {engine.config.backend} engine of stage "
                           f"{engine.config.key} cannot run LoRA adapters")
        add(adapter)
        have[adapter.name] = adapter.sha256

    def _make_room(self, key: tuple[str, str], need: int, donors_only: bool = False) -> bool:
        """Evict prefix donors, then (unless ``donors_only``) sessions, least recently used
        first, other than ``key``, until ``need`` more bytes fit under the cap; False if
        they cannot."""
        used = sum(slot.nbytes for k, slot in self._lru.items() if k != key)
        donors = [k for k, slot in self._lru.items() if slot.prefix and k != key]
        sessions = [] if donors_only else [k for k, slot in self._lru.items()
                                           if not slot.prefix and k != key]
        for victim in donors + sessions:
            if used + need <= self.memory_cap_bytes:
                break
            slot = self._lru.pop(victim)
            used -= slot.nbytes
            self.engines[victim[0]].close(victim[1])
            if slot.prefix:
                self.prefix_evictions += 1
            else:
                self.evictions += 1
            log.info("evicted %s %s of stage %s (memory cap)",
                     "prefix" if slot.prefix else "session", victim[1], victim[0])
        return used + need <= self.memory_cap_bytes

    def _save_prefix(self, engine: StageEngine, session: str, prefix: str, length: int) -> int:
        """SAVE_PREFIX: keep ``length`` tokens of ``session`` as the donor ``prefix``, in
        room that other donors can make; returns the bytes it holds."""
        stage = engine.config.key
        key = (stage, prefix)
        if key in self._lru or not prefix:
            raise _Refused(ErrorCode.BAD_FRAME, f"stage {stage} holds {prefix!r} already (or "
                           "the id is empty): give the prefix a new id")
        src = self._lru.get((stage, session))
        if src is None or src.prefix:
            raise SessionNotFound(f"stage {stage} has no session {session!r} to keep a prefix "
                                  "of (it may have been evicted)")
        if not supports_prefix(engine):
            raise _Refused(ErrorCode.BAD_FRAME, f"the {engine.config.backend} engine of stage "
                           f"{stage} cannot keep prefixes: serve without a prefix cache")
        need = self.limits[stage].session_bytes(length)
        if not self._make_room(key, need, donors_only=True):
            raise _Refused(ErrorCode.MEMORY, f"no room for a prefix of {length} tokens "
                           f"({need / 2**20:.1f} MiB) at stage {stage}: open sessions hold "
                           "the node's memory cap; a larger --memory-mb keeps prefixes too")
        engine.save_prefix(session, prefix, length)
        got = engine.session_bytes(prefix)
        self._lru[key] = _Slot(got, length, prefix=True)
        self._lru.move_to_end((stage, session))
        return got

    def _load_prefix(self, engine: StageEngine, prefix: str, session: str, length: int
                     ) -> None:
        """LOAD_PREFIX: the open ``session`` holds the first ``length`` tokens of donor
        ``prefix`` (evicted: SESSION_MISSING, and the coordinator prefills instead)."""
        stage = engine.config.key
        donor, dst = self._lru.get((stage, prefix)), self._lru.get((stage, session))
        if donor is None or not donor.prefix:
            raise SessionNotFound(f"stage {stage} holds no prefix {prefix!r} (it may have "
                                  "been evicted): prefill the prompt instead")
        if dst is None or dst.prefix:
            raise SessionNotFound(f"stage {stage} has no session {session!r}: open it first")
        if length > dst.max_len:
            raise _Refused(ErrorCode.TOO_LONG, f"session {session!r} was opened for "
                           f"{dst.max_len} tokens; a prefix of {length} does not fit")
        engine.load_prefix(prefix, session, length)
        self._lru.move_to_end((stage, prefix))
        self._lru.move_to_end((stage, session))

    def _prefix_spec(self, req: Frame) -> str:
        spec = req.json()
        if not (isinstance(spec, dict) and isinstance(spec.get("prefix"), str)):
            raise _Refused(ErrorCode.BAD_FRAME, f"a {req.op.name} payload must be JSON "
                           '{"prefix": "<id>"} with the length in arg')
        return spec["prefix"]

    def _not_a_donor(self, req: Frame) -> None:
        slot = self._lru.get((req.stage, req.session))
        if slot is not None and slot.prefix:
            raise _Refused(ErrorCode.BAD_FRAME, f"{req.session!r} is a prefix donor at stage "
                           f"{req.stage}: it is only copied from (LOAD_PREFIX), never stepped")

    def _unload(self, stage: str) -> bool:
        """Free ``stage`` (a re-plan moved its blocks elsewhere). Kept while any session or
        donor lives in it (another coordinator may still use it) or while it is being built;
        a coordinator that finds it gone LOADs it again."""
        if stage not in self.engines:
            return False
        building = self._loading.get(stage)
        if any(key[0] == stage for key in self._lru) or (building and building.locked()):
            return False
        del self.engines[stage]
        self.limits.pop(stage, None)
        self._adapters.pop(stage, None)
        from edgeweave.runtime.policy import trim_heap

        trim_heap()  # give the weights' pages back to the device
        log.info("unloaded stage %s", stage)
        return True

    def _close(self, engine: StageEngine, session: str) -> None:
        engine.close(session)
        self._lru.pop((engine.config.key, session), None)

    # -- the request handler ------------------------------------------------------------
    def handle(self, req: Frame) -> Frame:
        try:
            if req.op == Op.LOAD:  # builds outside the lock: see load()
                return self._handle_load(req)
            with self._lock:
                return self._handle(req)
        except _Refused as e:
            return error(req, e.message, e.code)
        except SessionNotFound as e:
            return error(req, str(e), ErrorCode.SESSION_MISSING)
        except FrameError as e:  # a payload that does not parse (LOAD's JSON)
            return error(req, str(e), ErrorCode.BAD_FRAME)
        except EdgeweaveError as e:
            return error(req, str(e))
        except Exception as e:  # a node must answer, not die, on one bad request
            log.exception("stage request failed")
            return error(req, f"{type(e).__name__}: {e}")

    def _handle_load(self, req: Frame) -> Frame:
        cfg = self._load_config(req)
        self.load(cfg)
        return Frame(Op.OK, cfg.key, req.session, req.seq, payload=Frame.json_bytes(asdict(cfg)))

    def _engine(self, req: Frame) -> StageEngine:
        try:
            return self.engines[req.stage]
        except KeyError:
            raise _Refused(ErrorCode.NO_STAGE, f"this node hosts {sorted(self.engines)}, not "
                           f"stage {req.stage!r}: LOAD it first") from None

    def _handle(self, req: Frame) -> Frame:
        ok = Frame(Op.OK, req.stage, req.session, req.seq)
        if req.op in (Op.FORWARD, Op.VERIFY):
            engine = self._engine(req)
            self._not_a_donor(req)
            have = engine.length(req.session)
            if have != req.arg:
                raise _Refused(ErrorCode.OUT_OF_SYNC, f"session {req.session!r} holds {have} "
                               f"tokens at stage {req.stage}, the coordinator expected {req.arg}")
            # everything about the request is checked before the engine appends to the cache,
            # so a refused step leaves the session exactly as it was
            out = _codec(req.reply_codec, "reply", _REPLY_CODECS)
            x = self._input(engine, req, have)
            if self.colocated is not None:
                self.colocated.observe(req.session)
            t0 = time.perf_counter()
            y = self._step(engine, req, x)
            ok.arg = min(int((time.perf_counter() - t0) * 1e6), 2**32 - 1)
            self._lru.move_to_end((req.stage, req.session))
            ok.codec, ok.shape, ok.payload = out.id, tuple(y.shape), out.encode(y)
        elif req.op == Op.FORWARD_BATCH:
            ok.payload = pack_batch(self._forward_batch(self._engine(req), req))
        elif req.op == Op.OPEN:
            spec = req.json() if req.payload else None
            if spec is not None and not (isinstance(spec, dict)
                                         and isinstance(spec.get("adapter"), str)):
                raise _Refused(ErrorCode.BAD_FRAME, 'an OPEN payload must be JSON '
                               '{"adapter": "<name>"} (or empty for the base model)')
            self._open(self._engine(req), req.session, req.arg,
                       spec["adapter"] if spec else None)
        elif req.op == Op.ADAPTER:
            self._add_adapter(self._engine(req), req.payload)
        elif req.op == Op.TRUNCATE:
            engine = self._engine(req)
            self._not_a_donor(req)
            engine.truncate(req.session, req.arg)
        elif req.op == Op.SAVE_PREFIX:
            nbytes = self._save_prefix(self._engine(req), req.session, self._prefix_spec(req),
                                       req.arg)
            ok.payload = Frame.json_bytes({"bytes": nbytes})
        elif req.op == Op.LOAD_PREFIX:
            self._load_prefix(self._engine(req), self._prefix_spec(req), req.session, req.arg)
        elif req.op == Op.CLOSE:
            if req.stage:
                self._close(self._engine(req), req.session)
            else:  # every stage of this node
                for engine in self.engines.values():
                    self._close(engine, req.session)
        elif req.op == Op.UNLOAD:
            ok.payload = Frame.json_bytes({"unloaded": self._unload(req.stage)})
        elif req.op == Op.INFO:
            ok.payload = Frame.json_bytes(self.info())
        elif req.op != Op.PING:
            raise _Refused(ErrorCode.BAD_FRAME, f"unsupported request op {req.op!r}")
        return ok

    @staticmethod
    def _step(engine: StageEngine, req: Frame, x: np.ndarray) -> np.ndarray:
        """FORWARD: the engine's step; VERIFY: the same step, with every position's logits
        on a last stage (a stage before the last answers as FORWARD does)."""
        if req.op != Op.VERIFY or not engine.config.shard.is_last:
            return engine.forward(req.session, x)
        if not supports_forward_all(engine):
            raise _Refused(ErrorCode.BAD_FRAME, f"stage {req.stage} ({engine.config.backend}) "
                           "cannot score every position of a step: serve speculative decoding "
                           "with the onnx or torch backend, or without --draft")
        return engine.forward_all(req.session, x)

    def _forward_batch(self, engine: StageEngine, req: Frame) -> list[Frame]:
        """Each item checked as a FORWARD is, the valid ones stepped in one
        ``engine.forward_batch``; an item refused (evicted, out of sync, bad shape) gets its
        own ERROR and leaves its session as it was, the others run."""
        items = unpack_batch(req.payload, req.seq)
        answers: list[Frame | None] = [None] * len(items)
        run: list[tuple[int, Frame, Any, np.ndarray]] = []
        seen: set[str] = set()
        for j, item in enumerate(items):
            item.stage = req.stage  # the batch's stage: the items carry none of their own
            try:
                if item.op != Op.FORWARD or item.session in seen:
                    raise _Refused(ErrorCode.BAD_FRAME, "a batch carries FORWARD frames of "
                                   "distinct sessions")
                seen.add(item.session)
                self._not_a_donor(item)
                have = engine.length(item.session)
                if have != item.arg:
                    raise _Refused(ErrorCode.OUT_OF_SYNC, f"session {item.session!r} holds "
                                   f"{have} tokens at stage {req.stage}, the coordinator "
                                   f"expected {item.arg}")
                out = _codec(item.reply_codec, "reply", _REPLY_CODECS)
                run.append((j, item, out, self._input(engine, item, have)))
            except _Refused as e:
                answers[j] = error(item, e.message, e.code)
            except SessionNotFound as e:
                answers[j] = error(item, str(e), ErrorCode.SESSION_MISSING)
        if run:
            if self.colocated is not None:
                for _, item, _, _ in run:
                    self.colocated.observe(item.session)
            t0 = time.perf_counter()
            try:
                batch = getattr(engine, "forward_batch", None)
                sids, xs = [it.session for _, it, _, _ in run], [x for _, _, _, x in run]
                ys = batch(sids, xs) if batch is not None else forward_each(engine, sids, xs)
            except EdgeweaveError:  # one session's step is wrong: find it, one by one
                ys = []
                for _, it, _, x in run:
                    try:
                        ys.append(engine.forward(it.session, x))
                    except EdgeweaveError as e:
                        ys.append(e)
            us = min(int((time.perf_counter() - t0) * 1e6), 2**32 - 1)
            for (j, item, out, _), y in zip(run, ys, strict=True):
                if isinstance(y, BaseException):
                    answers[j] = error(item, str(y))
                    continue
                self._lru.move_to_end((req.stage, item.session))
                answers[j] = Frame(Op.OK, req.stage, item.session, item.seq, us, out.id,
                                   shape=tuple(y.shape), payload=out.encode(y))
        return answers  # type: ignore[return-value]

    def _input(self, engine: StageEngine, req: Frame, have: int) -> np.ndarray:
        """The FORWARD payload as a tensor, once its codec, shape and size fit this stage."""
        sh, shape = engine.config.shard, tuple(req.shape)
        if sh.is_first:  # ids; fp32 holds them exactly too, and the engine casts to int64
            codec = _codec(req.codec, "payload", (codecs.IDS.name, codecs.FP32.name))
            want, fits = "(1, T) token ids", len(shape) == 2
        else:
            codec = _codec(req.codec, "payload", CODECS)
            want = f"(1, T, {engine.hidden_size}) hidden states"
            fits = len(shape) == 3 and shape[2] == engine.hidden_size
        if not (fits and shape[0] == 1 and shape[1] >= 1):
            raise _Refused(ErrorCode.BAD_FRAME, f"stage {req.stage} takes {want}, not shape "
                           f"{shape}: is the coordinator's plan the one this node loaded?")
        slot = self._lru.get((req.stage, req.session))
        if slot is not None and have + shape[1] > slot.max_len:
            raise _Refused(ErrorCode.TOO_LONG, f"session {req.session!r} was opened for "
                           f"{slot.max_len} tokens and holds {have}; a step of {shape[1]} does "
                           "not fit: open it with a larger max_len")
        if len(req.payload) != codec.size(shape):  # checked before decoding allocates
            raise _Refused(ErrorCode.BAD_FRAME, f"{codec.name} payload of {len(req.payload)} "
                           f"bytes does not match shape {shape} ({codec.size(shape)} bytes)")
        x = codec.decode(req.payload, shape)
        # an id past the embedding table (or a NaN) would fail deep inside the engine
        if sh.is_first and not bool(((x >= 0) & (x < engine.vocab_size) & (x == x.round())).all()):
            raise _Refused(ErrorCode.BAD_FRAME, f"token ids must be whole numbers in [0, "
                           f"{engine.vocab_size}) for this model (got {x.min()}..{x.max()})")
        return x

    def _load_config(self, req: Frame) -> EngineConfig:
        spec = req.json()
        try:
            shard = Shard(**spec["shard"])
            invariant = spec.get("batch_invariant", False)
            if not isinstance(invariant, bool):
                raise TypeError(f"batch_invariant must be true or false, not {invariant!r}")
            return EngineConfig(model=spec.get("model") or self.model, shard=shard,
                                variant=spec.get("variant", "fp32"),
                                backend=spec.get("backend") or default_backend(),
                                threads=self.threads, batch_invariant=invariant)
        except (KeyError, TypeError, AttributeError) as e:
            raise _Refused(ErrorCode.BAD_FRAME, "LOAD payload must be a JSON object "
                           '{"shard": {"start", "end", "n_layers"}, "model"?, "variant"?, '
                           f'"backend"?, "batch_invariant"?}} ({type(e).__name__}: {e})'
                           ) from None

    def handle_bytes(self, raw: bytes) -> bytes:
        """One packed request to one packed response; never raises, so a bad frame costs its
        sender an ERROR and leaves the shared stream to the next request."""
        try:
            req = Frame.unpack(raw)
        except FrameError as e:
            return error(Frame(Op.ERROR, seq=e.seq or 0), str(e), ErrorCode.BAD_FRAME).pack()
        return self.handle(req).pack()


class _Refused(Exception):
    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


# logits come back as fp32, fp16, top64 or top1; hidden states in any of the plan's codecs
_REPLY_CODECS = (*CODECS, codecs.TOP64.name, codecs.TOP1.name)


def _codec(cid: int, what: str, allowed: tuple[str, ...]) -> codecs.Codec:
    try:
        codec = codecs.get(cid)
    except ConfigError:
        codec = None
    if codec is None or codec.name not in allowed:
        raise _Refused(ErrorCode.BAD_FRAME, f"{what} codec id {cid} is not one this request "
                       f"may use: choose {', '.join(f'{codecs.get(n).id} ({n})' for n in allowed)}")
    return codec


def _too_big(stage: str, max_len: int, need: int, cap: int, limits: StageLimits) -> str:
    fit = cap // max(limits.bytes_per_token, 1)
    return (f"a session of {max_len} tokens needs {need / 2**20:.1f} MiB of KV cache at stage "
            f"{stage} "
            f"({limits.bytes_per_token} bytes per token) but the node's cap is "
            f"{cap / 2**20:.1f} MiB: open it with max_len <= {fit} or start the node with a "
            "larger --memory-mb")


def stage_limits(engine: StageEngine) -> StageLimits:
    """Measure what one token of cache costs in ``engine`` (a one-token probe session, so the
    figure is the engine's own: its layers, kv heads, head dim and dtype) and find the model's
    context. Every engine's cache is linear in ``max_len``."""
    engine.open(_PROBE_SESSION, 1)
    try:
        per_token = engine.session_bytes(_PROBE_SESSION)
    finally:
        engine.close(_PROBE_SESSION)
    return StageLimits(per_token, _context(engine))


def _context(engine: StageEngine) -> int | None:
    if isinstance(getattr(engine, "max_position", None), int):
        return int(engine.max_position)
    try:  # other backends: the config.json of the model they were built from
        from edgeweave.models.catalog import resolve
        from edgeweave.models.config import read_config

        return read_config(resolve(engine.config.model)[1]).max_position
    except (EdgeweaveError, OSError):
        return None
