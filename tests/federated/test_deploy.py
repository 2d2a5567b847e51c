"""Deployment mode on loopback: a SuperLink and SuperNodes as processes, TLS on, node
authentication on; two registered nodes finish a 2-round run, an unregistered one is
refused. Every process (the detached SuperExec too) is stopped afterwards."""

from __future__ import annotations

import psutil
import pytest

from edgeweave.federated.config import FedConfig
from edgeweave.federated.deploy import Deployment
from edgeweave.federated.hetero import Tier
from edgeweave.runtime.adapters import AdapterSpec, check_base, load_adapter


@pytest.mark.timeout(240)
def test_two_rounds_tls_node_auth_and_refused_stranger(tiny_folder, tmp_path, tmp_home):
    cfg = FedConfig(model=str(tiny_folder), task="pattern", num_clients=2, rounds=3,
                    aggregation="pad", local_steps=2, lr=1e-2, seq_len=12, timeout_s=90,
                    region=(2, 4), probe=False, keep_optimizer=True,
                    tiers=(Tier("micro", 512, rank=2, window=1), Tier("gw", 8192, rank=4)))
    nodes = {"home0": {"partition-id": 0, "memory-mb": 512},
             "home1": {"partition-id": 1, "memory-mb": 8192},
             "stranger": {"partition-id": 2, "memory-mb": 8192}}
    with Deployment(tmp_path / "dep", cfg, nodes, unregistered=("stranger",)) as dep:
        res = dep.run(tmp_path / "out.json", timeout=200, adapter_out=tmp_path / "global")
        started = [dep.procs[n].pid for n in dep.procs]
        stranger_rc = dep.procs["stranger"].poll()
        stranger_log = dep.log("stranger")
        superlink_log = dep.log("superlink")
    assert [r["replied"] for r in res["rounds"]] == [2, 2, 2]
    assert all(r["sent"] == 2 for r in res["rounds"])  # the stranger never joined
    # round 1: unknown nodes train the smallest share; round 2 uses the reported memory
    assert sorted(c["rank"] for c in res["rounds"][1]["clients"]) == [2, 4]
    # the SuperNode process kept home1's optimizer state in its context from round 2 to 3
    # (round 1's rank-2 state did not fit its rank-4 share and was started afresh)
    home1 = [[c["optimizer-steps"] for c in r["clients"] if c["rank"] == 4]
             for r in res["rounds"][1:]]
    assert home1 == [[2], [4]]
    assert "https://127.0.0.1" in superlink_log  # TLS on
    assert stranger_rc not in (None, 0)  # the SuperNode gave up: it was refused
    assert "could not establish a connection" in stranger_log.lower()
    # the ServerApp wrote the final global adapter, as `edgeweave serve --adapter` reads it
    adapter = load_adapter(AdapterSpec("fed", tmp_path / "global"))
    assert adapter.lora.rank == 4 and adapter.blocks() == (2, 3)
    check_base(adapter, str(tiny_folder))
    assert not [p for p in started if psutil.pid_exists(p)
                and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
