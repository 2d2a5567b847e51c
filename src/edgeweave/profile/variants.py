"""Model variants the planner can place: bytes per weight, compute precision and quality.

Defaults hold until the compression engineer's artifacts exist; then each artifact folder's
``manifest.json`` supplies the real bits per weight and measured quality. Quality is the
fraction of the reference model's quality kept (1.0 = same as fp32), from the manifest's
``metrics``: ``quality`` if given, else ``reference_perplexity / perplexity``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from edgeweave.errors import ArtifactError, ConfigError
from edgeweave.types import PRECISIONS


@dataclass(frozen=True)
class Variant:
    name: str
    bits_per_weight: float
    precision: str  # compute precision on devices that have kernels for it
    quality: float  # fraction of the fp32 model's quality kept, in (0, 1]
    kv_bytes: int = 4  # bytes per cached key/value element
    source: str = "default"

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"variant {self.name!r}: precision must be one of {PRECISIONS}")
        if not 0 < self.bits_per_weight <= 32:
            raise ConfigError(f"variant {self.name!r}: bits_per_weight must be in (0, 32]")
        if not 0 < self.quality <= 1.0 + 1e-9:
            raise ConfigError(f"variant {self.name!r}: quality must be in (0, 1]")

    @property
    def bytes_per_weight(self) -> float:
        return self.bits_per_weight / 8


# Overheads: int8 keeps one fp32 scale per output row (~0.06 bit/weight at width 576);
# int4 keeps an fp16 scale and zero per group of 64 (0.5 bit/weight). Default qualities are
# conservative placeholders (perplexity ratios typical of RTN on small models) until a
# manifest gives the measured figure.
DEFAULT_VARIANTS: dict[str, Variant] = {v.name: v for v in (
    Variant("fp32", 32.0, "fp32", 1.0, 4),
    Variant("fp16", 16.0, "fp16", 0.999, 2),
    Variant("int8", 8.06, "int8", 0.99, 4),
    Variant("int4", 4.5, "int4", 0.93, 4),
)}

# Hidden-state codecs between stages: bytes per value, extra bytes per token (int8 carries one
# fp32 absmax scale per token), encode+decode time (measured: docs ENVIRONMENT.md) and quality
# kept (greedy tokens were identical for all three in a two-process split of a 125M model).
CODEC_BYTES = {"fp32": 4.0, "fp16": 2.0, "int8": 1.0}
CODEC_TOKEN_EXTRA = {"fp32": 0.0, "fp16": 0.0, "int8": 4.0}
CODEC_TIME_S = {"fp32": 1e-6, "fp16": 5e-6, "int8": 7e-6}
CODEC_QUALITY = {"fp32": 1.0, "fp16": 1.0, "int8": 0.999}


def _quality(metrics: dict[str, Any]) -> float | None:
    if "quality" in metrics:
        return float(metrics["quality"])
    ppl = metrics.get("perplexity") or metrics.get("ppl")
    ref = metrics.get("reference_perplexity") or metrics.get("ref_perplexity")
    if ppl and ref:
        return min(1.0, float(ref) / float(ppl))
    return None


def variant_from_manifest(path: str | Path) -> Variant:
    """A variant from an artifact folder (or its ``manifest.json``)."""
    path = Path(path)
    try:
        mf = path / "manifest.json" if path.is_dir() else path
        m = json.loads(mf.read_text())
    except (OSError, ValueError) as e:  # ValueError: not UTF-8, not JSON, a NUL in the path
        raise ArtifactError(f"cannot read artifact manifest {path}: {e}; point the fleet's "
                            "`artifacts` at a folder written by `edgeweave compress`") from e
    if not isinstance(m, dict):
        raise ArtifactError(f"{mf} is not an artifact manifest (a JSON object): re-run "
                            "`edgeweave compress` for that artifact")
    try:
        recipe = m.get("recipe") or {}
        name = str(m.get("variant") or m.get("name") or mf.parent.name)
        # the compression package writes the packed size as stats.bits_per_weight (scales,
        # zeros and padding included) and the grid as recipe.params.bits
        bits = (m.get("bits_per_weight") or (m.get("stats") or {}).get("bits_per_weight")
                or recipe.get("bits_per_weight") or recipe.get("bits")
                or (recipe.get("params") or {}).get("bits"))
        b = float(bits or 32)
        quality = _quality(m.get("metrics") or {})
    except (AttributeError, TypeError, ValueError, ZeroDivisionError) as e:
        raise ArtifactError(f"{mf}: bits_per_weight or metrics have the wrong type ({e}): the "
                            "manifest was edited; re-run `edgeweave compress`") from e
    nearest = "int4" if b <= 4.9 else "int8" if b <= 8.5 else "fp16" if b <= 16 else "fp32"
    base = DEFAULT_VARIANTS.get(name) or DEFAULT_VARIANTS[nearest]
    return replace(base, name=name, bits_per_weight=float(bits or base.bits_per_weight),
                   quality=float(quality if quality is not None else base.quality),
                   source=str(mf))


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
