"""Data-efficient fine-tuning: keep a ``fraction`` of the examples, chosen by a registered
selector. ``loss`` keeps the examples the current model finds hardest (highest target
loss); ``diversity`` runs greedy k-center over mean-pooled last hidden states so the kept
set covers the embedding space; ``random`` is the baseline both must beat.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from edgeweave.errors import ConfigError
from edgeweave.finetune.data import IGNORE, Example, collate

Selector = Callable[[nn.Module, Sequence[Example], int, int], list[int]]
SELECTORS: dict[str, Selector] = {}


def register(name: str) -> Callable[[Selector], Selector]:
    def deco(fn: Selector) -> Selector:
        SELECTORS[name] = fn
        return fn
    return deco


@dataclass(frozen=True)
class SubsetConfig:
    method: str = "loss"
    fraction: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in SELECTORS:
            raise ConfigError(f"unknown subset method {self.method!r}; choose from "
                              f"{sorted(SELECTORS)}")
        if not 0.0 < self.fraction <= 1.0:
            raise ConfigError(f"fraction must be in (0, 1], got {self.fraction}")


@torch.no_grad()
def _features(model: nn.Module, examples: Sequence[Example], bs: int = 8
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example mean target loss (N,) and mean-pooled final hidden state (N, H)."""
    losses, feats = [], []
    for i in range(0, len(examples), bs):
        batch = examples[i:i + bs]
        ids, labels = collate(batch)
        h = model.embed(ids)
        for b in range(model.shard.start, model.shard.end):
            h = model.block(b, h)
        logits = model.head(h).float()  # the family's head (Gemma: soft-capped)
        h = model.norm(h)
        tok = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE,
                              reduction="none").view(labels.shape)
        mask = (labels != IGNORE).float()
        losses.append((tok * mask).sum(1) / mask.sum(1).clamp_min(1))
        real = torch.zeros(ids.shape, dtype=torch.float)
        for row, e in enumerate(batch):
            real[row, :len(e.ids)] = 1
        feats.append((h.float() * real[..., None]).sum(1) / real.sum(1, keepdim=True))
    return torch.cat(losses), torch.cat(feats)


@register("random")
def _random(model: nn.Module, examples: Sequence[Example], k: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(len(examples), generator=g)[:k].tolist())


@register("loss")
def _by_loss(model: nn.Module, examples: Sequence[Example], k: int, seed: int) -> list[int]:
    losses, _ = _features(model, examples)
    return sorted(torch.argsort(losses, descending=True)[:k].tolist())


@register("diversity")
def _k_center(model: nn.Module, examples: Sequence[Example], k: int, seed: int) -> list[int]:
    _, x = _features(model, examples)
    x = F.normalize(x, dim=1)
    chosen = [int(torch.argmax((x - x.mean(0)).norm(dim=1)))]  # most atypical first
    dist = (x - x[chosen[0]]).norm(dim=1)
    while len(chosen) < k:
        nxt = int(torch.argmax(dist))
        chosen.append(nxt)
        dist = torch.minimum(dist, (x - x[nxt]).norm(dim=1))
    return sorted(chosen)


def select(model: nn.Module, examples: Sequence[Example], cfg: SubsetConfig) -> list[Example]:
    """The kept examples (order preserved); ``fraction=1`` keeps everything."""
    k = max(1, round(cfg.fraction * len(examples)))
    if k >= len(examples):
        return list(examples)
    return [examples[i] for i in SELECTORS[cfg.method](model, examples, k, cfg.seed)]
