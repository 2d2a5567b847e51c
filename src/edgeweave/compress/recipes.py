"""Recipes: typed, frozen, validated, versioned, JSON round-trippable, combinable.

A recipe *is* the API: ``compress(model, GPTQ(bits=4, group_size=128))``. Each config type is
bound to the function that applies it by :func:`register_method` (a registry keyed by the
config type, no if/elif over names); ``Pipeline((Wanda(0.5), RTN(bits=4)))`` runs steps in
order. ``to_dict``/``from_dict`` carry the method name and ``version`` so manifests can be
read back into the same recipe. A recipe given by name or as a file is read by
:func:`edgeweave.compress.spec.parse_recipe` (the names include the serving variants', which
are built from recipes, so the lookup lives above both).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from edgeweave.compress.methods import load_methods
from edgeweave.errors import ConfigError
from edgeweave.types import WeightFormat
from edgeweave.validate import is_int, is_number, kind, refuse_unknown, show, suggest

RECIPES: dict[str, type[Recipe]] = {}  # method name -> config type (for JSON)
METHODS: dict[type, Callable[..., Any]] = {}  # config type -> apply(recipe, model, ctx)

QUANT_GROUPS = (32, 64, 128, 256)
PATTERNS = ("unstructured", "2:4")


def recipe_type(cls: type[Recipe]) -> type[Recipe]:
    RECIPES[cls.method] = cls
    return cls


def register_method(config_type: type[Recipe]):
    """Decorator binding ``apply(recipe, model, ctx) -> model`` to a recipe type."""
    def deco(fn):
        METHODS[config_type] = fn
        return fn
    return deco


def _check(ok: bool, msg: str) -> None:
    if not ok:
        raise ConfigError(msg)


@dataclass(frozen=True)
class Recipe:
    method: ClassVar[str] = "recipe"
    version: ClassVar[int] = 1
    quantizes: ClassVar[bool] = False  # packs weights into int8/int4 modules (must come last)
    needs_calibration: ClassVar[bool] = False

    @property
    def chain(self) -> tuple[Recipe, ...]:
        """The steps this recipe runs (one, or a pipeline's)."""
        return (self,)

    def to_dict(self) -> dict[str, Any]:
        params = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {"method": self.method, "version": self.version, "params": params}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def weight_format(self) -> WeightFormat:
        """How the artifact holds its linears; pruning, low-rank and distillation store
        dense fp16 (run in fp32), quantizers override this."""
        return WeightFormat(16)

    def label(self) -> str:
        params = ",".join(f"{k}={v}" for k, v in self.to_dict()["params"].items())
        return f"{self.method}({params})"


_RECIPE_KEYS = ("method", "version", "params")


@functools.cache
def _field_types(cls: type[Recipe]) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _describe(tp: Any) -> str:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) is tuple:
        return f"a list of {_describe(typing.get_args(tp)[0]).removeprefix('a ')}s"
    return {bool: "true or false", int: "an integer", float: "a finite number", str: "a string",
            type(None): "null"}.get(tp, str(tp))


