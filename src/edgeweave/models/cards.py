"""Plan-only model cards: public models described by their published configs, no weights.

The planner needs a model's shape, not its weights: with a card, ``edgeweave plan --model
llama-3.1-8b`` places an 8-billion-parameter model on a fleet that no weights of it have
ever touched. Every figure below is copied from the model's ``config.json`` on the Hugging
Face Hub (the repository named in ``source``); ``published_params`` is the parameter count
the model card states, and a test recomputes each card's count from its shape and checks it
against that figure (a wrong width or layer count shows up as a wrong size).

``edgeweave models`` lists these as plan-only; ``generate`` and ``serve`` refuse them with a
one-line error that says where to get weights. Pure Python: no torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edgeweave.errors import ConfigError
from edgeweave.profile.cost import ModelCosts, check_shape


@dataclass(frozen=True)
class ModelCard:
    """A model's shape from its config.json (field names follow Hugging Face's keys:
    ``num_hidden_layers`` -> ``layers``, ``max_position_embeddings`` -> ``max_context``).

    ``qkv_bias``: Qwen2 adds a bias to the q/k/v projections. ``qk_norm``: Gemma 3 and
    Qwen3 normalise queries and keys per head (``head_dim`` weights each). ``norms_per_block``:
    2 for Llama/Qwen (input and post-attention RMSNorm), 4 for Gemma 3's sandwich norms.
    ``sliding_window`` / ``global_every``: Gemma 3's local layers attend to the last
    ``sliding_window`` tokens and every ``global_every``-th layer to all of them.
    """

    name: str
    source: str  # the Hugging Face repository whose config.json the figures come from
    family: str
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool
    max_context: int
    published_params: float  # the model card's figure, in parameters
    qkv_bias: bool = False
    qk_norm: bool = False
    norms_per_block: int = 2
    sliding_window: int = 0
    global_every: int = 0
    note: str = ""
    license: str = ""

    def __post_init__(self) -> None:
        for k in ("layers", "hidden", "intermediate", "heads", "kv_heads", "head_dim", "vocab",
                  "max_context"):
            v = getattr(self, k)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"model card {self.name!r}: {k} must be a positive integer")
        if self.heads % self.kv_heads:
            raise ConfigError(f"model card {self.name!r}: heads must be a multiple of kv_heads")

    def block_params(self) -> int:
        h, q, kv = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim
        attn = h * q + 2 * h * kv + q * h  # q, k, v, o projections
        if self.qkv_bias:
            attn += q + 2 * kv
        if self.qk_norm:
            attn += 2 * self.head_dim
        return attn + 3 * h * self.intermediate + self.norms_per_block * h  # gated MLP

    def num_params(self) -> int:
        emb = self.vocab * self.hidden
        return emb * (1 if self.tied else 2) + self.layers * self.block_params() + self.hidden

    def costs(self, prompt_len: int = 128, context: int = 512, batch: int = 1) -> ModelCosts:
        check_shape(prompt_len, context, batch)
        if max(context, prompt_len) > self.max_context:
            raise ConfigError(f"--context {context} is longer than {self.name}'s maximum of "
                              f"{self.max_context} tokens: ask for at most {self.max_context}")
        emb = self.vocab * self.hidden
        return ModelCosts(name=self.name, n_layers=self.layers, hidden=self.hidden,
                          block_params=self.block_params(), embed_params=emb,
                          head_params=emb + self.hidden, n_heads=self.heads,
                          head_dim=self.head_dim, kv_dim=self.kv_heads * self.head_dim,
                          prompt_len=prompt_len, context=max(context, prompt_len),
                          tied=self.tied, batch=batch, sliding_window=self.sliding_window,
                          global_every=self.global_every)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "params": f"{self.num_params() / 1e9:.2f} B",
                "layers": self.layers, "hidden": self.hidden, "context": self.max_context,
                "source": f"huggingface.co/{self.source} config.json", "license": self.license}


_LLAMA3 = dict(family="llama", vocab=128256, max_context=131072, license="Llama 3.x Community")
_GEMMA3 = dict(family="gemma3", qk_norm=True, norms_per_block=4, global_every=6,
               license="Gemma Terms of Use")

CARDS: dict[str, ModelCard] = {c.name: c for c in (
    # meta-llama/Llama-3.2-1B config.json: 16 layers, hidden 2048, MLP 8192, 32 heads / 8 KV
    # heads of 64, tied embeddings, rope llama3 (factor 32), 131072 positions. Card: 1.23 B.
    ModelCard("llama-3.2-1b", "meta-llama/Llama-3.2-1B", layers=16, hidden=2048,
              intermediate=8192, heads=32, kv_heads=8, head_dim=64, tied=True,
              published_params=1.23e9, **_LLAMA3),
    # meta-llama/Llama-3.2-3B: 28 layers, hidden 3072, MLP 8192, 24 heads / 8 KV of 128, tied.
    # Card: 3.21 B.
    ModelCard("llama-3.2-3b", "meta-llama/Llama-3.2-3B", layers=28, hidden=3072,
              intermediate=8192, heads=24, kv_heads=8, head_dim=128, tied=True,
              published_params=3.21e9, **_LLAMA3),
    # meta-llama/Llama-3.1-8B: 32 layers, hidden 4096, MLP 14336, 32 heads / 8 KV of 128,
    # separate lm_head. Card: 8.03 B.
    ModelCard("llama-3.1-8b", "meta-llama/Llama-3.1-8B", layers=32, hidden=4096,
              intermediate=14336, heads=32, kv_heads=8, head_dim=128, tied=False,
              published_params=8.03e9, **_LLAMA3),
    # Qwen/Qwen2.5-1.5B: 28 layers, hidden 1536, MLP 8960, 12 heads / 2 KV of 128, q/k/v
    # bias, tied, vocab 151936. Card: 1.54 B. The model card's context is 32,768 tokens
    # (config.json's max_position_embeddings is larger; longer needs YaRN, which we do not
    # price), so the card stops there.
    ModelCard("qwen2.5-1.5b", "Qwen/Qwen2.5-1.5B", family="qwen2", layers=28, hidden=1536,
              intermediate=8960, heads=12, kv_heads=2, head_dim=128, vocab=151936, tied=True,
              max_context=32768, published_params=1.54e9, qkv_bias=True, license="Apache-2.0"),
    # Qwen/Qwen2.5-7B: 28 layers, hidden 3584, MLP 18944, 28 heads / 4 KV of 128, q/k/v bias,
    # separate lm_head, vocab 152064. Card: 7.61 B. Context as for 1.5B.
    ModelCard("qwen2.5-7b", "Qwen/Qwen2.5-7B", family="qwen2", layers=28, hidden=3584,
              intermediate=18944, heads=28, kv_heads=4, head_dim=128, vocab=152064, tied=False,
              max_context=32768, published_params=7.61e9, qkv_bias=True, license="Apache-2.0"),
    # google/gemma-3-1b-pt: 26 layers, hidden 1152, MLP 6912, 4 heads / 1 KV of 256, QK-norm,
    # 4 norms per block, tied, vocab 262144, sliding window 512 on 5 of every 6 layers, 32768
    # positions. Card: 1 B (999.9 M).
    ModelCard("gemma-3-1b", "google/gemma-3-1b-pt", layers=26, hidden=1152, intermediate=6912,
              heads=4, kv_heads=1, head_dim=256, vocab=262144, tied=True, max_context=32768,
              published_params=1.0e9, sliding_window=512, **_GEMMA3),
    # google/gemma-3-4b-pt text_config: 34 layers, hidden 2560, MLP 10240, 8 heads / 4 KV of
    # 256, vocab 262208, sliding window 1024, 131072 positions. The card's 4.3 B includes the
    # SigLIP vision tower (~0.42 B) that text planning does not load: the language model is
    # 3.88 B.
    ModelCard("gemma-3-4b", "google/gemma-3-4b-pt", layers=34, hidden=2560, intermediate=10240,
              heads=8, kv_heads=4, head_dim=256, vocab=262208, tied=True, max_context=131072,
              published_params=4.3e9 - 0.42e9, sliding_window=1024,
              note="text model only (the vision tower is not planned)", **_GEMMA3),
)}


def card(name: str) -> ModelCard:
    if name not in CARDS:
        raise ConfigError(f"unknown model card {name!r}; plan-only cards: {', '.join(CARDS)}")
    return CARDS[name]


def plan_only_error(name: str) -> str:
    """The one line ``generate``/``serve`` print for a card name."""
    c = CARDS[name]
    return (f"{name!r} is a plan-only model card (the shape of {c.source}, no weights): use it "
            f"with `edgeweave plan --model {name}`; to run it, download its weights yourself and "
            "pass the local Hugging Face folder or .gguf file")


__all__ = ["CARDS", "ModelCard", "card", "plan_only_error"]
