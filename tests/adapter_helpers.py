"""Shared by the adapter tests: a tiny model, two adapters with random non-zero factors saved
by the real ``save_adapter``, their merged models (``merge_lora``), and logits of a run."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from edgeweave.finetune.adapter import save_adapter
from edgeweave.finetune.config import LoRAConfig
from edgeweave.finetune.lora import apply_lora, merge_lora
from edgeweave.models.fingerprint import checkpoint_fingerprint
from edgeweave.models.llama import BlockModel
from edgeweave.runtime.adapters import AdapterSpec
from edgeweave.runtime.engine import LocalEngine
from tests.conftest import make_cfg, random_model, save_folder

ALL = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
LORAS = {"home-a": LoRAConfig(rank=4, alpha=8, target_modules=ALL),
         "home-b": LoRAConfig(rank=2, alpha=4, target_modules=("q_proj", "v_proj", "down_proj"),
                              layers=(1, 3))}
PROMPT = [5, 9, 14, 7, 30, 11]  # token ids of the tiny word-level vocabulary
# fp32 everywhere: the unmerged delta (x A^T) B^T and the merged (W + B A) x differ only in
# summation order; measured max |diff| 1.9e-6 (torch) and 2.0e-6 (ONNX Runtime)
ATOL = 1e-4


def adapter_model(cfg, lora: LoRAConfig, seed: int) -> BlockModel:
    """The base (seed 0) with LoRA whose A and B are random and non-zero."""
    m = apply_lora(random_model(cfg, 0), lora)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if ".lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return m.eval()


def build_world(root: Path) -> dict:
    """The tiny base folder, the adapter folders (``specs``) and every merged model."""
    cfg = make_cfg()
    folder = save_folder(random_model(cfg, 0), root / "tiny-llama")
    fp = checkpoint_fingerprint(folder)
    merged, specs = {}, []
    for seed, (name, lora) in enumerate(LORAS.items(), start=1):
        m = adapter_model(cfg, lora, seed)
        save_adapter(root / name, m, lora, base="tiny-llama", base_fingerprint=fp)
        merged[name] = merge_lora(m)
        specs.append(AdapterSpec(name, root / name))
    merged["tiny-llama"] = random_model(cfg, 0)
    return {"root": root, "cfg": cfg, "folder": folder, "merged": merged, "specs": specs}


def world_fixture(tmp_path_factory) -> Iterator[dict]:  # noqa: ANN001
    root = tmp_path_factory.mktemp("adapters")
    import pytest

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EDGEWEAVE_HOME", str(root / "home"))  # ONNX exports of the module
        yield build_world(root)


def run_logits(engine, steps: int = 3) -> np.ndarray:  # noqa: ANN001
    """Prefill PROMPT, then feed the greedy token ``steps`` times: (steps + 1, vocab)."""
    out = [engine.prefill(PROMPT)]
    for _ in range(steps):
        out.append(engine.decode(int(out[-1].argmax())))
    return np.stack(out)


def reference(model: BlockModel, steps: int = 3) -> np.ndarray:
    return run_logits(LocalEngine(model, 64), steps)
