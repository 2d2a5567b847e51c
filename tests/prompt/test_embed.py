"""Embeddings: the bundled MiniLM (real, loads in about a second) and the feature scaler."""

from __future__ import annotations

import numpy as np

from edgeweave.prompt.embed import MINILM_DIM, FeatureScaler, embed_texts, minilm


def test_minilm_embeds_text_by_meaning_and_is_cached() -> None:
    v = embed_texts(["The room is warm and humid.", "It is hot and muggy in the room.",
                     "The stock market fell sharply today."])
    assert v.shape == (3, MINILM_DIM) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert v[0] @ v[1] > v[0] @ v[2] + 0.2
    assert minilm() is minilm()  # loaded once per process
    assert embed_texts([]).shape == (0, MINILM_DIM)


def test_feature_scaler_standardises_then_normalises() -> None:
    feats = np.array([[1.0, 100.0], [3.0, 300.0], [2.0, 200.0]])
    s = FeatureScaler.fit(feats)
    out = s(feats)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1)[[0, 1]], 1.0, atol=1e-6)
    # both features had the same relative spread: after scaling they weigh the same
    np.testing.assert_allclose(out[0], -out[1], atol=1e-6)
    const = FeatureScaler.fit(np.ones((4, 3)))  # zero spread must not divide by zero
    assert np.isfinite(const(np.ones((1, 3)))).all()
