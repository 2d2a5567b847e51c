"""The smallest interface generation needs: tokens in, next-token logits out.

A :class:`LogitsEngine` keeps its own state (KV caches, remote sessions) and returns numpy
logits, so generation and serving never need torch. :class:`EngineSession` is one sequence
on any in-process stage engine (ONNX Runtime or torch); :class:`LocalEngine` runs a whole
torch :class:`BlockModel` directly (the reference path of ``--backend torch``); the
coordinator of a distributed plan implements the same methods across stages, so
``generate`` never knows the difference.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from edgeweave.errors import GenerationError

if TYPE_CHECKING:
    from edgeweave.models.llama import BlockModel
    from edgeweave.runtime.engines.base import StageEngine
    from edgeweave.runtime.prefix import PrefixStore


@runtime_checkable
class LogitsEngine(Protocol):
    max_len: int

    def prefill(self, ids: list[int]) -> np.ndarray:
        """Start a new sequence; return the (vocab,) float32 logits after the last token."""
        ...

    def decode(self, token: int) -> np.ndarray:
        """Append one token; return the (vocab,) float32 logits for the next position."""
        ...


_ids = itertools.count()


class EngineSession:
    """One sequence on a whole-model stage engine, with its own KV cache in that engine;
    ``adapter`` names a LoRA adapter registered with the engine (None: the base model);
    ``prefix`` is the engine's prefix cache (``runtime.prefix``), None for none."""

    def __init__(self, engine: StageEngine, max_len: int | None = None,
                 adapter: str | None = None, prefix: PrefixStore | None = None) -> None:
        sh = engine.config.shard
        if not (sh.is_first and sh.is_last):
            raise GenerationError("EngineSession needs a whole-model stage; use a coordinator "
                                  "for a split plan")
        if prefix is not None and prefix.engine is not engine:
            raise GenerationError("the prefix cache belongs to another engine: build it over "
                                  "the engine the session runs on")
        self.engine = engine
        self.prefix = prefix
        self._keep: list[int] | None = None  # a prompt to keep before the cache changes
        self.max_len = min(max_len or engine.max_position, engine.max_position)
        self.id = f"local-{next(_ids)}"
        self.adapter = adapter
        if adapter is None:  # engines that know nothing of adapters keep working
            engine.open(self.id, self.max_len)
        else:
            engine.open(self.id, self.max_len, adapter=adapter)

    def prefill(self, ids: list[int]) -> np.ndarray:
        self._kept()
        self.engine.truncate(self.id, 0)
        return self.engine.forward(self.id, np.array([ids], dtype=np.int64))[0]

    def decode(self, token: int) -> np.ndarray:
        self._kept()
        return self.engine.forward(self.id, np.array([[token]], dtype=np.int64))[0]

    def extend(self, ids: list[int]) -> np.ndarray:
        """Append a chunk of the prompt (chunked prefill); logits after its last token."""
        self._kept()
        return self.engine.forward(self.id, np.array([ids], dtype=np.int64))[0]

    def verify(self, ids: list[int]) -> np.ndarray:
        """Append ``ids``; the logits after each of them ``(len(ids), vocab)`` (the
        verifier's step of speculative decoding)."""
        from edgeweave.runtime.engines.base import supports_forward_all

        self._kept()
        if not supports_forward_all(self.engine):
            raise GenerationError(f"the {self.engine.config.backend} stage engine cannot score "
                                  "every position of a step: use the onnx or torch backend")
        return self.engine.forward_all(self.id, np.array([ids], dtype=np.int64))[0]

    @property
    def length(self) -> int:
        """Tokens the session's cache holds."""
        return self.engine.length(self.id)

    def rewind(self, length: int) -> None:
        """Keep only the first ``length`` tokens (rejected draft tokens are forgotten)."""
        self._kept()
        if not 0 <= length <= self.length:
            raise GenerationError(f"the session holds {self.length} tokens: rewind to "
                                  f"0..{self.length}, not {length}")
        self.engine.truncate(self.id, length)

    def reuse_prefix(self, ids: list[int]) -> int:
        """Start the sequence ``ids`` from the longest prefix of it the cache holds; return
        how many tokens that is (0: none, the next step starts afresh). The caller feeds
        the rest of ``ids`` with ``extend``."""
        if self.prefix is None:
            return 0
        return self.prefix.reuse(self.id, ids, self.adapter or "")

    def keep_prefix(self, ids: list[int]) -> None:
        """The sequence holds exactly ``ids`` (its prompt): offer it to the prefix cache.
        The copy waits until the cache is about to change (the next step, or ``close``), so
        the first token does not wait for it."""
        if self.prefix is not None:
            self._keep = list(ids)

    def _kept(self) -> None:
        if self._keep is not None:
            ids, self._keep = self._keep, None
            self.prefix.keep(self.id, ids, self.adapter or "")  # type: ignore[union-attr]

    @property
    def batch_key(self) -> int:
        """Sessions with the same key can step together (``forward_many``): one engine."""
        return id(self.engine)

    @staticmethod
    def forward_many(sessions: Sequence[EngineSession], steps: Sequence[Any]) -> list[np.ndarray]:
        """One batched step of sessions sharing one stage engine; ``steps[j]`` has ``ids``
        and ``fresh`` (a new sequence starts from an empty cache), as ``sequence.StepInput``."""
        engine = sessions[0].engine
        if any(s.engine is not engine for s in sessions):
            raise GenerationError("a batched step needs sessions of one engine")
        for s, st in zip(sessions, steps, strict=True):
            s._kept()
            if st.fresh:
                engine.truncate(s.id, 0)
        out = engine.forward_batch([s.id for s in sessions],
                                   [np.array([st.ids], dtype=np.int64) for st in steps])
        return [y[0] for y in out]

    def close(self) -> None:
        try:
            self._kept()
        finally:
            self.engine.close(self.id)

    @property
    def stats(self) -> dict[str, float]:
        return {}


class LocalEngine:
    """A whole torch model in this process with one preallocated KV cache."""

    def __init__(self, model: BlockModel, max_len: int | None = None) -> None:
        from edgeweave.runtime.fast import is_accelerated

        if not (model.shard.is_first and model.shard.is_last):
            raise GenerationError("LocalEngine needs the whole model; use a coordinator for shards")
        self.model = model
        self.max_len = min(max_len or 2048, model.cfg.max_position)
        self.cache = model.new_cache(self.max_len)
        self.gemv = is_accelerated(model)

    def prefill(self, ids: list[int]) -> np.ndarray:
        import torch

        with torch.inference_mode():
            self.cache.reset()
            h = self.model.run_blocks(self.model.embed(torch.tensor([ids])), self.cache)
            return self.model.head(h[:, -1:])[0, -1].float().numpy()  # the head where needed

    def decode(self, token: int) -> np.ndarray:
        import torch

        from edgeweave.runtime.fast import decode_threads

        with torch.inference_mode(), decode_threads(self.gemv):
            h = self.model.run_blocks(self.model.embed(torch.tensor([[token]])), self.cache)
            return self.model.head(h)[0, -1].float().numpy()
