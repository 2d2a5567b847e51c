"""Client heterogeneity: resource tiers, what share of the adapter each client trains, and
the FedRolex rolling window that makes every block train equally often across rounds.

Blocks are indexed within the *adapter region* (the blocks that carry LoRA at all); a
window is half-open ``[start, start + size)`` taken modulo the region, so it wraps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from edgeweave.errors import ConfigError


@dataclass(frozen=True)
class Tier:
    """A device class: memory budget and the adapter share it can afford.

    ``window`` = number of adapter blocks trained per round (``None`` = all of them).
    """

    name: str
    memory_mb: int
    rank: int
    window: int | None = None

    def __post_init__(self) -> None:
        if self.rank < 1 or self.memory_mb <= 0 or (self.window is not None and self.window < 1):
            raise ConfigError(f"tier {self.name!r}: rank and window must be >= 1, memory > 0")

    def to_dict(self) -> dict:
        return asdict(self)


def tier_for(memory_mb: float, tiers: Sequence[Tier]) -> Tier:
    """The largest tier whose memory budget fits ``memory_mb`` (the smallest if none does)."""
    ordered = sorted(tiers, key=lambda t: t.memory_mb)
    fitting = [t for t in ordered if t.memory_mb <= memory_mb]
    return fitting[-1] if fitting else ordered[0]


def rolling_window(server_round: int, n_blocks: int, size: int | None,
                   offset: int = 0) -> tuple[int, ...]:
    """Region-relative blocks trained in ``server_round`` (1-based), FedRolex style.

    The window start advances by one block per round (plus a per-client ``offset``), so
    over ``n_blocks`` consecutive rounds each block is inside the window exactly ``size``
    times.
    """
    if size is None or size >= n_blocks:
        return tuple(range(n_blocks))
    start = (server_round - 1 + offset) % n_blocks
    return tuple(sorted((start + j) % n_blocks for j in range(size)))


@dataclass(frozen=True)
class Assignment:
    """What one client trains in one round."""

    rank: int
    layers: tuple[int, ...]  # absolute block indices


def assign(tier: Tier, region: Sequence[int], server_round: int, offset: int = 0) -> Assignment:
    rel = rolling_window(server_round, len(region), tier.window, offset)
    return Assignment(rank=tier.rank, layers=tuple(region[i] for i in rel))


DEFAULT_TIERS = (
    Tier("micro", memory_mb=512, rank=2, window=2),
    Tier("edge", memory_mb=2048, rank=4, window=4),
    Tier("gateway", memory_mb=8192, rank=8, window=None),
)
