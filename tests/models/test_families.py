"""Qwen3 and Gemma 3 against Hugging Face's implementations on the same random weights (fp32):
whole model, every two-way split with its own caches, prefill then cached decode steps.
Gemma 3's tiny config has an 8-token window, so every sequence here slides."""

from __future__ import annotations

import pytest
import torch

from edgeweave.errors import CheckpointError
from edgeweave.models.checkpoint import load_folder
from edgeweave.models.config import ModelConfig
from edgeweave.models.llama import BlockModel
from edgeweave.types import Shard
from tests.conftest import make_cfg, random_model, save_folder

transformers = pytest.importorskip("transformers")

TOL = 1e-4


def hf_model(folder):
    return transformers.AutoModelForCausalLM.from_pretrained(str(folder),
                                                             dtype=torch.float32).eval()


def hf_logits(folder, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return hf_model(folder)(ids).logits


def ids_of(n: int, vocab: int, seed: int = 0, batch: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, n), generator=torch.Generator().manual_seed(seed))


CASES = [
    ("qwen3", {}),
    ("qwen3", {"tie_word_embeddings": True, "num_kv_heads": 4}),
    ("gemma3", {}),
    ("gemma3", {"final_logit_softcapping": 2.0}),  # tiny so the cap really bends the logits
    ("gemma3", {"rope_scaling": {"rope_type": "linear", "factor": 4.0}, "num_kv_heads": 1,
                "tie_word_embeddings": False}),
]


@pytest.mark.parametrize("family,extra", CASES)
def test_logits_match_hugging_face(tmp_path, family, extra, one_torch_thread):
    cfg = make_cfg(family, num_layers=6, **extra)
    folder = save_folder(random_model(cfg, seed=3), tmp_path / family)
    ids = ids_of(24, cfg.vocab_size, batch=2)
    ours = load_folder(folder).model
    assert type(ours).__name__ == {"qwen3": "Qwen3Model", "gemma3": "Gemma3Model"}[family]
    with torch.no_grad():
        got = ours(ids)
    want = hf_logits(folder, ids)
    assert (got - want).abs().max().item() < TOL
    if extra.get("final_logit_softcapping"):
        assert want.abs().max() < 2.0 and want.abs().max() > 1.0  # the cap is in effect


@pytest.mark.parametrize("family", ["qwen3", "gemma3"])
def test_every_two_way_split_with_cached_decode_matches_hugging_face(tmp_path, family,
                                                                     one_torch_thread):
    """Stages [0, cut) and [cut, n) with their own caches: a 13-token prefill, then 7 decode
    steps (past the 8-token window and across Gemma's global blocks), each position's
    logits equal to HF's over the whole sequence at once."""
    n = 6
    cfg = make_cfg(family, num_layers=n)
    folder = save_folder(random_model(cfg, seed=5), tmp_path / family)
    ids = ids_of(20, cfg.vocab_size, seed=1)
    want = hf_logits(folder, ids)[0]
    prompt = 13
    for cut in range(1, n):
        first = load_folder(folder, shard=Shard(0, cut, n)).model
        second = load_folder(folder, shard=Shard(cut, n, n)).model
        assert set(first.layers) == {str(i) for i in range(cut)}
        c1, c2 = first.new_cache(32), second.new_cache(32)
        with torch.no_grad():
            got = [second.head(second.run_blocks(first.run_blocks(first.embed(ids[:, :prompt]),
                                                                  c1), c2))[0]]
            for t in range(prompt, ids.shape[1]):
                h = first.run_blocks(first.embed(ids[:, t:t + 1]), c1)
                got.append(second.head(second.run_blocks(h, c2))[0])
        got = torch.cat(got)
        assert c1.length == c2.length == ids.shape[1]
        assert (got - want).abs().max().item() < TOL, f"split at {cut}"


def test_the_sliding_window_changes_the_answer(tmp_path, one_torch_thread):
    """The local blocks really mask: the same weights with a window as long as the sequence
    give other logits, and HF agrees with us on both."""
    cfg = make_cfg("gemma3", num_layers=3)
    model = random_model(cfg, seed=7)
    ids = ids_of(24, cfg.vocab_size, seed=2)
    wide_cfg = ModelConfig(**{**cfg.to_dict(), "sliding_window": 64})
    wide = BlockModel(wide_cfg)
    wide.load_state_dict(model.state_dict())
    with torch.no_grad():
        narrow_out, wide_out = model(ids), wide.eval()(ids)
    assert (narrow_out - wide_out).abs().max().item() > 1e-2
    # the first 8 positions see the same keys either way
    assert (narrow_out[:, :8] - wide_out[:, :8]).abs().max().item() < 1e-5
    for m, name in ((model, "narrow"), (wide, "wide")):
        want = hf_logits(save_folder(m, tmp_path / name), ids)
        with torch.no_grad():
            assert (m(ids) - want).abs().max().item() < TOL, name


