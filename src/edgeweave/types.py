"""Frozen shared contracts used across packages.

Layer ranges are half-open: a ``Shard(start=0, end=10)`` holds blocks 0..9. The embedding
belongs to the stage whose shard starts at 0 and the head to the stage whose shard ends at
``n_layers``; a plan's stages cover ``[0, n_layers)`` exactly, in order.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from edgeweave.errors import ConfigError

CODECS = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class Shard:
    """Half-open block range ``[start, end)`` of a model with ``n_layers`` blocks."""

    start: int
    end: int
    n_layers: int

    def __post_init__(self) -> None:
        if not 0 <= self.start < self.end <= self.n_layers:
            raise ConfigError(
                f"invalid shard [{self.start}, {self.end}) of a {self.n_layers}-block model: "
                f"need 0 <= start < end <= {self.n_layers}"
            )

    @property
    def size(self) -> int:
        return self.end - self.start

    @property
    def is_first(self) -> bool:
        return self.start == 0

    @property
    def is_last(self) -> bool:
        return self.end == self.n_layers

    def __contains__(self, layer: int) -> bool:
        return self.start <= layer < self.end

    def __str__(self) -> str:
        return f"[{self.start}, {self.end})"


@dataclass(frozen=True)
class Stage:
    """One pipeline stage: a device runs ``shard`` of ``variant``; its output hidden
    states leave encoded with ``codec`` (one of :data:`CODECS`)."""

    device: str
    shard: Shard
    variant: str = "fp32"
    codec: str = "fp32"

    def __post_init__(self) -> None:
        if self.codec not in CODECS:
            raise ConfigError(f"unknown codec {self.codec!r}: choose one of {', '.join(CODECS)}")


@dataclass(frozen=True)
class Plan:
    """Ordered stages covering ``[0, n_layers)`` plus the cost breakdown that chose them."""

    stages: tuple[Stage, ...]
    objective: str = "latency"
    predicted: dict[str, float] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.stages:
            raise ConfigError("a plan needs at least one stage")
        n = self.stages[0].shard.n_layers
        pos = 0
        for s in self.stages:
            if s.shard.n_layers != n or s.shard.start != pos:
                raise ConfigError(
                    f"plan stages must tile [0, {n}) in order; stage on {s.device} has {s.shard}"
                    f" but the previous stage ended at {pos}"
                )
            pos = s.shard.end
        if pos != n:
            raise ConfigError(f"plan stages end at {pos}, not at the model's {n} blocks")

    @property
    def n_layers(self) -> int:
        return self.stages[0].shard.n_layers

    @classmethod
    def single(cls, n_layers: int, device: str = "local", variant: str = "fp32") -> Plan:
        return cls(stages=(Stage(device, Shard(0, n_layers, n_layers), variant),))

    @classmethod
    def split(cls, n_layers: int, cuts: list[int], devices: list[str] | None = None,
              variant: str = "fp32", codec: str = "fp32") -> Plan:
        """Plan from cut points, e.g. ``cuts=[10, 20]`` on 30 blocks gives three stages."""
        bounds = [0, *cuts, n_layers]
        names = devices or [f"node{i}" for i in range(len(bounds) - 1)]
        stages = tuple(
            Stage(names[i], Shard(bounds[i], bounds[i + 1], n_layers), variant, codec)
            for i in range(len(bounds) - 1)
        )
        return cls(stages=stages)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Plan:
        stages = tuple(
            Stage(s["device"], Shard(**s["shard"]), s.get("variant", "fp32"), s.get("codec", "fp32"))
            for s in d["stages"]
        )
        return cls(stages=stages, objective=d.get("objective", "latency"),
                   predicted=dict(d.get("predicted", {})), notes=tuple(d.get("notes", ())))


# -- devices, links and fleets (the planner's inputs) ---------------------------------------

PRECISIONS = ("fp32", "fp16", "int8", "int4")
ZERO_POINTS = ("none", "int", "float")


@dataclass(frozen=True)
class WeightFormat:
    """How a variant's linear weights are stored and multiplied: what engines and exporters
    read instead of parsing a variant's name.

    ``bits`` 32 (fp32), 16 (fp16 storage, dense fp32 compute: pruned or low-rank models), 8
    or 4 (3-bit grids live in the int4 container). ``group_size`` 0 means one scale per
    output channel. ``zero_point``: ``none`` (symmetric), ``int`` (``w = (q - zp) * s`` with
    integer ``zp``, native to ONNX Runtime's MatMulNBits) or ``float`` (any real offset per
    group; costs the ONNX graph an extra group-sum product). ``activations`` ``int8`` for W8A8
    recipes (SmoothQuant), else ``float``.
    """

    bits: int = 32
    group_size: int = 0
    zero_point: str = "none"
    activations: str = "float"
    grid_bits: int = 0  # bits of the grid inside the container (3 for int3), 0 = ``bits``

    def __post_init__(self) -> None:
        if self.bits not in (32, 16, 8, 4):
            raise ConfigError(f"weight bits must be 32, 16, 8 or 4 (got {self.bits})")
        if self.zero_point not in ZERO_POINTS:
            raise ConfigError(f"zero_point must be one of {ZERO_POINTS} (got {self.zero_point!r})")
        if self.activations not in ("float", "int8"):
            raise ConfigError(f"activations must be float or int8 (got {self.activations!r})")
        if self.bits == 4 and self.group_size not in (16, 32, 64, 128, 256):
            raise ConfigError(f"int4 weights need a group size of 16..256 (got {self.group_size})")
        if self.bits >= 16 and (self.group_size or self.zero_point != "none"):
            raise ConfigError("float weights have no groups or zero points")

    @property
    def precision(self) -> str:
        """The compute precision the planner prices: fp32, fp16, int8 or int4."""
        return {32: "fp32", 16: "fp16", 8: "int8", 4: "int4"}[self.bits]

    @property
    def symmetric(self) -> bool:
        return self.zero_point == "none"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> WeightFormat:
        if not isinstance(d, dict):
            raise ConfigError(f"a weight format is an object, not {type(d).__name__}")
        unknown = set(d) - {f for f in cls.__dataclass_fields__}
        if unknown:
            raise ConfigError(f"unknown weight format keys {sorted(unknown)}")
        return cls(**d)

    @classmethod
    def of_precision(cls, precision: str) -> WeightFormat:
        """A typical format for a planner-only variant that no artifact describes yet."""
        return {"fp32": cls(32), "fp16": cls(16), "int8": cls(8),
                "int4": cls(4, 32, "int")}[precision]


@dataclass(frozen=True)
class DeviceProfile:
    """A device class: usable memory, sustained memory bandwidth and compute per precision.

    ``compute`` maps a precision of :data:`PRECISIONS` to sustained operations per second;
    a missing precision falls back to the next wider one (int4 -> int8 -> fp16 -> fp32),
    which is what runtimes do when a kernel is missing (dequantize and compute wider).
    ``op_overhead_s`` is the fixed cost of dispatching one operator (framework + kernel
    launch), the term that dominates small models on CPUs and GPUs alike.
    """

    name: str
    tier: str
    memory: int  # usable bytes for model, KV cache and activations
    mem_bw: float  # sustained bytes/s
    compute: dict[str, float] = field(hash=False)
    power_idle_w: float = 1.0
    power_active_w: float = 5.0
    battery_wh: float | None = None
    op_overhead_s: float = 5e-6
    description: str = ""
    providers: str = "cpu"  # ONNX Runtime provider family (profile.catalog.ONNX_PROVIDERS)

    def __post_init__(self) -> None:
        if self.memory <= 0 or self.mem_bw <= 0:
            raise ConfigError(f"device class {self.name!r}: memory and mem_bw must be > 0")
        bad = set(self.compute) - set(PRECISIONS)
        if bad or "fp32" not in self.compute:
            raise ConfigError(
                f"device class {self.name!r}: compute needs fp32 and only {', '.join(PRECISIONS)}"
                f" (got {sorted(self.compute)})")
        if any(v <= 0 for v in self.compute.values()):
            raise ConfigError(f"device class {self.name!r}: compute rates must be > 0")
        if not 0 <= self.power_idle_w <= self.power_active_w:
            raise ConfigError(f"device class {self.name!r}: need 0 <= power idle <= active")

    def ops_per_s(self, precision: str) -> float:
        order = PRECISIONS[: PRECISIONS.index(precision) + 1][::-1]
        return next(self.compute[p] for p in order if p in self.compute)


@dataclass(frozen=True)
class LinkProfile:
    """A link class. ``up`` is the direction from a link's ``a`` end to its ``b`` end."""

    name: str
    up_bps: float  # bits/s
    down_bps: float
    latency_s: float  # one way
    energy_per_byte_j: float
    description: str = ""

    def __post_init__(self) -> None:
        if min(self.up_bps, self.down_bps) <= 0 or min(self.latency_s, self.energy_per_byte_j) < 0:
            raise ConfigError(
                f"link class {self.name!r}: rates must be > 0, latency and energy >= 0")


