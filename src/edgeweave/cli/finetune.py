"""``edgeweave finetune``: LoRA on a local model, adapter out; ``--compare`` sweeps the
memory options (peak memory and time per option)."""

from __future__ import annotations

import typer

from edgeweave.cli.common import console, table
from edgeweave.models.catalog import DEFAULT_MODEL


def register(app: typer.Typer) -> None:
    @app.command("finetune")
    def finetune_cmd(
        model: str = typer.Option(DEFAULT_MODEL, help="Model name, HF folder or .gguf."),
        data: str = typer.Option("wiki", help="'wiki' (bundled Wikipedia), 'task:NAME' (an IoT "
                                 "task's train split; 'task:A,B' mixes tasks, ':knn' adds kNN "
                                 "demonstrations to the prompts) or a text file."),
        out: str = typer.Option(None, help="Adapter folder to write (safetensors + manifest)."),
        merge_out: str = typer.Option(None, help="Also write the merged model folder here."),
        checkpoint_dir: str = typer.Option(None, help="Resumable checkpoint folder."),
        rank: int = typer.Option(8), alpha: float = typer.Option(16.0),
        targets: str = typer.Option("q_proj,v_proj", help="Comma-separated Linear names."),
        layers: str = typer.Option("", help="Blocks with adapters, e.g. '24-30' (half-open)."),
        lora_fa: bool = typer.Option(False, help="Freeze A (LoRA-FA)."),
        steps: int = typer.Option(20), lr: float = typer.Option(1e-3),
        batch_size: int = typer.Option(4), micro_batch_size: int = typer.Option(4),
        seq_len: int = typer.Option(64),
        optimizer: str = typer.Option("adamw", help="adamw or sgd."),
        grad_checkpointing: bool = typer.Option(False),
        base_dtype: str = typer.Option("float32", help="float32, bfloat16 or int8 frozen base."),
        subset: str = typer.Option("", help="loss, diversity or random (data selection)."),
        fraction: float = typer.Option(1.0, help="Fraction of examples to keep with --subset."),
        limit: int = typer.Option(200, help="Number of documents to read."),
        compare: bool = typer.Option(False, help="Sweep memory options instead of one run."),
    ) -> None:
        """Fine-tune LoRA adapters on-device (parameter-, memory- and data-efficient)."""
        from edgeweave.finetune.config import LoRAConfig, TrainConfig
        from edgeweave.finetune.run import compare_options, finetune
        from edgeweave.finetune.subset import SubsetConfig

        layer_t = None
        if layers:
            a, _, b = layers.partition("-")
            layer_t = tuple(range(int(a), int(b))) if b else tuple(int(x) for x in a.split(","))
        lora = LoRAConfig(rank=rank, alpha=alpha, target_modules=tuple(targets.split(",")),
                          layers=layer_t, freeze_a=lora_fa)
        tcfg = TrainConfig(steps=steps, lr=lr, batch_size=batch_size, optimizer=optimizer,
                           micro_batch_size=micro_batch_size, seq_len=seq_len,
                           grad_checkpointing=grad_checkpointing, base_dtype=base_dtype,
                           checkpoint_every=5 if checkpoint_dir else 0)
        if compare:
            rows = compare_options(model, data, lora, tcfg, limit=limit)
            console.print(table("Memory options", ["option", "peak RSS MB", "saved act MB",
                                                   "base MB", "s/step", "eval loss"],
                                [(k, f"{r['peak_rss_mb']:.0f}", f"{r['saved_activations_mb']:.1f}",
                                  f"{r['base_mb']:.0f}", f"{r['s_per_step']:.2f}",
                                  f"{r['eval_loss_before']:.3f}->{r['eval_loss_after']:.3f}")
                                 for k, r in rows.items()]))
            return
        res = finetune(model, data, lora=lora, train_cfg=tcfg,
                       subset=SubsetConfig(subset, fraction) if subset else None, out=out,
                       merge_out=merge_out, checkpoint_dir=checkpoint_dir, limit=limit)
        t = res.train
        console.print(f"trained {t['steps']} steps on {res.n_selected}/{res.n_train} examples in "
                      f"{t['seconds']:.1f} s · held-out loss {res.eval_loss_before:.3f} -> "
                      f"{res.eval_loss_after:.3f} · peak RSS +{t['peak_rss_mb']:.0f} MB · "
                      f"{t['trainable_params']} trainable params")
        if res.adapter:
            console.print(f"adapter: {res.adapter}")
        if res.merged:
            console.print(f"merged model: {res.merged}")
