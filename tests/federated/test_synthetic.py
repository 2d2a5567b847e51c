"""GPT-FL synthetic warm-up: the window grammars describe the real data's format, every
synthetic window follows it whatever the weights, and the server starts federation from the
adapter it trained on them."""

from __future__ import annotations

import re

import numpy as np
import pytest

from edgeweave.bench.tasks import get_task, load_split
from edgeweave.errors import ConfigError
from edgeweave.federated.config import FedConfig
from edgeweave.federated.hetero import Tier
from edgeweave.federated.run import initial_arrays, simulate
from edgeweave.federated.synthetic import SPECS, synthesize
from tests.conftest import bpe_folder

pytestmark = pytest.mark.integration  # the bundled tokenizer and the task data


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory):
    return bpe_folder(tmp_path_factory.mktemp("bpe") / "tiny-bpe")


@pytest.mark.parametrize("name", sorted(SPECS))
def test_the_grammar_admits_every_real_window(name: str) -> None:
    split = load_split(name)
    pattern = re.compile(SPECS[name].pattern)
    bad = [i.query for i in split.train + split.test if not pattern.fullmatch(" " + i.query)]
    assert not bad, bad[:3]


def test_synthetic_windows_follow_the_format_for_every_label(folder) -> None:
    from edgeweave.models.checkpoint import load_folder

    made = synthesize(load_folder(folder), ("activity", "occupancy"), per_label=1, seed=3)
    want = {(t, lab) for t in ("activity", "occupancy") for lab in get_task(t).template.choices}
    assert {(s.task, s.label) for s in made} == want
    for s in made:
        assert re.fullmatch(SPECS[s.task].pattern, " " + s.window), s
    with pytest.raises(ConfigError, match=">= 1"):
        synthesize(None, ("activity",), per_label=0)
    with pytest.raises(ConfigError, match="no synthetic spec"):
        synthesize(None, ("wikiqa",), per_label=1)


def test_federation_starts_from_the_warmed_adapter(folder, tmp_home, one_torch_thread) -> None:
    tiers = (Tier("edge", 2048, rank=2, window=None), Tier("gateway", 8192, rank=2))
    cfg = FedConfig(model=str(folder), task="iot", num_clients=2, rounds=1, local_steps=1,
                    aggregation="fedavg", lr=2e-2, seq_len=64, tiers=tiers, region=(1, 2),
                    timeout_s=120, synthetic_per_label=1, synthetic_steps=3)
    res = simulate(cfg, workers=2)
    w = res["warmup"]
    assert w["examples"] == 6 and w["steps"] == 3 and w["samples"]
    # the warm start moved the adapter away from the zero update before round 1
    init = initial_arrays(cfg, tuple(res["region"]))
    assert res["initial_eval"] is not None
    b_keys = [k for k in init if ".lora_B." in k]
    assert all(not init[k].any() for k in b_keys)  # LoRA starts with B = 0 ...
    assert res["rounds"][0]["replied"] == 2
    with pytest.raises(ConfigError, match="task='iot'"):
        FedConfig(task="pattern", synthetic_per_label=2)
    cold = simulate(FedConfig(**{**cfg.to_dict(), "tiers": tiers, "synthetic_per_label": 0}),
                    workers=2)
    assert cold["warmup"] is None
    # ... and the warmed run's round-0 evaluation differs from the cold one's
    assert not np.isclose(res["initial_eval"]["loss"], cold["initial_eval"]["loss"])
