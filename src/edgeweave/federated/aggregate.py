"""Aggregation maths for federated LoRA, as pure functions over ``{key: ndarray}`` dicts.

Adapter keys are PEFT's (``layers.{i}.{self_attn|mlp}.{name}.lora_{A|B}.weight``); for one
module A is ``(r, in)`` and B is ``(out, r)``, so the update is ``scale * B @ A``. Every client
uses the same ``scale`` (alpha = scale * rank), which is what makes factors of different
ranks comparable. A client that trained only some blocks (a rolling window) simply sends
fewer keys: a key is averaged over the clients that sent it and otherwise keeps its
global value.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

State = dict[str, np.ndarray]


def module_of(key: str) -> str:
    """``layers.3.self_attn.q_proj.lora_A.weight`` -> ``layers.3.self_attn.q_proj``."""
    return key.rsplit(".lora_", 1)[0]


def is_a(key: str) -> bool:
    return ".lora_A." in key


def truncate(state: Mapping[str, np.ndarray], rank: int,
             keys: Sequence[str] | None = None) -> State:
    """The first ``rank`` components of each module (A rows, B columns), optionally only
    for ``keys``: what a client of that rank (and window) receives."""
    out = {}
    for k in keys if keys is not None else state:
        v = state[k]
        out[k] = np.ascontiguousarray(v[:rank] if is_a(k) else v[:, :rank])
    return out


def weighted_mean(states: Sequence[Mapping[str, np.ndarray]], weights: Sequence[float],
                  previous: Mapping[str, np.ndarray]) -> State:
    """Plain FedAvg per key over the clients that sent it (same shapes required)."""
    out = {k: np.array(v, copy=True) for k, v in previous.items()}
    for k in previous:
        got = [(s[k], w) for s, w in zip(states, weights, strict=True) if k in s]
        if got:
            tot = sum(w for _, w in got)
            out[k] = sum(v.astype(np.float64) * (w / tot) for v, w in got).astype(previous[k].dtype)
    return out


def zero_pad_mean(states: Sequence[Mapping[str, np.ndarray]], weights: Sequence[float],
                  previous: Mapping[str, np.ndarray]) -> State:
    """Rank-heterogeneous aggregation by zero-padding (HeteroLoRA style).

    Each client's factors are zero-padded to the global rank R; rank component ``j`` of a
    module is the weighted mean over the clients whose rank exceeds ``j`` (dividing by
    all clients would shrink the components only large clients train). Components no
    client trained keep their previous value.
    """
    out = {k: np.array(v, copy=True) for k, v in previous.items()}
    for k, prev in previous.items():
        r_axis = 0 if is_a(k) else 1
        big = prev.shape[r_axis]
        num = np.zeros(prev.shape, dtype=np.float64)
        den = np.zeros(big, dtype=np.float64)
        for s, w in zip(states, weights, strict=True):
            if k not in s:
                continue
            v = s[k].astype(np.float64)
            r = v.shape[r_axis]
            if r > big:
                raise ValueError(f"{k}: client rank {r} exceeds the global rank {big}")
            if r_axis == 0:
                num[:r] += w * v
            else:
                num[:, :r] += w * v
            den[:r] += w
        have = den > 0
        if r_axis == 0:
            out[k][have] = (num[have] / den[have, None]).astype(prev.dtype)
        else:
            out[k][:, have] = (num[:, have] / den[None, have]).astype(prev.dtype)
    return out


def svd_redistribute(states: Sequence[Mapping[str, np.ndarray]], weights: Sequence[float],
                     previous: Mapping[str, np.ndarray]) -> State:
    """Rank-heterogeneous aggregation through the product (FLoRA/FlexLoRA style).

    Per module, ``dW = sum_i w_i B_i A_i / sum_i w_i`` is exact whatever the clients'
    ranks; its truncated SVD ``U S V^T`` to the global rank R is redistributed as
    ``B = U sqrt(S)``, ``A = sqrt(S) V^T``. A client of rank r then receives the first r
    components: the best rank-r approximation of the aggregate (Eckart-Young).
    Components with a zero singular value keep the previous A row (and B = 0) so that
    they can still learn.
    """
    out = {k: np.array(v, copy=True) for k, v in previous.items()}
    modules = sorted({module_of(k) for k in previous})
    for mod in modules:
        ka, kb = f"{mod}.lora_A.weight", f"{mod}.lora_B.weight"
        got = [(s[kb].astype(np.float64) @ s[ka].astype(np.float64), w)
               for s, w in zip(states, weights, strict=True) if ka in s and kb in s]
        if not got:
            continue
        tot = sum(w for _, w in got)
        dw = sum(p * (w / tot) for p, w in got)
        big = previous[ka].shape[0]
        u, sv, vt = np.linalg.svd(dw, full_matrices=False)
        root = np.sqrt(sv[:big])
        b = np.zeros_like(previous[kb], dtype=np.float64)
        a = np.zeros_like(previous[ka], dtype=np.float64)
        n = root.shape[0]
        b[:, :n] = u[:, :n] * root
        a[:n] = root[:, None] * vt[:n]
        # Components with (near-)zero singular value would have A = 0 and B = 0, a saddle
        # where LoRA gradients vanish for good; re-seed their A from the previous global A
        # with B = 0, which leaves the product unchanged.
        dead = np.ones(big, dtype=bool)
        dead[:n] = root < 1e-6 * max(float(root[0]) if n else 0.0, 1e-30)
        a[dead] = previous[ka][dead]
        b[:, dead] = 0.0
        out[ka], out[kb] = a.astype(previous[ka].dtype), b.astype(previous[kb].dtype)
    return out


AGGREGATORS = {"fedavg": weighted_mean, "pad": zero_pad_mean, "svd": svd_redistribute}


@dataclass
class AdamState:
    """FedAdam moments (Reddi et al. 2021), one pair per key."""

    m: dict[str, np.ndarray]
    v: dict[str, np.ndarray]


def fedadam_step(current: Mapping[str, np.ndarray], aggregate: Mapping[str, np.ndarray],
                 state: AdamState | None, lr: float = 1e-2, beta1: float = 0.9,
                 beta2: float = 0.99, tau: float = 1e-3) -> tuple[State, AdamState]:
    """Server-side Adam on the pseudo-gradient ``delta = aggregate - current``.

    ``m = b1 m + (1-b1) delta``, ``v = b2 v + (1-b2) delta^2``,
    ``x = x + lr m / (sqrt(v) + tau)`` (no bias correction, as in the paper and Flower).
    """
    if state is None:
        state = AdamState({k: np.zeros_like(v, dtype=np.float64) for k, v in current.items()},
                          {k: np.zeros_like(v, dtype=np.float64) for k, v in current.items()})
    out = {}
    for k, x in current.items():
        delta = aggregate[k].astype(np.float64) - x
        state.m[k] = beta1 * state.m[k] + (1 - beta1) * delta
        state.v[k] = beta2 * state.v[k] + (1 - beta2) * delta ** 2
        out[k] = (x + lr * state.m[k] / (np.sqrt(state.v[k]) + tau)).astype(x.dtype)
    return out, state


def fedavgm_step(current: Mapping[str, np.ndarray], aggregate: Mapping[str, np.ndarray],
                 state: dict[str, np.ndarray] | None, lr: float = 1.0,
                 momentum: float = 0.9) -> tuple[State, dict[str, np.ndarray]]:
    """FedAvgM (Hsu et al. 2019): server momentum on the pseudo-gradient.

    ``v = momentum v + delta``, ``x = x + lr v``; ``lr`` 1 and ``momentum`` 0 is FedAvg.
    Non-IID clients pull the average a different way every round; the velocity keeps the
    direction they agree on and damps the round-to-round swing.
    """
    if state is None:
        state = {k: np.zeros_like(v, dtype=np.float64) for k, v in current.items()}
    out = {}
    for k, x in current.items():
        state[k] = momentum * state[k] + (aggregate[k].astype(np.float64) - x)
        out[k] = (x + lr * state[k]).astype(x.dtype)
    return out, state


def extrapolation(current: Mapping[str, np.ndarray], aggregate: Mapping[str, np.ndarray],
                  states: Sequence[Mapping[str, np.ndarray]], weights: Sequence[float],
                  aggregation: str, eps: float = 1e-3) -> float:
    """FedExP's server step size (Jhunjhunwala et al., ICLR 2023) for this round.

    ``max(1, mean_i ||delta_i||^2 / (2 (||delta||^2 + eps)))`` with ``delta_i`` a client's
    update and ``delta`` the aggregate's. When the clients' updates point different ways
    (label skew; noisy, sign-like AdamW steps from few small batches) their mean is much
    shorter than they are, and the server steps further along it. For rank- and
    window-heterogeneous clients the mean of squared updates is taken per component over the
    clients that trained it, by the round's own ``aggregation`` applied to the squared
    updates, so on one tier it is FedExP's formula exactly.
    """
    if aggregation not in ("fedavg", "pad"):
        raise ValueError(f"FedExP needs factor-aligned aggregation, not {aggregation!r}")
    squares = []
    for s in states:
        rank = {k: v.shape[0] if is_a(k) else v.shape[1] for k, v in s.items()}
        squares.append({k: (v.astype(np.float64) - truncate(current, rank[k], [k])[k]) ** 2
                        for k, v in s.items()})
    zeros = {k: np.zeros(v.shape, dtype=np.float64) for k, v in current.items()}
    mean_sq = sum(float(v.sum()) for v in AGGREGATORS[aggregation](squares, weights,
                                                                   zeros).values())
    sq_mean = sum(float(((aggregate[k].astype(np.float64) - x) ** 2).sum())
                  for k, x in current.items())
    return max(1.0, mean_sq / (2.0 * (sq_mean + eps)))


SERVER_STEPS: dict[str, Callable[..., tuple[State, Any]]] = {
    "adam": lambda cur, agg, st, lr, momentum: fedadam_step(cur, agg, st, lr=lr or 1e-3,
                                                            beta1=momentum or 0.9),
    "avgm": lambda cur, agg, st, lr, momentum: fedavgm_step(cur, agg, st, lr=lr or 1.0,
                                                            momentum=momentum or 0.9),
}
"""Server optimizers after aggregation, by ``FedConfig.server_opt`` (``avg`` has none);
``lr``/``momentum`` 0 take each one's default."""


def lora_delta(state: Mapping[str, np.ndarray], scale: float) -> dict[str, np.ndarray]:
    """``scale * B @ A`` per module: the weight change an adapter applies."""
    by_mod: dict[str, dict[str, np.ndarray]] = defaultdict(dict)
    for k, v in state.items():
        by_mod[module_of(k)]["A" if is_a(k) else "B"] = v
    return {m: scale * (d["B"] @ d["A"]) for m, d in by_mod.items()}
