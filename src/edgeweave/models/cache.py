"""Preallocated key/value cache for a half-open block range ``[start, end)``.

Each layer keeps its own fill level so that ``BlockModel.block(i, ...)`` is self-contained:
it reads its position from the cache, appends its keys/values and advances. Stages of a
pipeline therefore each own a ``KVCache`` covering only their blocks.
"""

from __future__ import annotations

import torch

from edgeweave.errors import GenerationError
from edgeweave.models.config import ModelConfig


class KVCache:
    def __init__(self, cfg: ModelConfig, start: int, end: int, max_len: int,
                 batch: int = 1, dtype: torch.dtype = torch.float32) -> None:
        self.start, self.end, self.max_len = start, end, max_len
        shape = (end - start, batch, cfg.num_kv_heads, max_len, cfg.head_dim)  # (L, B, kv, T, hd)
        self.k = torch.zeros(shape, dtype=dtype)
        self.v = torch.zeros(shape, dtype=dtype)
        self.lengths = [0] * (end - start)

    @property
    def length(self) -> int:
        """Tokens held by the first layer of the range (all layers agree between steps)."""
        return self.lengths[0]

    @property
    def nbytes(self) -> int:
        return self.k.numel() * self.k.element_size() * 2

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store ``k, v`` of shape (B, kv, T, hd) for ``layer``; return all keys/values so far."""
        j = layer - self.start
        pos = self.lengths[j]
        t = k.shape[2]
        if pos + t > self.max_len:
            raise GenerationError(
                f"the KV cache holds {self.max_len} tokens but the sequence needs {pos + t}: "
                "lower max_tokens or shorten the prompt"
            )
        self.k[j, :, :, pos:pos + t] = k
        self.v[j, :, :, pos:pos + t] = v
        self.lengths[j] = pos + t
        return self.k[j, :, :, :pos + t], self.v[j, :, :, :pos + t]

    def position(self, layer: int) -> int:
        return self.lengths[layer - self.start]

    def truncate(self, length: int) -> None:
        """Forget everything after ``length`` tokens (used by replay and rollback)."""
        self.lengths = [min(n, length) for n in self.lengths]

    def reset(self) -> None:
        self.truncate(0)
