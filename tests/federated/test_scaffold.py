"""SCAFFOLD control variates: the maths against the paper's formula, the server's counting
for heterogeneous ranks, and a simulation where every client's variate lives in its Flower
``context.state`` across rounds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgeweave.errors import ConfigError
from edgeweave.federated.client import LOCAL_CONTROL, make_client_app
from edgeweave.federated.config import FedConfig
from edgeweave.federated.hetero import Tier
from edgeweave.federated.run import client_mods, run_strategy
from edgeweave.federated.scaffold import (
    GradientControl,
    client_update,
    local_slice,
    merge_local,
    server_update,
)
from edgeweave.federated.simulation import make_local_grid

A, B = "layers.0.self_attn.q_proj.lora_A.weight", "layers.0.self_attn.q_proj.lora_B.weight"


def test_with_sgd_the_mean_raw_gradient_is_the_papers_option_two() -> None:
    """c_i+ = c_i - c + (x - y_i) / (K lr) for K corrected SGD steps (Karimireddy et al.)."""
    rng = np.random.default_rng(0)
    target = torch.tensor(rng.normal(size=(3, 5)), dtype=torch.float32)
    p = torch.nn.Parameter(torch.tensor(rng.normal(size=(3, 5)), dtype=torch.float32))
    c_global = {A: rng.normal(size=(3, 5)).astype(np.float32)}
    c_local = {A: rng.normal(size=(3, 5)).astype(np.float32)}
    x = p.detach().clone()
    hook = GradientControl({A: p}, c_global, c_local)
    opt = torch.optim.SGD([p], lr=0.05)
    steps = 6
    for _ in range(steps):
        opt.zero_grad()
        ((p - target) ** 2).sum().backward()
        hook()
        opt.step()
    new, delta = client_update(c_local, hook.mean_gradients())
    option2 = c_local[A] - c_global[A] + (x - p.detach()).numpy() / (steps * 0.05)
    np.testing.assert_allclose(new[A], option2, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(delta[A], new[A] - c_local[A], rtol=1e-6)


def test_the_correction_is_applied_to_the_gradient() -> None:
    p = torch.nn.Parameter(torch.zeros(2, 2))
    hook = GradientControl({A: p}, {A: np.full((2, 2), 3.0, np.float32)},
                           {A: np.ones((2, 2), np.float32)})
    p.grad = torch.full((2, 2), 0.5)
    hook()
    assert torch.allclose(p.grad, torch.full((2, 2), 2.5))  # g - c_i + c
    np.testing.assert_allclose(hook.mean_gradients()[A], 0.5)  # the raw one is recorded


def test_server_divides_each_rank_component_by_the_clients_that_hold_it() -> None:
    control = {A: np.zeros((4, 3), np.float32), B: np.zeros((5, 4), np.float32)}
    small = {A: np.ones((2, 3), np.float32), B: np.ones((5, 2), np.float32)}
    big = {A: np.full((4, 3), 3.0, np.float32), B: np.full((5, 4), 3.0, np.float32)}
    ranks = [2, 4, 4]  # the third client did not take part this round
    out = server_update(control, [small, big], ranks)
    np.testing.assert_allclose(out[A][:2], (1 + 3) / 3)
    np.testing.assert_allclose(out[A][2:], 3 / 2)
    np.testing.assert_allclose(out[B][:, :2], (1 + 3) / 3)
    np.testing.assert_allclose(out[B][:, 2:], 3 / 2)


def test_local_slices_start_at_zero_and_merge_keeps_other_blocks() -> None:
    like = {A: np.ones((2, 3), np.float32)}
    assert not local_slice({}, like)[A].any()
    other = "layers.1.self_attn.q_proj.lora_A.weight"
    merged = merge_local({other: np.ones((2, 3), np.float32)}, {A: np.full((2, 3), 2.0)})
    assert set(merged) == {A, other} and merged[A][0, 0] == 2.0


def test_config_refuses_scaffold_with_svd() -> None:
    with pytest.raises(ConfigError, match="re-bases"):
        FedConfig(drift="scaffold", aggregation="svd")
    with pytest.raises(ConfigError, match="drift"):
        FedConfig(drift="fedsa")


TIERS = (Tier("micro", 512, rank=2, window=1), Tier("edge", 2048, rank=4, window=2),
         Tier("gateway", 8192, rank=4, window=None))


def test_client_variates_survive_rounds_in_context_state(tiny_folder, tmp_home,
                                                       one_torch_thread) -> None:
    """After every round the server's c is the mean of the clients' stored c_i (per rank
    component, over the clients that can hold it): true only if each client kept its c_i
    from one round to the next and sent c_i(new) - c_i(old)."""
    cfg = FedConfig(model=str(tiny_folder), task="pattern", num_clients=3, rounds=3,
                    aggregation="pad", local_steps=3, lr=2e-2, seq_len=12, timeout_s=60,
                    tiers=TIERS, region=(2, 4), targets=("q_proj", "v_proj"),
                    drift="scaffold")
    app = make_client_app(client_mods(cfg))
    nodes = [1, 2, 3]
    grid = make_local_grid({n: app for n in nodes},
                           {n: {"partition-id": i, "memory-mb": cfg.memory_of(i)}
                            for i, n in enumerate(nodes)}, cfg.to_run_config(), workers=3)
    try:
        res = run_strategy(cfg, grid)
        stored = {}
        for n in nodes:
            rec = grid.context(n).state[LOCAL_CONTROL]
            stored[n] = dict(zip(rec.keys(), rec.to_numpy_ndarrays(), strict=True))
    finally:
        grid.shutdown()
    assert res["final_eval"]["loss"] < res["initial_eval"]["loss"]
    for r in res["rounds"]:
        assert r["control_deltas"] == 3 and r["bytes_control_up"] > 0
        assert all(c["bytes_control_down"] > 0 for c in r["clients"])
    norms = [r["control_norm"] for r in res["rounds"]]
    assert norms[0] > 0 and len(set(norms)) == len(norms)
    control = res["final_control"]
    ranks = [2, 4, 4]  # memory 512 / 2048 / 8192 -> micro, edge, gateway
    # the micro client's window moved over both blocks: it holds variates for keys of both
    assert {k.split(".")[1] for k in stored[1]} == {"2", "3"}
    for key, c in control.items():
        axis = 0 if ".lora_A." in key else 1
        total = np.zeros(c.shape, np.float64)
        for n in nodes:
            v = stored[n].get(key)
            if v is None:
                continue
            if axis == 0:
                total[:v.shape[0]] += v
            else:
                total[:, :v.shape[1]] += v
        count = np.array([sum(r > j for r in ranks) for j in range(c.shape[axis])], float)
        mean = total / (count[:, None] if axis == 0 else count[None, :])
        np.testing.assert_allclose(c, mean, rtol=1e-4, atol=1e-6)
