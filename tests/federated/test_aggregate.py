"""Aggregation maths against hand-computed cases, and rolling-window evenness."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from edgeweave.errors import ConfigError
from edgeweave.federated.aggregate import (
    extrapolation,
    fedadam_step,
    fedavgm_step,
    lora_delta,
    svd_redistribute,
    truncate,
    weighted_mean,
    zero_pad_mean,
)
from edgeweave.federated.config import FedConfig
from edgeweave.federated.hetero import DEFAULT_TIERS, Tier, assign, rolling_window, tier_for

A, B = "layers.0.self_attn.q_proj.lora_A.weight", "layers.0.self_attn.q_proj.lora_B.weight"
A1 = "layers.1.self_attn.q_proj.lora_A.weight"


def test_fedavg_weighted_and_missing_keys_keep_global():
    prev = {A: np.zeros((1, 2)), A1: np.full((1, 2), 7.0)}
    s1, s2 = {A: np.array([[1.0, 2.0]])}, {A: np.array([[4.0, 8.0]])}
    out = weighted_mean([s1, s2], [1, 3], prev)
    np.testing.assert_allclose(out[A], [[(1 + 12) / 4, (2 + 24) / 4]])
    np.testing.assert_allclose(out[A1], [[7.0, 7.0]])  # nobody trained block 1


def test_zero_pad_truncate_by_hand():
    # Global rank 2; client 1 rank 1 (weight 1), client 2 rank 2 (weight 1).
    prev = {A: np.full((2, 2), 9.0), B: np.full((3, 2), 9.0)}
    c1 = {A: np.array([[1.0, 1.0]]), B: np.array([[1.0], [2.0], [3.0]])}
    c2 = {A: np.array([[3.0, 3.0], [5.0, 6.0]]), B: np.array([[3.0, 1.0], [4.0, 1.0], [5.0, 1.0]])}
    out = zero_pad_mean([c1, c2], [1.0, 1.0], prev)
    # component 0 averaged over both clients, component 1 only over client 2
    np.testing.assert_allclose(out[A], [[2.0, 2.0], [5.0, 6.0]])
    np.testing.assert_allclose(out[B], [[2.0, 1.0], [3.0, 1.0], [4.0, 1.0]])
    # truncation is what a rank-1 client receives
    t = truncate(out, 1)
    assert t[A].shape == (1, 2) and t[B].shape == (3, 1)
    np.testing.assert_allclose(t[B][:, 0], [2.0, 3.0, 4.0])
    with pytest.raises(ValueError, match="exceeds"):
        zero_pad_mean([{A: np.ones((3, 2))}], [1.0], {A: np.ones((2, 2))})


def test_svd_redistribution_is_exact_mean_of_products_and_best_truncation():
    rng = np.random.default_rng(0)
    prev = {A: np.zeros((4, 6)), B: np.zeros((5, 4))}
    c1 = {A: rng.normal(size=(1, 6)), B: rng.normal(size=(5, 1))}
    c2 = {A: rng.normal(size=(2, 6)), B: rng.normal(size=(5, 2))}
    out = svd_redistribute([c1, c2], [1.0, 3.0], prev)
    mean = (c1[B] @ c1[A] + 3 * (c2[B] @ c2[A])) / 4
    np.testing.assert_allclose(out[B] @ out[A], mean, atol=1e-10)  # rank 3 <= 4: exact
    # a rank-1 client receives the best rank-1 approximation (Eckart-Young)
    t = truncate(out, 1)
    u, s, vt = np.linalg.svd(mean)
    np.testing.assert_allclose(t[B] @ t[A], s[0] * np.outer(u[:, 0], vt[0]), atol=1e-10)
    d = lora_delta(out, 2.0)
    np.testing.assert_allclose(d["layers.0.self_attn.q_proj"], 2 * mean, atol=1e-10)


def test_svd_by_hand_diagonal():
    prev = {A: np.array([[0.3, 0.1], [0.5, -0.2]]), B: np.zeros((2, 2))}
    c = {A: np.array([[2.0, 0.0]]), B: np.array([[0.0], [2.0]])}  # product [[0,0],[4,0]]
    out = svd_redistribute([c], [1.0], prev)
    np.testing.assert_allclose(out[B] @ out[A], [[0, 0], [4, 0]], atol=1e-12)
    np.testing.assert_allclose(np.abs(out[A][0]), [2.0, 0.0])  # sqrt(4) on each side
    # the zero-singular-value component is re-seeded from the old A with B = 0
    np.testing.assert_allclose(out[A][1], [0.5, -0.2])
    np.testing.assert_allclose(out[B][:, 1], [0.0, 0.0])


def test_fedadam_by_hand():
    cur, agg = {A: np.array([1.0])}, {A: np.array([3.0])}
    out, st = fedadam_step(cur, agg, None, lr=0.1, beta1=0.9, beta2=0.99, tau=1e-3)
    m, v = 0.1 * 2.0, 0.01 * 4.0
    np.testing.assert_allclose(out[A], [1.0 + 0.1 * m / (np.sqrt(v) + 1e-3)])
    out2, st = fedadam_step(out, agg, st, lr=0.1, beta1=0.9, beta2=0.99, tau=1e-3)
    d2 = 3.0 - out[A][0]
    m2, v2 = 0.9 * m + 0.1 * d2, 0.99 * v + 0.01 * d2 ** 2
    np.testing.assert_allclose(out2[A], [out[A][0] + 0.1 * m2 / (np.sqrt(v2) + 1e-3)])


def test_fedexp_step_size_by_hand():
    cur = {A: np.zeros((1, 2))}
    # two clients that disagree on the second coordinate: updates (2, 2) and (2, -2)
    c1, c2 = {A: np.array([[2.0, 2.0]])}, {A: np.array([[2.0, -2.0]])}
    agg = weighted_mean([c1, c2], [1.0, 1.0], cur)  # (2, 0)
    eta = extrapolation(cur, agg, [c1, c2], [1.0, 1.0], "fedavg", eps=0.0)
    assert eta == pytest.approx(8.0 / (2 * 4.0))  # mean ||d_i||^2 = 8, ||d||^2 = 4: eta 1
    # weighted 3:1: mean ||d_i||^2 = 0.75 * 8 + 0.25 * 37
    c3 = {A: np.array([[1.0, 6.0]])}
    agg = weighted_mean([c1, c3], [3.0, 1.0], cur)  # (1.75, 3.0)
    want = (0.75 * 8.0 + 0.25 * 37.0) / (2 * (1.75 ** 2 + 3.0 ** 2))
    assert extrapolation(cur, agg, [c1, c3], [3.0, 1.0], "fedavg", eps=0.0) == (
        pytest.approx(max(1.0, want)))
    # clients that agree exactly never get a step below plain averaging
    assert extrapolation(cur, c1, [c1, c1], [1.0, 1.0], "fedavg") == 1.0
    # opposite updates: a short mean, a long step
    c4 = {A: np.array([[-1.9, -2.0]])}
    agg = weighted_mean([c1, c4], [1.0, 1.0], cur)
    assert extrapolation(cur, agg, [c1, c4], [1.0, 1.0], "fedavg", eps=0.0) > 100


def test_fedexp_heterogeneous_ranks_average_each_component_over_who_trained_it():
    cur = {A: np.zeros((2, 1)), B: np.zeros((1, 2))}
    small = {A: np.array([[1.0]]), B: np.array([[1.0]])}  # rank 1
    big = {A: np.array([[3.0], [4.0]]), B: np.array([[3.0, 4.0]])}  # rank 2
    agg = zero_pad_mean([small, big], [1.0, 1.0], cur)  # component 0: 2, component 1: 4
    # component 0 of A and B: mean of (1, 9) = 5 each; component 1: only big trained it, 16
    want = (5 + 5 + 16 + 16) / (2 * (4 + 4 + 16 + 16))
    assert extrapolation(cur, agg, [small, big], [1.0, 1.0], "pad", eps=0.0) == (
        pytest.approx(max(1.0, want)))
    # a client's own update is measured against the slice of the global it received
    moved = {A: np.array([[5.0], [1.0]]), B: np.array([[0.0, 0.0]])}
    s1, s2 = {A: np.array([[6.0]])}, {A: np.array([[4.0]])}  # +1 and -1 on component 0
    agg = zero_pad_mean([s1, s2], [1.0, 1.0], moved)  # back to 5: the mean update is 0
    assert extrapolation(moved, agg, [s1, s2], [1.0, 1.0], "pad", eps=1e-3) == (
        pytest.approx(1.0 / (2 * 1e-3)))  # mean of 1 and 1
    with pytest.raises(ValueError, match="factor-aligned"):
        extrapolation(cur, agg, [small], [1.0], "svd")


def test_fedavgm_by_hand():
    cur, agg = {A: np.array([1.0])}, {A: np.array([3.0])}
    out, v = fedavgm_step(cur, agg, None, lr=0.5, momentum=0.9)
    np.testing.assert_allclose(out[A], [1.0 + 0.5 * 2.0])  # v = delta = 2
    out2, v = fedavgm_step(out, {A: np.array([2.5])}, v, lr=0.5, momentum=0.9)
    np.testing.assert_allclose(out2[A], [2.0 + 0.5 * (0.9 * 2.0 + 0.5)])  # v = 0.9 v + delta
    plain, _ = fedavgm_step(cur, agg, None, lr=1.0, momentum=0.0)
    np.testing.assert_allclose(plain[A], agg[A])  # lr 1, no momentum: FedAvg itself


@pytest.mark.parametrize("n,size", [(8, 2), (8, 3), (5, 4), (6, 6)])
def test_rolling_window_trains_every_block_evenly(n, size):
    counts = Counter()
    for r in range(1, n + 1):
        w = rolling_window(r, n, size)
        assert len(w) == size and len(set(w)) == size
        counts.update(w)
    assert set(counts) == set(range(n)) and set(counts.values()) == {size}


def test_tiers_and_assignment():
    assert tier_for(600, DEFAULT_TIERS).name == "micro"
    assert tier_for(100, DEFAULT_TIERS).name == "micro"  # below every budget: smallest
    assert tier_for(10_000, DEFAULT_TIERS).name == "gateway"
    region = (22, 23, 24, 25, 26, 27, 28, 29)
    a = assign(Tier("t", 512, rank=2, window=2), region, server_round=8)
    assert a.rank == 2 and a.layers == (22, 29)  # wraps around the region
    assert assign(Tier("g", 8192, 8), region, 3).layers == region
    with pytest.raises(ConfigError):
        Tier("bad", 512, rank=0)


def test_fed_config_validates_and_round_trips():
    cfg = FedConfig(region=(22, 30), client_memory_mb=(512,) * 8)
    assert FedConfig.from_run_config(cfg.to_run_config()) == cfg
    with pytest.raises(ConfigError, match="factor-aligned"):
        FedConfig(aggregation="svd", server_opt="adam")
    with pytest.raises(ConfigError, match="factor-aligned"):
        FedConfig(aggregation="svd", server_opt="avgm")
    with pytest.raises(ConfigError, match="factor-aligned"):
        FedConfig(aggregation="svd", server_opt="fedexp")
    with pytest.raises(ConfigError, match="one rank"):
        FedConfig(aggregation="fedavg")
    with pytest.raises(ConfigError, match="aggregation"):
        FedConfig(aggregation="median")
    with pytest.raises(ConfigError, match="re-bases A"):
        FedConfig(aggregation="svd", freeze_a=True)
    with pytest.raises(ConfigError, match="lr_schedule"):
        FedConfig(lr_schedule="step")
    with pytest.raises(ConfigError, match="lr_final"):
        FedConfig(lr_final=1.5)
    fa = FedConfig(freeze_a=True)
    assert FedConfig.from_run_config(fa.to_run_config()) == fa
    assert fa.to_run_config()["freeze-a"] is True


@pytest.mark.parametrize(("schedule", "mid"), [("constant", 1.0), ("linear", 0.55),
                                               ("cosine", 0.55)])
def test_client_lr_schedule_by_hand(schedule, mid):
    cfg = FedConfig(rounds=5, lr=0.01, lr_schedule=schedule, lr_final=0.1)
    lrs = [cfg.client_lr(r) for r in range(1, 6)]
    assert lrs[0] == pytest.approx(0.01)
    assert lrs[2] == pytest.approx(0.01 * mid)  # halfway: shape 0.5 -> 0.1 + 0.9 * 0.5
    assert lrs[-1] == pytest.approx(0.01 if schedule == "constant" else 0.001)
    assert all(b <= a for a, b in zip(lrs, lrs[1:], strict=False))
    if schedule == "cosine":  # slower than linear at the start, faster in the middle
        assert lrs[1] == pytest.approx(0.01 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4))))
    assert FedConfig(rounds=1, lr=0.01, lr_schedule="cosine").client_lr(1) == 0.01
