"""Plan-only model cards: published shapes, memory that counts KV and tied tables right."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeweave.errors import ConfigError
from edgeweave.models.cards import CARDS
from edgeweave.plan.baselines import baseline_tables
from edgeweave.plan.fleet import load_fleet
from edgeweave.plan.partition import place_tables, tables_for
from edgeweave.profile import cost as C
from edgeweave.profile.variants import DEFAULT_VARIANTS
from tests.helpers import cli_error
from tests.plan.test_fleet import SMOL

V = DEFAULT_VARIANTS
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "fleets"


@pytest.mark.parametrize("name", sorted(CARDS))
def test_each_card_has_its_published_size(name: str) -> None:
    c = CARDS[name]
    assert c.num_params() == pytest.approx(c.published_params, rel=0.006), name


def test_exact_parameter_counts_of_two_cards() -> None:
    # the totals the Hugging Face model pages show
    assert CARDS["llama-3.1-8b"].num_params() == 8_030_261_248
    assert CARDS["llama-3.2-1b"].num_params() == 1_235_814_400
    assert CARDS["qwen2.5-1.5b"].num_params() == 1_543_714_304


def test_kv_cache_follows_context_and_batch() -> None:
    c = CARDS["llama-3.1-8b"]
    a, b = c.costs(context=512), c.costs(context=8192, batch=4)
    per_token = 2 * 8 * 128 * V["fp16"].kv_bytes  # k and v, 8 KV heads of 128
    assert a.kv_bytes(V["fp16"]) == per_token * 512
    assert b.kv_bytes(V["fp16"]) == per_token * 8192 * 4
    # 32 blocks x 8192 tokens x 4 sequences of fp16 KV (4 GiB) + 3 more prefill buffers each
    act = 4 * 128 * 4096 * 4  # bytes of one sequence's prefill activations per block
    assert C.model_memory(b, V["fp16"]) - C.model_memory(a, V["fp16"]) == pytest.approx(
        32 * (per_token * (8192 * 4 - 512) + 3 * act))
    with pytest.raises(ConfigError, match="at most 131072"):
        c.costs(context=200_000)
    with pytest.raises(ConfigError, match="batch must be a positive integer"):
        c.costs(batch=0)


def test_gemma_local_layers_hold_only_their_window() -> None:
    g = CARDS["gemma-3-1b"].costs(context=8192)
    # 26 layers, every 6th global: 4 global layers hold 8192 tokens, 22 local ones 512
    assert g.kv_tokens == pytest.approx((4 * 8192 + 22 * 512) / 26)
    assert CARDS["gemma-3-1b"].costs(context=256).kv_tokens == 256


def test_tied_embeddings_are_counted_once_on_one_device() -> None:
    """The bundled SmolLM2-135M ties its head to its embedding: one stage holding both ends
    holds its 538 MB of fp32 weights, not 710 MB with the table twice."""
    m = C.ModelCosts.from_config(SMOL, "smollm2")
    fp32 = V["fp32"]
    weights = C.model_memory(m, fp32) - C.STAGE_RUNTIME_BYTES - m.n_layers * (
        m.block_memory(fp32) - m.block_weight_bytes(fp32))
    assert weights == pytest.approx(SMOL.num_params() * 4)
    assert 530e6 < weights < 540e6
    # split, each end needs its own copy of the table
    both = C.stage_memory_bytes(m, fp32, 0, 15) + C.stage_memory_bytes(m, fp32, 15, 30)
    assert both - C.model_memory(m, fp32) == pytest.approx(
        C.STAGE_RUNTIME_BYTES + m.embed_params * 4)


def test_an_8b_model_that_fits_no_device_is_split_better_than_by_memory() -> None:
    spec = load_fleet(EXAMPLES / "factory.yaml")
    t = tables_for(CARDS["llama-3.1-8b"].costs(), spec.fleet, variants=spec.variants,
                   min_quality=0.999)  # 16-bit weights: 16 GB, the largest device has 7.5
    plan = place_tables(t, "latency")
    assert len(plan.stages) >= 3 and plan.predicted["feasible"] == 1.0
    single = baseline_tables(t, "single")
    assert single.predicted["feasible"] == 0.0  # no device holds it alone
    memory = baseline_tables(t, "memory")
    assert memory.predicted["feasible"] == 1.0
    assert plan.predicted["per_token_s"] < 0.9 * memory.predicted["per_token_s"]


def test_cli_plans_a_card_and_lists_cards_as_plan_only(capsys) -> None:
    from edgeweave.cli.app import main
    from edgeweave.cli.common import console

    console.width = 240
    assert main(["plan", "--fleet", str(EXAMPLES / "factory.yaml"), "--model", "llama-3.1-8b",
                 "--min-quality", "0.999", "--context", "2048", "--baseline", "memory"]) == 0
    out = capsys.readouterr().out
    assert "llama-3.1-8b" in out and "vision" in out and "memory" in out
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "Plan-only" in out and "gemma-3-4b" in out and "8.03 B" in out


def test_generate_with_a_card_is_a_one_line_error(capsys) -> None:
    line = cli_error(capsys, ["generate", "--model", "llama-3.1-8b", "hello"])
    assert "plan-only model card" in line and "edgeweave plan --model llama-3.1-8b" in line


def test_plan_refuses_a_context_beyond_the_card(capsys) -> None:
    line = cli_error(capsys, ["plan", "--fleet", str(EXAMPLES / "factory.yaml"), "--model",
                              "qwen2.5-7b", "--context", "65536"])
    assert "at most 32768" in line
