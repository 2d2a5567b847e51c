"""``edgeweave compress``: compress a model with a recipe into a verified artifact folder."""

from __future__ import annotations

from pathlib import Path

import typer

from edgeweave.cli.common import console, table
from edgeweave.models.catalog import DEFAULT_MODEL


def run_compress(model: str, recipe: str, out: Path, calib_sequences: int = 32,
                 calib_seq_len: int = 256) -> dict:
    """Plain function behind the verb: returns the manifest of the written artifact."""
    from edgeweave.compress import compress, parse_recipe, wiki_calibration
    from edgeweave.models import load

    r = parse_recipe(recipe)
    lm = load(model)
    calib = wiki_calibration(lm.tokenizer, calib_sequences, calib_seq_len) \
        if r.needs_calibration else None
    return compress(lm, r, calib=calib, out=out).manifest


def register(app: typer.Typer) -> None:
    @app.command("compress")
    def compress_cmd(
        out: Path = typer.Option(..., "--out", "-o", help="Artifact folder to write."),
        recipe: str = typer.Option("int8", "--recipe", "-r",
                                   help="Preset name (see --list) or a JSON recipe."),
        model: str = typer.Option(DEFAULT_MODEL, "--model", "-m",
                                  help="Bundled name, HF folder or .gguf file."),
        calib_sequences: int = typer.Option(32, help="Calibration windows (Wikipedia calib)."),
        calib_seq_len: int = typer.Option(256, help="Tokens per calibration window."),
        list_presets: bool = typer.Option(False, "--list", help="List recipe presets and exit."),
    ) -> None:
        """Quantize, prune, factorize or distill a model; write weights + manifest."""
        if list_presets:
            from edgeweave.compress.spec import presets

            console.print(table("recipe presets", ["name", "recipe"],
                                [(k, v.label()) for k, v in presets().items()]))
            return
        _progress_to_stderr()
        m = run_compress(model, recipe, out, calib_sequences, calib_seq_len)
        s = m["stats"]
        console.print(f"wrote {out}: {s['size_bytes'] / 1e6:.1f} MB "
                      f"({100 * s['size_vs_fp16']:.0f}% of fp16, {s['bits_per_weight']:.2f} "
                      f"bits/weight) in {m['compress_seconds']:.0f} s · {m['runtime']}")


def _progress_to_stderr() -> None:
    """Long compressions (a distilled student trains for minutes) log their progress at INFO
    under ``edgeweave.compress``: print those lines, and nothing of other libraries."""
    import logging

    log = logging.getLogger("edgeweave.compress")
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
