"""BlockModel against Hugging Face's implementation on the same random weights."""

from __future__ import annotations

import pytest
import torch

from edgeweave.models.checkpoint import load_folder
from edgeweave.types import Shard
from tests.conftest import make_cfg, random_model, save_folder

transformers = pytest.importorskip("transformers")


def hf_logits(folder, ids: torch.Tensor) -> torch.Tensor:
    model = transformers.AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    model.eval()
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("family,extra", [
    ("llama", {}),
    ("llama", {"tie_word_embeddings": True, "num_kv_heads": 4}),
    ("qwen2", {}),  # q/k/v bias
    ("llama", {"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                "high_freq_factor": 4.0, "original_max_position_embeddings": 64}}),
])
def test_logits_match_hugging_face(tmp_path, family, extra):
    cfg = make_cfg(family, **extra)
    folder = save_folder(random_model(cfg, seed=3), tmp_path / family)
    ids = torch.randint(0, cfg.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    ours = load_folder(folder).model
    with torch.no_grad():
        got = ours(ids)
    want = hf_logits(folder, ids)
    assert (got - want).abs().max().item() < 1e-4


def test_every_two_way_split_matches_hugging_face(tmp_path):
    cfg = make_cfg(num_layers=5)
    folder = save_folder(random_model(cfg, seed=5), tmp_path / "m")
    ids = torch.randint(0, cfg.vocab_size, (1, 17), generator=torch.Generator().manual_seed(1))
    want = hf_logits(folder, ids)
    n = cfg.num_layers
    for cut in range(1, n):
        first = load_folder(folder, shard=Shard(0, cut, n)).model
        second = load_folder(folder, shard=Shard(cut, n, n)).model
        assert first.lm_head is None and second.embed_tokens is None or cfg.tie_word_embeddings
        assert set(first.layers) == {str(i) for i in range(cut)}
        c1, c2 = first.new_cache(32), second.new_cache(32)
        with torch.no_grad():
            h = first.run_blocks(first.embed(ids), c1)
            got = second.head(second.run_blocks(h, c2))
        assert (got - want).abs().max().item() < 1e-4, f"split at {cut}"


def test_cache_decoding_equals_recomputing(tiny_model):
    ids = torch.randint(0, tiny_model.cfg.vocab_size, (1, 9), generator=torch.Generator().manual_seed(2))
    cache = tiny_model.new_cache(64)
    with torch.no_grad():
        logits = tiny_model(ids, cache)[0, -1]
        seq = ids[0].tolist()
        cached, full = [], []
        for _ in range(20):
            tok = int(logits.argmax())
            cached.append(tok)
            logits = tiny_model(torch.tensor([[tok]]), cache)[0, -1]
        for _ in range(20):
            tok = int(tiny_model(torch.tensor([seq]))[0, -1].argmax())
            full.append(tok)
            seq.append(tok)
    assert cached == full


def test_chunked_prefill_with_a_prefix_equals_one_pass(tiny_model):
    ids = torch.randint(0, tiny_model.cfg.vocab_size, (1, 20), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        whole = tiny_model(ids)
        cache = tiny_model.new_cache(32)
        a = tiny_model(ids[:, :7], cache)
        b = tiny_model(ids[:, 7:], cache)
    assert torch.allclose(torch.cat([a, b], dim=1), whole, atol=1e-5)
    assert cache.length == 20


def test_cache_overflow_is_a_clear_error(tiny_model):
    from edgeweave.errors import GenerationError

    cache = tiny_model.new_cache(8)
    with pytest.raises(GenerationError, match="KV cache holds 8 tokens"), torch.no_grad():
        tiny_model(torch.zeros(1, 9, dtype=torch.long), cache)
