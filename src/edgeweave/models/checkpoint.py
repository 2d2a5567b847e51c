"""Load a Hugging Face style folder (config.json + safetensors + tokenizer) into a BlockModel.

Only the tensors of the requested shard are read, so a node hosting blocks ``[10, 20)``
never touches the rest of the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from edgeweave.errors import CheckpointError
from edgeweave.models.config import ModelConfig, read_config
from edgeweave.models.fingerprint import checkpoint_fingerprint, weight_files  # noqa: F401
from edgeweave.models.llama import BlockModel
from edgeweave.models.tokenizer import Tokenizer
from edgeweave.types import Shard
from edgeweave.validate import first_mismatch


@dataclass
class LoadedModel:
    name: str
    folder: Path
    config: ModelConfig
    model: BlockModel
    tokenizer: Tokenizer

    @property
    def fingerprint(self) -> str:
        return checkpoint_fingerprint(self.folder)


def load_state(folder: Path, model: BlockModel, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    wanted = set(model.state_dict().keys())
    state: dict[str, torch.Tensor] = {}
    for f in weight_files(folder):
        try:
            with safe_open(str(f), framework="pt") as fh:
                for key in fh.keys():  # noqa: SIM118 - safe_open is not a dict
                    ours = key.removeprefix("model.")
                    if ours in wanted:
                        state[ours] = fh.get_tensor(key).to(dtype)
        except Exception as e:  # safetensors raises its own error types
            raise CheckpointError(f"cannot read weights {f}: {e}; the file is damaged, "
                                  "delete it and convert or download again") from e
    return state


def load_folder(folder: str | Path, shard: Shard | None = None, dtype: torch.dtype = torch.float32,
                name: str | None = None) -> LoadedModel:
    folder = Path(folder)
    cfg = read_config(folder)
    tokenizer = Tokenizer(folder)
    with torch.device("meta"):
        model = BlockModel(cfg, shard)
    state = load_state(folder, model, dtype)
    tied = cfg.tie_word_embeddings and model.lm_head is not None
    if tied:
        if "embed_tokens.weight" not in state and "lm_head.weight" in state:
            state["embed_tokens.weight"] = state["lm_head.weight"]
        state.pop("lm_head.weight", None)
    expected = set(model.state_dict().keys()) - ({"lm_head.weight"} if tied else set())
    missing = sorted(expected - set(state))
    if missing:
        raise CheckpointError(f"{folder} lacks {len(missing)} tensors, e.g. {missing[:3]}: "
                              "the checkpoint is incomplete or of another architecture")
    try:
        model.load_state_dict(state, strict=False, assign=True)
    except RuntimeError as e:  # tensor shapes disagree with config.json
        raise CheckpointError(f"the weights in {folder} do not match its config.json "
                              f"({first_mismatch(e)}): restore the matching "
                              "config.json or re-download the model") from e
    if tied:
        model.lm_head.weight = model.embed_tokens.weight
    model.init_buffers()  # buffers built on the meta device must be rebuilt for real
    model.eval().requires_grad_(False)
    return LoadedModel(name or folder.name, folder, cfg, model, tokenizer)
