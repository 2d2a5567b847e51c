"""Typed, frozen views of the benchmark's JSON lines, as the report reads them.

The runner and the demo write plain dicts (one per measured cell, see :mod:`.store`); the
report turns each into one of these once, without touching the dict, and reads fields from
then on. Keys a row does not need are ignored; a key it needs and lacks is a clear error.
Defaults are what the report showed for a missing key (``None`` prints as a dash).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any, TypeVar

from edgeweave.errors import ConfigError

R = TypeVar("R")


def _pick(cls: type[R], row: Mapping[str, Any], **converted: Any) -> R:
    """``cls`` from the keys of ``row`` that it has (``converted`` overrides some)."""
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    try:
        return cls(**{k: v for k, v in row.items() if k in names and k not in converted},
                   **converted)
    except TypeError as e:  # a required key is missing
        raise ConfigError(f"benchmark row {row.get('key', '?')!r} (kind {row.get('kind')!r}) "
                          f"cannot be reported: {e}; rerun the benchmark cell that wrote it "
                          "or delete the line from results.jsonl") from None


@dataclass(frozen=True)
class StageBar:
    """One stage of a plan as the report draws it: blocks ``[start, end)`` on ``device``."""

    device: str
    start: int
    end: int
    variant: Any = ""
    codec: Any = ""

    def share(self, n_layers: int) -> float:
        """Percent of the model's blocks this stage holds (its width in a plan diagram)."""
        return 100.0 * (self.end - self.start) / max(n_layers, 1)

    @classmethod
    def all_of(cls, stages: Iterable[Mapping[str, Any]]) -> tuple[StageBar, ...]:
        return tuple(_pick(cls, s) for s in stages)


@dataclass(frozen=True)
class VariantRow:
    """A compression variant measured on this host (``kind: variant``)."""

    variant: str
    size_mb: float | None = None
    bits_per_weight: float | None = None
    ppl_wiki: float | None = None
    decode_tps: float | None = None
    ttft_s: float | None = None
    tpot_s: float | None = None
    peak_rss_mb: float | None = None
    energy_j_per_token: float | None = None
    energy_source: str | None = "?"
    task_score: float | None = None  # mean over this variant's task rows (set by the report)


@dataclass(frozen=True)
class TaskRow:
    """One task run with one variant and one demonstration mode (``kind: task``)."""

    task: str
    variant: str
    demos: str | None = None
    metric: str | None = None
    value: float | None = None
    hallucination_rate: float | None = None
    mean_prompt_tokens: float | None = None
    mean_latency_s: float | None = None
    n: int | None = None


@dataclass(frozen=True)
class DeviceRow:
    """A variant on a catalog device, predicted by the cost model (``kind: device``)."""

    device: str
    variant: str
    tier: str = ""
    fits: bool | None = None
    tpot_s: float | None = None
    ttft_s: float | None = None
    memory_mb: float | None = None
    energy_j_per_token: float | None = None


@dataclass(frozen=True)
class PlanRow:
    """One planner's plan on a sample fleet (``kind: plan``); ``error`` when it has none."""

    fleet: str
    planner: str
    n_layers: int = 0
    stages: tuple[StageBar, ...] = ()
    tpot_s: float | None = None
    ttft_s: float | None = None
    energy_j_per_token: float | None = None
    link_bytes_per_token: float | None = None
    error: str | None = None


@dataclass(frozen=True)
class AdaptRow:
    """A fleet event and the plan the adapter moved to (``kind: adapt``)."""

    event: str
    n_layers: int
    stages: tuple[StageBar, ...] = ()
    reason: str = ""
    moved_layers: int | None = None
    switch_s: float | None = None
    tpot_s: float | None = None


@dataclass(frozen=True)
class RunRow:
    """A plan launched for real on this host (``kind: run``)."""

    fleet: str
    n_layers: int = 0
    stages: tuple[StageBar, ...] = ()
    codec: str | None = ""
    decode_tps: float | None = None
    ttft_s: float | None = None
    wire_bytes_per_token: float | None = None
    identical: bool | None = None


@dataclass(frozen=True)
class AnswerRow:
    """One question answered through the OpenAI-compatible API (``kind: answer``)."""

    task: str
    id: str | None = None
    gold: str | None = None
    answer: str | None = None
    metric: str | None = None
    score: float | None = None
    prompt_tokens: int | None = None
    latency_s: float | None = None
    decode_tps: float | None = None
    model: str = "base"  # or the served adapter that answered (its model id)


def _with_stages(cls: type[R], row: Mapping[str, Any]) -> R:
    return _pick(cls, row, stages=StageBar.all_of(row.get("stages", ())))


@dataclass(frozen=True)
class ReportRows:
    """Every row kind the report reads, typed, in the order the report lists them."""

    variants: tuple[VariantRow, ...]  # largest first
    tasks: tuple[TaskRow, ...]
    baselines: Mapping[str, float]  # task -> the non-LLM baseline's score
    devices: tuple[DeviceRow, ...]
    plans: tuple[PlanRow, ...]
    adaptations: tuple[AdaptRow, ...]
    runs: tuple[RunRow, ...]
    answers: tuple[AnswerRow, ...]

    @classmethod
    def of(cls, rows: Iterable[Mapping[str, Any]]) -> ReportRows:
        by: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
        for r in rows:
            by[r.get("kind", "?")].append(r)
        tasks = tuple(_pick(TaskRow, r) for r in by["task"])
        variants = sorted((_pick(VariantRow, r) for r in by["variant"]),
                          key=lambda v: -(v.size_mb or 0))
        return cls(
            variants=tuple(replace(v, task_score=mean_score(tasks, v.variant)) for v in variants),
            tasks=tasks,
            baselines={r["task"]: r["value"] for r in by["task_baseline"]},
            devices=tuple(_pick(DeviceRow, r) for r in by["device"]),
            plans=tuple(_with_stages(PlanRow, r) for r in by["plan"]),
            adaptations=tuple(_with_stages(AdaptRow, r) for r in by["adapt"]),
            runs=tuple(_with_stages(RunRow, r) for r in by["run"]),
            answers=tuple(_pick(AnswerRow, r) for r in by["answer"]),
        )


def mean_score(tasks: Iterable[TaskRow], variant: str) -> float | None:
    """Mean task score of ``variant`` over every task row it has a value in (kNN demos when
    present, else whatever was run); ``None`` when it has none."""
    s = [float(t.value) for t in tasks if t.variant == variant and t.value is not None]
    return sum(s) / len(s) if s else None