def _typed(tp: Any, value: Any) -> tuple[bool, Any]:
    """``(ok, value)``: JSON ``value`` checked against a field type; ints widen to floats.

    Strings are never parsed ("0.5" is refused, not read as 0.5): a recipe is stored in the
    manifest and compared with the variant's, so it must hold exactly the typed values."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            ok, v = _typed(arg, value)
            if ok:
                return True, v
        return False, value
    if tp is type(None):
        return value is None, value
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        return is_int(value), value
    if tp is float:
        return is_number(value), float(value) if is_number(value) else value
    if tp is str:
        return isinstance(value, str), value
    if typing.get_origin(tp) is tuple:  # tuple[str, ...]: a JSON list of strings
        (item, _more) = typing.get_args(tp)
        if not isinstance(value, list | tuple):
            return False, value
        checked = [_typed(item, v) for v in value]
        return all(ok for ok, _ in checked), tuple(v for _, v in checked)
    return False, value  # a field type this loader was not taught: refuse, do not guess


def _params(cls: type[Recipe], method: str, params: dict[str, Any]) -> dict[str, Any]:
    types_ = _field_types(cls)
    refuse_unknown(params, types_, f"{method} recipe parameters")
    out = {}
    for name, value in params.items():
        ok, out[name] = _typed(types_[name], value)
        if not ok:
            default = json.dumps(next(f.default for f in dataclasses.fields(cls) if f.name == name))
            raise ConfigError(f"{method}: {name} must be {_describe(types_[name])}, got "
                              f"{kind(value)} {show(value)}: write e.g. \"{name}\": {default} "
                              "(numbers and booleans unquoted)")
    return out


def from_dict(d: dict[str, Any]) -> Recipe:
    """Inverse of :meth:`Recipe.to_dict` (pipelines included); every value is type-checked."""
    example = '{"method": "rtn", "params": {"bits": 4}}'
    if not isinstance(d, dict) or "method" not in d:
        raise ConfigError(f"a recipe is a JSON object with a 'method' key like {example}, got "
                          f"{kind(d)} {show(d)}; methods: {', '.join(sorted(RECIPES))}")
    refuse_unknown(d, _RECIPE_KEYS, "recipe")
    method = d["method"]
    if isinstance(method, str) and method not in RECIPES:
        # import every method file (recipe types living beside their apply function register
        # then); only for a name not known yet, since method files import torch
        load_methods()
    if not isinstance(method, str) or method not in RECIPES:
        raise ConfigError(f"unknown compression method {show(method)}{suggest(method, RECIPES)}: "
                          f"choose one of {', '.join(sorted(RECIPES))}")
    cls = RECIPES[method]
    version = d.get("version", cls.version)
    _check(is_int(version) and version >= 1, f"recipe {method}: version must be an integer >= 1 "
           f"(e.g. {cls.version}), got {kind(version)} {show(version)}")
    _check(version <= cls.version, f"recipe {method} version {version} is newer than this "
           f"edgeweave understands ({cls.version}): upgrade edgeweave")
    params = {} if d.get("params") is None else d["params"]
    _check(isinstance(params, dict), f"recipe {method}: params must be a JSON object like "
           f"{example}, got {kind(params)} {show(params)}")
    if cls is Pipeline:
        refuse_unknown(params, ("steps",), "pipeline recipe parameters")
        steps = params.get("steps")
        _check(isinstance(steps, list) and len(steps) > 0, "a pipeline's params.steps must be a "
               f"non-empty list of recipes like [{example}], got {kind(steps)} {show(steps)}")
        built = []
        for i, step in enumerate(steps):
            try:
                built.append(from_dict(step))
            except ConfigError as e:
                raise ConfigError(f"pipeline step {i + 1}: {e}") from e
        return Pipeline(tuple(built))
    return cls(**_params(cls, method, params))


def from_json(text: str) -> Recipe:
    try:
        return from_dict(json.loads(text))
    except json.JSONDecodeError as e:
        raise ConfigError(f"recipe is not valid JSON ({e}): pass a preset name "
                          f"({', '.join(sorted(PRESETS))}) or a JSON object") from e


# -- quantization -------------------------------------------------------------------------
ZERO_POINT_KINDS = ("float", "int")


def _check_zero_point(zero_point: str) -> None:
    _check(zero_point in ZERO_POINT_KINDS, f"zero_point={zero_point!r}: choose 'int' (integer "
           "zero points, native to ONNX Runtime) or 'float' (any offset per group)")


def _int4_format(bits: int, group_size: int, symmetric: bool, zero_point: str) -> WeightFormat:
    return WeightFormat(4, group_size, "none" if symmetric else zero_point,
                        grid_bits=0 if bits == 4 else bits)


def _check_mixed(int_zero: tuple[str, ...], embedding_bits: int | None, asymmetric: bool
                 ) -> None:
    _check(embedding_bits in (None, 4, 8), f"embedding_bits={embedding_bits}: choose 8 or 4 "
           "(or null: the recipe's bits)")
    _check(all(isinstance(n, str) and n and "." not in n for n in int_zero),
           f"int_zero={int_zero!r}: name linears as inside a block, e.g. "
           '["o_proj", "down_proj"]')
    _check(not int_zero or asymmetric, "int_zero names linears of an asymmetric low-bit grid: "
           "use it with bits=4, symmetric=false")


def _check_int4(bits: int, group_size: int | None, allowed_bits: tuple[int, ...]) -> None:
    _check(bits in allowed_bits, f"bits={bits} is not supported here: choose one of "
           f"{allowed_bits} (packed kernels exist for int8 and int4; int3 is stored in int4)")
    if bits < 8:
        _check(group_size in QUANT_GROUPS, f"group_size={group_size} is not supported for "
               f"int{bits}: choose one of {QUANT_GROUPS} (the int4 kernel's group sizes)")


@recipe_type
@dataclass(frozen=True)
class RTN(Recipe):
    """Round-to-nearest weights. int8: symmetric per output channel; int4: grouped.

    ``pad=True`` zero-pads input widths that ``group_size`` does not divide (e.g. 576 with
    g128); ``embeddings`` also quantizes the token embedding (and so the tied head);
    ``zero_point`` of an asymmetric int4 grid is ``int`` or ``float`` (see ``quant.py``).
    """

    method: ClassVar[str] = "rtn"
    quantizes: ClassVar[bool] = True
    bits: int = 4
    group_size: int | None = None
    symmetric: bool | None = None
    pad: bool = False
    embeddings: bool = True
    zero_point: str = "float"
    # Linears (by their name in a block, e.g. "o_proj") whose asymmetric int4 grids take
    # integer zero points even when ``zero_point`` is "float": they skip the ONNX graph's
    # group-sum correction where that costs the least quality (measured per projection in
    # the README's variant table).
    int_zero: tuple[str, ...] = ()
    # bits of the token embedding and the tied head (8 or 4); None: ``bits``
    embedding_bits: int | None = None

    def weight_format(self) -> WeightFormat:
        if self.bits == 8:
            return WeightFormat(8)
        return _int4_format(self.bits, self.group_size or 128, bool(self.symmetric),
                            self.zero_point)

    def __post_init__(self) -> None:
        _check_zero_point(self.zero_point)
        _check_int4(self.bits, self.group_size if self.bits == 4 and self.group_size else 128,
                    (4, 8))
        _check_mixed(self.int_zero, self.embedding_bits, self.bits == 4 and not self.symmetric)
        object.__setattr__(self, "int_zero", tuple(self.int_zero))
        if self.bits == 8:
            _check(self.group_size is None, "int8 runs fbgemm's per-output-channel kernel: use "
                   "group_size=None (groups are for int4)")
            _check(self.symmetric in (None, True), "int8 is symmetric (fbgemm); drop "
                   "symmetric=False or use bits=4 for an asymmetric grid")
            object.__setattr__(self, "symmetric", True)
        else:
            if self.group_size is None:
                object.__setattr__(self, "group_size", 128)
            _check_int4(self.bits, self.group_size, (4, 8))
            if self.symmetric is None:
                object.__setattr__(self, "symmetric", False)


@recipe_type
@dataclass(frozen=True)
class GPTQ(Recipe):
    """GPTQ (Frantar et al. 2022): column-wise quantization with Hessian error feedback."""

    method: ClassVar[str] = "gptq"
    quantizes: ClassVar[bool] = True
    needs_calibration: ClassVar[bool] = True
    bits: int = 4
    group_size: int = 128
    symmetric: bool = False
    act_order: bool = False
    damp: float = 0.01
    pad: bool = False
    embeddings: bool = True
    head: bool = True  # GPTQ the output head too (tied: the embedding shares its integers)
    zero_point: str = "float"
    int_zero: tuple[str, ...] = ()  # as RTN's
    embedding_bits: int | None = None  # 8: an RTN int8 table and tied head, no head GPTQ

    def weight_format(self) -> WeightFormat:
        return _int4_format(self.bits, self.group_size, self.symmetric, self.zero_point)

    def __post_init__(self) -> None:
        _check_zero_point(self.zero_point)
        _check_int4(self.bits, self.group_size, (3, 4))
        _check(0 < self.damp < 1, f"damp={self.damp} must be in (0, 1), e.g. 0.01")
        _check_mixed(self.int_zero, self.embedding_bits, not self.symmetric)
        object.__setattr__(self, "int_zero", tuple(self.int_zero))


@recipe_type
@dataclass(frozen=True)
class SmoothQuant(Recipe):
    """SmoothQuant W8A8 (Xiao et al. 2022) on our int8 kernel; see quantize/smoothquant.py."""

    method: ClassVar[str] = "smoothquant"
    quantizes: ClassVar[bool] = True
    needs_calibration: ClassVar[bool] = True
    # migration strength; 0.5 is the paper's OPT default, Llama-family models want more
    # (SmolLM2-135M, Wikipedia ppl, reference 20.0: 35.3 at 0.5, 25.9 at 0.75, 26.9 at 0.9)
    alpha: float = 0.75
    embeddings: bool = True

    def weight_format(self) -> WeightFormat:
        return WeightFormat(8, activations="int8")

    def __post_init__(self) -> None:
        _check(0 <= self.alpha <= 1, f"alpha={self.alpha} must be in [0, 1] (0.5-0.9 is typical)")


# -- pruning ------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Sparsity(Recipe):
    sparsity: float = 0.5
    pattern: str = "unstructured"

    def __post_init__(self) -> None:
        _check(self.pattern in PATTERNS, f"pattern={self.pattern!r}: choose one of {PATTERNS}")
        _check(0 < self.sparsity < 1, f"sparsity={self.sparsity} must be in (0, 1), e.g. 0.5 "
               "for half of the weights")
        _check(self.pattern != "2:4" or self.sparsity == 0.5,
               "the 2:4 pattern is 50% sparse by definition: use sparsity=0.5")


@recipe_type
@dataclass(frozen=True)
class Magnitude(_Sparsity):
    method: ClassVar[str] = "magnitude"


@recipe_type
@dataclass(frozen=True)
class Wanda(_Sparsity):
    """Wanda (Sun et al. 2023): |W| * ||X||, compared within each output row."""

    method: ClassVar[str] = "wanda"
    needs_calibration: ClassVar[bool] = True


@recipe_type
@dataclass(frozen=True)
class SparseGPT(_Sparsity):
    """SparseGPT (Frantar & Alistarh 2023): OBS pruning with Hessian error feedback."""

    method: ClassVar[str] = "sparsegpt"
    needs_calibration: ClassVar[bool] = True
    damp: float = 0.01


@recipe_type
@dataclass(frozen=True)
class ChannelPrune(Recipe):
    """Remove a fraction of each block's MLP channels (rows of gate/up, columns of down)."""

    method: ClassVar[str] = "channels"
    needs_calibration: ClassVar[bool] = True
    ratio: float = 0.25
    multiple: int = 64

    def __post_init__(self) -> None:
        _check(0 < self.ratio < 1, f"ratio={self.ratio} must be in (0, 1): the fraction of "
               "MLP channels to remove")
        _check(self.multiple >= 1, f"multiple={self.multiple} must be >= 1")


