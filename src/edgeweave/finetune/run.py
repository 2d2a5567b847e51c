"""One-call fine-tuning API (what ``edgeweave finetune`` wraps) and the memory-option sweep.

``finetune`` loads a model, builds examples, optionally keeps a data-efficient subset,
injects LoRA, converts the frozen base, trains (resumably) and saves the adapter (and a
merged model folder on request). ``compare_options`` runs the same job once per memory
option and reports peak memory and time for each.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from edgeweave.errors import ConfigError
from edgeweave.finetune.config import LoRAConfig, TrainConfig
from edgeweave.finetune.data import Example, pack_text, wiki_summaries
from edgeweave.finetune.subset import SubsetConfig
from edgeweave.finetune.task_data import PREFIX, TaskData, task_examples


@dataclass
class FinetuneResult:
    adapter: Path | None
    merged: Path | None
    train: dict[str, Any]
    eval_loss_before: float
    eval_loss_after: float
    n_train: int
    n_selected: int


def text_examples(tokenizer, source: str | TaskData, seq_len: int, limit: int
                  ) -> list[Example]:
    """``wiki`` (bundled Wikipedia summaries), ``task:NAME[,NAME...][:knn]`` (IoT tasks' train
    splits as prompt/answer pairs, see :mod:`edgeweave.finetune.task_data`) or a path to a
    UTF-8 text file."""
    if isinstance(source, TaskData) or source.startswith(PREFIX):
        return task_examples(tokenizer, source, seq_len, limit)
    if source == "wiki":
        texts = wiki_summaries(limit)
    else:
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"training data {source!r} is neither 'wiki', "
                              "'task:NAME[,NAME...][:knn]' nor a text file")
        texts = [p for p in path.read_text().split("\n\n") if p.strip()][:limit]
    return pack_text(tokenizer, texts, seq_len)


def finetune(model: str, data: str | TaskData = "wiki", *, lora: LoRAConfig, train_cfg: TrainConfig,
             subset: SubsetConfig | None = None, out: str | Path | None = None,
             merge_out: str | Path | None = None, checkpoint_dir: str | Path | None = None,
             limit: int = 200, eval_fraction: float = 0.1) -> FinetuneResult:
    from edgeweave.finetune.adapter import merge_to_folder, save_adapter
    from edgeweave.finetune.lora import apply_lora
    from edgeweave.finetune.quantbase import convert_base
    from edgeweave.finetune.subset import select
    from edgeweave.finetune.train import PrefixCache, evaluate_loss, first_trainable_block, train
    from edgeweave.models import catalog

    lm = catalog.load(model)
    examples = text_examples(lm.tokenizer, data, train_cfg.seq_len, limit)
    n_eval = max(1, int(len(examples) * eval_fraction))
    if len(examples) < n_eval + 1:
        raise ConfigError(f"only {len(examples)} examples of {train_cfg.seq_len} tokens: give "
                          "more text or a smaller --seq-len")
    held, pool = examples[:n_eval], examples[n_eval:]
    chosen = select(lm.model, pool, subset) if subset else pool
    apply_lora(lm.model, lora)
    convert_base(lm.model, train_cfg.base_dtype)
    start = first_trainable_block(lm.model)
    cache = PrefixCache(start) if start > 0 else None
    before = evaluate_loss(lm.model, held, prefix_cache=cache)
    res = train(lm.model, chosen, train_cfg, checkpoint_dir=checkpoint_dir, prefix_cache=cache)
    after = evaluate_loss(lm.model, held, prefix_cache=cache)
    metrics = {"eval_loss_before": before, "eval_loss_after": after, **res.to_dict()}
    adapter = save_adapter(out, lm.model, lora, base=lm.name, base_fingerprint=lm.fingerprint,
                           metrics=metrics) if out else None
    merged = None
    if merge_out:
        if adapter is None:
            raise ConfigError("--merge-out needs --out (the adapter to merge)")
        merged = merge_to_folder(model, adapter, merge_out)
    return FinetuneResult(adapter, merged, res.to_dict(), before, after, len(pool), len(chosen))


OPTIONS: dict[str, dict[str, Any]] = {
    "baseline": {},
    "grad_checkpointing": {"train": {"grad_checkpointing": True}},
    "lora_fa": {"lora": {"freeze_a": True}},
    "micro_batch_1": {"train": {"micro_batch_size": 1}},
    "bf16_base": {"train": {"base_dtype": "bfloat16"}},
    "int8_base": {"train": {"base_dtype": "int8"}},
}


def compare_options(model: str, data: str, lora: LoRAConfig, train_cfg: TrainConfig,
                    names: list[str] | None = None, limit: int = 200) -> dict[str, dict]:
    """Run the same job under each memory option; peak RSS, saved activations, time, loss."""
    rows = {}
    for name in names or list(OPTIONS):
        if name not in OPTIONS:
            raise ConfigError(f"unknown option {name!r}; choose from {sorted(OPTIONS)}")
        o = OPTIONS[name]
        res = finetune(model, data, lora=replace(lora, **o.get("lora", {})),
                       train_cfg=replace(train_cfg, **o.get("train", {})), limit=limit)
        t = res.train
        rows[name] = {"peak_rss_mb": t["peak_rss_mb"],
                      "saved_activations_mb": t["saved_activations_mb"],
                      "base_mb": t["base_mb"], "trainable_params": t["trainable_params"],
                      "seconds": t["seconds"], "s_per_step": t["seconds"] / max(t["steps"], 1),
                      "eval_loss_before": res.eval_loss_before,
                      "eval_loss_after": res.eval_loss_after}
    return rows
