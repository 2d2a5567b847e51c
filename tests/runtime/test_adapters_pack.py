"""Pure parts of adapter serving: the fused-group packing of the ONNX LoRA inputs and the
wire format a coordinator sends nodes (no engine, no model)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgeweave.errors import ConfigError
from edgeweave.finetune.config import LoRAConfig
from edgeweave.runtime.adapters import Adapter, AdapterSpec, Factors, from_bytes, to_bytes
from edgeweave.runtime.engines.onnx_lora import GROUPS, group_widths, input_names, pack

H, ATT, KV, INTER = 16, 16, 8, 24  # hidden, q width, k/v width, intermediate
SHAPES = {input_names(i, g)[0]: shape for i in (0, 1) for g, shape in
          {"qkv": (H, ATT + 2 * KV), "o": (ATT, H), "gate_up": (H, 2 * INTER),
           "down": (INTER, H)}.items()}
FAN = {"q_proj": (H, ATT), "k_proj": (H, KV), "v_proj": (H, KV), "o_proj": (ATT, H),
       "gate_proj": (H, INTER), "up_proj": (H, INTER), "down_proj": (INTER, H)}


def _adapter(modules: dict[tuple[int, str], int], seed: int = 0) -> Adapter:
    g = np.random.default_rng(seed)
    factors = {(i, m): Factors(g.normal(size=(r, FAN[m][0])).astype(np.float32),
                               g.normal(size=(FAN[m][1], r)).astype(np.float32))
               for (i, m), r in modules.items()}
    return Adapter("t", Path("."), LoRAConfig(), "base", "fp", "sha", factors)


def test_a_fused_groups_delta_is_each_modules_delta_on_its_own_columns():
    adapter = _adapter({(0, "q_proj"): 3, (0, "v_proj"): 2, (0, "up_proj"): 4,
                        (1, "down_proj"): 1})
    arrays = pack(adapter, [0, 1], SHAPES, KV)
    x = np.random.default_rng(9).normal(size=(5, H)).astype(np.float32)
    for i in (0, 1):
        for group, modules in GROUPS.items():
            a, b = (arrays[n] for n in input_names(i, group))
            fan_in = SHAPES[input_names(i, group)[0]][0]
            xi = x if fan_in == H else np.random.default_rng(i).normal(size=(5, fan_in))
            got = (xi @ a) @ b
            parts = [adapter.factors[(i, m)].delta(xi) if (i, m) in adapter.factors
                     else np.zeros((5, w))
                     for m, w in zip(modules, group_widths(group, b.shape[1], KV), strict=True)]
            np.testing.assert_allclose(got, np.concatenate(parts, axis=1), atol=1e-5)
    assert arrays[input_names(1, "qkv")[0]].shape == (H, 1)  # no LoRA there: rank-1 zeros
    assert not arrays[input_names(1, "qkv")[1]].any()


def test_factors_of_another_shape_are_refused():
    bad = _adapter({(0, "k_proj"): 2})
    bad.factors[(0, "k_proj")] = Factors(np.ones((2, H), np.float32),
                                         np.ones((ATT, 2), np.float32))  # q's width, not k's
    with pytest.raises(ConfigError, match="trained on another model"):
        pack(bad, [0], SHAPES, KV)


def test_the_wire_format_round_trips_one_stages_blocks():
    adapter = _adapter({(0, "q_proj"): 3, (1, "down_proj"): 2, (1, "o_proj"): 1})
    got = from_bytes(to_bytes(adapter, 1, 2))
    assert (got.name, got.sha256, got.base, got.lora) == ("t", "sha", "base", LoRAConfig())
    assert sorted(got.factors) == [(1, "down_proj"), (1, "o_proj")]
    for k, f in got.factors.items():
        assert np.array_equal(f.a, adapter.factors[k].a)
        assert np.array_equal(f.b, adapter.factors[k].b)
    assert from_bytes(to_bytes(adapter, 2, 4)).factors == {}  # a stage without its blocks
    with pytest.raises(ConfigError, match="not an adapter"):
        from_bytes(b"\xff" * 12)


def test_adapter_names_and_specs_say_how_to_fix_them():
    assert AdapterSpec.parse("home-a=./ad") == AdapterSpec("home-a", Path("ad"))
    for bad in ("noequals", "=dir", "name="):
        with pytest.raises(ConfigError, match="NAME=DIR"):
            AdapterSpec.parse(bad)
    with pytest.raises(ConfigError, match="letters, digits"):
        AdapterSpec("has space", Path("d"))