# -- low rank -----------------------------------------------------------------------------
@recipe_type
@dataclass(frozen=True)
class SVD(Recipe):
    """Truncated SVD; per layer, the smallest rank keeping ``energy`` of sum(s^2)."""

    method: ClassVar[str] = "svd"
    energy: float = 0.9
    min_saving: float = 0.1  # keep a layer dense unless low rank saves this fraction

    def __post_init__(self) -> None:
        _check(0 < self.energy < 1, f"energy={self.energy} must be in (0, 1), e.g. 0.9")
        _check(0 <= self.min_saving < 1, f"min_saving={self.min_saving} must be in [0, 1)")


@recipe_type
@dataclass(frozen=True)
class ASVD(SVD):
    """Activation-aware SVD (Yuan et al. 2023): SVD of W * diag(s), s = |x|^alpha."""

    method: ClassVar[str] = "asvd"
    needs_calibration: ClassVar[bool] = True
    alpha: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(0 < self.alpha <= 1, f"alpha={self.alpha} must be in (0, 1]")


# -- distillation -------------------------------------------------------------------------
@recipe_type
@dataclass(frozen=True)
class Distill(Recipe):
    """A student with ``student_layers`` blocks trained on the calibration text.

    ``loss="kd"`` matches the teacher's softened logits; ``loss="ce"`` is the same student
    trained on the text alone (the no-distillation baseline).
    """

    method: ClassVar[str] = "distill"
    needs_calibration: ClassVar[bool] = True
    student_layers: int = 18
    steps: int = 200
    batch: int = 4
    lr: float = 3e-4
    # T=1: the KL term then pulls the student toward the teacher's own next-token
    # distribution, which is what perplexity scores (measured: at T=2, 60 steps on Wikipedia
    # tied the plain-CE student, 190 vs 189)
    temperature: float = 1.0
    loss: str = "kd"
    checkpoint_every: int = 25
    seed: int = 0

    def __post_init__(self) -> None:
        _check(self.student_layers >= 1, "student_layers must be >= 1")
        _check(self.steps >= 1 and self.batch >= 1, "steps and batch must be >= 1")
        _check(self.loss in ("kd", "ce"), f"loss={self.loss!r}: choose 'kd' or 'ce'")
        _check(self.lr > 0 and self.temperature > 0, "lr and temperature must be > 0")
        _check(self.checkpoint_every >= 1, "checkpoint_every must be >= 1")


