"""Fixtures for compression tests: a tiny model folder loaded as a LoadedModel + calibration."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from edgeweave.compress.calib import Calibration
from edgeweave.models import LoadedModel, load_folder
from tests.conftest import make_cfg, random_model, save_folder


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    # hidden 128 / MLP 256 so every int4 group size (32..128) divides the widths
    cfg = make_cfg(hidden_size=128, intermediate_size=256, num_heads=4, num_kv_heads=2,
                   head_dim=32, tie_word_embeddings=True)
    model = random_model(cfg, seed=1)
    with torch.no_grad():  # GPT-style 0.02 init for the linears: errors do not blow up
        for name, p in model.named_parameters():  # chaotically through the residual stream
            if name.endswith("proj.weight"):
                p.mul_(0.25)
    folder = save_folder(model, tmp_path_factory.mktemp("tiny") / "tiny")
    return load_folder(folder)


@pytest.fixture(scope="module")
def calib(tiny_lm: LoadedModel) -> Calibration:
    return Calibration.random(tiny_lm.config.vocab_size, n=16, seq_len=64, seed=0)


@pytest.fixture(scope="module")
def probe_ids() -> torch.Tensor:
    return torch.randint(0, 128, (2, 24), generator=torch.Generator().manual_seed(5))


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEWEAVE_HOME", str(tmp_path / "home"))
