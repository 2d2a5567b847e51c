"""Anchors every speed benchmark prints beside our figures: onnxruntime-genai (built by its
own model builder from the same fp32 weights) and the byte counts behind roofline fractions.

No torch here, so a child process measuring an anchor's memory holds only what that anchor
needs (llama.cpp rows live in ``_llamacpp.py``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from edgeweave.paths import atomic_dir, home


def onnx_weight_bytes(path: Path) -> int:
    """Bytes of initializers a decode step reads: all but gathered tables (embedding rows,
    rotary caches, of which one row is read)."""
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    size = {t.name: _tensor_bytes(t) for t in m.graph.initializer}
    gathered, read = set(), set()
    for n in m.graph.node:
        for j, name in enumerate(n.input):
            if name not in size:
                continue
            rotary = n.op_type in ("GroupQueryAttention", "RotaryEmbedding") and j >= 7
            (gathered if n.op_type.startswith("Gather") or rotary else read).add(name)
    return sum(size[k] for k in read)


def _tensor_bytes(t) -> int:
    import onnx

    n = 1
    for d in t.dims:
        n *= d
    return n * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize


def run_genai(model, ids: list[int], new: int) -> dict[str, Any]:
    import onnxruntime_genai as og

    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=len(ids) + new,
                              min_length=len(ids) + new)
    gen = og.Generator(model, params)
    t0 = time.perf_counter()
    gen.append_tokens(ids)
    t1 = time.perf_counter()
    tokens: list[int] = []
    while not gen.is_done() and len(tokens) < new:
        gen.generate_next_token()
        tokens.append(int(gen.get_next_tokens()[0]))
    t2 = time.perf_counter()
    # append_tokens computed the first logits; each generate_next_token picks a token and
    # runs one decode step, except that the last pick needs no step (counted conservatively)
    return {"prefill_tps": len(ids) / (t1 - t0), "decode_tps": (len(tokens) - 1) / (t2 - t1),
            "tokens": tokens}


def genai_folder(model_folder: Path, name: str, precision: str, threads: int) -> Path:
    """Build (once) onnxruntime-genai's model from the same fp32 weights."""
    out = home() / "onnx-genai" / name / precision
    if not (out / "genai_config.json").is_file():
        src = home() / "onnx-genai" / name / "hf"
        if not (src / "config.json").is_file():
            with atomic_dir(src) as tmp:
                cfg = json.loads((model_folder / "config.json").read_text())
                cfg.pop("quantization_config", None)  # the GGUF note confuses the builder
                (tmp / "config.json").write_text(json.dumps(cfg, indent=1))
                for f in model_folder.iterdir():
                    if f.name != "config.json" and f.is_file():
                        (tmp / f.name).symlink_to(f.resolve())
        extra = ["--extra_options", "accuracy_level=4", "block_size=32"] if precision in (
            "int4", "int8") else []
        with atomic_dir(out) as tmp:
            subprocess.run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i",
                            str(src), "-o", str(tmp), "-p", precision, "-e", "cpu", "-c",
                            str(home() / "onnx-genai" / "cache"), *extra], check=True,
                           stdout=subprocess.DEVNULL)
    cfg_path = out / "genai_config.json"
    cfg = json.loads(cfg_path.read_text())
    so = cfg["model"]["decoder"].setdefault("session_options", {})
    if so.get("intra_op_num_threads") != threads:
        so["intra_op_num_threads"] = threads
        so["inter_op_num_threads"] = 1
        cfg_path.write_text(json.dumps(cfg, indent=4))
    return out
