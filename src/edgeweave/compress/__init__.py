"""Compression: recipes -> packed models -> verified artifacts.

``compress(model, recipe) -> Artifact``; ``load_artifact(path, shard) -> LoadedModel``;
``variant(name)`` builds or reuses a cached named artifact ("int8", "int4", ...).
"""

from edgeweave.compress.api import Context, compress
from edgeweave.compress.artifact import Artifact, load_artifact, read_manifest, verify
from edgeweave.compress.calib import Calibration, wiki_calibration
from edgeweave.compress.recipes import (
    ASVD,
    GPTQ,
    PRESETS,
    RTN,
    SVD,
    ChannelPrune,
    Distill,
    Magnitude,
    Pipeline,
    Recipe,
    SmoothQuant,
    SparseGPT,
    Wanda,
    parse_recipe,
)
from edgeweave.compress.variants import VARIANTS, variant

__all__ = ["ASVD", "GPTQ", "PRESETS", "RTN", "SVD", "VARIANTS", "Artifact", "Calibration",
           "ChannelPrune", "Context", "Distill", "Magnitude", "Pipeline", "Recipe",
           "SmoothQuant", "SparseGPT", "Wanda", "compress", "load_artifact", "parse_recipe",
           "read_manifest", "variant", "verify", "wiki_calibration"]
