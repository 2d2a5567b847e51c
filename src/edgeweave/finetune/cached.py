"""Task adapters trained once and kept in ``$EDGEWEAVE_HOME``, like compressed variants.

The demo shows its questions answered by the base model and by a LoRA adapter trained on
the same tasks' train splits. Training takes minutes on a small device, so the adapter is
built on first use and reused after: the folder's name carries a digest of everything that
shapes the weights (model, data, LoRA and training configs), so changing any of them trains
a new one, and an adapter whose weights no longer match their manifest is trained again.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from edgeweave.errors import EdgeweaveError
from edgeweave.finetune.config import LoRAConfig, TrainConfig
from edgeweave.finetune.task_data import TaskData


@dataclass(frozen=True)
class AdapterRecipe:
    """What a cached task adapter is trained on and how."""

    data: TaskData
    lora: LoRAConfig = LoRAConfig()
    train: TrainConfig = TrainConfig()
    limit: int = 48  # train examples per task

    def digest(self, model: str) -> str:
        spec = {"model": Path(model).name, "data": self.data.__dict__, "limit": self.limit,
                "lora": self.lora.to_dict(), "train": self.train.to_dict()}
        return hashlib.sha256(json.dumps(spec, sort_keys=True, default=list).encode()
                              ).hexdigest()[:12]


def adapter_path(recipe: AdapterRecipe, model: str, name: str = "tasks") -> Path:
    from edgeweave.paths import home

    return home() / "adapters" / Path(model).name / f"{name}-{recipe.digest(model)}"


def _usable(path: Path) -> bool:
    from edgeweave.finetune.adapter import read_adapter

    if not path.exists():
        return False
    try:
        read_adapter(path)  # hash checked: a damaged folder is trained again
    except EdgeweaveError:
        return False
    return True


def cached_adapter(recipe: AdapterRecipe, model: str, name: str = "tasks") -> Path:
    """The adapter folder for ``recipe`` on ``model``, training it first if needed (once
    across processes, written atomically)."""
    from edgeweave.finetune.run import finetune
    from edgeweave.paths import build_once

    path = adapter_path(recipe, model, name)
    build_once(path, _usable, lambda out: finetune(
        model, recipe.data, lora=recipe.lora, train_cfg=recipe.train, out=out,
        limit=recipe.limit))
    return path
