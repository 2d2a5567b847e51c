"""One Deployment from embedded and attach: what it holds, kill() only for launched nodes."""

from __future__ import annotations

import pytest

import edgeweave as ew
from edgeweave.errors import ConfigError
from edgeweave.models import load
from edgeweave.runtime.deployment import Deployment
from edgeweave.runtime.generate import SamplingParams, generate
from edgeweave.runtime.launch import attach, embedded
from edgeweave.runtime.stage import StageHost
from edgeweave.runtime.transport.grpc_server import serve
from edgeweave.types import Plan, Shard, Stage

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_embedded_holds_its_hosts_and_the_loaded_tokenizer(tiny_folder):
    # Prepare
    lm = load(str(tiny_folder))
    # Execute
    with embedded(str(tiny_folder), Plan.split(4, [2], ["a", "b"]), loaded=lm,
                  max_len=64, backend="torch") as dep:
        text = generate(dep.coordinator.new_session(), dep.tokenizer, "the sensor",
                        SamplingParams(max_tokens=3, ignore_eos=True)).text
        first_hosts = dict(dep.hosts)
        # a plan that puts a stage on a new device adds its host to the same table
        dep.coordinator.apply_plan(Plan((Stage("a", Shard(0, 2, 4)), Stage("c", Shard(2, 4, 4)))))
    # Assert
    assert isinstance(dep, Deployment) and ew.Deployment is Deployment
    assert dep.tokenizer is lm.tokenizer and text
    assert sorted(first_hosts) == ["a", "b"] and sorted(dep.hosts) == ["a", "b", "c"]
    assert all(isinstance(h, StageHost) for h in dep.hosts.values())
    assert not dep.processes and not dep.addresses and not dep.logs
    assert not dep.coordinator.links  # close() closed the coordinator's links


def test_kill_names_the_launched_nodes_and_refuses_others(tiny_folder):
    dep = embedded(str(tiny_folder), Plan.split(4, [2], ["a", "b"]), max_len=64,
                   backend="torch")
    try:
        with pytest.raises(ConfigError, match=r"'a' is not a node this deployment started "
                                              r"\(started: none\).*launch\(\)"):
            dep.kill("a")
    finally:
        dep.close()


def test_attach_shares_its_address_table_with_the_coordinator(tiny_folder):
    host = StageHost(str(tiny_folder), 64 << 20)
    server, port = serve(host, "127.0.0.1:0")
    try:
        dep = attach(Plan.single(4, "n0"), str(tiny_folder), {"n0": f"127.0.0.1:{port}"},
                     tokenizer=None, backend="torch", max_len=64)
        with dep:
            assert dep.tokenizer is None and not dep.hosts and not dep.processes
            assert dep.addresses == {"n0": f"127.0.0.1:{port}"}
            dep.coordinator.add_device("n1", "127.0.0.1:1")
            assert dep.addresses["n1"] == "127.0.0.1:1"  # add_device extends the same table
    finally:
        server.stop(0)
