"""Eviction policies and ordering strategies for demonstrations, each in a registry.

Eviction: ``fn(view, n, protect, rng) -> slots`` picks ``n`` slots to drop from a store
(never ``protect``, the entry just inserted). Ordering: ``fn(sims, labels, rng) -> order``
arranges chosen demonstrations for the prompt (a permutation of ``range(len(sims))``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from edgeweave.errors import ConfigError


@dataclass(frozen=True)
class StoreView:
    """What a policy may read: the live rows of a store (slot i = row i)."""

    emb: np.ndarray  # (n, d) unit vectors
    last_used: np.ndarray  # (n,) logical clock of the last insert/selection
    utility: np.ndarray  # (n,) running mean of feedback rewards
    labels: Sequence[str | None]


EvictFn = Callable[[StoreView, int, int, np.random.Generator], list[int]]
OrderFn = Callable[[Sequence[float], Sequence[str | None], np.random.Generator], list[int]]
_EVICT: dict[str, EvictFn] = {}
_ORDER: dict[str, OrderFn] = {}


def register_eviction(name: str) -> Callable[[EvictFn], EvictFn]:
    def deco(fn: EvictFn) -> EvictFn:
        _EVICT[name] = fn
        return fn
    return deco


def register_ordering(name: str) -> Callable[[OrderFn], OrderFn]:
    def deco(fn: OrderFn) -> OrderFn:
        _ORDER[name] = fn
        return fn
    return deco


def eviction_policies() -> list[str]:
    return sorted(_EVICT)


def orderings() -> list[str]:
    return sorted(_ORDER)


def get_eviction(name: str) -> EvictFn:
    if name not in _EVICT:
        raise ConfigError(f"unknown eviction policy {name!r}; choose one of {eviction_policies()}")
    return _EVICT[name]


def get_ordering(name: str) -> OrderFn:
    if name not in _ORDER:
        raise ConfigError(f"unknown ordering {name!r}; choose one of {orderings()}")
    return _ORDER[name]


def _take(order: np.ndarray, n: int, protect: int) -> list[int]:
    return [int(s) for s in order if s != protect][:n]


@register_eviction("lru")
def evict_lru(view: StoreView, n: int, protect: int, rng: np.random.Generator) -> list[int]:
    """Least recently inserted or selected first."""
    return _take(np.argsort(view.last_used, kind="stable"), n, protect)


@register_eviction("utility")
def evict_utility(view: StoreView, n: int, protect: int, rng: np.random.Generator) -> list[int]:
    """Lowest feedback utility first; among equals the least recently used."""
    return _take(np.lexsort((view.last_used, view.utility)), n, protect)


@register_eviction("diversity")
def evict_diversity(view: StoreView, n: int, protect: int, rng: np.random.Generator,
                    candidates: int = 32) -> list[int]:
    """Most redundant first: among a random sample of candidates (bounded cost per eviction),
    drop those whose nearest other entry is most similar, so the store keeps coverage."""
    size = view.emb.shape[0]
    pool = np.arange(size) if size <= candidates else rng.choice(size, candidates, replace=False)
    pool = pool[pool != protect]
    sims = np.einsum("cd,nd->cn", view.emb[pool], view.emb)  # (c, n); no BLAS threads to spin
    sims[np.arange(pool.size), pool] = -np.inf  # not its own neighbour
    redundancy = sims.max(axis=1)
    return [int(s) for s in pool[np.argsort(-redundancy, kind="stable")]][:n]


@register_ordering("most_similar_last")
def order_similar_last(sims: Sequence[float], labels: Sequence[str | None],
                       rng: np.random.Generator) -> list[int]:
    """Ascending similarity: the closest demonstration sits next to the query (small models
    weigh the most recent example most)."""
    return [int(i) for i in np.argsort(np.asarray(sims, dtype=np.float64), kind="stable")]


@register_ordering("most_similar_first")
def order_similar_first(sims: Sequence[float], labels: Sequence[str | None],
                        rng: np.random.Generator) -> list[int]:
    return [int(i) for i in np.argsort(-np.asarray(sims, dtype=np.float64), kind="stable")]


@register_ordering("random")
def order_random(sims: Sequence[float], labels: Sequence[str | None],
                 rng: np.random.Generator) -> list[int]:
    return [int(i) for i in rng.permutation(len(sims))]


@register_ordering("label_balanced")
def order_label_balanced(sims: Sequence[float], labels: Sequence[str | None],
                         rng: np.random.Generator) -> list[int]:
    """Interleave labels round-robin so no label dominates the end of the prompt; the label of
    the single most similar demonstration goes last in every round."""
    s = np.asarray(sims, dtype=np.float64)
    groups: dict[str | None, list[int]] = {}
    for i in np.argsort(-s, kind="stable"):
        groups.setdefault(labels[int(i)], []).append(int(i))
    # groups ordered by their best similarity, ascending: the best group closes each round
    keys = sorted(groups, key=lambda k: s[groups[k][0]])
    rounds: list[list[int]] = []
    depth = max((len(g) for g in groups.values()), default=0)
    for r in range(depth):
        rounds.append([groups[k][r] for k in keys if r < len(groups[k])])
    # deeper (less similar) rounds come first
    return [i for rnd in reversed(rounds) for i in rnd]
