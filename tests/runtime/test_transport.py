"""Real node processes on 127.0.0.1 talking gRPC over mutual TLS: same tokens as one process."""

from __future__ import annotations

import threading

import pytest
import torch

from edgeweave.errors import RuntimeStageError
from edgeweave.models.config import ModelConfig
from edgeweave.runtime.engine import LocalEngine
from edgeweave.runtime.generate import SamplingParams, generate_step
from edgeweave.runtime.launch import launch
from edgeweave.runtime.transport.frame import Frame, Op
from edgeweave.runtime.transport.grpc_link import GrpcLink
from edgeweave.security.certs import init_fleet
from edgeweave.security.tls import TLSFiles
from edgeweave.types import Plan
from tests.conftest import random_model, save_folder

PROMPT = [1, 5, 9, 17, 33, 3, 40, 41]
PARAMS = SamplingParams(max_tokens=20, ignore_eos=True)


@pytest.fixture(scope="module")
def model():
    cfg = ModelConfig(family="llama", vocab_size=128, hidden_size=64, intermediate_size=128,
                      num_layers=4, num_heads=4, num_kv_heads=2, head_dim=16,
                      rope_theta=10000.0, rms_norm_eps=1e-5, max_position=256,
                      tie_word_embeddings=False, attention_bias=False, bos_token_id=1,
                      eos_token_ids=(2,))
    return random_model(cfg, seed=3)


@pytest.fixture(scope="module")
def reference(model) -> list[int]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return list(generate_step(LocalEngine(model, max_len=128), PROMPT, PARAMS))
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("certs")
    init_fleet(folder, ("coordinator", "n0", "n1", "n2"))
    return folder


@pytest.fixture(scope="module")
def deployment(model, certs, tmp_path_factory):
    folder = save_folder(model, tmp_path_factory.mktemp("tiny") / "tiny-llama")
    dep = launch(Plan.split(4, [1, 3], ["n0", "n1", "n2"]), str(folder), tls_dir=certs,
                 threads=1, max_len=128)
    yield dep
    dep.close()
    assert all(p.poll() is not None for p in dep.processes.values())


def test_three_nodes_match_single_process(deployment, reference):
    # Execute
    with deployment.coordinator.new_session() as s:
        got = list(generate_step(s, PROMPT, PARAMS))
        stats = s.stats
    # Assert: over each node's frame socket (mutual TLS), as ``edgeweave node`` serves it
    assert {type(link).__name__ for link in deployment.coordinator.links.values()} == {
        "SocketLink"}
    assert got == reference
    assert stats["hops"] == 3 * (len(got) - 1)  # decode hops (the prefill is not a token)
    assert stats["bytes_received"] > stats["bytes_sent"] > 0  # logits come back
    assert stats["hidden_bytes"] == 2 * 4 * 64 * (len(PROMPT) + len(got) - 1)


def test_concurrent_sessions_share_the_nodes(deployment, reference):
    results: dict[int, list[int]] = {}

    def run(i: int) -> None:
        with deployment.coordinator.new_session() as s:
            results[i] = list(generate_step(s, PROMPT, PARAMS))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert [results[i] for i in range(4)] == [reference] * 4


def test_node_refuses_out_of_sync_and_unknown_stage(deployment, certs):
    link = GrpcLink(deployment.addresses["n1"], TLSFiles.from_dir(certs, "coordinator"))
    try:
        info = link.call(Frame(Op.INFO), 10).json()
        assert info["stages"] == ["1-3:fp32"]
        assert link.call(Frame(Op.OPEN, "1-3:fp32", "x", arg=16), 10).op == Op.OK
        bad = Frame(Op.FORWARD, "1-3:fp32", "x", arg=5, codec=0, shape=(1, 1, 64),
                    payload=bytes(256))  # the cache holds 0 tokens, not 5
        resp = link.call(bad, 10)
        assert resp.op == Op.ERROR and b"expected 5" in resp.payload
        resp = link.call(Frame(Op.OPEN, "0-4:fp32", "x", arg=16), 10)
        assert resp.op == Op.ERROR and b"LOAD it first" in resp.payload
    finally:
        link.close()


def test_session_longer_than_max_len_is_refused(deployment):
    s = deployment.coordinator.new_session(max_len=8)
    with pytest.raises(RuntimeStageError, match="max_len"):
        s.prefill(list(range(1, 10)))
    s.close()


@pytest.mark.integration
def test_bundled_model_two_nodes_fp16_match_single_process():
    from edgeweave.models import load
    from edgeweave.runtime.fast import accelerate_decode

    lm = load("smollm2-135m-instruct")
    accelerate_decode(lm.model)
    ids = lm.tokenizer.encode_chat([{"role": "user", "content": "What is the capital of France?"}])
    params = SamplingParams(max_tokens=8)
    ref = list(generate_step(LocalEngine(lm.model, max_len=64), ids, params))
    plan = Plan.split(30, [15], ["n0", "n1"], codec="fp16")
    with launch(plan, "smollm2-135m-instruct", max_len=64) as dep, \
            dep.coordinator.new_session() as s:
        got = list(generate_step(s, ids, params))
    assert got == ref
    assert lm.tokenizer.decode(got).startswith("The capital of France is Paris")
