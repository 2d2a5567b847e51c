"""What an ONNX stage export is, without the exporter: no torch, no onnx.

A node that only runs cached stage graphs needs these to find and check its export
(``onnx_cache``) but never the exporter itself (``onnx_export``, which reads torch weights).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from edgeweave.errors import ConfigError
from edgeweave.types import Shard

OPSET = 21
MS_OPSET = 1
# bump when the graph layout changes: cached exports are rebuilt (4: LAST_STARTS overridable;
# 5: a later stage's first norm is the fused kernel the whole graph runs there)
EXPORTER_VERSION = 5
# the scalar 0 a later stage's first norm takes as its skip (the exporter and the slicer)
SEAM_ZERO = "zero"
# The start of the last stage's "last position only" Slice before the head: an initializer
# (-1) that is also a graph input, so a run may override it (ONNX IR >= 4): 0 puts the head
# on every position (``forward_all``), the default keeps decode's one-row head.
LAST_STARTS = "last.starts"

WEIGHT_FORMATS = ("fp32", "int8", "int4")

# Families whose block the hand-built graph reproduces (onnx_export): Llama's layout, with or
# without q/k/v bias; Qwen3's QK-norm; Gemma 3's QK-norm, sandwich norms, GeGLU, scaled
# embedding, sliding windows with their own RoPE base and soft-capped logits.
ONNX_FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma3")


def check_exportable(family: str) -> None:
    """Refuse a family the ONNX exporter cannot build, naming the backend that runs it."""
    if family not in ONNX_FAMILIES:
        raise ConfigError(
            f"the ONNX backend does not run {family} models yet (it builds "
            f"{', '.join(ONNX_FAMILIES)} graphs): pass --backend torch (Python: "
            "EngineChoice(backend='torch'))")


@dataclass(frozen=True)
class QuantSpec:
    """How a plain fp32 linear layer is quantized when the graph asks for low-bit weights."""

    bits: int = 4
    group_size: int = 32
    symmetric: bool = False

    def __post_init__(self) -> None:
        if self.bits not in (4, 8):
            raise ConfigError(f"ONNX low-bit weights are 4 or 8 bits (got {self.bits})")
        if self.group_size < 16 or self.group_size & (self.group_size - 1):
            raise ConfigError(
                f"group_size must be a power of two >= 16 for MatMulNBits (got {self.group_size})")


@dataclass(frozen=True)
class ExportSpec:
    """What to export: a block range, its weight format and the context it can hold."""

    start: int
    end: int
    weights: str = "fp32"  # fp32 | int8 | int4 (plain nn.Linear layers are RTN-quantized)
    group_size: int = 32
    symmetric: bool = False
    max_len: int = 2048  # rotary table length = the longest sequence the graph serves
    logits: str = "last"  # last | all: positions the head computes on the last stage
    accuracy_level: int = 4  # MatMulNBits: 4 = int8 activations (fast on CPU), 0 = fp32
    quantize_head: bool = True  # lm_head in the low-bit format too (a fifth of the bytes)

    def __post_init__(self) -> None:
        if self.weights not in WEIGHT_FORMATS:
            raise ConfigError(f"unknown ONNX weight format {self.weights!r}: choose one of "
                              f"{', '.join(WEIGHT_FORMATS)}")
        if self.logits not in ("last", "all"):
            raise ConfigError(f"logits must be 'last' or 'all' (got {self.logits!r})")
        if self.accuracy_level not in (0, 1, 2, 3, 4):
            raise ConfigError(f"accuracy_level must be 0..4 (got {self.accuracy_level})")
        if self.max_len < 1:
            raise ConfigError(f"max_len must be >= 1 (got {self.max_len})")
        if self.weights != "fp32":
            QuantSpec(self.bits, self.group_size, self.symmetric)  # validates

    @property
    def bits(self) -> int:
        return {"fp32": 32, "int8": 8, "int4": 4}[self.weights]

    @property
    def quant(self) -> QuantSpec | None:
        return None if self.weights == "fp32" else QuantSpec(self.bits, self.group_size,
                                                             self.symmetric)

    def shard(self, n_layers: int) -> Shard:
        return Shard(self.start, self.end, n_layers)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)
