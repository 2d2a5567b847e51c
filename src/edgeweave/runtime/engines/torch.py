"""Reference stage engine: a range of :class:`BlockModel` blocks run by PyTorch.

The engine runs only ``config.shard``'s blocks, so one loaded model can back several stages
in the same process (the embedded deployment loads the model once); a node loads just its
shard's tensors. fp32 weights take the fast numpy GEMV route of ``runtime.fast``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from edgeweave.errors import ArtifactError, GenerationError, RuntimeStageError
from edgeweave.models.cache import KVCache
from edgeweave.models.llama import BlockModel
from edgeweave.runtime import fast as _fast
from edgeweave.runtime.adapters import Adapter
from edgeweave.runtime.engines import torch_lora
from edgeweave.runtime.engines.base import (
    EngineConfig,
    SessionNotFound,
    check_batch,
    check_prefix,
    register_engine,
)
from edgeweave.runtime.fast import accelerate_decode

# the GEMV route wants torch single-threaded at decode (see runtime.fast), when available
_decode_threads = getattr(_fast, "decode_threads", lambda active=True: contextlib.nullcontext())


def load_stage_model(config: EngineConfig) -> BlockModel:
    """Load only ``config.shard`` of ``config.model`` in the requested weight variant.

    ``model`` may be a compression artifact folder (loaded as it is), or a model whose
    ``variant`` other than fp32 is built or reused by ``edgeweave.compress.variant``."""
    if (Path(config.model) / "manifest.json").is_file():
        from edgeweave.compress import load_artifact

        return load_artifact(config.model, shard=config.shard).model
    if config.variant == "fp32":
        from edgeweave.models import load

        return load(config.model, shard=config.shard).model
    from edgeweave.models.catalog import BUNDLED

    if config.model not in BUNDLED:
        raise ArtifactError(f"variant {config.variant!r} of {config.model!r}: pass the artifact "
                            "folder made by `edgeweave compress` as the model instead")
    try:  # compressed variants come from the compression package's cached artifacts
        from edgeweave import compress
    except ImportError as e:
        raise ArtifactError(f"variant {config.variant!r} needs edgeweave.compress, which is not "
                            "available in this installation: use variant fp32") from e
    path = compress.variant(config.variant, config.model)
    return compress.load_artifact(path, shard=config.shard).model


class TorchStageEngine:
    """:class:`~edgeweave.runtime.engines.base.StageEngine` over PyTorch blocks."""

    def __init__(self, config: EngineConfig, model: BlockModel | None = None) -> None:
        if config.threads:
            torch.set_num_threads(config.threads)
        self.config = config
        self.model = model if model is not None else load_stage_model(config)
        sh, msh = config.shard, self.model.shard
        if not (msh.start <= sh.start and sh.end <= msh.end and sh.n_layers == msh.n_layers):
            raise RuntimeStageError(f"the loaded model holds blocks {msh} but the stage needs {sh}")
        self._gemv = config.variant == "fp32"
        if self._gemv:
            accelerate_decode(self.model)
        self.hidden_size = self.model.cfg.hidden_size
        self.vocab_size = self.model.cfg.vocab_size
        self.max_position = self.model.cfg.max_position
        self._caches: dict[str, KVCache] = {}
        # unmerged LoRA (runtime.engines.torch_lora): factor tables by adapter name and the
        # adapter each session opened with
        self._adapters: dict[str, torch_lora.Table] = {}
        self._adapter_of: dict[str, str] = {}
        self._prefixes: set[str] = set()  # donors (runtime.prefix): caches never stepped

    def add_adapter(self, adapter: Adapter) -> None:
        """Make ``adapter`` available to sessions opened with ``adapter=adapter.name``."""
        sh = self.config.shard
        t = torch_lora.table(adapter, sh.start, sh.end)
        torch_lora.check(self.model, t, adapter.name)
        torch_lora.install(self.model, list(t))
        self._adapters[adapter.name] = t

    def adapters(self) -> list[str]:
        return list(self._adapters)

    def _cache(self, session_id: str) -> KVCache:
        try:
            return self._caches[session_id]
        except KeyError:
            raise SessionNotFound(f"stage {self.config.key} has no session {session_id!r}: "
                                  "open it first (it may have been evicted)") from None

    def open(self, session_id: str, max_len: int, adapter: str | None = None) -> None:
        if session_id in self._prefixes:
            self.close(session_id)
        self._adapter_of.pop(session_id, None)
        if adapter is not None:
            if adapter not in self._adapters:
                raise RuntimeStageError(f"stage {self.config.key} has no adapter {adapter!r} "
                                        f"(it has {sorted(self._adapters)}): add it first")
            self._adapter_of[session_id] = adapter
        old = self._caches.get(session_id)
        if old is not None and old.max_len >= max_len:
            old.reset()
            return
        sh = self.config.shard
        dtype = next(self.model.parameters()).dtype
        self._caches[session_id] = KVCache(self.model.cfg, sh.start, sh.end, max_len, 1, dtype)

    def forward(self, session_id: str, x: np.ndarray) -> np.ndarray:
        return self._step(session_id, x, all_positions=False)

    def forward_all(self, session_id: str, x: np.ndarray) -> np.ndarray:
        """``forward`` with the head on every position: a last stage returns ``(B, T,
        vocab)`` logits (speculative decoding scores its drafted tokens in one step)."""
        return self._step(session_id, x, all_positions=True)

    @torch.inference_mode()
    def _step(self, session_id: str, x: np.ndarray, all_positions: bool) -> np.ndarray:
        cache = self._cache(session_id)
        sh = self.config.shard
        t = torch.from_numpy(np.ascontiguousarray(x))  # zero-copy
        one_token = t.shape[1] == 1
        name = self._adapter_of.get(session_id)
        lora = torch_lora.active([None if name is None else self._adapters[name]])
        with _decode_threads(self._gemv and one_token), lora:
            h = self.model.embed(t.long()) if sh.is_first else t.float()
            for i in range(sh.start, sh.end):
                h = self.model.block(i, h, cache)
            if sh.is_last and all_positions:
                h = self.model.head(h)  # (B, T, vocab)
            elif sh.is_last:
                h = self.model.head(h[:, -1:])[:, -1]  # (B, vocab): the head where needed
            return h.float().numpy()

    @torch.inference_mode()
    def forward_batch(self, session_ids: Sequence[str], xs: Sequence[np.ndarray]
                      ) -> list[np.ndarray]:
        """Every session's tokens packed back to back (1, sum T, H): norms, projections and
        the MLP read the weights once for the batch, attention runs per session on its own
        cache (``BlockModel.block_packed``). Sessions of different LoRA adapters pack apart
        (the adapter applies to the whole packed row)."""
        check_batch(session_ids, xs)
        groups: dict[str | None, list[int]] = {}
        for j, sid in enumerate(session_ids):
            self._cache(sid)
            groups.setdefault(self._adapter_of.get(sid), []).append(j)
        if len(groups) == 1:
            return self._forward_packed(session_ids, xs, next(iter(groups)))
        out: list[np.ndarray] = [None] * len(xs)  # type: ignore[list-item]
        for name, rows in groups.items():
            for j, y in zip(rows, self._forward_packed([session_ids[j] for j in rows],
                                                       [xs[j] for j in rows], name),
                            strict=True):
                out[j] = y
        return out

    def _forward_packed(self, session_ids: Sequence[str], xs: Sequence[np.ndarray],
                        adapter: str | None) -> list[np.ndarray]:
        caches = [self._cache(s) for s in session_ids]
        lengths = [int(x.shape[1]) for x in xs]
        for cache, t in zip(caches, lengths, strict=True):
            if cache.length + t > cache.max_len:
                raise GenerationError(f"the KV cache holds {cache.max_len} tokens but the "
                                      f"sequence needs {cache.length + t}: lower max_tokens "
                                      "or shorten the prompt")
        sh = self.config.shard
        parts = [torch.from_numpy(np.ascontiguousarray(x)) for x in xs]
        t = torch.cat(parts, dim=1)
        lora = torch_lora.active([None if adapter is None else self._adapters[adapter]])
        with _decode_threads(self._gemv and t.shape[1] == 1), lora:
            h = self.model.embed(t.long()) if sh.is_first else t.float()
            for i in range(sh.start, sh.end):
                h = self.model.block_packed(i, h, caches, lengths)
            if sh.is_last:  # the head on each sequence's last position only
                ends = torch.tensor(lengths).cumsum(0) - 1
                logits = self.model.head(h[:, ends])[0].float().numpy()  # (B, vocab)
                return [logits[j:j + 1] for j in range(len(xs))]
            out = h.float().numpy()
            bounds = np.cumsum([0, *lengths])
            return [out[:, a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]

    def truncate(self, session_id: str, length: int) -> None:
        self._cache(session_id).truncate(length)

    def length(self, session_id: str) -> int:
        return self._cache(session_id).length

    def close(self, session_id: str) -> None:
        self._caches.pop(session_id, None)
        self._adapter_of.pop(session_id, None)
        self._prefixes.discard(session_id)

    def session_bytes(self, session_id: str) -> int:
        return self._cache(session_id).nbytes

    def sessions(self) -> list[str]:
        return [s for s in list(self._caches) if s not in self._prefixes]

    # -- prefix donors (runtime.prefix) ------------------------------------------------------
    def save_prefix(self, session_id: str, prefix_id: str, length: int) -> None:
        src = self._cache(session_id)
        check_prefix(self.config.key, session_id, src.length, length)
        if prefix_id in self._caches:
            raise RuntimeStageError(f"stage {self.config.key} holds {prefix_id!r} already: "
                                    "give the prefix another id")
        sh = self.config.shard
        dst = KVCache(self.model.cfg, sh.start, sh.end, length, 1, src.k.dtype)
        _copy_positions(src, dst, length)
        self._caches[prefix_id] = dst
        self._prefixes.add(prefix_id)

    def load_prefix(self, prefix_id: str, session_id: str, length: int) -> None:
        src, dst = self._cache(prefix_id), self._cache(session_id)
        check_prefix(self.config.key, prefix_id, src.length, length, dst.max_len)
        _copy_positions(src, dst, length)


def _copy_positions(src: KVCache, dst: KVCache, length: int) -> None:
    """``dst`` holds the first ``length`` positions of ``src`` (every layer) and no more."""
    with torch.inference_mode():  # (L, B, kv, T, hd): positions are dim 3
        dst.k[:, :, :, :length] = src.k[:, :, :, :length]
        dst.v[:, :, :, :length] = src.v[:, :, :, :length]
    dst.lengths = [length] * len(dst.lengths)


@register_engine("torch")
def _make(config: EngineConfig) -> TorchStageEngine:
    return TorchStageEngine(config)
