"""What a speculative session measures to choose ``k``: the cost of a draft step and of a
target pass (:class:`Timing`, for the cost model ``plan.speculation``), and the pace per
committed token the caller sees, plain and speculating (:class:`Pace`, the check that
speculation is really faster)."""

from __future__ import annotations

import time
from collections import deque

import numpy as np


class Timing:
    """Measured costs for the cost model: a draft step, and a target pass of ``n`` tokens
    as ``a + b * n`` fitted over recent passes (plain steps are passes of one token)."""

    def __init__(self) -> None:
        self.draft_token_s: float | None = None
        self.passes: deque[tuple[int, float]] = deque(maxlen=48)

    def draft(self, seconds: float, tokens: int) -> None:
        per = seconds / max(tokens, 1)
        d = self.draft_token_s
        self.draft_token_s = per if d is None else 0.8 * d + 0.2 * per

    def target(self, tokens: int, seconds: float) -> None:
        self.passes.append((tokens, seconds))

    def fit(self) -> tuple[float, float] | None:
        """``(a, b)``: a pass of ``n`` tokens takes ``a + b * n`` seconds (None: no data)."""
        if not self.passes:
            return None
        n = np.array([p[0] for p in self.passes], np.float64)
        t = np.array([p[1] for p in self.passes], np.float64)
        if np.ptp(n) == 0:  # one pass size only: all of it is the fixed part
            return float(np.median(t)) / 1.0, 0.0
        b, a = np.polyfit(n, t, 1)
        b = max(float(b), 0.0)
        return max(float(np.median(t - b * n)), 1e-6), b


class Pace:
    """Seconds per committed token as the caller sees them (from one round's start to the
    next: drafting, verifying, sampling, streaming), plain and speculating apart, over the
    last few rounds of each (one round drafts many tokens and may keep one: a single lap
    says little). The cost model leaves things out (the caller's work, the bytes of every
    row's logits); this is the check that speculation is really faster."""

    WINDOW = 12  # laps per mode
    MIN_LAPS = 4  # speculative laps before the pace may overrule the model

    def __init__(self) -> None:
        self.speculating = False
        self._laps: dict[bool, deque[tuple[float, int]]] = {
            m: deque(maxlen=self.WINDOW) for m in (False, True)}
        self._t: float | None = None
        self._n = 0
        self._sunk = 0.0

    def sunk(self, seconds: float) -> None:
        """Time of this lap that says nothing of the steady pace: the draft catching up
        on many tokens (the prompt at the first round, the tokens of a plain stretch)."""
        self._sunk += seconds

    def lap(self, committed: int) -> None:
        now = time.perf_counter()
        sunk, self._sunk = self._sunk, 0.0
        if self._t is not None and committed > self._n:
            self._laps[self.speculating].append((max(now - self._t - sunk, 0.0),
                                                 committed - self._n))
        self._t, self._n = now, committed

    def pause(self) -> None:
        """The next lap starts afresh: the time until then was not this session's own."""
        self._t = None

    def per_token(self, speculating: bool) -> float | None:
        laps = self._laps[speculating]
        if not laps:
            return None
        return sum(t for t, _ in laps) / sum(n for _, n in laps)

    @property
    def plain_s(self) -> float | None:
        return self.per_token(False)

    def slower(self, margin: float = 0.03) -> bool:
        plain, spec = self.per_token(False), self.per_token(True)
        return (plain is not None and spec is not None
                and len(self._laps[True]) >= self.MIN_LAPS and spec > (1 - margin) * plain)
