"""Masks from importance scores, shared by the pruning methods."""

from __future__ import annotations

import torch


def prune_mask(scores: torch.Tensor, sparsity: float, pattern: str, per_row: bool) -> torch.Tensor:
    """Boolean (N, K) mask of weights to REMOVE (lowest scores).

    ``2:4``: in every run of 4 consecutive input columns of a row, the 2 lowest go.
    ``per_row``: each output row loses the same fraction (Wanda's comparison group);
    otherwise one threshold for the whole matrix (classic magnitude pruning).
    """
    n, k = scores.shape
    if pattern == "2:4":
        groups = scores.reshape(n, k // 4, 4)
        idx = torch.topk(groups, 2, dim=-1, largest=False).indices
        mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, idx, True)
        return mask.reshape(n, k)
    if per_row:
        drop = int(k * sparsity)
        idx = torch.topk(scores, drop, dim=1, largest=False).indices
        return torch.zeros_like(scores, dtype=torch.bool).scatter_(1, idx, True)
    drop = int(scores.numel() * sparsity)
    idx = torch.topk(scores.reshape(-1), drop, largest=False).indices
    return torch.zeros(scores.numel(), dtype=torch.bool).scatter_(0, idx, True).reshape(n, k)


def check_pattern(in_features: int, pattern: str, name: str) -> None:
    from edgeweave.errors import ConfigError

    if pattern == "2:4" and in_features % 4:
        raise ConfigError(f"2:4 sparsity needs input widths divisible by 4; {name} has "
                          f"{in_features}: use pattern='unstructured'")
