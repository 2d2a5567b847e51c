"""Adapter-only files and merging.

An adapter folder holds ``adapter.safetensors`` (LoRA A/B only) and ``manifest.json``
(LoRAConfig, base model name and fingerprint, sha256 of the weights, training metrics),
written atomically. :func:`merge_to_folder` folds an adapter into a full-precision reload of
its base and writes a Hugging Face style folder that ``models.load`` reads like any model.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgeweave.errors import ArtifactError
from edgeweave.finetune.config import ADAPTER_KIND as KIND
from edgeweave.finetune.config import ADAPTER_MANIFEST as MANIFEST
from edgeweave.finetune.config import ADAPTER_WEIGHTS as WEIGHTS
from edgeweave.finetune.config import LoRAConfig
from edgeweave.finetune.lora import adapter_state, apply_lora, load_adapter_state, merge_lora
from edgeweave.paths import atomic_dir


def save_adapter(folder: str | Path, model: nn.Module, lora: LoRAConfig, *, base: str = "",
                 base_fingerprint: str = "", metrics: dict[str, Any] | None = None) -> Path:
    return save_adapter_state(folder, adapter_state(model), lora, base=base,
                              base_fingerprint=base_fingerprint, metrics=metrics)


def save_adapter_state(folder: str | Path, state: dict[str, torch.Tensor], lora: LoRAConfig, *,
                       base: str = "", base_fingerprint: str = "",
                       metrics: dict[str, Any] | None = None) -> Path:
    """Write an adapter folder from its tensors (PEFT keys without the adapter name), e.g.
    the global adapter a federated run ends with."""
    from safetensors.torch import save_file

    folder = Path(folder)
    state = {k: v.detach().float().contiguous() for k, v in state.items()}
    with atomic_dir(folder) as tmp:
        save_file(state, str(tmp / WEIGHTS))
        digest = hashlib.sha256((tmp / WEIGHTS).read_bytes()).hexdigest()
        manifest = {"kind": KIND, "version": 1, "lora": lora.to_dict(), "base": base,
                    "base_fingerprint": base_fingerprint, "weights_sha256": digest,
                    "tensors": len(state),
                    "adapter_bytes": sum(v.numel() * v.element_size() for v in state.values()),
                    "metrics": metrics or {}}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return folder


def read_adapter(folder: str | Path) -> tuple[dict[str, torch.Tensor], LoRAConfig, dict]:
    """Weights, config and manifest of an adapter folder, with the hash verified."""
    from safetensors.torch import load_file

    folder = Path(folder)
    man_file, w_file = folder / MANIFEST, folder / WEIGHTS
    if not man_file.is_file() or not w_file.is_file():
        raise ArtifactError(f"{folder} is not an adapter folder (needs {MANIFEST} and "
                            f"{WEIGHTS}); save one with `edgeweave finetune`")
    manifest = json.loads(man_file.read_text())
    if manifest.get("kind") != KIND:
        raise ArtifactError(f"{man_file} describes a {manifest.get('kind')!r}, not an adapter")
    if hashlib.sha256(w_file.read_bytes()).hexdigest() != manifest["weights_sha256"]:
        raise ArtifactError(f"{w_file} does not match its manifest hash: the file was changed "
                            "or truncated; save the adapter again")
    return load_file(str(w_file)), LoRAConfig.from_dict(manifest["lora"]), manifest


def attach_adapter(model: nn.Module, folder: str | Path) -> nn.Module:
    """Inject the adapter's LoRA layout into ``model`` and load its weights."""
    state, lora, _ = read_adapter(folder)
    apply_lora(model, lora)
    load_adapter_state(model, state)
    return model.eval().requires_grad_(False)


def _model_state_for_hf(model: nn.Module) -> dict[str, torch.Tensor]:
    state = {}
    for k, v in model.state_dict().items():
        state[k if k == "lm_head.weight" else f"model.{k}"] = v.detach().contiguous().clone()
    if model.cfg.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    return state


def merge_to_folder(base: str | Path, adapter: str | Path, out: str | Path) -> Path:
    """Load ``base`` in fp32, fold ``adapter`` in, write an HF-style model folder at ``out``."""
    from safetensors.torch import save_file

    from edgeweave.models import catalog

    lm = catalog.load(str(base))
    _, lora, manifest = read_adapter(adapter)
    if manifest.get("base_fingerprint") and manifest["base_fingerprint"] != lm.fingerprint:
        raise ArtifactError(f"adapter {adapter} was trained on another base "
                            f"({manifest.get('base')}); merge it into that model")
    model = merge_lora(attach_adapter(lm.model, adapter))
    out = Path(out)
    with atomic_dir(out) as tmp:
        save_file(_model_state_for_hf(model), str(tmp / "model.safetensors"))
        (tmp / "config.json").write_text(json.dumps(model.cfg.to_hf(), indent=2))
        for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
                     "special_tokens_map.json"):
            if (lm.folder / name).is_file():
                shutil.copy2(lm.folder / name, tmp / name)
        (tmp / MANIFEST).write_text(json.dumps({
            "kind": "edgeweave-merged-lora", "version": 1, "base": lm.name,
            "base_fingerprint": lm.fingerprint, "adapter": str(adapter),
            "adapter_sha256": manifest["weights_sha256"], "lora": lora.to_dict()},
            indent=2, sort_keys=True))
    return out
