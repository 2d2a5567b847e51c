"""``edgeweave models``: the catalog of loadable models."""

from __future__ import annotations

import typer

from edgeweave.cli.common import console, table


def register(app: typer.Typer) -> None:
    @app.command("models")
    def models_cmd(
        load: str = typer.Option(None, "--load", help="Load this model (name, HF folder or "
                                 ".gguf) and report its shape and load time."),
    ) -> None:
        """List bundled models (and whether they are installed and cached)."""
        from edgeweave.models import catalog

        rows = [(r["name"], r["installed"], r["cached"], r["description"], r["license"])
                for r in catalog.describe()]
        console.print(table("Bundled models", ["name", "installed", "cached", "description",
                                               "license"], rows))
        from edgeweave.models.cards import CARDS

        console.print(table("Plan-only model cards (edgeweave plan --model NAME; no weights)",
                            ["name", "params", "layers", "hidden", "context", "source"],
                            [(r["name"], r["params"], r["layers"], r["hidden"], r["context"],
                              r["source"]) for r in (c.describe() for c in CARDS.values())]))
        console.print("Also accepted: a local Hugging Face folder (config.json + *.safetensors "
                      "+ tokenizer.json) or a local .gguf file (Llama, Qwen2, Qwen3, Gemma 3).")
        if load:
            lm, secs, hit = catalog.timed_load(load)
            c = lm.config
            console.print(f"{lm.name}: {c.family}, {c.num_layers} blocks, hidden {c.hidden_size}, "
                          f"{c.num_params() / 1e6:.1f} M params, loaded in {secs:.2f} s "
                          f"({'cache hit' if hit else 'converted now'}) from {lm.folder}")
