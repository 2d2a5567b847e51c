"""Fast stage engine: a block range exported to ONNX and run by ONNX Runtime.

Implements :class:`~edgeweave.runtime.engines.base.StageEngine` (registered as ``"onnx"``).
Each session owns a preallocated KV cache (a slot of a pool of sessions of the same capacity:
per layer ``(slots, kv, capacity, hd)`` for keys and values) whose view is bound as both
``past_*`` input and ``present_*`` output of ``GroupQueryAttention``, so a decode step writes
one position in place and copies nothing; ``truncate`` only lowers the session's length.
Consecutive slots make a batch: ``forward_batch`` steps many sessions' decode tokens in one
run (one read of the weights), each row with its own length (``seqlens_k``). Graphs come from
:mod:`~edgeweave.runtime.engines.onnx_export` and are cached on disk by
:mod:`~edgeweave.runtime.engines.onnx_cache`.

LoRA adapters run unmerged on a second graph of the stage, its LoRA twin (factor inputs
beside every fused linear, ``onnx_lora``), loaded when the first adapter is added: a
session opened with an adapter binds that adapter's factors to the twin once, sessions
without one keep the base graph and its speed. The twin holds its own copy of the base
weights (ONNX Runtime prepacks per session), the price of leaving the base path untouched.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgeweave.errors import ConfigError, GenerationError, RuntimeStageError
from edgeweave.runtime.engines.base import (
    EngineConfig,
    SessionNotFound,
    StageEngine,
    check_batch,
    check_prefix,
    register_engine,
)

# session options live in onnx_profile; imported here, where callers always found them
from edgeweave.runtime.engines.onnx_pool import Donor, KVPool, PoolSession, capacity
from edgeweave.runtime.engines.onnx_profile import SessionProfile, device_kind  # noqa: F401
from edgeweave.runtime.engines.onnx_spec import LAST_STARTS
from edgeweave.runtime.policy import core_watch

log = logging.getLogger(__name__)


class OnnxStageEngine:
    """:class:`StageEngine` over one exported ONNX graph (see module docstring)."""

    def __init__(self, config: EngineConfig, model_path: str | os.PathLike[str],
                 hidden_size: int, vocab_size: int, kv_shape: tuple[int, int],
                 profile: SessionProfile | None = None, info: dict[str, Any] | None = None,
                 max_position: int = 2048, lora_graph: Callable[[], Path] | None = None
                 ) -> None:
        import onnxruntime as ort

        self.config = config
        self.hidden_size, self.vocab_size = hidden_size, vocab_size
        self.max_position = max_position
        self.profile = profile or SessionProfile.for_process(config.threads)
        self.path = Path(model_path)
        self.info = dict(info or {})
        # with spinning "auto" the spin mode follows the process's core watch
        self._watch = core_watch() if self.profile.spinning == "auto" else None
        self.spin = self.profile.spin_mode()
        self.respins = 0
        self.session = self._new_session(self.path)
        self._kv_heads, self._head_dim = kv_shape
        self._layers = range(config.shard.start, config.shard.end)
        self._sessions: dict[str, PoolSession] = {}
        self._pools: dict[int, KVPool] = {}  # by capacity (positions per session)
        self._prefixes: dict[str, Donor] = {}  # donors (runtime.prefix)
        self._bindings: dict[tuple[int, int, int], tuple[Any, ...]] = {}
        self._shrink = ort.RunOptions()
        self._shrink.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        self._input = "input_ids" if config.shard.is_first else "hidden_states"
        self._output = "logits" if config.shard.is_last else "hidden_states_out"
        # the output's static last dimension (vocabulary or hidden size): one graph file, so
        # the same for a rebuilt session and for the LoRA twin, which only adds inputs
        self._width = _out_width(self.session, self._output)
        # unmerged LoRA: how to get the LoRA twin graph, its session once loaded, and the
        # factor inputs of every added adapter (OrtValues bound by its sessions)
        self._lora_graph = lora_graph
        self._lora_path: Path | None = None
        self._lora: Any = None
        self._adapters: dict[str, dict[str, Any]] = {}
        # the head's first position (``LAST_STARTS``): 0 while forward_all runs, -1 after
        self._starts = {v: ort.OrtValue.ortvalue_from_numpy(np.array([v], np.int64))
                        for v in (0, -1)}

    # -- adapters ---------------------------------------------------------------------------
    def add_adapter(self, adapter: Any) -> None:
        """Make ``adapter`` (a ``runtime.adapters.Adapter``) available to sessions opened
        with ``adapter=adapter.name``; the first one loads the LoRA twin graph."""
        import onnxruntime as ort

        from edgeweave.runtime.engines.onnx_lora import pack

        if self._lora is None:
            if self._lora_graph is None:
                raise ConfigError(f"stage {self.config.key} was built without its LoRA graph: "
                                  "build the engine with build_engine, or use --backend torch")
            from edgeweave.runtime.policy import trim_heap

            self._lora_path = self._lora_graph()
            self._lora = self._new_session(self._lora_path)
            trim_heap()  # as open_engine: the raw weights freed after prepacking
        shapes = {i.name: (int(i.shape[0]), 0) for i in self._lora.get_inputs()
                  if i.name.startswith("lora_a.")}
        for i in self._lora.get_inputs():
            if i.name.startswith("lora_b."):
                a = "lora_a." + i.name.removeprefix("lora_b.")
                shapes[a] = (shapes[a][0], int(i.shape[1]))
        arrays = pack(adapter, list(self._layers), shapes, self._kv_heads * self._head_dim)
        self._adapters[adapter.name] = {k: ort.OrtValue.ortvalue_from_numpy(v)
                                        for k, v in arrays.items()}

    def _new_session(self, path: Path) -> Any:
        import onnxruntime as ort

        return ort.InferenceSession(str(path), self.profile.options(self.spin),
                                    providers=self.profile.providers())

    def _follow_cores(self) -> None:
        """With ``spinning="auto"``, rebuild the session(s) when the process's core watch
        wants the other spin mode: ONNX Runtime fixes it per session, and spinning is 25-30 %
        faster on free cores but twice as slow beside a busy one (``runtime.contention``).
        The old session goes first, so memory never holds two copies of the weights."""
        if self._watch is None or self._watch.mode == self.spin:
            return
        from edgeweave.runtime.policy import trim_heap

        want = self._watch.mode
        self._bindings.clear()  # they belong to the old session
        self.session = None
        self.spin = want
        self.session = self._new_session(self.path)
        if self._lora is not None:
            self._lora = None
            self._lora = self._new_session(self._lora_path)
        self.respins += 1
        log.info("stage %s: ONNX Runtime workers now %s", self.config.key,
                 "spin inside runs" if want == "run" else "sleep between ops (cores are busy)")
        trim_heap()

    def adapters(self) -> list[str]:
        return list(self._adapters)

    # -- sessions ---------------------------------------------------------------------------
    def open(self, session_id: str, max_len: int, adapter: str | None = None) -> None:
        if adapter is not None and adapter not in self._adapters:
            raise RuntimeStageError(f"stage {self.config.key} has no adapter {adapter!r} (it "
                                    f"has {sorted(self._adapters)}): add it first")
        self._prefixes.pop(session_id, None)
        old = self._sessions.get(session_id)
        if old is not None and old.max_len >= max_len and old.adapter == adapter:
            old.length = 0
            return
        if old is not None:
            self._release(old)
        length = capacity(max_len)
        # join the busiest pool that holds the session in at most twice its own capacity:
        # the sessions of one pool step in one batched run, different pools in one run each;
        # the bytes it reserves (``session_bytes``) are the pool's, which a node's memory cap
        # counts, so the factor is kept small
        fits = [p for p in self._pools.values() if length <= p.length <= 2 * length]
        if fits:
            length = max(fits, key=lambda p: (len(p.owners), -p.length)).length
        pool = self._pools.get(length)
        if pool is None:
            pool = self._pools[length] = KVPool(len(self._layers), self._kv_heads, length,
                                               self._head_dim,
                                               spare=int(self.config.batch_invariant))
        s = PoolSession(pool, max_len, adapter=adapter)
        pool.add(s)
        self._sessions[session_id] = s

    def _get(self, session_id: str) -> PoolSession:
        try:
            return self._sessions[session_id]
        except KeyError:
            raise SessionNotFound(f"stage {self.config.key} has no session {session_id!r}: "
                                  "open it first (it may have been evicted)") from None

    def _runner(self, adapter: str | None) -> Any:
        return self.session if adapter is None else self._lora

    def _binding(self, pool: KVPool, start: int, count: int, adapter: str | None = None) -> Any:
        """An IO binding whose past and present are the views of slots [start, start +
        count) of ``pool`` (the same memory: GroupQueryAttention appends in place), reused
        while the pool's arrays stay where they are. With ``adapter`` it belongs to the LoRA
        twin graph, with that adapter's factors bound (shared by all of its sessions)."""
        import onnxruntime as ort

        self._follow_cores()  # before the binding: a rebuilt session needs new ones
        key = (pool.length, start, count, adapter)
        hit = self._bindings.get(key)
        if hit is not None and hit[0] is pool and hit[1] == pool.version:
            return hit[2]
        self._forget_bindings(pool, keep_current=True)  # stale views hold old arrays alive
        if len(self._bindings) > 64:
            self._bindings.clear()
        binding = self._runner(adapter).io_binding()
        binding.bind_output(self._output, "cpu")  # first: get_outputs()[0] is the result
        for name, value in (self._adapters[adapter] if adapter is not None else {}).items():
            binding.bind_ortvalue_input(name, value)
        held = []
        for j, i in enumerate(self._layers):
            for kind, arrs in (("key", pool.keys), ("value", pool.values)):
                view = ort.OrtValue.ortvalue_from_numpy(arrs[j][start:start + count])
                binding.bind_ortvalue_input(f"past_{kind}_{i}", view)
                binding.bind_ortvalue_output(f"present_{kind}_{i}", view)
                held.append(view)
        self._bindings[key] = (pool, pool.version, binding, held)
        return binding

    def _forget_bindings(self, pool: KVPool, keep_current: bool = False) -> None:
        self._bindings = {k: v for k, v in self._bindings.items() if v[0] is not pool
                          or (keep_current and v[1] == pool.version)}

    def _check_room(self, s: PoolSession, t: int) -> int:
        total = s.length + t
        if total > s.max_len:
            raise GenerationError(f"the KV cache holds {s.max_len} tokens but the sequence needs "
                                  f"{total}: lower max_tokens or shorten the prompt")
        return total

    def _run(self, binding: Any, arr: np.ndarray, seqlens: np.ndarray, total: int,
             adapter: str | None = None) -> np.ndarray:
        binding.bind_cpu_input(self._input, arr)
        binding.bind_cpu_input("seqlens_k", seqlens)
        binding.bind_cpu_input("total_sequence_length", np.array(total, np.int32))
        runner = self._runner(adapter)
        width = self._width if arr.shape[1] == 1 else None
        out = None
        if width is not None:
            # a decode step writes straight into an array of ours: get_outputs() would wrap
            # every present_* output too (61 OrtValues for 30 blocks) and copy the result
            # (measured: a whole-model int4 step 9.15 ms against 9.24, medians of 770 each)
            out = np.empty((arr.shape[0], 1, width), np.float32)
            binding.bind_output(self._output, "cpu", 0, np.float32, list(out.shape),
                                out.ctypes.data)
        else:
            binding.bind_output(self._output, "cpu")
        # a prefill's activations are T times a decode step's: give them back afterwards
        # instead of keeping the arena at the largest prompt seen (decode steps reuse theirs)
        runner.run_with_iobinding(binding, self._shrink if arr.shape[1] > 1 else None)
        if self._watch is not None:  # now, while our workers are stopped and the pipeline
            self._watch.sample()  # waits for us
        return out if out is not None else binding.get_outputs()[0].numpy()

    def forward(self, session_id: str, x: np.ndarray) -> np.ndarray:
        out = self._step(session_id, x, all_positions=False)
        return out[:, -1] if self.config.shard.is_last else out  # logits (B, vocab)

    def forward_all(self, session_id: str, x: np.ndarray) -> np.ndarray:
        """``forward`` with the head on every position: a last stage returns ``(B, T,
        vocab)`` logits. The same graph runs (base or LoRA twin), its head's Slice started
        at 0 for this run instead of -1 (``LAST_STARTS``), so no second copy of the weights."""
        return self._step(session_id, x, all_positions=self.config.shard.is_last)

    def _step(self, session_id: str, x: np.ndarray, all_positions: bool) -> np.ndarray:
        s = self._get(session_id)
        dtype = np.int64 if self.config.shard.is_first else np.float32
        arr = np.ascontiguousarray(x, dtype=dtype)
        total = self._check_room(s, arr.shape[1])
        if self.config.batch_invariant and arr.shape[0] * arr.shape[1] == 1:
            out = self._padded(s, arr, total, all_positions)
        else:
            binding = self._binding(s.pool, s.slot, 1, s.adapter)
            seqlens = np.array([total - 1], np.int32)
            if all_positions:
                out = self._run_all(binding, arr, seqlens, total, s.adapter)
            else:
                out = self._run(binding, arr, seqlens, total, s.adapter)
        s.length = total
        return out

    def _padded(self, s: PoolSession, arr: np.ndarray, total: int, all_positions: bool
                ) -> np.ndarray:
        """A one-row step run as two rows, the session's and a pad row beside it in the pool,
        so it takes the kernels a batch takes: MatMulNBits computes one row (M = 1) with
        another kernel than M >= 2, whose rows are bit-identical whatever M (measured on
        AVX2; its int8 activations turn the ~1e-6 difference into other tokens). The pad
        row writes one position of its slot's cache: the position its owner writes next
        (that owner's cache is unchanged), or of the pool's spare slot."""
        start, row, pad_len = self._pad_rows(s)
        binding = self._binding(s.pool, start, 2, s.adapter)
        lens = [total - 1, pad_len] if row == 0 else [pad_len, total - 1]
        both = np.concatenate([arr, arr], axis=0)  # a new, contiguous array
        seqlens, most = np.array(lens, np.int32), max(total, pad_len + 1)
        if all_positions:
            out = self._run_all(binding, both, seqlens, most, s.adapter)
        else:
            out = self._run(binding, both, seqlens, most, s.adapter)
        return out[row:row + 1]

    def _pad_rows(self, s: PoolSession) -> tuple[int, int, int]:
        """(first slot, the session's row in it, the pad row's cache length) of a two-slot
        view holding ``s`` and a pad slot whose next position is free to overwrite."""
        pool = s.pool
        for start, row in ((s.slot, 0), (s.slot - 1, 1)):
            other = start + 1 - row
            if not 0 <= other < pool.keys[0].shape[0]:
                continue
            if other >= len(pool.owners):
                return start, row, 0  # a free slot
            if pool.owners[other].length < pool.length:
                return start, row, pool.owners[other].length
        # both neighbours' caches are full: the session moves beside the spare slot
        pool.swap(s, pool.owners[-1])
        return s.slot, 0, 0

    def _run_all(self, binding: Any, arr: np.ndarray, seqlens: np.ndarray, total: int,
                 adapter: str | None) -> np.ndarray:
        """``_run`` on a last stage with the head on all ``T`` positions; the binding is
        cached and shared with decode steps, so its default start is bound back after."""
        runner = self._runner(adapter)
        names = {i.name for i in runner.get_overridable_initializers()}
        if LAST_STARTS not in names:  # a graph of every position (logits="all"), or an old one
            out = self._run(binding, arr, seqlens, total, adapter)
        else:
            binding.bind_ortvalue_input(LAST_STARTS, self._starts[0])
            try:
                out = self._run(binding, arr, seqlens, total, adapter)
            finally:
                binding.bind_ortvalue_input(LAST_STARTS, self._starts[-1])
        if out.shape[1] != arr.shape[1]:  # the session's length is not advanced: no harm done
            raise RuntimeStageError(f"stage {self.config.key}: the graph {self.path} computes "
                                    "the logits of the last position only (exported before "
                                    "forward_all existed): delete its folder so it is rebuilt")
        return out

    def forward_batch(self, session_ids: Sequence[str], xs: Sequence[np.ndarray]
                      ) -> list[np.ndarray]:
        """Decode steps (one token each) of sessions in the same pool run as one batch of
        ``GroupQueryAttention`` rows, each with its own ``seqlens_k``, on the graph of their
        adapter (sessions of different adapters run apart); prefill chunks (and a session
        alone in its pool) run one by one, as ``forward``."""
        check_batch(session_ids, xs)
        sessions = [self._get(sid) for sid in session_ids]
        for s, x in zip(sessions, xs, strict=True):
            self._check_room(s, x.shape[1])
        out: list[np.ndarray | None] = [None] * len(xs)
        groups: dict[tuple[int, str | None], list[int]] = {}
        for j, (s, x) in enumerate(zip(sessions, xs, strict=True)):
            if x.shape[1] == 1:
                groups.setdefault((s.pool.length, s.adapter), []).append(j)
        for rows in groups.values():
            if len(rows) > 1:
                self._decode_rows([sessions[j] for j in rows], [xs[j] for j in rows], rows, out)
        for j, sid in enumerate(session_ids):
            if out[j] is None:
                out[j] = self.forward(sid, xs[j])
        return out  # type: ignore[return-value]

    def _decode_rows(self, sessions: list[PoolSession], xs: list[np.ndarray], rows: list[int],
                     out: list[np.ndarray | None]) -> None:
        pool = sessions[0].pool
        order = sorted(range(len(sessions)), key=lambda k: sessions[k].slot)
        slots = [sessions[k].slot for k in order]
        if slots[-1] - slots[0] != len(slots) - 1:  # not consecutive: move them to the front
            for pos, k in enumerate(order):
                if sessions[k].slot != pos:
                    pool.swap(sessions[k], pool.owners[pos])
        start = sessions[order[0]].slot
        dtype = np.int64 if self.config.shard.is_first else np.float32
        arr = np.concatenate([np.asarray(xs[k], dtype=dtype) for k in order], axis=0)
        lengths = np.array([sessions[k].length for k in order], np.int32)
        adapter = sessions[0].adapter
        y = self._run(self._binding(pool, start, len(order), adapter), np.ascontiguousarray(arr),
                      lengths, int(lengths.max()) + 1, adapter)
        last = self.config.shard.is_last
        for r, k in enumerate(order):
            sessions[k].length += 1
            out[rows[k]] = y[r:r + 1, -1] if last else y[r:r + 1]

    def truncate(self, session_id: str, length: int) -> None:
        s = self._get(session_id)
        if length < 0:
            raise GenerationError(f"cannot truncate to {length} tokens")
        s.length = min(s.length, length)  # GQA reads only seqlens_k positions

    def length(self, session_id: str) -> int:
        p = self._prefixes.get(session_id)
        return p.length if p is not None else self._get(session_id).length

    def _release(self, s: PoolSession) -> None:
        s.pool.remove(s)
        if not s.pool.owners:
            self._pools.pop(s.pool.length, None)
            self._forget_bindings(s.pool)

    def close(self, session_id: str) -> None:
        if self._prefixes.pop(session_id, None) is not None:
            return
        s = self._sessions.pop(session_id, None)
        if s is None:
            return
        self._release(s)
        if not self._sessions:
            from edgeweave.runtime.policy import trim_heap

            self._bindings.clear()
            trim_heap()  # the last request's KV cache and prefill buffers

    def session_bytes(self, session_id: str) -> int:
        p = self._prefixes.get(session_id)
        positions = p.length if p is not None else self._get(session_id).pool.length
        return 2 * len(self._layers) * self._kv_heads * positions * self._head_dim * 4

    def sessions(self) -> list[str]:
        return list(self._sessions)

    # -- prefix donors (runtime.prefix) ------------------------------------------------------
    def _kv(self, cache_id: str) -> tuple[list[np.ndarray], list[np.ndarray], int]:
        """Per layer ``(kv, positions, hd)`` views of a donor's or a session's cache, and
        the tokens it holds."""
        p = self._prefixes.get(cache_id)
        if p is not None:
            return p.keys, p.values, p.length
        s = self._get(cache_id)
        return ([k[s.slot] for k in s.pool.keys], [v[s.slot] for v in s.pool.values],
                s.length)

    def save_prefix(self, session_id: str, prefix_id: str, length: int) -> None:
        keys, values, held = self._kv(session_id)
        check_prefix(self.config.key, session_id, held, length)
        if prefix_id in self._prefixes or prefix_id in self._sessions:
            raise RuntimeStageError(f"stage {self.config.key} holds {prefix_id!r} already: "
                                    "give the prefix another id")
        self._prefixes[prefix_id] = Donor([k[:, :length].copy() for k in keys],
                                            [v[:, :length].copy() for v in values], length)

    def load_prefix(self, prefix_id: str, session_id: str, length: int) -> None:
        keys, values, held = self._kv(prefix_id)
        s = self._get(session_id)
        check_prefix(self.config.key, prefix_id, held, length, s.max_len)
        # written into the pool's arrays in place: bound views stay valid
        for src, dst in ((keys, s.pool.keys), (values, s.pool.values)):
            for a, b in zip(src, dst, strict=True):
                b[s.slot, :, :length] = a[:, :length]
        s.length = length

    def size_mb(self) -> float:
        """Size of the graph and its weights on disk."""
        return sum(p.stat().st_size for p in self.path.parent.glob("model.onnx*")) / 1e6


