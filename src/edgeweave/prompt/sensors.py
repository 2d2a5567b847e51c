"""Sensor windows -> compact text, under a token budget.

A window is a ``(channels, time)`` float array. Small models read numbers poorly and pay a
prefill cost per token, so every encoding trades detail for tokens: summary statistics,
downsampled values on a 0-99 integer scale, or trend words. Encodings live in a registry keyed
by name; :func:`encode_window` lowers the resolution until the text fits the budget.

``window_features`` is the cheap feature embedding the demonstration store uses for sensor
windows (no model needed): per-channel moments, slope and roughness plus a coarse shape.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from edgeweave.errors import ConfigError

EncodeFn = Callable[[np.ndarray, Sequence[str], int, int], str]
_ENCODINGS: dict[str, EncodeFn] = {}


def register_encoding(name: str) -> Callable[[EncodeFn], EncodeFn]:
    def deco(fn: EncodeFn) -> EncodeFn:
        _ENCODINGS[name] = fn
        return fn
    return deco


def encodings() -> list[str]:
    return sorted(_ENCODINGS)


@dataclass(frozen=True)
class EncodingSpec:
    """How to turn a window into text. ``points`` is the starting resolution (values per
    channel for value encodings); ``max_tokens`` 0 means no budget."""

    name: str = "stats_trend"
    points: int = 8
    max_tokens: int = 0
    decimals: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.decimals <= 4:
            raise ConfigError(f"decimals must be in [0, 4] (got {self.decimals})")
        if self.name not in _ENCODINGS:
            raise ConfigError(f"unknown sensor encoding {self.name!r}; choose one of {encodings()}")
        if self.points < 2:
            raise ConfigError(f"points must be >= 2 (got {self.points})")
        if self.max_tokens < 0:
            raise ConfigError(f"max_tokens must be >= 0, 0 disables it (got {self.max_tokens})")


def _fmt(x: float, decimals: int = 1) -> str:
    s = f"{x:.{decimals}f}"
    if "." in s:
        s = s.rstrip("0").rstrip(".")
    return "0" if s == "-0" else s


def downsample(x: np.ndarray, points: int) -> np.ndarray:
    """Mean over ``points`` equal chunks of the last axis (chunks differ by at most one step)."""
    x = np.asarray(x, dtype=np.float64)
    points = min(points, x.shape[-1])
    edges = np.linspace(0, x.shape[-1], points + 1).astype(int)
    return np.stack([x[..., a:b].mean(axis=-1) for a, b in zip(edges[:-1], edges[1:], strict=True)],
                    axis=-1)


def scale_0_99(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Integers on a 0-99 scale of [lo, hi]; values outside the range go outside 0-99."""
    span = hi - lo if hi > lo else 1.0
    return np.rint((np.asarray(x, dtype=np.float64) - lo) / span * 99).astype(int)


def trend_word(x: np.ndarray) -> str:
    """Direction of a series from a least-squares slope relative to its spread."""
    x = np.asarray(x, dtype=np.float64)
    if x.size < 2:
        return "flat"
    t = np.arange(x.size) - (x.size - 1) / 2
    slope = float((t * (x - x.mean())).sum() / (t * t).sum())
    change = slope * (x.size - 1)  # fitted rise over the window
    spread = float(x.std())
    if spread < 1e-9 or abs(change) < 0.5 * spread:
        return "flat"
    return "rising" if change > 0 else "falling"


def variability_word(x: np.ndarray) -> str:
    """Roughness: mean absolute step relative to the spread of the series."""
    x = np.asarray(x, dtype=np.float64)
    spread = float(x.std())
    if spread < 1e-9:
        return "constant"
    rough = float(np.abs(np.diff(x)).mean()) / spread
    return "smooth" if rough < 0.3 else "wavy" if rough < 0.9 else "jittery"


@register_encoding("stats")
def _stats(w: np.ndarray, channels: Sequence[str], points: int, d: int) -> str:
    return "; ".join(
        f"{c} mean {_fmt(x.mean(), d)} sd {_fmt(x.std(), d)} min {_fmt(x.min(), d)} "
        f"max {_fmt(x.max(), d)}"
        for c, x in zip(channels, w, strict=True))


