"""What a benchmark run covers: typed, frozen suites in a registry (``quick`` and ``full``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from edgeweave.errors import ConfigError

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "fleets"


@dataclass(frozen=True)
class Suite:
    name: str
    variants: tuple[str, ...] = ("fp32", "int8", "int4")
    tasks: tuple[str, ...] | None = None  # None: every registered task
    task_limit: int = 8  # test items per task and variant
    demos: tuple[str, ...] = ("knn",)
    ppl_tokens: int = 2048
    decode_tokens: int = 64
    fleets: tuple[str, ...] = ("home", "campus", "field")
    planners: tuple[str, ...] = ("edgeweave", "memory", "neurosurgeon", "single", "cloud")
    run_fleet: str | None = "home"  # launch this fleet's plan on this host (embedded stages)
    seed: int = 0
    notes: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.task_limit < 1 or self.ppl_tokens < 256 or self.decode_tokens < 2:
            raise ConfigError("suite sizes: task_limit >= 1, ppl_tokens >= 256, decode_tokens >= 2")
        if "fp32" not in self.variants:
            raise ConfigError("a suite needs the fp32 variant as its reference")


SUITES: dict[str, Suite] = {s.name: s for s in (
    Suite("quick"),
    Suite("full", variants=("fp32", "int8", "int4-rtn", "int4", "w8a8-smooth"), task_limit=40,
          demos=("none", "random", "knn"), ppl_tokens=8192, decode_tokens=128),
)}


def get_suite(name: str) -> Suite:
    if name not in SUITES:
        raise ConfigError(f"unknown suite {name!r}: choose one of {', '.join(SUITES)}")
    return SUITES[name]


def fleet_path(name: str) -> Path:
    p = Path(name)
    if p.suffix in (".yaml", ".yml") and p.is_file():
        return p
    q = EXAMPLES / f"{name}.yaml"
    if not q.is_file():
        raise ConfigError(f"unknown fleet {name!r}: pass a fleet YAML file or one of "
                          f"{', '.join(sorted(f.stem for f in EXAMPLES.glob('*.yaml')))}")
    return q