# -- combination --------------------------------------------------------------------------
@recipe_type
@dataclass(frozen=True)
class Pipeline(Recipe):
    """Steps applied in order, e.g. ``Pipeline((Wanda(0.5), RTN(bits=4)))``."""

    method: ClassVar[str] = "pipeline"
    steps_: tuple[Recipe, ...] = field(default=())

    def __init__(self, steps: tuple[Recipe, ...] | list[Recipe]) -> None:
        object.__setattr__(self, "steps_", tuple(steps))
        self.__post_init__()

    def __post_init__(self) -> None:
        _check(len(self.steps_) > 0, "a pipeline needs at least one step")
        for s in self.steps_:
            _check(isinstance(s, Recipe) and not isinstance(s, Pipeline),
                   f"pipeline steps must be recipes, not pipelines (got {s!r}): list the "
                   "inner pipeline's steps in the outer one")
        quant = [i for i, s in enumerate(self.steps_) if s.quantizes]
        _check(len(quant) <= 1 and (not quant or quant[0] == len(self.steps_) - 1),
               "a pipeline may quantize once, as its last step (packed weights cannot be "
               "pruned or decomposed further): move the quantizer to the end")

    @property
    def chain(self) -> tuple[Recipe, ...]:
        return self.steps_

    @property
    def needs_calibration(self) -> bool:  # type: ignore[override]
        return any(s.needs_calibration for s in self.steps_)

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "version": self.version,
                "params": {"steps": [s.to_dict() for s in self.steps_]}}

    def weight_format(self) -> WeightFormat:
        return self.steps_[-1].weight_format()  # a quantizer can only be the last step

    def label(self) -> str:
        return " + ".join(s.label() for s in self.steps_)


# Named recipes for experiments (`edgeweave compress --recipe NAME`). The names of serving
# variants (int8, int4, int4-sym, ...) resolve through edgeweave.variants first
# (compress.spec.presets), so there is one definition of what "int4" means.
PRESETS: dict[str, Recipe] = {
    "rtn-int4-g128": RTN(bits=4, group_size=128, pad=True),
    "rtn-int4-g64": RTN(bits=4, group_size=64),
    "rtn-int4-g32": RTN(bits=4, group_size=32),
    "gptq-int4-g128": GPTQ(bits=4, group_size=128, pad=True),
    "gptq-int3-g64": GPTQ(bits=3, group_size=64),
    "smoothquant-w8a8": SmoothQuant(),
    "magnitude-50": Magnitude(0.5),
    "wanda-50": Wanda(0.5),
    "sparsegpt-50": SparseGPT(0.5),
    "wanda-2:4": Wanda(0.5, "2:4"),
    "channels-25": ChannelPrune(0.25),
    "svd-95": SVD(energy=0.95),
    "asvd-95": ASVD(energy=0.95),
    "wanda-50+int4": Pipeline((Wanda(0.5), RTN(bits=4, group_size=128, pad=True))),
    "distill-18": Distill(student_layers=18),
}