# -- building an engine ---------------------------------------------------------------------
def open_engine(config: EngineConfig, export: Any, profile: SessionProfile | None = None,
                lora_graph: Callable[[], Path] | None = None) -> OnnxStageEngine:
    """Load a built export (``onnx_build.Export``) as the stage engine of ``config``;
    ``lora_graph`` finds (or builds) its LoRA twin when an adapter is added."""
    from edgeweave.runtime.policy import trim_heap

    cfg = export.cfg
    engine = OnnxStageEngine(config, export.path, cfg.hidden_size, cfg.vocab_size,
                             (cfg.num_kv_heads, cfg.head_dim), profile, info=export.info(),
                             max_position=cfg.max_position, lora_graph=lora_graph)
    trim_heap()  # the raw weights ONNX Runtime freed after prepacking them
    return engine


def build_engine(config: EngineConfig, profile: SessionProfile | None = None,
                 overrides: dict[str, Any] | None = None, from_fp32: bool = False,
                 build: str = "auto") -> OnnxStageEngine:
    """The stage ``config`` on ONNX Runtime, from its cached export (built once if missing).

    ``overrides`` adjusts the export spec (group size, accuracy level, ...); ``from_fp32``
    quantizes the fp32 weights with the exporter's RTN instead of using the variant's
    artifact; ``build`` says where a missing export is made (see ``onnx_build.ensure``)."""
    from edgeweave.runtime.engines.onnx_build import ensure

    def lora_graph() -> Path:
        return ensure(config, overrides, from_fp32, build, lora=True).path

    return open_engine(config, ensure(config, overrides, from_fp32, build), profile, lora_graph)


