"""Convert a GGUF file (Llama, Qwen2, Qwen3, Gemma 3) once into a cached safetensors folder.

``transformers`` does the dequantization, the q/k un-permutation (Llama) and the norm offset
(Gemma stores ``1 + weight``): about 30 s for the bundled SmolLM2, about 70 s for Gemma 3
270M; we then own the result as a plain folder, so later loads take about a second and never
import ``transformers``.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from edgeweave.errors import CheckpointError
from edgeweave.paths import atomic_dir, atomic_write_json, sha256_file

SOURCE_FILE = "edgeweave.json"  # written next to cached conversions: where they came from

# GGUF general.architecture values that transformers converts and models/ runs
SUPPORTED_ARCHS = ("llama", "qwen2", "qwen3", "gemma3")
GGUF_MAGIC = b"GGUF"


def gguf_architecture(path: Path) -> str:
    """Validate the file (magic, complete tensors) and return ``general.architecture``."""
    if not path.is_file():
        raise CheckpointError(f"GGUF file {path} does not exist")
    with open(path, "rb") as f:
        if f.read(4) != GGUF_MAGIC:
            raise CheckpointError(f"{path} is not a GGUF file (bad magic): pass a .gguf model")
    try:
        from gguf import GGUFReader

        reader = GGUFReader(str(path))
        field = reader.fields["general.architecture"]
        arch = bytes(field.parts[field.data[0]]).decode()
        end = max(int(t.data_offset) + int(t.n_bytes) for t in reader.tensors)
    except ImportError as e:
        raise CheckpointError("reading GGUF needs the 'gguf' extra: pip install "
                              "'edgeweave[gguf]'") from e
    except Exception as e:  # GGUFReader raises ValueError/IndexError/KeyError on damage
        raise CheckpointError(f"{path} is damaged or truncated ({type(e).__name__}: {e}); "
                              "download it again") from e
    if end > path.stat().st_size:
        raise CheckpointError(f"{path} is truncated: tensors end at byte {end} but the file has "
                              f"{path.stat().st_size}; download it again")
    if arch not in SUPPORTED_ARCHS:
        raise CheckpointError(f"{path} holds a {arch!r} model; edgeweave converts "
                              f"{', '.join(SUPPORTED_ARCHS)} GGUF files")
    return arch


def convert_gguf(path: Path, dest: Path) -> Path:
    """Dequantize ``path`` to fp32 safetensors + tokenizer in ``dest`` (atomically)."""
    arch = gguf_architecture(path)
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging
    except ImportError as e:
        raise CheckpointError("converting GGUF needs the 'gguf' extra: pip install "
                              "'edgeweave[gguf]'") from e
    hf_logging.set_verbosity_error()
    t0 = time.perf_counter()
    try:
        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                     dtype=torch.float32)
    except Exception as e:
        raise CheckpointError(f"transformers could not read {path} ({e}); the file may be "
                              "damaged: download it again") from e
    model.hf_quantizer = None  # otherwise save_pretrained refuses a "quantized" model
    with atomic_dir(dest) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        weights = sorted(tmp.glob("*.safetensors"))
        h = hashlib.sha256()
        for w in weights:
            h.update(sha256_file(w).encode())
        atomic_write_json(tmp / SOURCE_FILE, {
            "source": str(path), "source_sha256": sha256_file(path), "architecture": arch,
            "weights_sha256": h.hexdigest(), "converted_s": round(time.perf_counter() - t0, 1),
        })
    return dest


def read_source(folder: Path) -> dict:
    f = folder / SOURCE_FILE
    return json.loads(f.read_text()) if f.is_file() else {}
