"""Shared fixtures: tiny random-weight models (unit tests) and an isolated cache home."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from edgeweave.models.config import ModelConfig  # noqa: E402
from edgeweave.models.llama import BlockModel  # noqa: E402

TINY_WORDS = ("the sensor reads temperature humidity light motion door window kitchen room "
              "battery gateway device edge cloud model token is a of and to in on off high low "
              "what where when why how hello world user assistant system paris france capital "
              "answer question").split()


# Gemma 3 in miniature: every third block global (the real 270M: every sixth), an 8-token
# window so short test sequences already slide, a query scale unlike head_dim ** -0.5.
GEMMA3_TINY = dict(sliding_window=8, rope_local_theta=10000.0, rope_theta=1_000_000.0,
                   query_pre_attn_scalar=32.0, tie_word_embeddings=True, rms_norm_eps=1e-6)


def make_cfg(family: str = "llama", **kw) -> ModelConfig:
    base = dict(family=family, vocab_size=128, hidden_size=64, intermediate_size=128,
                num_layers=4, num_heads=4, num_kv_heads=2, head_dim=16, rope_theta=10000.0,
                rms_norm_eps=1e-5, max_position=256, tie_word_embeddings=False,
                attention_bias=family == "qwen2", bos_token_id=1, eos_token_ids=(2,))
    if family == "gemma3":
        base.update(GEMMA3_TINY)
        n = kw.get("num_layers", base["num_layers"])
        base["layer_types"] = tuple("sliding_attention" if (i + 1) % 3 else "full_attention"
                                    for i in range(n))
    base.update(kw)
    return ModelConfig(**base)


def random_model(cfg: ModelConfig, seed: int = 0) -> BlockModel:
    torch.manual_seed(seed)
    model = BlockModel(cfg)
    # Gemma's norms scale by 1 + weight: its weights are offsets around 0
    lo, hi = (-0.2, 0.2) if cfg.family == "gemma3" else (0.8, 1.2)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):  # block, final and (Qwen3, Gemma 3) QK norms
                p.uniform_(lo, hi)
            else:
                p.normal_(0.0, 0.08)
    return model.eval()


def write_tokenizer(folder: Path, vocab_size: int = 128) -> None:
    """A real (word-level) tokenizer.json + a ChatML template, small enough for tiny models."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    specials = ["<unk>", "<s>", "<|im_end|>", "<|im_start|>"]
    vocab = {t: i for i, t in enumerate(specials)}
    for w in TINY_WORDS:
        vocab.setdefault(w, len(vocab))
    for c in "abcdefghijklmnopqrstuvwxyz?.,!":
        vocab.setdefault(c, len(vocab))
    assert len(vocab) <= vocab_size
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tok.add_special_tokens(specials)
    tok.save(str(folder / "tokenizer.json"))
    template = ("{% for m in messages %}<|im_start|>{{ m['role'] }} {{ m['content'] }}<|im_end|>"
                "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant{% endif %}")
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<s>", "eos_token": "<|im_end|>", "chat_template": template}))


def save_folder(model: BlockModel, folder: Path) -> Path:
    """Write a Hugging Face style folder (config.json, model.safetensors, tokenizer)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(model.cfg.to_hf()))
    state = {("lm_head.weight" if k == "lm_head.weight" else f"model.{k}"): v.contiguous()
             for k, v in model.state_dict().items()}
    if model.cfg.tie_word_embeddings:
        state.pop("lm_head.weight")
    save_file(state, str(folder / "model.safetensors"))
    write_tokenizer(folder, model.cfg.vocab_size)
    return folder


def bpe_folder(folder: Path) -> Path:
    """A tiny random-weight model with the bundled SmolLM2 tokenizer (a byte-level BPE, as
    the grammar library needs): whatever its random logits prefer, only a constraint makes its
    output valid. Needs the bundled model (integration tests)."""
    import shutil

    from edgeweave.models.catalog import resolve

    src = resolve("smollm2-135m-instruct")[1]
    save_folder(random_model(make_cfg(vocab_size=49152, hidden_size=32, intermediate_size=64,
                                      head_dim=8, num_layers=2)), folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (src / name).is_file():
            shutil.copy(src / name, folder / name)
    return folder


@pytest.fixture
def one_torch_thread():
    """One torch thread for the test: 2-thread OpenMP barriers on a shared 2-core machine cost
    ~30x for tiny models."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def tiny_cfg() -> ModelConfig:
    return make_cfg()


@pytest.fixture
def tiny_model(tiny_cfg: ModelConfig) -> BlockModel:
    return random_model(tiny_cfg)


@pytest.fixture
def tiny_folder(tiny_model: BlockModel, tmp_path: Path) -> Path:
    return save_folder(tiny_model, tmp_path / "tiny-llama")


@pytest.fixture
def tmp_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "edgeweave-home"
    monkeypatch.setenv("EDGEWEAVE_HOME", str(home))
    return home
