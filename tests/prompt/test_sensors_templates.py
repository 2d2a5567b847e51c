"""Sensor encodings, window features, templates and composition under a token budget."""

from __future__ import annotations

import numpy as np
import pytest

from edgeweave.errors import ConfigError
from edgeweave.prompt.sensors import (
    EncodingSpec,
    downsample,
    encode_window,
    encodings,
    scale_0_99,
    trend_word,
    variability_word,
    window_features,
)
from edgeweave.prompt.templates import Example, PromptTemplate, compose


def count(text: str) -> int:
    return len(text.split())


def test_helpers_on_hand_cases() -> None:
    assert downsample(np.arange(8.0), 4).tolist() == [0.5, 2.5, 4.5, 6.5]
    assert scale_0_99(np.array([0.0, 5.0, 10.0]), 0, 10).tolist() == [0, 50, 99]
    assert trend_word(np.arange(20.0)) == "rising"
    assert trend_word(-np.arange(20.0)) == "falling"
    assert trend_word(np.sin(np.linspace(0, 12 * np.pi, 200))) == "flat"
    assert variability_word(np.ones(10)) == "constant"
    assert variability_word(np.linspace(0, 1, 100)) == "smooth"
    assert variability_word(np.tile([0.0, 1.0], 50)) == "jittery"


def test_every_encoding_mentions_every_channel() -> None:
    w = np.vstack([np.linspace(0, 1, 50), np.cos(np.linspace(0, 6, 50))])
    for name in encodings():
        text = encode_window(w, ("temp", "co2"), EncodingSpec(name, points=8))
        assert "temp" in text and "co2" in text, name
    assert encode_window(w, ("a", "b"), EncodingSpec("meansd", decimals=0)) == "a 0±0; b 0±1"
    assert encode_window(w[:1], ("t",), EncodingSpec("values", points=4)) == "t [0..1] 11 36 62 87"


def test_budget_lowers_resolution_then_drops_channels() -> None:
    w = np.random.default_rng(0).normal(size=(3, 200))
    full = encode_window(w, ("a", "b", "c"), EncodingSpec("raw_values", points=32))
    small = encode_window(w, ("a", "b", "c"), EncodingSpec("raw_values", points=32, max_tokens=30),
                          count)
    assert count(full) > 30 >= count(small)
    tiny = encode_window(w, ("a", "b", "c"), EncodingSpec("raw_values", points=32, max_tokens=4),
                         count)
    assert tiny.startswith("a ") and "c " not in tiny


def test_bad_specs() -> None:
    with pytest.raises(ConfigError, match="unknown sensor encoding"):
        EncodingSpec("jpeg")
    with pytest.raises(ConfigError, match="points"):
        EncodingSpec("values", points=1)
    with pytest.raises(ConfigError, match="channels"):
        encode_window(np.zeros((2, 5)), ("a",))


def test_window_features_shape_and_scale_invariant_shape() -> None:
    w = np.vstack([np.sin(np.linspace(0, 6, 64)), np.linspace(0, 1, 64)])
    f = window_features(w, shape_points=8)
    assert f.shape == (2 * (6 + 8),) and f.dtype == np.float32
    g = window_features(w * 10, shape_points=8)
    np.testing.assert_allclose(f[6:14], g[6:14], atol=1e-5)  # coarse shape is z-normalised


def test_template_and_compose_under_budget() -> None:
    t = PromptTemplate("Classify it.", "Readings", "Label", choices=("a", "b"))
    demos = [Example(f"x{i} " + "w " * i, "a" if i % 2 else "b") for i in range(6)]
    prompt = t.render("q", demos[:1])
    assert prompt == ("Classify it.\nPossible answers: a, b.\n\nReadings: x0 \nLabel: b"
                      "\n\nReadings: q\nLabel:")
    text, used = compose(t, "q", demos, budget_tokens=25, count_tokens=count)
    assert count(text) <= 25 and used == sorted(used) and used[0] == 0
    all_text, all_used = compose(t, "q", demos, 10_000, count, order=lambda c: c[::-1])
    assert all_used == [5, 4, 3, 2, 1, 0] and all_text.index("x5") < all_text.index("x0 ")
    none_text, none_used = compose(t, "q", demos, 1, count)
    assert none_used == [] and none_text == t.render("q")
    with pytest.raises(ConfigError):
        PromptTemplate("  ")
