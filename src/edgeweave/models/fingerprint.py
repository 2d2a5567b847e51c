"""Which weights a model folder holds, and their identity, without importing torch.

An adapter records the fingerprint of the base it was trained on; a server running only ONNX
stages checks it against the model it serves, so the check must not pull torch in.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from edgeweave.errors import CheckpointError
from edgeweave.models.gguf import SOURCE_FILE
from edgeweave.paths import sha256_file


def weight_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_bytes().decode("utf-8"))["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise CheckpointError(f"{index} is not a valid safetensors index ({e!r:.80}): restore "
                                  "it or re-download the model") from e
        return [folder / str(n) for n in names]
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{folder} has no *.safetensors weights: save the model with "
                              "safe_serialization=True")
    return files


def checkpoint_fingerprint(folder: Path) -> str:
    """sha256 of the weight files, remembered in ``edgeweave.json`` when we made the folder."""
    src = folder / SOURCE_FILE
    if src.is_file():
        fp = json.loads(src.read_text()).get("weights_sha256")
        if fp:
            return fp
    h = hashlib.sha256()
    for f in weight_files(folder):
        h.update(sha256_file(f).encode())
    return h.hexdigest()
