"""Storage formats for the *frozen* base during LoRA training (QLoRA-style).

``bfloat16`` halves the base; ``int8`` stores each frozen Linear as int8 with one fp32
scale per output channel (4x smaller than fp32) and dequantises per matmul, so gradients
flow to the input (and the adapters) while the weights stay packed. The compression
package has no trainable int8 module yet; when it does, this file should defer to it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

_FORMATS: dict[str, Callable[[nn.Module], nn.Module]] = {}


def register(name: str) -> Callable[[Callable[[nn.Module], nn.Module]],
                                    Callable[[nn.Module], nn.Module]]:
    def deco(fn: Callable[[nn.Module], nn.Module]) -> Callable[[nn.Module], nn.Module]:
        _FORMATS[name] = fn
        return fn
    return deco


class Int8Linear(nn.Module):
    """Frozen Linear with int8 weights (out, in) and per-row fp32 scales (out, 1)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        w = linear.weight.detach().float()
        scale = w.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / 127.0
        self.register_buffer("qweight", torch.round(w / scale).clamp(-127, 127).to(torch.int8))
        self.register_buffer("scale", scale)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float())
        self.in_features, self.out_features = linear.in_features, linear.out_features

    @property
    def weight(self) -> torch.Tensor:  # PEFT reads .weight for dtype/shape checks
        return self.qweight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = None if self.bias is None else self.bias.to(x.dtype)
        return _Int8Matmul.apply(x, self.qweight, self.scale, b)


class _Int8Matmul(torch.autograd.Function):
    """``F.linear`` with a dequantized frozen weight that backward re-dequantizes instead of
    keeping: autograd would otherwise save every fp32 weight copy for the backward pass
    (measured: 961 MB of saved tensors with an int8 base vs 558 MB with the fp32 one)."""

    @staticmethod
    def forward(ctx, x, qweight, scale, bias):  # noqa: ANN001, ANN205
        ctx.save_for_backward(qweight, scale)
        return F.linear(x, qweight.to(x.dtype) * scale.to(x.dtype), bias)

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        qweight, scale = ctx.saved_tensors
        w = qweight.to(grad.dtype) * scale.to(grad.dtype)
        return grad @ w, None, None, None  # the weight, scale and bias are frozen


def _frozen_linears(model: nn.Module) -> list[tuple[nn.Module, str, nn.Linear]]:
    out = []
    for parent in model.modules():
        for child_name, child in parent.named_children():
            if (type(child) is nn.Linear and not child.weight.requires_grad
                    and "lora_" not in child_name and child_name != "lm_head"):
                out.append((parent, child_name, child))
    return out


@register("float32")
def _fp32(model: nn.Module) -> nn.Module:
    return model


@register("bfloat16")
def _bf16(model: nn.Module) -> nn.Module:
    for p in model.parameters():
        if not p.requires_grad:
            p.data = p.data.to(torch.bfloat16)
    # llama.py's rotary tables are fp32 and would promote q/k back to fp32 while v stays
    # bf16; build them once at full length and store them in bf16 too (Gemma 3 has two).
    from edgeweave.models.llama import Rotary

    for rot in model.modules():
        if isinstance(rot, Rotary):
            rot.tables(model.cfg.max_position)
            rot._cos, rot._sin = rot._cos.to(torch.bfloat16), rot._sin.to(torch.bfloat16)
    return model


@register("int8")
def _int8(model: nn.Module) -> nn.Module:
    for parent, name, lin in _frozen_linears(model):
        setattr(parent, name, Int8Linear(lin))
    return model


def convert_base(model: nn.Module, base_dtype: str) -> nn.Module:
    """Store the frozen (non-adapter) weights of ``model`` in ``base_dtype``, in place."""
    return _FORMATS[base_dtype](model)


def base_bytes(model: nn.Module) -> int:
    """Bytes held by frozen parameters and buffers (the base model's footprint)."""
    seen, total = set(), 0
    for t in [p for p in model.parameters() if not p.requires_grad] + list(model.buffers()):
        if t is None or t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        total += t.numel() * t.element_size()
    return total
