"""LoRA on tiny random models: adapters round-trip, merge exactly, memory options change
memory but not the maths, and an interrupted run resumes to the same adapter."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from edgeweave.errors import ArtifactError, ConfigError
from edgeweave.finetune.adapter import attach_adapter, merge_to_folder, read_adapter, save_adapter
from edgeweave.finetune.config import LoRAConfig, TrainConfig
from edgeweave.finetune.data import Example
from edgeweave.finetune.lora import adapter_state, apply_lora, merge_lora
from edgeweave.finetune.quantbase import Int8Linear, convert_base
from edgeweave.finetune.subset import SELECTORS, SubsetConfig, select
from edgeweave.finetune.train import PrefixCache, evaluate_loss, train
from tests.conftest import random_model


def _data(n: int = 16, t: int = 12, seed: int = 0) -> list[Example]:
    g = torch.Generator().manual_seed(seed)
    # A learnable pattern: token i+1 follows token i (mod 20, offset 10).
    out = []
    for _ in range(n):
        s = int(torch.randint(0, 20, (1,), generator=g))
        out.append(Example(tuple(10 + (s + j) % 20 for j in range(t)), n_prompt=2))
    return out


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Tiny matmuls: threads only add contention on the shared 2-core machine.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


LORA = LoRAConfig(rank=4, alpha=8, target_modules=("q_proj", "v_proj", "down_proj"))
TRAIN = TrainConfig(steps=6, lr=5e-3, batch_size=4, micro_batch_size=4, seq_len=16)


def _trained(tiny_cfg, lora=LORA, cfg=TRAIN):
    m = apply_lora(random_model(tiny_cfg), lora)
    res = train(m, _data(), cfg)
    return m, res


def test_training_lowers_loss_and_only_adapters_change(tiny_cfg):
    base = random_model(tiny_cfg)
    ref = {k: v.clone() for k, v in base.state_dict().items()}
    m = apply_lora(base, LORA)
    before = evaluate_loss(m, _data())
    res = train(m, _data(), TrainConfig(steps=15, lr=1e-2, batch_size=4, micro_batch_size=4))
    assert evaluate_loss(m, _data()) < before - 0.1
    assert res.trainable_params == sum(v.numel() for v in adapter_state(m).values())
    for k, v in m.state_dict().items():
        if "lora_" not in k:
            assert torch.equal(v, ref[k.replace(".base_layer", "")]), k


def test_adapter_round_trip_and_tamper(tiny_cfg, tmp_path):
    m, _ = _trained(tiny_cfg)
    folder = save_adapter(tmp_path / "ad", m, LORA, base="tiny", metrics={"loss": 1.0})
    man = json.loads((folder / "manifest.json").read_text())
    assert man["lora"]["rank"] == 4 and man["tensors"] == 3 * 4 * 2
    fresh = attach_adapter(random_model(tiny_cfg), folder)
    ids = torch.tensor([[10, 11, 12, 13, 14]])
    assert torch.equal(fresh(ids), m.eval()(ids))
    state, cfg, _ = read_adapter(folder)
    assert cfg == LORA and all("lora_" in k for k in state)
    data = bytearray((folder / "adapter.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (folder / "adapter.safetensors").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="hash"):
        read_adapter(folder)


def test_merge_matches_adapter_forward(tiny_cfg, tiny_folder, tmp_path, tmp_home):
    from edgeweave.models.catalog import load

    lm = load(str(tiny_folder))
    apply_lora(lm.model, LORA)
    train(lm.model, _data(), TRAIN)
    ids = torch.tensor([[10, 11, 12, 13, 14]])
    expect = lm.model.eval()(ids)
    ad = save_adapter(tmp_path / "ad", lm.model, LORA, base=lm.name,
                      base_fingerprint=lm.fingerprint)
    out = merge_to_folder(tiny_folder, ad, tmp_path / "merged")
    merged = load(str(out)).model
    assert torch.allclose(merged(ids), expect, atol=1e-4)
    assert json.loads((out / "manifest.json").read_text())["kind"] == "edgeweave-merged-lora"
    in_place = merge_lora(lm.model)
    assert torch.allclose(in_place(ids), expect, atol=1e-4)


def test_lora_fa_keeps_a_frozen(tiny_cfg):
    lora = LoRAConfig(rank=4, alpha=8, freeze_a=True)
    m = apply_lora(random_model(tiny_cfg), lora)
    a0 = {k: v for k, v in adapter_state(m).items() if "lora_A" in k}
    res = train(m, _data(), TRAIN)
    after = adapter_state(m)
    assert all(torch.equal(after[k], v) for k, v in a0.items())
    assert any(after[k].abs().sum() > 0 for k in after if "lora_B" in k)
    assert res.trainable_params == sum(v.numel() for k, v in after.items() if "lora_B" in k)


def test_checkpointing_and_accumulation_do_not_change_the_maths(tiny_cfg):
    plain, r0 = _trained(tiny_cfg)
    ckpt, r1 = _trained(tiny_cfg, cfg=replace(TRAIN, grad_checkpointing=True))
    micro, _ = _trained(tiny_cfg, cfg=replace(TRAIN, micro_batch_size=1))
    a, b, c = adapter_state(plain), adapter_state(ckpt), adapter_state(micro)
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5), k
        assert torch.allclose(a[k], c[k], atol=1e-4), k
    assert r1.saved_activations_mb < r0.saved_activations_mb


def test_frozen_prefix_cache_matches_full_forward(tiny_cfg):
    lora = LoRAConfig(rank=4, alpha=8, layers=(2, 3))
    a, _ = _trained(tiny_cfg, lora=lora)
    b = apply_lora(random_model(tiny_cfg), lora)
    train(b, _data(), TRAIN, prefix_cache=PrefixCache(2))
    for k, v in adapter_state(a).items():
        assert torch.allclose(v, adapter_state(b)[k], atol=1e-5), k


def test_interrupted_run_resumes_to_same_result(tiny_cfg, tmp_path):
    cfg = replace(TRAIN, checkpoint_every=2)  # dropout on: RNG too
    straight, _ = _trained(tiny_cfg, lora=LoRAConfig(rank=4, alpha=8, dropout=0.1), cfg=cfg)
    m = apply_lora(random_model(tiny_cfg), LoRAConfig(rank=4, alpha=8, dropout=0.1))
    first = train(m, _data(), cfg, checkpoint_dir=tmp_path / "ck", stop_after=3)
    assert first.steps == 3
    m2 = apply_lora(random_model(tiny_cfg), LoRAConfig(rank=4, alpha=8, dropout=0.1))
    second = train(m2, _data(), cfg, checkpoint_dir=tmp_path / "ck")
    assert second.resumed_from == 3 and second.steps == 6
    for k, v in adapter_state(straight).items():
        assert torch.allclose(v, adapter_state(m2)[k], atol=1e-6), k


@pytest.mark.parametrize("dtype", ["bfloat16", "int8"])
def test_quantized_frozen_base_trains(tiny_cfg, dtype):
    m = apply_lora(random_model(tiny_cfg), LORA)
    full = sum(p.numel() * 4 for p in m.parameters() if not p.requires_grad)
    convert_base(m, dtype)
    if dtype == "int8":
        assert any(isinstance(x, Int8Linear) for x in m.modules())
    before = evaluate_loss(m, _data())
    res = train(m, _data(), TrainConfig(steps=10, lr=1e-2, base_dtype=dtype))
    assert evaluate_loss(m, _data()) < before
    assert res.base_mb * 2**20 < 0.75 * full


def test_subset_selection(tiny_cfg):
    m = random_model(tiny_cfg)
    data = _data(20)
    for method in sorted(SELECTORS):  # every registered selector
        kept = select(m, data, SubsetConfig(method=method, fraction=0.25))
        assert len(kept) == 5 and all(e in data for e in kept)
    from edgeweave.finetune.subset import _features

    losses, _ = _features(m, data)
    kept = select(m, data, SubsetConfig(method="loss", fraction=0.25))
    assert min(losses[data.index(e)] for e in kept) >= torch.sort(losses).values[-5] - 1e-6


def test_configs_validate_and_round_trip():
    assert LoRAConfig.from_dict(json.loads(json.dumps(LORA.to_dict()))) == LORA
    assert TrainConfig.from_dict(TRAIN.to_dict()) == TRAIN
    with pytest.raises(ConfigError, match="rank"):
        LoRAConfig(rank=0)
    with pytest.raises(ConfigError, match="target_modules"):
        LoRAConfig(target_modules=("qkv",))
    with pytest.raises(ConfigError, match="multiple"):
        TrainConfig(batch_size=4, micro_batch_size=3)
    with pytest.raises(ConfigError, match="unknown"):
        SubsetConfig(method="magic")
    with pytest.raises(ConfigError, match="optimizer"):
        TrainConfig(optimizer="lion")


def test_sgd_optimizer_trains_with_plain_gradient_steps(tiny_cfg):
    # One SGD step is w - lr * grad exactly (AdamW's first step would be lr * sign(grad))
    m = apply_lora(random_model(tiny_cfg), LORA)
    before = {k: v.clone() for k, v in adapter_state(m).items()}
    cfg = TrainConfig(steps=1, lr=0.5, batch_size=4, micro_batch_size=4, seq_len=16,
                      optimizer="sgd", max_grad_norm=0.0)
    train(m, _data(), cfg)
    moved = {k: (v - before[k]).abs().max().item() for k, v in adapter_state(m).items()}
    b_moves = [d for k, d in moved.items() if ".lora_B." in k]
    assert max(b_moves) > 0  # B starts at zero; its gradient is not
    assert len({round(d, 6) for d in b_moves}) > 1  # not a sign step of equal size
    m2 = apply_lora(random_model(tiny_cfg), LORA)
    before2 = evaluate_loss(m2, _data())
    train(m2, _data(), replace(cfg, steps=20, lr=0.5, max_grad_norm=1.0))
    assert evaluate_loss(m2, _data()) < before2 - 0.1


def test_int8_base_backward_matches_and_keeps_no_fp32_weight_copy():
    """Gradients through the frozen int8 linear equal those through its dequantized fp32
    weight, and autograd saves only the int8 weight (not a dequantized fp32 copy)."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 48)
    q = Int8Linear(lin)
    w = q.qweight.float() * q.scale
    x = torch.randn(3, 5, 64, requires_grad=True)
    saved: list[torch.Tensor] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = q(x)
    (y * torch.arange(48.0)).sum().backward()
    x_ref = x.detach().clone().requires_grad_(True)
    (torch.nn.functional.linear(x_ref, w, q.bias) * torch.arange(48.0)).sum().backward()
    torch.testing.assert_close(y, torch.nn.functional.linear(x_ref.detach(), w, q.bias))
    torch.testing.assert_close(x.grad, x_ref.grad)
    assert not any(t.is_floating_point() and t.shape == (48, 64) for t in saved)


