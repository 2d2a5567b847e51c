"""Variants: the one registry of the weight forms a model can be served in.

A :class:`Variant` is a typed value, never a name to parse: its :class:`~edgeweave.types.
WeightFormat` (bits, group size, zero-point kind, activations) tells the ONNX exporter and the
engines what to build, its recipe tells ``compress.variant`` how to make the artifact, and
its size and quality figures are what the planner prices. Built-in variants live in
:data:`VARIANTS`; an artifact's ``manifest.json`` describes its own variant
(:func:`from_manifest`), so an artifact made by hand with ``edgeweave compress`` plans and
runs like a built-in one. Pure Python: a node that runs ONNX stages reads it without torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeweave.errors import ArtifactError, ConfigError
from edgeweave.types import PRECISIONS, WeightFormat

if TYPE_CHECKING:
    from edgeweave.compress.recipes import Recipe


@dataclass(frozen=True)
class Variant:
    """One weight form of a model (see the module docstring).

    ``bits_per_weight`` is the stored size per parameter (scales, zeros and padding
    included); ``precision`` the compute precision the cost model prices; ``quality`` the
    fraction of the fp32 model's quality kept, in (0, 1]; ``kv_bytes`` per cached key/value
    element; ``source`` where the figures come from (``default`` or a manifest path).
    """

    name: str
    bits_per_weight: float
    precision: str
    quality: float
    kv_bytes: int = 4
    source: str = "default"
    weights: WeightFormat | None = None  # None: the typical format of ``precision``
    recipe: Recipe | None = None  # how ``compress.variant`` builds it; None: the model as is

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"variant {self.name!r}: precision must be one of {PRECISIONS}")
        if not 0 < self.bits_per_weight <= 32:
            raise ConfigError(f"variant {self.name!r}: bits_per_weight must be in (0, 32]")
        if not 0 < self.quality <= 1.0 + 1e-9:
            raise ConfigError(f"variant {self.name!r}: quality must be in (0, 1]")
        if self.weights is None:
            object.__setattr__(self, "weights", WeightFormat.of_precision(self.precision))

    @property
    def bytes_per_weight(self) -> float:
        return self.bits_per_weight / 8

    @property
    def format(self) -> WeightFormat:
        assert self.weights is not None  # set in __post_init__
        return self.weights

    @property
    def buildable(self) -> bool:
        """An artifact can be built for it (or it is the source model itself)."""
        return self.recipe is not None or self.name == "fp32"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "bits_per_weight": self.bits_per_weight,
                "precision": self.precision, "quality": self.quality,
                "kv_bytes": self.kv_bytes, "weights": self.format.to_dict(),
                "recipe": None if self.recipe is None else self.recipe.to_dict()}


def _builtin() -> dict[str, Variant]:
    from edgeweave.compress.recipes import GPTQ, RTN, SmoothQuant

    def made(name: str, bits: float, quality: float, recipe: Recipe) -> Variant:
        fmt = recipe.weight_format()
        return Variant(name, bits, fmt.precision, quality, weights=fmt, recipe=recipe)

    # Sizes and qualities are defaults for planning before an artifact exists; a built
    # artifact's manifest replaces them with its own (measured) figures.
    return {v.name: v for v in (
        Variant("fp32", 32.0, "fp32", 1.0, weights=WeightFormat(32)),
        # planner-only: no artifact builds fp16 weights yet (16 bits, fp16 KV cache)
        Variant("fp16", 16.0, "fp16", 0.999, 2, weights=WeightFormat(16)),
        # one fp32 scale per output row: ~0.06 bit/weight at width 576
        made("int8", 8.06, 0.99, RTN(bits=8)),
        # The default low-bit variant (as Ollama defaults to Q4_K_M), chosen by measurement on
        # the bundled model (Wikipedia / Shakespeare perplexity, 2,048 held-out tokens; fp32
        # 19.96 / 65.4): RTN g32 with float zeros 21.33 / 70.4 (+6.9 %): its weights come from
        # a Q4_1 GGUF (g32, a float offset per block) and this grid reproduces it. Integer
        # zero points cannot (GPTQ g32 24.7 / 88.0, RTN g32 27.6 / 92.5, g64 26.9 / 98.7)
        # and symmetric grids are worse still (GPTQ g32 28.7 / 107.7). The float zeros cost
        # the ONNX graph a group-sum correction: 0.77-0.80x the speed of int4-fast.
        made("int4", 5.0, 0.94, RTN(bits=4, group_size=32, pad=True)),
        # the default's grid with an int8 table and tied head, where its 4-bit table loses the
        # most (2026-12-07, per projection): 20.00 / 65.6 through the ONNX graph, a decode
        # step 1.04x the default's alone and 1.09x in a batch of 16 (an AVX2 host), the same
        # resident memory (228 MB against 227 for a bare engine), 95 MB on disk not 84
        made("int4-hq", 5.65, 0.99, RTN(bits=4, group_size=32, pad=True, embedding_bits=8)),
        # integer zero points, native to MatMulNBits: int4-sym's speed, +24 % perplexity here
        made("int4-fast", 5.0, 0.81, GPTQ(bits=4, group_size=32, zero_point="int", pad=True)),
        made("int4-rtn", 4.5, 0.49, RTN(bits=4, group_size=128, pad=True)),
        # symmetric grid: zero points all 8, the plainest MatMulNBits
        made("int4-sym", 4.5, 0.69, GPTQ(bits=4, group_size=32, symmetric=True, pad=True)),
        made("w8a8-smooth", 8.06, 0.77, SmoothQuant()),
    )}


_REGISTRY: dict[str, Variant] = {}


def registry() -> dict[str, Variant]:
    """Every built-in variant by name (built on first use: recipes validate themselves)."""
    if not _REGISTRY:
        _REGISTRY.update(_builtin())
    return _REGISTRY


def get(name: str | Variant) -> Variant:
    """The built-in variant ``name`` (a :class:`Variant` passes through)."""
    if isinstance(name, Variant):
        return name
    reg = registry()
    if name not in reg:
        raise ConfigError(f"unknown variant {name!r}: choose one of {', '.join(reg)} (or "
                          "pass an artifact folder made by `edgeweave compress` as the model)")
    return reg[name]


def planner_defaults() -> dict[str, Variant]:
    """What the planner prices when a fleet file names no artifacts."""
    reg = registry()
    return {n: reg[n] for n in ("fp32", "fp16", "int8", "int4")}


def _quality(metrics: dict[str, Any]) -> float | None:
    if "quality" in metrics:
        return float(metrics["quality"])
    ppl = metrics.get("perplexity") or metrics.get("ppl")
    ref = metrics.get("reference_perplexity") or metrics.get("ref_perplexity")
    if ppl and ref:
        return min(1.0, float(ref) / float(ppl))
    return None


def _recipe_of(m: dict[str, Any]) -> Recipe | None:
    if not isinstance(m.get("recipe"), dict):
        return None
    from edgeweave.compress.recipes import from_dict

    try:
        return from_dict(m["recipe"])
    except ConfigError:  # a newer edgeweave's recipe: the manifest's own figures still hold
        return None


def _weights_of(m: dict[str, Any], recipe: Recipe | None) -> WeightFormat | None:
    """The manifest's own weight format, or the one its recipe implies (older manifests)."""
    if isinstance(m.get("weights"), dict):
        return WeightFormat.from_dict(m["weights"])
    return None if recipe is None else recipe.weight_format()