@dataclass(frozen=True)
class FleetDevice:
    """One device of a fleet: its class, battery level (0..1, None on mains), the model
    variants (artifacts) it holds (None: any) and the fraction of its memory in use by others."""

    id: str
    profile: DeviceProfile
    battery: float | None = None
    artifacts: tuple[str, ...] | None = None
    memory_pressure: float = 0.0
    zone: str | None = None  # data-residency zone, e.g. home, isp, cloud (see Policy)
    price_per_mtok: float = 0.0  # what running the whole model here costs per million tokens

    def __post_init__(self) -> None:
        if self.battery is not None and not 0 <= self.battery <= 1:
            raise ConfigError(f"device {self.id!r}: battery must be in [0, 1] (got {self.battery})")
        if not 0 <= self.memory_pressure < 1:
            raise ConfigError(f"device {self.id!r}: memory_pressure must be in [0, 1)")
        if not 0 <= self.price_per_mtok < float("inf"):
            raise ConfigError(f"device {self.id!r}: price_per_mtok must be >= 0, e.g. 0.2 "
                              f"(got {self.price_per_mtok})")

    @property
    def free_memory(self) -> float:
        return self.profile.memory * (1.0 - self.memory_pressure)


@dataclass(frozen=True)
class Link:
    a: str
    b: str
    profile: LinkProfile
    bandwidth_scale: float = 1.0  # measured / nominal, updated by telemetry

    def __post_init__(self) -> None:
        if self.a == self.b:
            raise ConfigError(f"link {self.a!r} -> {self.b!r} joins a device to itself")
        if self.bandwidth_scale <= 0:
            raise ConfigError(f"link {self.a}-{self.b}: bandwidth_scale must be > 0")


