"""Embedded simulation on a tiny random model: Flower ClientApps behind our in-process
Grid, heterogeneous tiers, every aggregation, FedAdam/FedProx, Flower's LocalDpMod, and a
client that hangs mid-run without stalling the round beyond its timeout."""

from __future__ import annotations

import math
import threading
import time

import numpy as np
import pytest
import torch

from edgeweave.errors import ConfigError
from edgeweave.federated.config import FedConfig
from edgeweave.federated.hetero import Tier
from edgeweave.federated.run import initial_arrays, simulate

TIERS = (Tier("micro", 512, rank=2, window=1), Tier("edge", 2048, rank=4, window=2),
         Tier("gateway", 8192, rank=4, window=None))


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _cfg(folder, **kw) -> FedConfig:
    base = dict(model=str(folder), task="pattern", num_clients=3, rounds=2, aggregation="pad",
                local_steps=4, lr=2e-2, seq_len=12, timeout_s=60, tiers=TIERS, region=(2, 4),
                targets=("q_proj", "v_proj", "down_proj"))
    base.update(kw)
    return FedConfig(**base)


@pytest.mark.parametrize("kw", [
    {"aggregation": "pad"},
    {"aggregation": "svd", "proximal_mu": 0.1},
    {"aggregation": "pad", "server_opt": "adam", "server_lr": 0.02},
    {"aggregation": "pad", "server_opt": "avgm", "server_lr": 0.5, "server_momentum": 0.5},
    {"aggregation": "pad", "freeze_a": True},
    {"aggregation": "pad", "server_opt": "fedexp"},
])
def test_heterogeneous_rounds_learn_and_only_adapters_travel(tiny_folder, tmp_home, kw):
    res = simulate(_cfg(tiny_folder, **kw), workers=3)
    assert res["final_eval"]["loss"] < res["initial_eval"]["loss"]
    for r in res["rounds"]:
        assert r["replied"] == 3 and r["failed"] == 0
        ranks = sorted(c["rank"] for c in r["clients"])
        assert ranks == [2, 4, 4]  # tiers by memory: micro, edge, gateway
        blocks = sorted(c["blocks"] for c in r["clients"])
        assert blocks == [1, 2, 2]
        assert r["bytes_up"] < 0.05 * 3 * res["full_model_bytes"]
        assert all(c["bytes_up"] == c["bytes_down"] for c in r["clients"])  # same keys back
        # FedExP records its step every round; it never steps short of the plain average
        assert (r["server_lr"] >= 1.0) if kw.get("server_opt") == "fedexp" else (
            "server_lr" not in r)
    if kw.get("freeze_a"):  # LoRA-FA: A is the shared random init after every round
        init = initial_arrays(_cfg(tiny_folder, **kw), tuple(res["region"]))
        a_keys = [k for k in init if ".lora_A." in k]
        assert a_keys and all(np.array_equal(res["final_arrays"][k], init[k]) for k in a_keys)
        assert any(np.abs(res["final_arrays"][k]).sum() > 0 for k in init if ".lora_B." in k)


def test_kept_optimizer_state_survives_rounds_in_each_clients_context(tiny_folder, tmp_home):
    kept = simulate(_cfg(tiny_folder, rounds=3), workers=3)  # kept by default
    fresh = simulate(_cfg(tiny_folder, rounds=3, keep_optimizer=False), workers=3)
    for r in kept["rounds"]:  # the gateway trains every block every round
        gw = [c for c in r["clients"] if c["tier"] == "gateway"]
        assert [c["optimizer-steps"] for c in gw] == [4 * r["round"]]
    assert all(c["optimizer-steps"] == 4 for r in fresh["rounds"] for c in r["clients"])
    assert any(not np.array_equal(kept["final_arrays"][k], fresh["final_arrays"][k])
               for k in kept["final_arrays"])


def test_local_epochs_give_each_home_steps_in_proportion_to_its_examples(tiny_folder,
                                                                         tmp_home):
    cfg = _cfg(tiny_folder, rounds=1, local_epochs=1.0, keep_optimizer=False,
               dirichlet_alpha=0.3)
    clients = simulate(cfg, workers=3)["rounds"][0]["clients"]
    steps = [c["optimizer-steps"] for c in clients]
    assert steps == [math.ceil(c["num-examples"] / cfg.batch_size) for c in clients]
    assert len(set(steps)) > 1  # the skewed split gives the homes different sizes


def test_local_epochs_out_of_range_is_a_config_error():
    with pytest.raises(ConfigError, match="local_epochs"):
        FedConfig(local_epochs=-1.0)


def test_clients_train_with_the_scheduled_lr(tiny_folder, tmp_home):
    cfg = _cfg(tiny_folder, rounds=3, lr_schedule="linear", lr_final=0.25)
    res = simulate(cfg, workers=3)
    for r in res["rounds"]:
        assert [c["lr"] for c in r["clients"]] == pytest.approx([cfg.client_lr(r["round"])] * 3)
    assert [r["clients"][0]["lr"] for r in res["rounds"]] == pytest.approx([2e-2, 1.25e-2, 5e-3])


def test_local_dp_mod_clips_each_update(tiny_folder, tmp_home):
    import numpy as np

    from edgeweave.federated.run import global_lora, initial_arrays

    same_rank = (Tier("edge", 2048, rank=4), Tier("gateway", 8192, rank=4))
    kw = dict(rounds=1, aggregation="fedavg", tiers=same_rank)

    def update_norm(res, cfg):
        init = initial_arrays(cfg, tuple(res["region"]))
        return float(np.sqrt(sum(((res["final_arrays"][k] - v) ** 2).sum()
                                 for k, v in init.items())))

    plain_cfg = _cfg(tiny_folder, **kw)
    dp_cfg = _cfg(tiny_folder, dp_clip=0.01, dp_epsilon=1e6, **kw)
    plain, dp = simulate(plain_cfg, workers=3), simulate(dp_cfg, workers=3)
    assert dp["rounds"][0]["replied"] == 3  # LocalDpMod accepted our same-keys replies
    assert global_lora(dp_cfg, tuple(dp["region"])).rank == 4
    assert update_norm(plain, plain_cfg) > 0.05
    # the mean of updates each clipped to 0.01 (noise ~1e-7 at this epsilon) stays within it
    assert update_norm(dp, dp_cfg) <= 0.01 + 1e-3


def test_hanging_client_does_not_stall_the_round(tiny_folder, tmp_home):
    from edgeweave.federated.client import make_client_app

    release = threading.Event()

    def hang_in_round_2(msg, ctx, call_next):  # a Flower mod: the device goes silent
        if msg.metadata.message_type == "train" and msg.content["config"]["server-round"] == 2:
            release.wait(120)
        return call_next(msg, ctx)

    good, bad = make_client_app(), make_client_app([hang_in_round_2])
    cfg = _cfg(tiny_folder, timeout_s=4, local_steps=2)
    t0 = time.perf_counter()
    try:
        res = simulate(cfg, workers=3, apps={1: good, 2: good, 3: bad})
    finally:
        release.set()
    r1, r2 = res["rounds"]
    assert r1["replied"] == 3
    assert r2["sent"] == 3 and r2["replied"] == 2 and r2["failed"] == 1
    assert r2["seconds"] < cfg.timeout_s + 3
    assert time.perf_counter() - t0 < 60
    assert res["final_eval"] is not None
