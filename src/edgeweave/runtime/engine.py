"""The smallest interface generation needs: tokens in, next-token logits out.

A :class:`LogitsEngine` keeps its own state (KV caches, remote sessions). The local engine
below runs a whole :class:`BlockModel` in this process; the coordinator of a distributed plan
implements the same three methods across stages, so ``generate`` never knows the difference.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from edgeweave.errors import GenerationError
from edgeweave.models.llama import BlockModel
from edgeweave.runtime.fast import decode_threads, is_accelerated


@runtime_checkable
class LogitsEngine(Protocol):
    max_len: int

    def prefill(self, ids: list[int]) -> torch.Tensor:
        """Start a new sequence; return the (vocab,) logits after the last prompt token."""
        ...

    def decode(self, token: int) -> torch.Tensor:
        """Append one token; return the (vocab,) logits for the next position."""
        ...


class LocalEngine:
    """A whole model in this process with one preallocated KV cache."""

    def __init__(self, model: BlockModel, max_len: int | None = None) -> None:
        if not (model.shard.is_first and model.shard.is_last):
            raise GenerationError("LocalEngine needs the whole model; use a coordinator for shards")
        self.model = model
        self.max_len = min(max_len or 2048, model.cfg.max_position)
        self.cache = model.new_cache(self.max_len)
        self.gemv = is_accelerated(model)

    @torch.inference_mode()
    def prefill(self, ids: list[int]) -> torch.Tensor:
        self.cache.reset()
        h = self.model.run_blocks(self.model.embed(torch.tensor([ids])), self.cache)
        return self.model.head(h[:, -1:])[0, -1]  # the head only where it is needed

    @torch.inference_mode()
    def decode(self, token: int) -> torch.Tensor:
        with decode_threads(self.gemv):
            h = self.model.run_blocks(self.model.embed(torch.tensor([[token]])), self.cache)
            return self.model.head(h)[0, -1]