@pytest.mark.parametrize("family", ["qwen3", "gemma3"])
def test_chunked_prefill_with_a_prefix_equals_one_pass(family, one_torch_thread):
    model = random_model(make_cfg(family, num_layers=3), seed=4)
    ids = ids_of(20, model.cfg.vocab_size, seed=4)
    with torch.no_grad():
        whole = model(ids)
        cache = model.new_cache(32)
        parts = [model(ids[:, a:b], cache) for a, b in ((0, 5), (5, 16), (16, 17), (17, 20))]
    assert torch.allclose(torch.cat(parts, dim=1), whole, atol=1e-5)


@pytest.mark.parametrize("family", ["qwen3", "gemma3"])
def test_packed_sequences_equal_one_at_a_time(family, one_torch_thread):
    """``block_packed`` (the torch engine's batched step) against ``block`` per sequence,
    with sequences of different lengths and cache fills (one already past the window)."""
    model = random_model(make_cfg(family, num_layers=3), seed=6)
    v = model.cfg.vocab_size
    prefixes = [ids_of(11, v, seed=1), ids_of(3, v, seed=2)]
    steps = [ids_of(1, v, seed=3), ids_of(5, v, seed=4)]
    with torch.no_grad():
        solo, packed_caches = [], []
        for pre, st in zip(prefixes, steps, strict=True):
            c = model.new_cache(32)
            model(pre, c)
            solo.append(model(st, c))
            c2 = model.new_cache(32)
            model(pre, c2)
            packed_caches.append(c2)
        h = model.embed(torch.cat(steps, dim=1))
        lengths = [s.shape[1] for s in steps]
        for i in range(model.cfg.num_layers):
            h = model.block_packed(i, h, packed_caches, lengths)
        packed = model.head(h)
    assert torch.allclose(packed, torch.cat(solo, dim=1), atol=1e-5)


@pytest.mark.parametrize("family", ["qwen3", "gemma3"])
def test_config_round_trips_through_config_json(family):
    cfg = make_cfg(family, num_layers=6)
    assert ModelConfig.from_hf(cfg.to_hf()) == cfg


def test_older_gemma3_config_keys_are_read():
    """Configs written before per-layer-type rope parameters: a pattern, two rope keys."""
    d = make_cfg("gemma3", num_layers=6).to_hf()
    del d["layer_types"]
    d.update(sliding_window_pattern=3, rope_local_base_freq=5000.0, rope_theta=200000.0)
    cfg = ModelConfig.from_hf(d)
    assert cfg.layer_types == ("sliding_attention", "sliding_attention", "full_attention") * 2
    assert (cfg.rope_local_theta, cfg.rope_theta) == (5000.0, 200000.0)
    d2 = make_cfg("gemma3").to_hf()
    del d2["rope_theta"], d2["rope_local_base_freq"]
    d2["rope_parameters"] = {"full_attention": {"rope_type": "default", "rope_theta": 7e5},
                             "sliding_attention": {"rope_type": "default", "rope_theta": 9e3}}
    cfg2 = ModelConfig.from_hf(d2)
    assert (cfg2.rope_local_theta, cfg2.rope_theta, cfg2.rope_scaling) == (9e3, 7e5, None)


@pytest.mark.parametrize("change,match", [
    ({"attn_logit_softcapping": 50.0}, "attn_logit_softcapping"),
    ({"use_bidirectional_attention": True}, "use_bidirectional_attention"),
    ({"layer_types": ["full_attention"]}, "layer_types must name 4 blocks"),
    ({"layer_types": ["local"] * 4}, "layer_types must name 4 blocks"),
    ({"model_type": "gemma3"}, "multimodal Gemma 3"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 2.0}}, "unsupported rope scaling"),
])
def test_unsupported_gemma3_configs_are_refused_with_the_fix(change, match):
    d = {**make_cfg("gemma3").to_hf(), **change}
    with pytest.raises(CheckpointError, match=match):
        ModelConfig.from_hf(d)


def test_qwen3_sliding_window_is_refused():
    d = {**make_cfg("qwen3").to_hf(), "use_sliding_window": True}
    with pytest.raises(CheckpointError, match="use_sliding_window"):
        ModelConfig.from_hf(d)


def test_block_model_builds_the_family_of_its_config():
    from edgeweave.models.gemma3 import Gemma3Model
    from edgeweave.models.qwen3 import Qwen3Model

    assert type(BlockModel(make_cfg("llama"))) is BlockModel
    assert type(BlockModel(make_cfg("qwen3"))) is Qwen3Model
    g = BlockModel(make_cfg("gemma3"), Shard(1, 3, 4))
    assert type(g) is Gemma3Model and set(g.layers) == {"1", "2"}
    assert {"pre_feedforward_layernorm", "post_feedforward_layernorm"} <= {
        n.split(".")[-1] for n, _ in g.layers["1"].named_children()}
    import copy

    assert type(copy.deepcopy(g)) is Gemma3Model
    # parameter count from the config agrees with the module
    full = BlockModel(make_cfg("gemma3"))
    assert full.cfg.num_params() == sum(p.numel() for p in full.parameters())
