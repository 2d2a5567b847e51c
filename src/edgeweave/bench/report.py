"""One self-contained HTML report (inline SVG plots, no scripts, no external files) and a
Markdown summary, both built from the benchmark's JSON lines.

Row kinds read here: ``variant`` (measured on this host), ``task`` and ``task_baseline``
(quality), ``device`` (cost-model predictions for catalog devices, labelled predicted),
``plan`` (ours vs baselines on sample fleets, with the stage layout) and ``run`` (a plan
launched for real on this host).
"""

from __future__ import annotations

import html
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from edgeweave.bench.plots import pareto_plot, plan_diagram, task_bar_plot
from edgeweave.paths import atomic_write_text


def _f(v: Any, digits: int = 3) -> str:
    if v is None or v == "":
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if v != v:  # NaN
            return "–"
        return f"{v:.{digits}g}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


def _table(columns: Sequence[str], rows: Iterable[Sequence[Any]], cls: str = "") -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_f(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _section(parts: list[str], md: list[str], title_html: str, title_md: str,
             columns: Sequence[str], rows: list[Sequence[Any]], *, before: str = "",
             after: str = "", at: int | None = None) -> None:
    """One titled table in both outputs: an HTML ``<section>`` (figures ``before``/``after``
    the table; ``at`` inserts it at that position) and a Markdown heading + table."""
    block = f"<section><h2>{title_html}</h2>{before}{_table(columns, rows)}{after}</section>"
    if at is None:
        parts.append(block)
    else:
        parts.insert(at, block)
    md += [f"## {title_md}", "", _md_table(columns, rows), ""]


def _md_table(columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    out += ["| " + " | ".join(_f(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0;color:#1a202c;
background:#f7fafc}
header{background:#1a365d;color:#fff;padding:22px 32px}header h1{margin:0 0 6px;font-size:26px}
header p{margin:0;opacity:.85}main{padding:8px 32px 40px;max-width:1200px}
section{background:#fff;border-radius:8px;box-shadow:0 1px 3px rgba(0,0,0,.08);padding:16px 22px;
margin:18px 0}
h2{font-size:19px;margin:4px 0 10px;color:#1a365d}table{border-collapse:collapse;font-size:13px;margin:8px 0}
th,td{border-bottom:1px solid #e2e8f0;padding:5px 10px;text-align:right}th{background:#edf2f7}
td:first-child,th:first-child{text-align:left}.grid{display:flex;flex-wrap:wrap;gap:18px}
.plan{display:flex;height:46px;border-radius:6px;overflow:hidden;margin:4px 0 12px;font-size:12px;color:#fff}
.seg{padding:4px 6px;overflow:hidden;white-space:nowrap;border-right:2px solid #fff}
.tag{display:inline-block;background:#ebf8ff;color:#2b6cb0;border-radius:10px;padding:1px 8px;font-size:11px}
.pred{background:#fffaf0;color:#c05621}.note{color:#4a5568;font-size:13px}
.kpis{display:flex;gap:14px;flex-wrap:wrap}
.kpi{background:#ebf4ff;border-radius:8px;padding:10px 16px;min-width:150px}
.kpi b{display:block;font-size:22px;color:#1a365d}
"""


def build(rows: list[dict[str, Any]], meta: dict[str, Any]) -> tuple[str, str]:
    """Return (html, markdown) for the given result rows."""
    by = defaultdict(list)
    for r in rows:
        by[r.get("kind", "?")].append(r)
    variants = sorted(by["variant"], key=lambda r: -(r.get("size_mb") or 0))
    tasks = by["task"]
    baselines = {r["task"]: r["value"] for r in by["task_baseline"]}
    # mean task score per variant (kNN demos when present, else whatever was run)
    score: dict[str, list[float]] = defaultdict(list)
    for r in tasks:
        if r.get("value") is not None:
            score[r["variant"]].append(float(r["value"]))
    for v in variants:
        s = score.get(v["variant"])
        v["task_score"] = sum(s) / len(s) if s else None

    md: list[str] = [
        f"# {meta.get('title', 'edgeweave benchmark')}",
        "",
        f"Suite `{meta.get('suite')}` on {meta.get('host', 'this host')}, "
        f"{meta.get('when', time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()))}.",
        "",
    ]
    parts: list[str] = []

    # -- headline numbers -----------------------------------------------------------------
    kpis = []
    ref = next((v for v in variants if v["variant"] == "fp32"), None)
    for v in variants:
        if ref and v is not ref and v.get("decode_tps") and ref.get("decode_tps"):
            kpis.append((f"{v['variant']} decode", f"{v['decode_tps'] / ref['decode_tps']:.2f}× fp32"))
            kpis.append((f"{v['variant']} size", f"{v['size_mb'] / ref['size_mb'] * 100:.0f}% of fp32"))
    ours = [r for r in by["plan"] if r.get("planner") == "edgeweave"]
    for p in ours:
        others = [r for r in by["plan"] if r.get("fleet") == p["fleet"] and r is not p and r.get("tpot_s")]
        if others and p.get("tpot_s"):
            worst = max(others, key=lambda r: r["tpot_s"])
            kpis.append(
                (
                    f"{p['fleet']} fleet plan",
                    f"{worst['tpot_s'] / p['tpot_s']:.1f}× faster than {worst['planner']}",
                )
            )
    for r in by["run"]:
        kpis.append((f"{r['fleet']}, {r.get('codec', '')} hidden states, run here",
                     f"{_f(r.get('decode_tps'))} tok/s"))
    if kpis:
        parts.append(
            '<section><h2>Headlines</h2><div class="kpis">'
            + "".join(f'<div class="kpi"><b>{html.escape(b)}</b>{html.escape(a)}</div>' for a, b in kpis[:8])
            + "</div></section>"
        )
        md += ["## Headlines", ""] + [f"- **{a}**: {b}" for a, b in kpis] + [""]

    # -- variants ---------------------------------------------------------------------------
    vcols = [
        "variant",
        "size MB",
        "bits/weight",
        "Wikipedia ppl",
        "decode tok/s",
        "TTFT ms",
        "TPOT ms",
        "peak RSS MB",
        "energy J/token",
        "mean task score",
    ]
    vrows = [
        [
            v["variant"],
            v.get("size_mb"),
            v.get("bits_per_weight"),
            v.get("ppl_wiki"),
            v.get("decode_tps"),
            (v.get("ttft_s") or 0) * 1000 or None,
            (v.get("tpot_s") or 0) * 1000 or None,
            v.get("peak_rss_mb"),
            f"{_f(v.get('energy_j_per_token'))} ({v.get('energy_source', '?')})",
            v.get("task_score"),
        ]
        for v in variants
    ]
    plots = (
        ""
        if sum(1 for v in variants if v.get("tpot_s")) < 2
        else (
            pareto_plot(
                variants,
                "tpot_s",
                "task_score",
                "time per output token (s)",
                "mean task score",
                True,
                "Quality vs latency",
            )
            + pareto_plot(
                variants,
                "size_mb",
                "ppl_wiki",
                "artifact size (MB)",
                "Wikipedia perplexity",
                False,
                "Perplexity vs size",
            )
        )
    )
    _section(parts, md, "Compression variants, measured on this host",
             "Compression variants (measured here)", vcols, vrows,
             after=f'<div class="grid">{plots}</div><p class="note">Energy is from RAPL counters '
             'where readable, otherwise from the cost model (labelled "model").</p>')

    # -- tasks --------------------------------------------------------------------------------
    if tasks:
        tcols = [
            "task",
            "variant",
            "demos",
            "metric",
            "score",
            "hallucination rate",
            "prompt tokens",
            "latency s/answer",
            "n",
            "non-LLM baseline",
        ]
        trows = [
            [
                r["task"],
                r["variant"],
                r.get("demos"),
                r.get("metric"),
                r.get("value"),
                r.get("hallucination_rate"),
                r.get("mean_prompt_tokens"),
                r.get("mean_latency_s"),
                r.get("n"),
                baselines.get(r["task"]),
            ]
            for r in sorted(tasks, key=lambda r: (r["task"], r["variant"], r.get("demos", "")))
        ]
        _section(parts, md, "IoT tasks on real sensor data", "IoT tasks", tcols, trows,
                 before=task_bar_plot(tasks, baselines))

    # -- devices (predicted) ------------------------------------------------------------------
    if by["device"]:
        dcols = ["device", "tier", "variant", "fits", "TPOT ms", "TTFT ms", "memory MB", "energy J/token"]
        drows = [
            [
                r["device"],
                r.get("tier"),
                r["variant"],
                r.get("fits"),
                (r.get("tpot_s") or 0) * 1000 if r.get("fits") else None,
                (r.get("ttft_s") or 0) * 1000 if r.get("fits") else None,
                r.get("memory_mb"),
                r.get("energy_j_per_token") if r.get("fits") else None,
            ]
            for r in sorted(by["device"], key=lambda r: (r.get("tier", ""), r["device"], r["variant"]))
        ]
        _section(parts, md, 'Catalog devices <span class="tag pred">predicted by the cost '
                 "model</span>", "Catalog devices (predicted by the cost model)", dcols, drows)

    # -- plans --------------------------------------------------------------------------------
    if by["plan"]:
        body = []
        pcols = ["planner", "stages", "TPOT ms", "TTFT ms", "energy J/token", "bytes/token on links"]
        for fleet in sorted({r["fleet"] for r in by["plan"]}):
            prs = sorted(
                (r for r in by["plan"] if r["fleet"] == fleet),
                key=lambda r: (r.get("planner") != "edgeweave", r.get("tpot_s") or 1e9),
            )
            body.append(
                f'<h3>Fleet <code>{html.escape(fleet)}</code> <span class="tag pred">predicted</span></h3>'
            )
            rows_ = []
            for r in prs:
                if r.get("error"):
                    body.append(f"<p><b>{html.escape(r['planner'])}</b>: {html.escape(r['error'])}</p>")
                    rows_.append([r["planner"], "infeasible", None, None, None, None])
                    continue
                body.append(
                    f"<p><b>{html.escape(r['planner'])}</b></p>" + plan_diagram(r["stages"], r["n_layers"])
                )
                rows_.append(
                    [
                        r["planner"],
                        len(r["stages"]),
                        (r.get("tpot_s") or 0) * 1000,
                        (r.get("ttft_s") or 0) * 1000,
                        r.get("energy_j_per_token"),
                        r.get("link_bytes_per_token"),
                    ]
                )
            body.append(_table(pcols, rows_))
            md += [f"## Plans for fleet `{fleet}` (predicted)", "", _md_table(pcols, rows_), ""]
        parts.append(
            "<section><h2>Placement plans: edgeweave vs baselines</h2>"
            + "".join(body)
            + '<p class="note">Baselines: memory-proportional split (exo, llama.cpp RPC), '
            "single device↔cloud split (Neurosurgeon), best single device, all-cloud."
            "</p></section>"
        )
    for r in by["adapt"]:
        parts.append(
            f"<section><h2>Runtime adaptation: {html.escape(r['event'])}</h2>"
            f"<p>{html.escape(r.get('reason', ''))}</p>"
            + plan_diagram(r["stages"], r["n_layers"])
            + _table(
                ["moved layers", "switch s", "new TPOT ms (predicted)"],
                [[r.get("moved_layers"), r.get("switch_s"), (r.get("tpot_s") or 0) * 1000]],
            )
            + "</section>"
        )
        md += [f"## Runtime adaptation: {r['event']}", "", r.get("reason", ""), ""]
    if by["run"]:
        rcols = [
            "fleet",
            "stages",
            "codec",
            "decode tok/s",
            "TTFT ms",
            "bytes on the wire/token",
            "greedy tokens = single process",
        ]
        rrows = [
            [
                r["fleet"],
                len(r.get("stages", [])),
                r.get("codec"),
                r.get("decode_tps"),
                (r.get("ttft_s") or 0) * 1000,
                r.get("wire_bytes_per_token"),
                r.get("identical"),
            ]
            for r in by["run"]
        ]
        diagrams = "".join(plan_diagram(r["stages"], r["n_layers"]) for r in by["run"] if r.get("stages"))
        _section(parts, md, "Plans launched on this host (embedded stages, measured)",
                 "Plans launched here (measured)", rcols, rrows, before=diagrams)

    if by["answer"]:
        acols = ["task", "gold", "answer", "metric", "score", "prompt tokens", "latency s", "decode tok/s"]
        arows = [
            [
                a["task"],
                a.get("gold"),
                a.get("answer"),
                a.get("metric"),
                a.get("score"),
                a.get("prompt_tokens"),
                a.get("latency_s"),
                a.get("decode_tps"),
            ]
            for a in by["answer"]
        ]
        _section(parts, md, "IoT questions from real sensor windows, answered through the "
                 "OpenAI-compatible API", "Answers through the API", acols, arows,
                 after='<p class="note">Each prompt holds a real test window encoded as text '
                 "plus kNN-selected demonstrations from the training split.</p>",
                 at=1 if kpis else 0)

    title = html.escape(meta.get("title", "edgeweave benchmark"))
    sub = html.escape(
        f"suite {meta.get('suite')} · model {meta.get('model')} · "
        f"{meta.get('host', '')} · {meta.get('when', '')}"
    )
    page = (
        f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{title}</title>"
        f"<style>{CSS}</style></head><body><header><h1>{title}</h1><p>{sub}</p></header>"
        f"<main>{''.join(parts)}</main></body></html>"
    )
    return page, "\n".join(md) + "\n"


def write_report(rows: list[dict[str, Any]], out_dir: str | Path, meta: dict[str, Any]) -> tuple[Path, Path]:
    page, md = build(rows, meta)
    out = Path(out_dir)
    atomic_write_text(out / "report.html", page)
    atomic_write_text(out / "summary.md", md)
    return out / "report.html", out / "summary.md"
