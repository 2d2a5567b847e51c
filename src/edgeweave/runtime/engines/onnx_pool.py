"""The KV caches of an ONNX stage engine's sessions: pools of same-capacity slots.

A session's cache is a slot of a pool (per layer ``(slots, kv, capacity, hd)`` arrays for
keys and values); consecutive slots make one batched ``GroupQueryAttention`` run. Pure
numpy bookkeeping, no ONNX Runtime: ``runtime.engines.onnx`` binds the views.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


def capacity(max_len: int) -> int:
    """Cache rows a session of ``max_len`` tokens gets: the next power of two, so sessions of
    similar size share one pool (at most 2x the positions asked for; a one-token probe gets
    exactly one, which is how ``stage_limits`` measures bytes per token)."""
    return 1 << max(int(max_len) - 1, 0).bit_length()


class KVPool:
    """The KV caches of every session with the same capacity ``length``, one array per layer
    ``(slots, kv, length, hd)`` for keys and for values. A session is a slot; the used slots
    are always ``[0, used)`` (closing one moves the last into its place), so any run of
    sessions can be stepped by one batched ``GroupQueryAttention`` reading a view of
    consecutive slots, and a single session reads its one-slot view. ``version`` changes
    whenever the arrays are reallocated or a slot moves: views bound before are stale.
    ``spare`` slots stay free past the used ones (a batch-invariant engine's pad row)."""

    def __init__(self, n_layers: int, kv: int, length: int, hd: int, spare: int = 0) -> None:
        self.length = length
        self.spare = spare
        self._row = (kv, length, hd)
        self.keys = [np.zeros((0, *self._row), np.float32) for _ in range(n_layers)]
        self.values = [np.zeros((0, *self._row), np.float32) for _ in range(n_layers)]
        self.owners: list[PoolSession] = []
        self.version = 0

    def _resize(self, slots: int) -> None:
        n = len(self.owners)
        for arrs in (self.keys, self.values):
            for j, old in enumerate(arrs):
                new = np.zeros((slots, *self._row), np.float32)
                new[:n] = old[:n]
                arrs[j] = new
        self.version += 1

    def add(self, session: PoolSession) -> None:
        if len(self.owners) + self.spare >= self.keys[0].shape[0]:  # full: double (amortised)
            self._resize(max(2 * len(self.owners), 1) + self.spare)
        session.slot = len(self.owners)
        self.owners.append(session)

    def remove(self, session: PoolSession) -> None:
        last = self.owners.pop()
        if last is not session:  # the last slot moves into the freed one
            self._copy(last.slot, session.slot, last.length)
            last.slot = session.slot
            self.owners[session.slot] = last
        self.version += 1
        cap = self.keys[0].shape[0]
        if len(self.owners) <= cap // 4:  # give memory back once three quarters are free
            self._resize(max(cap // 2, len(self.owners) + self.spare))

    def swap(self, a: PoolSession, b: PoolSession) -> None:
        n = max(a.length, b.length)
        for arrs in (self.keys, self.values):
            for arr in arrs:
                tmp = arr[a.slot, :, :n].copy()
                arr[a.slot, :, :n] = arr[b.slot, :, :n]
                arr[b.slot, :, :n] = tmp
        a.slot, b.slot = b.slot, a.slot
        self.owners[a.slot], self.owners[b.slot] = a, b
        self.version += 1

    def _copy(self, src: int, dst: int, n: int) -> None:
        for arrs in (self.keys, self.values):
            for arr in arrs:
                arr[dst, :, :n] = arr[src, :, :n]


@dataclass(eq=False)
class PoolSession:
    pool: KVPool
    max_len: int
    slot: int = -1
    length: int = 0
    meta: dict[str, Any] = field(default_factory=dict)
    adapter: str | None = None  # a LoRA adapter: the session runs on the LoRA twin graph


@dataclass(eq=False)
class Donor:
    """A donor (``save_prefix``): per layer ``(kv, length, hd)`` keys and values of its own,
    outside the pools, so it takes no slot of a batch and exactly the bytes it holds."""

    keys: list[np.ndarray]
    values: list[np.ndarray]
    length: int