@dataclass(frozen=True)
class Policy:
    """A data-residency and spending policy: a planner input like memory and battery.

    ``keep_in``: raw prompt tokens and generated tokens stay in this zone: the first and last
    stages run on devices of the zone and token ids travel only over the zone's own links.
    ``hidden_states``: the hidden states too (every stage in the zone). ``max_cost_per_mtok``:
    the plan may cost at most this much per million tokens (devices' ``price_per_mtok``,
    charged in proportion to the blocks each one runs)."""

    keep_in: str | None = None
    hidden_states: bool = False
    max_cost_per_mtok: float | None = None

    def __post_init__(self) -> None:
        if self.keep_in is not None and (not isinstance(self.keep_in, str)
                                         or not self.keep_in.strip()):
            raise ConfigError(f"policy keep_in must be a zone name, e.g. home (got "
                              f"{self.keep_in!r})")
        if not isinstance(self.hidden_states, bool):
            raise ConfigError(f"policy hidden_states must be true or false (got "
                              f"{self.hidden_states!r})")
        if self.hidden_states and self.keep_in is None:
            raise ConfigError("policy hidden_states needs keep_in: the zone they stay in, "
                              "e.g. {keep_in: home, hidden_states: true}")
        c = self.max_cost_per_mtok
        if c is not None and (isinstance(c, bool) or not isinstance(c, int | float) or c < 0):
            raise ConfigError(f"policy max_cost_per_mtok must be a number >= 0, e.g. 0.5 "
                              f"(got {c!r})")

    @property
    def active(self) -> bool:
        return self.keep_in is not None or self.max_cost_per_mtok is not None

    def describe(self) -> str:
        parts = []
        if self.keep_in is not None:
            parts.append(f"tokens{' and hidden states' if self.hidden_states else ''} stay in "
                         f"zone {self.keep_in!r}")
        if self.max_cost_per_mtok is not None:
            parts.append(f"at most {self.max_cost_per_mtok:g} per million tokens")
        return "; ".join(parts) or "none"


NO_POLICY = Policy()


@dataclass(frozen=True)
class Fleet:
    """Devices, the links between them, where requests enter and where tokens must go, and
    the policy every plan on it must keep."""

    name: str
    devices: tuple[FleetDevice, ...]
    links: tuple[Link, ...]
    entry: str
    exit: str
    policy: Policy = NO_POLICY

    def __post_init__(self) -> None:
        ids = [d.id for d in self.devices]
        counts = Counter(ids)  # not ids.count per id: quadratic at 10,000 devices
        dup = sorted(i for i, c in counts.items() if c > 1)
        if dup:
            raise ConfigError(f"fleet {self.name!r}: device ids must be unique; repeated: {dup}")
        known = set(ids)
        for end in (self.entry, self.exit):
            if end not in known:
                raise ConfigError(f"fleet {self.name!r}: entry/exit {end!r} is not a device "
                                  f"of the fleet (devices: {', '.join(ids)})")
        for ln in self.links:
            for end in (ln.a, ln.b):
                if end not in known:
                    raise ConfigError(f"fleet {self.name!r}: link {ln.a}-{ln.b} names unknown "
                                      f"device {end!r} (devices: {', '.join(ids)})")

    def device(self, device_id: str) -> FleetDevice:
        by_id = self.__dict__.get("_by_id")
        if by_id is None:  # built once: a frozen dataclass caches through __dict__
            by_id = {d.id: d for d in self.devices}
            object.__setattr__(self, "_by_id", by_id)
        if device_id in by_id:
            return by_id[device_id]
        raise ConfigError(f"fleet {self.name!r} has no device {device_id!r}")

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(d.id for d in self.devices)
