"""Sparse routes equal the all-pairs table they replaced (Floyd-Warshall, computed here)."""

from __future__ import annotations

import random

import numpy as np
import pytest

from edgeweave.plan.routes import LinkGraph, Routes
from edgeweave.profile import cost as C
from tests.plan.randfleet import random_fleet


def floyd(fleet, ids, nbytes):
    """The old dense reference: (time, energy along the fastest route) for every pair."""
    n = len(ids)
    idx = {d: k for k, d in enumerate(ids)}
    T = np.full((n, n), np.inf)
    E = np.full((n, n), np.inf)
    np.fill_diagonal(T, 0.0)
    np.fill_diagonal(E, 0.0)
    for ln in fleet.links:
        a, b = idx[ln.a], idx[ln.b]
        for s, t, up in ((a, b, True), (b, a, False)):
            tt = C.hop_time_s(nbytes, ln.profile, up, ln.bandwidth_scale)
            if tt < T[s, t]:
                T[s, t], E[s, t] = tt, C.hop_energy_j(nbytes, ln.profile)
    for k in range(n):
        alt = T[:, k, None] + T[None, k, :]
        better = alt < T
        E = np.where(better, E[:, k, None] + E[None, k, :], E)
        T = np.where(better, alt, T)
    return T, E


def least_energy(fleet, ids, nbytes):
    n = len(ids)
    idx = {d: k for k, d in enumerate(ids)}
    W = np.full((n, n), np.inf)
    np.fill_diagonal(W, 0.0)
    for ln in fleet.links:
        a, b = idx[ln.a], idx[ln.b]
        e = C.hop_energy_j(nbytes, ln.profile)
        W[a, b], W[b, a] = min(W[a, b], e), min(W[b, a], e)
    for k in range(n):
        W = np.minimum(W, W[:, k, None] + W[None, k, :])
    return W


@pytest.mark.parametrize("seed", range(60))
def test_rows_columns_and_nearest_match_all_pairs(seed: int) -> None:
    rng = random.Random(seed)
    n = rng.randint(1, 14)
    fleet = random_fleet(rng, n, extra_links=rng.choice([0.0, 0.2, 0.6]))
    if rng.random() < 0.3 and n > 2:  # a part of the graph that the rest cannot reach
        fleet = type(fleet)(fleet.name, fleet.devices,
                            tuple(ln for ln in fleet.links if "d0" not in (ln.a, ln.b)),
                            fleet.entry, fleet.exit)
    ids = list(fleet.ids)
    nbytes = rng.choice([4.0, 1152.0, 2304.0 * 64])
    r = Routes(LinkGraph(fleet, ids), nbytes)
    T, E = floyd(fleet, ids, nbytes)
    for k in range(n):
        t, e = r.row(k)
        np.testing.assert_allclose(t, T[k], rtol=1e-12)
        np.testing.assert_allclose(e, E[k], rtol=1e-9)
        t, e = r.col(k)
        np.testing.assert_allclose(t, T[:, k], rtol=1e-12)
        np.testing.assert_allclose(e, E[:, k], rtol=1e-9)
    # the dynamic programme's aggregate: min over d2 != d of T[d, d2] + U[d2]
    for _ in range(5):
        U = np.array([rng.choice([np.inf, rng.uniform(0, 0.05), 0.0]) for _ in range(n)])
        H = T.copy()
        np.fill_diagonal(H, np.inf)
        want = (H + U[None, :]).min(axis=1)
        np.testing.assert_allclose(r.nearest(U), want, rtol=1e-12)
        W = least_energy(fleet, ids, nbytes)
        np.fill_diagonal(W, np.inf)
        np.testing.assert_allclose(r.nearest(U, "energy"), (W + U[None, :]).min(axis=1),
                                   rtol=1e-9)
    # the cheapest hop out of each device is its cheapest route to any other device
    np.testing.assert_allclose(r.min_out(), np.where(np.eye(n, dtype=bool), np.inf, T).min(axis=1)
                               if n > 1 else [np.inf], rtol=1e-12)
