"""Unmerged LoRA beside the linears of a torch stage, chosen per session.

A forward hook on each linear some registered adapter targets adds
``(x @ A^T) @ B^T`` (``B`` carries ``alpha / r``, see ``runtime.adapters``) to the base
layer's output, for the adapters of the rows being computed. Which adapter a forward uses
is a context variable set around the engine's step, so the base weights and modules stay
exactly as loaded (quantized linears too: the delta is computed from the layer's input),
sessions without an adapter get the base output unchanged, and a hook costs one context
lookup when no adapter is active.

Rows of one batch may use different adapters (or none): :func:`active` takes one factor
table per row and the hook adds each group's delta to its rows only, so a batched step
over sessions with different adapters stays one base matmul per layer.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from functools import partial

import torch
from torch import nn

from edgeweave.errors import ConfigError
from edgeweave.runtime.adapters import Adapter

Table = dict[str, tuple[torch.Tensor, torch.Tensor]]  # module name -> (A (r, in), B (out, r))

_PARENT = {"q_proj": "self_attn", "k_proj": "self_attn", "v_proj": "self_attn",
           "o_proj": "self_attn", "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "mlp"}
# per batch row: the factor table of its adapter, or None for the base
_HOOKED: weakref.WeakSet[nn.Module] = weakref.WeakSet()
_ACTIVE: ContextVar[tuple[Table | None, ...] | None] = ContextVar("edgeweave_lora", default=None)


def module_name(block: int, module: str) -> str:
    return f"layers.{block}.{_PARENT[module]}.{module}"


def table(adapter: Adapter, start: int, end: int) -> Table:
    """The adapter's factors of blocks ``[start, end)`` as torch tensors (fp32)."""
    return {module_name(i, m): (torch.from_numpy(f.a), torch.from_numpy(f.b))
            for (i, m), f in adapter.within(start, end).items()}


def check(model: nn.Module, t: Table, adapter: str) -> None:
    """Refuse factors that do not fit the model's linears (another model's adapter)."""
    for name, (a, b) in t.items():
        mod = model.get_submodule(name)
        want = (getattr(mod, "in_features", a.shape[1]), getattr(mod, "out_features", b.shape[0]))
        if (a.shape[1], b.shape[0]) != want:
            raise ConfigError(f"adapter {adapter}: {name} maps {a.shape[1]} -> {b.shape[0]} "
                              f"features, the stage's {want[0]} -> {want[1]}: it was trained "
                              "on another model")


def install(model: nn.Module, names: Sequence[str]) -> None:
    """Put the LoRA hook on the modules ``names`` of ``model``, once per module: engines
    that share one model (the embedded deployment, a stage rebuilt on the same host) share
    its hooks, so a delta is never added twice."""
    for name in names:
        mod = model.get_submodule(name)
        if mod not in _HOOKED:
            mod.register_forward_hook(partial(_hook, name))
            _HOOKED.add(mod)


@contextlib.contextmanager
def active(rows: Sequence[Table | None]) -> Iterator[None]:
    """Run the enclosed forward with ``rows[b]``'s adapter on batch row ``b`` (a single
    entry applies to every row); all None: the base alone, no hook does any work."""
    token = _ACTIVE.set(tuple(rows) if any(r is not None for r in rows) else None)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def _hook(name: str, module: nn.Module, inputs: tuple[torch.Tensor, ...],
          output: torch.Tensor) -> torch.Tensor | None:
    rows = _ACTIVE.get()
    if rows is None:
        return None
    x = inputs[0]  # (B, T, in)
    if len(rows) == 1:
        ab = rows[0].get(name) if rows[0] is not None else None
        return None if ab is None else output + lora_delta(x, ab).to(output.dtype)
    out = output.clone()
    groups: dict[int, list[int]] = {}
    for b, t in enumerate(rows):  # rows sharing an adapter: one small matmul pair
        if t is not None and name in t:
            groups.setdefault(id(t), []).append(b)
    for idx in groups.values():
        ab = rows[idx[0]][name]  # type: ignore[index]
        out[idx] += lora_delta(x[idx], ab).to(out.dtype)
    return out


def lora_delta(x: torch.Tensor, ab: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """``(x @ A^T) @ B^T``: rank r in between, so it costs r * (in + out) per token."""
    a, b = ab
    return (x.to(a.dtype) @ a.T) @ b.T
