"""``HeteroLoRA`` is a module-level Flower strategy: importable, and a variant is a subclass
that overrides one method (as Flower's ``FedProx(FedAvg)`` overrides ``configure_train``)."""

from __future__ import annotations

import pytest
from flwr.serverapp.strategy import Strategy

from edgeweave.federated.config import FedConfig
from edgeweave.federated.hetero import Tier
from edgeweave.federated.run import simulate
from edgeweave.federated.strategy import HeteroLoRA, make_strategy


class HalfLR(HeteroLoRA):
    """Every client trains at half the scheduled learning rate."""

    def configure_train(self, server_round, arrays, config, grid):
        msgs = list(super().configure_train(server_round, arrays, config, grid))
        for m in msgs:
            m.content["config"]["lr"] = m.content["config"]["lr"] / 2
        return msgs


def _cfg(folder) -> FedConfig:
    return FedConfig(model=str(folder), task="pattern", num_clients=2, rounds=1,
                     aggregation="pad", local_steps=2, lr=2e-2, seq_len=12, timeout_s=60,
                     tiers=(Tier("micro", 512, rank=2, window=1),
                            Tier("edge", 2048, rank=4, window=None)),
                     region=(2, 4), targets=("q_proj",))


def test_the_factory_builds_the_module_level_class(tiny_folder):
    s = make_strategy(_cfg(tiny_folder), (2, 3))
    assert type(s) is HeteroLoRA and isinstance(s, Strategy)
    assert HeteroLoRA.__module__ == "edgeweave.federated.strategy"


def test_a_subclass_overriding_one_method_runs_a_federation(tiny_folder, tmp_home,
                                                            one_torch_thread):
    cfg = _cfg(tiny_folder)
    res = simulate(cfg, workers=2, evaluate=False, strategy=HalfLR)
    (r,) = res["rounds"]
    assert r["replied"] == 2 and r["failed"] == 0
    assert [c["lr"] for c in r["clients"]] == pytest.approx([cfg.client_lr(1) / 2] * 2)
