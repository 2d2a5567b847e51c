"""llama.cpp rows of benchmarks/engines.py (only when ``llama_cpp`` is importable).

llama-cpp-python has no wheel on PyPI; it compiles for 15-20 minutes on 2 cores (measured:
0.3.36, about 17 min while a benchmark shared the cores)::

    CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
        -DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON -DGGML_AMX_TILE=OFF \
        -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
        -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAVA_BUILD=OFF" \
        .venv/bin/pip install --no-deps llama-cpp-python==0.3.36 diskcache

(On an AVX-512 host whose CPU flags list AMX, ``-DGGML_NATIVE=ON`` builds AMX kernels that die
with SIGILL inside this VM, whose kernel does not grant the AMX tile state: measured here,
2026-12-01. Drop the AVX-512 options on an AVX2-only CPU.)

Same weights: the bundled GGUF (the source of every other row's fp32 weights) is re-quantized
by llama.cpp's own ``llama_model_quantize`` to F32 / Q8_0 / Q4_0 (dequantized first, as our
conversion does), with llama.cpp's default recipe per type, which a user would get from
``llama-quantize``. Decoding is timed like ``run_logits_engine``: prefill, then one ``eval``
per token and an argmax over the last logits.
"""

from __future__ import annotations

import ctypes
import time
from pathlib import Path
from typing import Any

import numpy as np

# our precision name -> (llama.cpp file type name, LLAMA_FTYPE_* constant name)
FTYPES = {"fp32": ("F32", "LLAMA_FTYPE_ALL_F32"), "int8": ("Q8_0", "LLAMA_FTYPE_MOSTLY_Q8_0"),
          "int4": ("Q4_0", "LLAMA_FTYPE_MOSTLY_Q4_0")}


def quantized_gguf(source: Path, out_dir: Path, precision: str, threads: int) -> Path:
    """``source`` re-quantized to ``precision`` by llama.cpp (cached by file name)."""
    import llama_cpp

    name, const = FTYPES[precision]
    out = out_dir / f"{source.stem}.{name}.gguf"
    if out.is_file():
        return out
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".partial")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, const)
    params.nthread = threads
    params.allow_requantize = True  # the source is Q4_1: dequantize, then quantize
    rc = llama_cpp.llama_model_quantize(str(source).encode(), str(tmp).encode(),
                                        ctypes.byref(params))
    if rc != 0:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"llama_model_quantize to {name} failed with code {rc}")
    tmp.rename(out)
    return out


def gguf_weight_bytes(path: Path) -> int:
    """Bytes a decode step reads: every tensor, except the embedding table when a separate
    output matrix exists (then only one embedding row is gathered)."""
    from gguf import GGUFReader

    tensors = {t.name: int(t.n_bytes) for t in GGUFReader(str(path)).tensors}
    if "output.weight" in tensors:
        tensors.pop("token_embd.weight", None)
    return sum(tensors.values())


def load(path: Path, threads: int, max_len: int) -> Any:
    from llama_cpp import Llama

    return Llama(model_path=str(path), n_ctx=max_len, n_threads=threads,
                 n_threads_batch=threads, n_batch=512, logits_all=False, verbose=False)


def run(llm: Any, ids: list[int], new: int) -> dict[str, Any]:
    """Prefill then greedy decode ``new`` tokens; time the decode steps only."""
    llm.reset()
    t0 = time.perf_counter()
    llm.eval(ids)
    t1 = time.perf_counter()
    tokens = [int(np.argmax(llm.scores[llm.n_tokens - 1]))]
    for _ in range(new - 1):
        llm.eval([tokens[-1]])
        tokens.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
    t2 = time.perf_counter()
    return {"prefill_tps": len(ids) / (t1 - t0), "decode_tps": (new - 1) / (t2 - t1),
            "tokens": tokens}
