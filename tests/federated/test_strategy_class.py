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


def test_fedexp_moves_the_global_by_its_step_along_the_aggregate(tiny_folder):
    import numpy as np

    from edgeweave.federated.aggregate import extrapolation, zero_pad_mean

    cfg = FedConfig(**{**_cfg(tiny_folder).__dict__, "server_opt": "fedexp"})
    s = HeteroLoRA(cfg, (2, 3))
    a = "layers.2.self_attn.q_proj.lora_A.weight"
    s._global = {a: np.zeros((4, 3), dtype=np.float32)}
    # rank 2 and rank 4 clients that disagree on the shared components
    big = np.full((4, 3), 0.1, dtype=np.float32)
    big[:2] = -1.0
    states = [{a: np.ones((2, 3), dtype=np.float32)}, {a: big}]
    record: dict = {}
    out = s._aggregate(1, states, [1.0, 1.0], [], record)
    plain = zero_pad_mean(states, [1.0, 1.0], s._global)
    eta = extrapolation(s._global, plain, states, [1.0, 1.0], "pad")
    assert record["server_lr"] == pytest.approx(eta) and eta > 1.0
    np.testing.assert_allclose(out[a], eta * plain[a], rtol=1e-6)
    assert out[a].dtype == np.float32