@register_encoding("meansd")
def _meansd(w: np.ndarray, channels: Sequence[str], points: int, d: int) -> str:
    return "; ".join(f"{c} {_fmt(x.mean(), d)}±{_fmt(x.std(), d)}"
                     for c, x in zip(channels, w, strict=True))


@register_encoding("trend")
def _trend(w: np.ndarray, channels: Sequence[str], points: int, d: int) -> str:
    return "; ".join(f"{c} {trend_word(x)} {variability_word(x)}"
                     for c, x in zip(channels, w, strict=True))


@register_encoding("stats_trend")
def _stats_trend(w: np.ndarray, channels: Sequence[str], points: int, d: int) -> str:
    return "; ".join(
        f"{c} mean {_fmt(x.mean(), d)} sd {_fmt(x.std(), d)} {trend_word(x)} {variability_word(x)}"
        for c, x in zip(channels, w, strict=True))


@register_encoding("values")
def _values(w: np.ndarray, channels: Sequence[str], points: int, d: int) -> str:
    # One 0-99 scale per channel, with its range, so shapes compare across windows.
    parts = []
    for c, x in zip(channels, w, strict=True):
        lo, hi = float(x.min()), float(x.max())
        vals = " ".join(str(v) for v in scale_0_99(downsample(x, points), lo, hi))
        parts.append(f"{c} [{_fmt(lo, d)}..{_fmt(hi, d)}] {vals}")
    return "; ".join(parts)


@register_encoding("raw_values")
def _raw_values(w: np.ndarray, channels: Sequence[str], points: int, d: int) -> str:
    return "; ".join(f"{c} " + " ".join(_fmt(v, d) for v in downsample(x, points))
                     for c, x in zip(channels, w, strict=True))


def encode_window(window: np.ndarray, channels: Sequence[str], spec: EncodingSpec | None = None,
                  count_tokens: Callable[[str], int] | None = None) -> str:
    """Encode a ``(channels, time)`` window; halve the resolution until it fits the budget.

    Without ``count_tokens`` a budget is estimated at 3 characters per token (what the SmolLM2
    tokenizer averages on these number-heavy strings).
    """
    spec = spec or EncodingSpec()
    w = np.atleast_2d(np.asarray(window, dtype=np.float64))
    if w.shape[0] != len(channels):
        raise ConfigError(f"window has {w.shape[0]} channels but {len(channels)} names were given")
    fn = _ENCODINGS[spec.name]
    count = count_tokens or (lambda s: (len(s) + 2) // 3)
    points = spec.points
    text = fn(w, channels, points, spec.decimals)
    while spec.max_tokens and count(text) > spec.max_tokens and points > 2:
        points = max(2, points // 2)
        text = fn(w, channels, points, spec.decimals)
    if spec.max_tokens and count(text) > spec.max_tokens:
        # Still too long at the lowest resolution: keep whole channels, drop the rest.
        kept = text.split("; ")
        while len(kept) > 1 and count("; ".join(kept)) > spec.max_tokens:
            kept.pop()
        text = "; ".join(kept)
    return text


def window_features(window: np.ndarray, shape_points: int = 8) -> np.ndarray:
    """Cheap embedding of a ``(channels, time)`` window: per channel mean, sd, min, max,
    slope, mean |step|, then a z-normalised coarse shape. Callers standardise across a set."""
    w = np.atleast_2d(np.asarray(window, dtype=np.float64))
    t = np.arange(w.shape[1]) - (w.shape[1] - 1) / 2
    denom = float((t * t).sum()) or 1.0
    feats = []
    for x in w:
        sd = float(x.std())
        slope = float((t * (x - x.mean())).sum() / denom)
        rough = float(np.abs(np.diff(x)).mean()) if x.size > 1 else 0.0
        shape = downsample((x - x.mean()) / (sd or 1.0), shape_points)
        feats.append(np.concatenate([[x.mean(), sd, x.min(), x.max(), slope, rough], shape]))
    return np.concatenate(feats).astype(np.float32)
