"""``compress(model, recipe, calib=...) -> Artifact``: run a recipe's steps through the registry."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from edgeweave.compress.artifact import Artifact
from edgeweave.compress.calib import Calibration, wiki_calibration
from edgeweave.compress.methods import METHOD_PACKAGES, load_methods, method_modules  # noqa: F401
from edgeweave.compress.recipes import METHODS, Recipe
from edgeweave.compress.spec import parse_recipe
from edgeweave.errors import ConfigError
from edgeweave.models.checkpoint import LoadedModel
from edgeweave.models.llama import BlockModel
from edgeweave.paths import home

# Method discovery (METHOD_PACKAGES, method_modules, load_methods) has its own module, which
# recipes needs too; the names stay importable from here, where callers found them first.


@dataclass
class Context:
    """What a method may use besides the model: calibration tokens, a work folder, notes."""

    calib: Calibration | None
    work_dir: Path
    source_fingerprint: str = ""
    notes: dict[str, Any] = field(default_factory=dict)

    def require_calib(self, method: str) -> torch.Tensor:
        if self.calib is None:
            raise ConfigError(f"{method} needs calibration data: pass calib=Calibration(...) "
                              "or a LoadedModel with a tokenizer (Wikipedia calib split is used)")
        return self.calib.ids


def to_storage_precision(model: torch.nn.Module) -> None:
    """Round what artifacts store in fp16 (dense/sparse/low-rank weights, a dense embedding)
    so the in-memory result equals what ``load_artifact`` gives back."""
    from edgeweave.compress.modules import LowRankLinear

    for m in model.modules():
        if type(m) in (torch.nn.Linear, torch.nn.Embedding, LowRankLinear):
            for p in m.parameters(recurse=False):
                p.data = p.data.half().float()


def compress(model: BlockModel | LoadedModel, recipe: Recipe | str,
             calib: Calibration | None = None, out: str | Path | None = None) -> Artifact:
    """Compress a copy of ``model`` with ``recipe``; save to ``out`` when given.

    ``model`` is never modified. Calibration defaults to Wikipedia calib-split windows when a
    tokenizer is at hand and the recipe needs data.
    """
    load_methods()
    recipe = parse_recipe(recipe)
    lm = model if isinstance(model, LoadedModel) else None
    base = lm.model if lm else model
    if not (base.shard.is_first and base.shard.is_last):
        raise ConfigError("compress needs the whole model (all blocks); load it without a shard")
    if calib is None and lm is not None and recipe.needs_calibration:
        calib = wiki_calibration(lm.tokenizer)
    fingerprint = lm.fingerprint if lm else ""
    source = {"name": lm.name if lm else "in-memory", "fingerprint": fingerprint,
              "params": base.cfg.num_params(), "blocks": base.cfg.num_layers}
    ctx = Context(calib, home() / "work" / "compress", fingerprint)
    for step in recipe.chain:
        if type(step) not in METHODS:
            raise ConfigError(f"no method registered for {type(step).__name__}")
    t0 = time.perf_counter()
    work = copy.deepcopy(base)
    with torch.no_grad():
        for i, step in enumerate(recipe.chain):
            ctx.notes.setdefault(f"step{i}", {"recipe": step.label()})
            ctx.notes[f"step{i}"]["step"] = i
            work = METHODS[type(step)](step, work, ctx, ctx.notes[f"step{i}"]) or work
        to_storage_precision(work)
    art = Artifact(model=work.eval(), recipe=recipe, source=source,
                   calibration=calib.description if calib is not None else None,
                   tokenizer_folder=lm.folder if lm else None,
                   compress_seconds=time.perf_counter() - t0, notes=ctx.notes)
    if out is not None:
        art.save(out)
    return art
