"""One self-contained HTML report (inline SVG plots, no scripts, no external files) and a
Markdown summary, both built from the benchmark's JSON lines.

Row kinds read here (typed in :mod:`edgeweave.bench.rows`): ``variant`` (measured on this
host), ``task`` and ``task_baseline`` (quality), ``device`` (cost-model predictions for
catalog devices, labelled predicted), ``plan`` (ours vs baselines on sample fleets, with the
stage layout), ``adapt`` (a fleet event and the new plan), ``run`` (a plan launched for real
on this host) and ``answer`` (questions answered through the API).

Each section is one function that turns the typed rows into a :class:`Table` and figures,
and one Jinja2 template (``templates/<section>.html.j2``) that lays them out; the Markdown
summary carries the same tables. The input rows are read, never changed.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from edgeweave.bench.plots import PALETTE, pareto_plot, task_bar_plot
from edgeweave.bench.rows import PlanRow, ReportRows
from edgeweave.paths import atomic_write_text


def cell(v: Any, digits: int = 3) -> str:
    """A table cell: a dash for missing values, yes/no, 3 significant digits below 1000."""
    if v is None or v == "":
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if v != v:  # NaN
            return "–"
        return f"{v:.{digits}g}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


def _ms(seconds: float | None) -> float:
    return (seconds or 0) * 1000


@dataclass(frozen=True)
class Table:
    columns: tuple[str, ...]
    rows: tuple[tuple[Any, ...], ...]

    @classmethod
    def of(cls, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> Table:
        return cls(tuple(columns), tuple(tuple(r) for r in rows))

    def markdown(self) -> str:
        out = ["| " + " | ".join(self.columns) + " |", "|" + "---|" * len(self.columns)]
        out += ["| " + " | ".join(cell(c) for c in r) + " |" for r in self.rows]
        return "\n".join(out)


@dataclass(frozen=True)
class Section:
    """One part of the report: its HTML (from a template) and its Markdown lines."""

    html: str
    markdown: tuple[str, ...]


@functools.cache
def _templates() -> Any:
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("edgeweave.bench", "templates"),
                             autoescape=True, trim_blocks=True, lstrip_blocks=True,
                             undefined=jinja2.StrictUndefined)
    env.filters["cell"] = cell
    env.globals["palette"] = PALETTE
    return env


def _render(template: str, **context: Any) -> str:
    return _templates().get_template(template).render(**context)


def _markup(text: str) -> Any:
    """Figures and sections we rendered ourselves go into a template unescaped."""
    from markupsafe import Markup

    return Markup(text)


def _table_section(template: str, title: str, table: Table, **context: Any) -> Section:
    return Section(_render(template, table=table, **context),
                   (f"## {title}", "", table.markdown(), ""))


# -- headline numbers -----------------------------------------------------------------------
def kpis(data: ReportRows) -> list[tuple[str, str]]:
    """(what, figure): each variant against fp32, our plan against the worst baseline on its
    fleet, and every plan run here."""
    out = []
    ref = next((v for v in data.variants if v.variant == "fp32"), None)
    for v in data.variants:
        if ref and v is not ref and v.decode_tps and ref.decode_tps:
            out.append((f"{v.variant} decode", f"{v.decode_tps / ref.decode_tps:.2f}× fp32"))
            out.append((f"{v.variant} size", f"{v.size_mb / ref.size_mb * 100:.0f}% of fp32"))
    for p in (p for p in data.plans if p.planner == "edgeweave"):
        others = [r for r in data.plans if r.fleet == p.fleet and r is not p and r.tpot_s]
        if others and p.tpot_s:
            worst = max(others, key=lambda r: r.tpot_s or 0.0)
            out.append((f"{p.fleet} fleet plan",
                        f"{worst.tpot_s / p.tpot_s:.1f}× faster than {worst.planner}"))
    for r in data.runs:
        out.append((f"{r.fleet}, {r.codec} hidden states, run here", f"{cell(r.decode_tps)} tok/s"))
    return out


def headlines(data: ReportRows) -> Section | None:
    found = kpis(data)
    if not found:
        return None
    return Section(_render("headlines.html.j2", kpis=found[:8]),
                   ("## Headlines", "", *(f"- **{a}**: {b}" for a, b in found), ""))


# -- one section per row kind -----------------------------------------------------------------
VARIANT_COLUMNS = ("variant", "size MB", "bits/weight", "Wikipedia ppl", "decode tok/s", "TTFT ms",
                   "TPOT ms", "peak RSS MB", "energy J/token", "mean task score")


def variants_section(data: ReportRows) -> Section:
    rows = [(v.variant, v.size_mb, v.bits_per_weight, v.ppl_wiki, v.decode_tps,
             _ms(v.ttft_s) or None, _ms(v.tpot_s) or None, v.peak_rss_mb,
             f"{cell(v.energy_j_per_token)} ({v.energy_source})", v.task_score)
            for v in data.variants]
    plots = []
    if sum(1 for v in data.variants if v.tpot_s) >= 2:
        plots = [_markup(pareto_plot(data.variants, "tpot_s", "task_score",
                                     "time per output token (s)", "mean task score", True,
                                     "Quality vs latency")),
                 _markup(pareto_plot(data.variants, "size_mb", "ppl_wiki", "artifact size (MB)",
                                     "Wikipedia perplexity", False, "Perplexity vs size"))]
    return _table_section("variants.html.j2", "Compression variants (measured here)",
                          Table.of(VARIANT_COLUMNS, rows), plots=plots)


TASK_COLUMNS = ("task", "variant", "demos", "metric", "score", "hallucination rate",
                "prompt tokens", "latency s/answer", "n", "non-LLM baseline")


def tasks_section(data: ReportRows) -> Section | None:
    if not data.tasks:
        return None
    ordered = sorted(data.tasks, key=lambda r: (r.task, r.variant, r.demos or ""))
    rows = [(r.task, r.variant, r.demos, r.metric, r.value, r.hallucination_rate,
             r.mean_prompt_tokens, r.mean_latency_s, r.n, data.baselines.get(r.task))
            for r in ordered]
    return _table_section("tasks.html.j2", "IoT tasks", Table.of(TASK_COLUMNS, rows),
                          bars=_markup(task_bar_plot(data.tasks, data.baselines)))


DEVICE_COLUMNS = ("device", "tier", "variant", "fits", "TPOT ms", "TTFT ms", "memory MB",
                  "energy J/token")


def devices_section(data: ReportRows) -> Section | None:
    if not data.devices:
        return None
    ordered = sorted(data.devices, key=lambda r: (r.tier, r.device, r.variant))
    rows = [(r.device, r.tier, r.variant, r.fits, _ms(r.tpot_s) if r.fits else None,
             _ms(r.ttft_s) if r.fits else None, r.memory_mb,
             r.energy_j_per_token if r.fits else None) for r in ordered]
    return _table_section("devices.html.j2", "Catalog devices (predicted by the cost model)",
                          Table.of(DEVICE_COLUMNS, rows))


PLAN_COLUMNS = ("planner", "stages", "TPOT ms", "TTFT ms", "energy J/token",
                "bytes/token on links")


@dataclass(frozen=True)
class FleetPlans:
    """The plans of every planner on one fleet: ours first, then the fastest baselines."""

    name: str
    plans: tuple[PlanRow, ...]

    @property
    def table(self) -> Table:
        return Table.of(PLAN_COLUMNS, [
            (p.planner, "infeasible", None, None, None, None) if p.error else
            (p.planner, len(p.stages), _ms(p.tpot_s), _ms(p.ttft_s), p.energy_j_per_token,
             p.link_bytes_per_token) for p in self.plans])


def plans_section(data: ReportRows) -> Section | None:
    if not data.plans:
        return None
    fleets = [FleetPlans(name, tuple(sorted(
        (p for p in data.plans if p.fleet == name),
        key=lambda p: (p.planner != "edgeweave", p.tpot_s or 1e9))))
        for name in sorted({p.fleet for p in data.plans})]
    md: list[str] = []
    for f in fleets:
        md += [f"## Plans for fleet `{f.name}` (predicted)", "", f.table.markdown(), ""]
    return Section(_render("plans.html.j2", fleets=fleets), tuple(md))


ADAPT_COLUMNS = ("moved layers", "switch s", "new TPOT ms (predicted)")


def adapt_sections(data: ReportRows) -> list[Section]:
    return [Section(_render("adapt.html.j2", row=r, table=Table.of(
        ADAPT_COLUMNS, [(r.moved_layers, r.switch_s, _ms(r.tpot_s))])),
        (f"## Runtime adaptation: {r.event}", "", r.reason, "")) for r in data.adaptations]


RUN_COLUMNS = ("fleet", "stages", "codec", "decode tok/s", "TTFT ms", "bytes on the wire/token",
               "greedy tokens = single process")


def runs_section(data: ReportRows) -> Section | None:
    if not data.runs:
        return None
    rows = [(r.fleet, len(r.stages), r.codec, r.decode_tps, _ms(r.ttft_s),
             r.wire_bytes_per_token, r.identical) for r in data.runs]
    return _table_section("runs.html.j2", "Plans launched here (measured)",
                          Table.of(RUN_COLUMNS, rows), runs=data.runs)


ANSWER_COLUMNS = ("task", "gold", "answer", "metric", "score", "prompt tokens", "latency s",
                  "decode tok/s")


def answers_section(data: ReportRows) -> Section | None:
    if not data.answers:
        return None
    base = [a for a in data.answers if a.model == "base"]
    adapted = {(a.task, a.id): a for a in data.answers if a.model != "base"}
    if not adapted:
        rows = [(a.task, a.gold, a.answer, a.metric, a.score, a.prompt_tokens, a.latency_s,
                 a.decode_tps) for a in base]
        return _table_section("answers.html.j2", "Answers through the API",
                              Table.of(ANSWER_COLUMNS, rows), adapter=None)
    # the same questions before and after the task adapter, side by side
    name = next(iter(adapted.values())).model
    rows = []
    for a in base:
        b = adapted.get((a.task, a.id))
        rows.append((a.task, a.gold, a.answer, a.score, b and b.answer, b and b.score,
                     a.prompt_tokens, a.latency_s, b and b.latency_s))
    total = ("all", "", "", _sum(a.score for a in base), "",
             _sum(b.score for b in adapted.values()), None, None, None)
    columns = ("task", "gold", "base answer", "base score", f"{name} answer", f"{name} score",
               "prompt tokens", "base latency s", f"{name} latency s")
    return _table_section("answers.html.j2", f"Answers through the API: base vs {name}",
                          Table.of(columns, [*rows, total]), adapter=name)


def _sum(xs: Iterable[float | None]) -> float | None:
    v = [x for x in xs if x is not None]
    return float(sum(v)) if v else None


# -- the page -------------------------------------------------------------------------------------
def build(rows: Iterable[Mapping[str, Any]], meta: Mapping[str, Any]) -> tuple[str, str]:
    """Return (html, markdown) for the given result rows (which are left as they are)."""
    data = ReportRows.of(rows)
    body = [variants_section(data), tasks_section(data), devices_section(data),
            plans_section(data), *adapt_sections(data), runs_section(data)]
    head, answers = headlines(data), answers_section(data)
    # The page puts the answers right under the headlines; the summary keeps them last.
    page_order = [s for s in (head, answers, *body) if s is not None]
    summary_order = [s for s in (head, *body, answers) if s is not None]
    title = meta.get("title", "edgeweave benchmark")
    when = meta.get("when", time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    md = [f"# {title}", "", f"Suite `{meta.get('suite')}` on {meta.get('host', 'this host')}, "
          f"{when}.", ""]
    md += [line for s in summary_order for line in s.markdown]
    subtitle = (f"suite {meta.get('suite')} · model {meta.get('model')} · "
                f"{meta.get('host', '')} · {meta.get('when', '')}")
    css = resources.files("edgeweave.bench").joinpath("templates/report.css").read_text()
    page = _render("page.html.j2", title=title, subtitle=subtitle, css=_markup(css),
                   sections=[_markup(s.html) for s in page_order])
    return page, "\n".join(md) + "\n"


def write_report(rows: Iterable[Mapping[str, Any]], out_dir: str | Path,
                 meta: Mapping[str, Any]) -> tuple[Path, Path]:
    page, md = build(rows, meta)
    out = Path(out_dir)
    atomic_write_text(out / "report.html", page)
    atomic_write_text(out / "summary.md", md)
    return out / "report.html", out / "summary.md"
