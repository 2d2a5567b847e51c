"""Mutual TLS: fleet certificates connect, foreign certificates are refused both ways."""

from __future__ import annotations

import pytest
import torch

from edgeweave.cli.app import main
from edgeweave.errors import ConfigError
from edgeweave.runtime.engine import LocalEngine
from edgeweave.runtime.engines.base import EngineConfig
from edgeweave.runtime.engines.torch import TorchStageEngine
from edgeweave.runtime.generate import SamplingParams, generate_step
from edgeweave.runtime.launch import attach
from edgeweave.runtime.stage import StageHost
from edgeweave.runtime.transport.base import StageUnavailable
from edgeweave.runtime.transport.frame import Frame, Op
from edgeweave.runtime.transport.grpc_link import GrpcLink
from edgeweave.runtime.transport.grpc_server import serve
from edgeweave.security.certs import issue, make_ca
from edgeweave.security.tls import TLSFiles
from edgeweave.types import Plan, Shard


@pytest.fixture
def fleets(tmp_path):
    ours, foreign = tmp_path / "fleet", tmp_path / "foreign"
    assert main(["certs", "init", str(ours), "coordinator", "node0"]) == 0
    assert main(["certs", "issue", str(ours), "node1", "--host", "10.0.0.7"]) == 0
    assert main(["certs", "init", str(foreign), "coordinator", "node0"]) == 0
    return ours, foreign


def _node(model, tls):
    host = StageHost("mem")
    n = model.cfg.num_layers
    host.add_engine(TorchStageEngine(EngineConfig("mem", Shard(0, n, n)), model=model))
    server, port = serve(host, "127.0.0.1:0", tls)
    return server, f"127.0.0.1:{port}"


def test_certs_files_and_errors(fleets):
    ours, _ = fleets
    for name in ("ca", "coordinator", "node0", "node1"):
        assert (ours / f"{name}.pem").read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")
    assert (ours / "node0.key").stat().st_mode & 0o077 == 0  # private keys are owner-only
    assert main(["certs", "init", str(ours)]) == 2  # the CLI prints the ConfigError
    with pytest.raises(ConfigError, match="already holds a fleet CA"):
        make_ca(ours)
    with pytest.raises(ConfigError, match="no fleet CA"):
        issue(ours / "nowhere", "x")


def test_fleet_certificates_work_end_to_end(fleets, tiny_model):
    ours, _ = fleets
    server, addr = _node(tiny_model, TLSFiles.from_dir(ours, "node0"))
    try:
        coord = attach(Plan.single(4, "node0"), "mem", {"node0": addr}, tokenizer=None,
                       tls=TLSFiles.from_dir(ours, "coordinator"), max_len=64).coordinator
        params = SamplingParams(max_tokens=6, ignore_eos=True)
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            ref = list(generate_step(LocalEngine(tiny_model, 64), [1, 4, 9], params))
            with coord.new_session() as s:
                assert list(generate_step(s, [1, 4, 9], params)) == ref
        finally:
            torch.set_num_threads(before)
        coord.close()
    finally:
        server.stop(0)


def test_foreign_client_and_plaintext_are_refused(fleets, tiny_model):
    ours, foreign = fleets
    server, addr = _node(tiny_model, TLSFiles.from_dir(ours, "node0"))
    try:
        with pytest.raises(StageUnavailable, match="certificate"):
            GrpcLink(addr, TLSFiles.from_dir(foreign, "coordinator"), connect_timeout=2)
        with pytest.raises(StageUnavailable):
            link = GrpcLink(addr, None, connect_timeout=2)  # plaintext may "connect" lazily
            link.call(Frame(Op.PING), 2)
    finally:
        server.stop(0)


def test_node_with_foreign_certificate_is_refused(fleets, tiny_model):
    ours, foreign = fleets
    server, addr = _node(tiny_model, TLSFiles.from_dir(foreign, "node0"))
    try:
        with pytest.raises(StageUnavailable, match="certificate"):
            GrpcLink(addr, TLSFiles.from_dir(ours, "coordinator"), connect_timeout=2)
    finally:
        server.stop(0)
