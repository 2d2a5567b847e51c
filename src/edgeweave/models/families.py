"""The registry of architecture families: what tells them apart, and which class runs each.

A family is a frozen record, not a branch in the code: its Hugging Face names (``model_type``
in ``config.json``, the ``architectures`` entry it writes back), its small switches (q/k/v
bias, QK-norm, norms per block), and the import path of its :class:`BlockModel` subclass,
imported only when a model is built, so reading a config never imports torch.
One file per family under ``models/`` holds the model code (``llama.py``, ``qwen3.py``,
``gemma3.py``); adding a family is one record here and one such file.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from edgeweave.errors import CheckpointError

if TYPE_CHECKING:
    from edgeweave.models.llama import BlockModel


@dataclass(frozen=True)
class Family:
    name: str  # ModelConfig.family
    architecture: str  # the HF class name written into config.json's "architectures"
    model_class: str  # "module:Class" of its BlockModel subclass
    model_types: tuple[str, ...] = ()  # HF model_type values read as this family (default: name)
    attention_bias: bool = False  # default q/k/v bias when config.json does not say
    qk_norm: bool = False  # an RMSNorm over head_dim on q and k before RoPE
    norms_per_block: int = 2  # RMSNorms over hidden in one block (Gemma 3's sandwich: 4)
    hidden_act: str = "silu"  # the MLP gate's activation (HF's name)

    @property
    def hf_model_type(self) -> str:
        return (self.model_types or (self.name,))[0]

    def model_cls(self) -> type[BlockModel]:
        module, _, cls = self.model_class.partition(":")
        return getattr(importlib.import_module(module), cls)


_LLAMA = "edgeweave.models.llama:BlockModel"

FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family("llama", "LlamaForCausalLM", _LLAMA),
        Family("mistral", "MistralForCausalLM", _LLAMA),
        Family("qwen2", "Qwen2ForCausalLM", _LLAMA, attention_bias=True),
        Family("qwen3", "Qwen3ForCausalLM", "edgeweave.models.qwen3:Qwen3Model", qk_norm=True),
        # the text-only Gemma 3 (270M, 1B): HF's model_type is gemma3_text
        Family("gemma3", "Gemma3ForCausalLM", "edgeweave.models.gemma3:Gemma3Model",
               model_types=("gemma3_text",), qk_norm=True, norms_per_block=4,
               hidden_act="gelu_pytorch_tanh"),
    )
}

_BY_MODEL_TYPE: dict[str, Family] = {
    t: f for f in FAMILIES.values() for t in (f.model_types or (f.name,))
}


def names() -> str:
    return ", ".join(sorted(FAMILIES))


def family(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise CheckpointError(f"unsupported architecture {name!r}: edgeweave runs "
                              f"{names()} checkpoints") from None


def from_model_type(model_type: object) -> Family:
    """The family that reads a ``config.json`` whose ``model_type`` is ``model_type``."""
    f = _BY_MODEL_TYPE.get(model_type) if isinstance(model_type, str) else None
    if f is None:
        hint = ""
        if model_type == "gemma3":  # the multimodal checkpoint nests the text model
            hint = " (a multimodal Gemma 3: use a text-only Gemma 3 checkpoint, gemma3_text)"
        raise CheckpointError(
            f"unsupported model_type {model_type!r} in config.json{hint}: edgeweave runs "
            f"{', '.join(sorted(_BY_MODEL_TYPE))} checkpoints"
        )
    return f