def test_resumed_moments_continue_the_optimizer_where_a_fresh_one_restarts(tiny_cfg):
    data = _data(n=4)  # batch = every example each step: the split runs see the same batches
    cfg = replace(TRAIN, steps=4, lr=2e-2)
    half = replace(cfg, steps=2)
    straight = apply_lora(random_model(tiny_cfg), LORA)
    train(straight, data, cfg)
    resumed = apply_lora(random_model(tiny_cfg), LORA)
    first = train(resumed, data, half, moments={})
    assert first.moments and set(first.moments) == set(adapter_state(resumed))
    assert all(int(st["step"]) == 2 for st in first.moments.values())
    second = train(resumed, data, half, moments=first.moments)
    assert all(int(st["step"]) == 4 for st in second.moments.values())
    fresh = apply_lora(random_model(tiny_cfg), LORA)
    train(fresh, data, half)
    assert train(fresh, data, half).moments is None  # nothing kept unless asked
    want = adapter_state(straight)
    for k, v in adapter_state(resumed).items():
        assert torch.allclose(v, want[k], atol=1e-5), k
    assert max(float((v - want[k]).abs().max()) for k, v in adapter_state(fresh).items()) > 1e-3
    # state of another shape (the client's rank changed) starts fresh instead of failing
    other = apply_lora(random_model(tiny_cfg), replace(LORA, rank=2))
    assert all(int(st["step"]) == 2
               for st in train(other, data, half, moments=second.moments).moments.values())
