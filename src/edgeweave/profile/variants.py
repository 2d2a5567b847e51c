"""What the planner prices: variants (from the one registry in :mod:`edgeweave.variants`)
and the hidden-state codecs between stages.

Defaults hold until an artifact exists; then each artifact folder's ``manifest.json``
supplies the real bits per weight and measured quality. Quality is the fraction of the
reference model's quality kept (1.0 = same as fp32), from the manifest's ``metrics``:
``quality`` if given, else ``reference_perplexity / perplexity``.
"""

from __future__ import annotations

from pathlib import Path

from edgeweave.errors import ConfigError
from edgeweave.variants import Variant, from_manifest, planner_defaults

__all__ = ["DEFAULT_VARIANTS", "Variant", "load_variants", "variant_from_manifest"]

# One registry of variants (edgeweave.variants); the planner's defaults are a view of it.
DEFAULT_VARIANTS: dict[str, Variant] = planner_defaults()
variant_from_manifest = from_manifest

# Hidden-state codecs between stages: bytes per value, extra bytes per token (int8 carries one
# fp32 absmax scale per token), encode+decode time (measured: docs ENVIRONMENT.md) and quality
# kept (greedy tokens were identical for all three in a two-process split of a 125M model).
CODEC_BYTES = {"fp32": 4.0, "fp16": 2.0, "int8": 1.0}
CODEC_TOKEN_EXTRA = {"fp32": 0.0, "fp16": 0.0, "int8": 4.0}
CODEC_TIME_S = {"fp32": 1e-6, "fp16": 5e-6, "int8": 7e-6}
CODEC_QUALITY = {"fp32": 1.0, "fp16": 1.0, "int8": 0.999}


def load_variants(artifacts: list[str | Path] | None = None,
                  names: tuple[str, ...] | None = None) -> dict[str, Variant]:
    """Default variants, overridden/extended by artifact manifests; optionally only ``names``."""
    out = dict(DEFAULT_VARIANTS)
    for a in artifacts or []:
        v = variant_from_manifest(a)
        out[v.name] = v
    if names is not None:
        missing = [n for n in names if n not in out]
        if missing:
            raise ConfigError(f"unknown variant(s) {missing}; known: {', '.join(sorted(out))}")
        out = {n: out[n] for n in names}
    return out