def from_manifest(path: str | Path) -> Variant:
    """The variant an artifact folder (or its ``manifest.json``) describes."""
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
        # the compressor writes the packed size as stats.bits_per_weight (scales, zeros and
        # padding included) and the grid as recipe.params.bits
        bits = (m.get("bits_per_weight") or (m.get("stats") or {}).get("bits_per_weight")
                or recipe.get("bits_per_weight") or recipe.get("bits")
                or (recipe.get("params") or {}).get("bits"))
        b = float(bits or 32)
        quality = _quality(m.get("metrics") or {})
        built_with = _recipe_of(m)
        weights = _weights_of(m, built_with)
    except (AttributeError, TypeError, ValueError, ZeroDivisionError, ConfigError) as e:
        raise ArtifactError(f"{mf}: bits_per_weight, weights or metrics have the wrong type "
                            f"({e}): the manifest was edited; re-run `edgeweave compress`") from e
    reg = registry()
    nearest = "int4" if b <= 4.9 else "int8" if b <= 8.5 else "fp16" if b <= 16 else "fp32"
    if weights is not None:
        nearest = weights.precision
    base = reg.get(name) or reg[nearest]
    return replace(base, name=name, bits_per_weight=float(bits or base.bits_per_weight),
                   precision=weights.precision if weights is not None else base.precision,
                   quality=float(quality if quality is not None else base.quality),
                   weights=weights or base.weights, recipe=built_with or base.recipe,
                   source=str(mf))
