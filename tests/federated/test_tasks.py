"""Non-IID partitioning: every example lands on exactly one client, none is empty, and the
clients' label mixes are skewed (small Dirichlet alpha) compared with the pool."""

from __future__ import annotations

from collections import Counter

import numpy as np

from edgeweave.federated.tasks import dirichlet_partition


def test_dirichlet_partition_is_a_skewed_cover():
    labels = [f"c{i % 4}" for i in range(400)]
    parts = dirichlet_partition(labels, 8, alpha=0.3, rng=np.random.default_rng(0))
    flat = sorted(i for p in parts for i in p)
    assert flat == list(range(400)) and all(parts)
    # each client's dominant label covers far more than the pool's 25 %
    dominant = [Counter(labels[i] for i in p).most_common(1)[0][1] / len(p) for p in parts]
    assert np.mean(dominant) > 0.5
    iid = dirichlet_partition(labels, 8, alpha=1000.0, rng=np.random.default_rng(0))
    assert np.mean([Counter(labels[i] for i in p).most_common(1)[0][1] / len(p)
                    for p in iid]) < 0.35
