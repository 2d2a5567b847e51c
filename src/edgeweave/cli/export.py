"""``edgeweave export``: stage graphs for ONNX Runtime (cached), optionally a test drive."""

from __future__ import annotations

import typer

from edgeweave.cli.common import console, metrics_line, table
from edgeweave.models.catalog import DEFAULT_MODEL


def register(app: typer.Typer) -> None:
    @app.command("export")
    def export_cmd(
        model: str = typer.Option(DEFAULT_MODEL, "--model", "-m",
                                  help="Bundled name, HF folder or .gguf."),
        variant: str = typer.Option("fp32", "--variant", "-v", help="fp32, int8 or int4."),
        cuts: str = typer.Option("", "--cuts", help="Stage boundaries, e.g. '15' or '10,20'."),
        rtn: bool = typer.Option(False, "--rtn", help="Quantize the fp32 weights with the "
                                 "exporter's RTN instead of the compression artifact."),
        group_size: int = typer.Option(32, "--group-size", help="RTN group size (with --rtn)."),
        threads: int = typer.Option(0, "--threads", help="ONNX Runtime threads (0 = all)."),
        prompt: str = typer.Option("", "--prompt", "-p", help="Generate for this prompt "
                                   "through the exported stages and report speed."),
        max_tokens: int = typer.Option(64, "--max-tokens"),
    ) -> None:
        """Export a model's stages to ONNX (reused when up to date) and load them."""
        from edgeweave.runtime.engines.onnx import export_stages

        bounds = [int(c) for c in cuts.split(",") if c.strip()]
        stages = export_stages(model, variant, bounds, threads=threads, rtn=rtn,
                               group_size=group_size)
        rows = [(str(st.config.shard), st.info["recipe"].get("source", "?"),
                 "reused" if st.info["export_reused"] else "exported",
                 f"{st.size_mb():.1f}", str(st.path)) for st in stages]
        console.print(table(f"ONNX stages of {model} ({variant})",
                            ["blocks", "weights from", "cache", "MB", "graph"], rows))
        if prompt:
            from edgeweave.models.catalog import resolve
            from edgeweave.models.tokenizer import Tokenizer
            from edgeweave.runtime.engines.onnx_chain import StageChain
            from edgeweave.runtime.generate import SamplingParams, generate

            tok = Tokenizer(resolve(model)[1])
            res = generate(StageChain(stages, 2048), tok, prompt,
                           SamplingParams(max_tokens=max_tokens), chat=True)
            console.print(res.text)
            console.print(metrics_line(res.metrics))