def engine_from_model(model: Any, config: EngineConfig, folder: str | os.PathLike[str],
                      spec: Any = None, profile: SessionProfile | None = None,
                      source_fp: str = "", recipe: dict[str, Any] | None = None
                      ) -> OnnxStageEngine:
    """Export (or reuse) the graph of ``config.shard`` of an in-memory ``BlockModel`` into
    ``folder`` and load it (tests and benchmarks that hold a model already)."""
    from edgeweave.runtime.engines.onnx_build import Export, export_spec, lora_dir, lora_manifest
    from edgeweave.runtime.engines.onnx_cache import cached_export, expected_manifest
    from edgeweave.runtime.engines.onnx_export import build_stage
    from edgeweave.variants import get

    cfg = model.cfg
    sh = config.shard
    spec = spec or export_spec(get(config.variant), sh, cfg.max_position)
    if (spec.start, spec.end) != (sh.start, sh.end):
        raise ConfigError(f"export spec [{spec.start}, {spec.end}) differs from the stage {sh}")
    want = expected_manifest(source_fp, spec, recipe or {})
    path, reused = cached_export(Path(folder), want, lambda: build_stage(model, spec))

    def lora_graph() -> Path:
        return cached_export(lora_dir(Path(folder)), lora_manifest(want),
                             lambda: build_stage(model, spec, lora=True))[0]

    return open_engine(config, Export(path, reused, spec, recipe or {}, cfg), profile,
                       lora_graph)


def export_stages(model: str, variant: str = "fp32", cuts: list[int] | None = None,
                  threads: int = 0, rtn: bool = False, group_size: int = 32
                  ) -> list[OnnxStageEngine]:
    """Engines for the stages cut at ``cuts`` (block indices) of ``model``."""
    from edgeweave.runtime.engines.onnx_build import n_layers
    from edgeweave.types import Shard

    n = n_layers(model)
    bounds = [0, *(cuts or []), n]
    overrides = {"group_size": group_size} if rtn else None
    return [build_engine(EngineConfig(model, Shard(a, b, n), variant, "onnx", threads),
                         overrides=overrides, from_fp32=rtn)
            for a, b in zip(bounds, bounds[1:], strict=False)]


@register_engine("onnx")
def _make(config: EngineConfig) -> StageEngine:
    return build_engine(config)


def _out_width(session: Any, name: str) -> int | None:
    """The static last dimension of the graph's float output ``name``, or None where the
    graph leaves it symbolic or it is not float32."""
    meta = next(o for o in session.get_outputs() if o.name == name)
    dim = meta.shape[-1] if meta.shape else None
    return dim if isinstance(dim, int) and meta.type == "tensor(float)" else None
