"""Short microbenchmarks of this host (each well under a few seconds).

* memory bandwidth: STREAM-like copy of a 256 MB array (bytes read + written per second);
* decode-kernel bandwidth: the fp32 matrix-vector product ``runtime.fast`` uses (numpy/BLAS)
  over matrices larger than the caches, i.e. what batch-1 decode can stream;
* matrix-multiply rate per precision (fp32, fp16/bf16 and dynamic int8 GEMM through torch);
* operator overhead: a decode step of one tiny block, where weights are negligible;
* per-block prefill and decode latency of a real model (``models.load`` + ``LocalEngine``,
  with ``accelerate_decode`` as ``edgeweave generate`` runs it) and its per-token decode.
Every function returns the best of a few repeats: the machine is shared, and the minimum is
the least disturbed figure.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


def _best(fn: Callable[[], object], repeats: int = 5, budget_s: float = 1.5) -> float:
    fn()  # warm up (page faults, BLAS thread start)
    best, spent = float("inf"), 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        best, spent = min(best, dt), spent + dt
        if spent > budget_s:
            break
    return best


def memory_bandwidth(mbytes: int = 256) -> float:
    """Bytes moved per second by a large copy (read + write, as STREAM counts it)."""
    a = np.ones(mbytes * 1024 * 1024 // 4, dtype=np.float32)
    b = np.empty_like(a)
    return 2 * a.nbytes / _best(lambda: np.copyto(b, a))


def gemv_bandwidth(n_mats: int = 48, rows: int = 1536, cols: int = 576) -> float:
    """Weight bytes per second streamed by fp32 matrix-vector products (decode's kernel)."""
    rng = np.random.default_rng(0)
    mats = [rng.standard_normal((rows, cols), dtype=np.float32) for _ in range(n_mats)]
    x = rng.standard_normal((1, cols), dtype=np.float32)

    def run() -> None:
        for m in mats:
            x @ m.T  # same call shape as runtime.fast.GemvLinear

    return sum(m.nbytes for m in mats) / _best(run)


def matmul_rates(n: int = 512) -> dict[str, float]:
    """Operations per second of an n x n x n GEMM per precision (best available kernel)."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    flops = 2.0 * n ** 3
    rates = {"fp32": flops / _best(lambda: a @ b)}
    half = []
    for dt in (torch.float16, torch.bfloat16):  # CPUs without native half kernels are slow
        x, y = a.to(dt), b.to(dt)
        half.append(flops / _best(lambda x=x, y=y: x @ y, repeats=2, budget_s=0.5))
    rates["fp16"] = max(half)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lin = torch.nn.Sequential(torch.nn.Linear(n, n, bias=False))
        q = torch.ao.quantization.quantize_dynamic(lin, {torch.nn.Linear}, dtype=torch.qint8)
        with torch.inference_mode():
            rates["int8"] = flops / _best(lambda: q(a))
    return rates


def op_overhead(ops_per_block: int) -> float:
    """Seconds per operator: one decode step of a tiny block divided by its operator count.

    The tiny block takes the same code path as real decode (``accelerate_decode``), so the
    per-call costs of that path are what is measured; its weights are negligible."""
    import torch

    from edgeweave.models.config import ModelConfig
    from edgeweave.models.llama import BlockModel
    from edgeweave.runtime.fast import accelerate_decode

    cfg = ModelConfig(family="llama", vocab_size=64, hidden_size=32, intermediate_size=64,
                      num_layers=4, num_heads=2, num_kv_heads=1, head_dim=16, max_position=512)
    model = accelerate_decode(BlockModel(cfg).eval())
    cache = model.new_cache(512)
    h = torch.randn(1, 1, 32)

    def step() -> None:
        cache.truncate(8)
        for i in range(4):
            model.block(i, h, cache)

    with torch.inference_mode():
        cache.truncate(0)
        model.run_blocks(torch.randn(1, 8, 32), cache)
        per_block = min(_best(step, repeats=50, budget_s=0.5) for _ in range(3)) / 4
    return per_block / ops_per_block


@dataclass(frozen=True)
class ModelTiming:
    """Measured latencies of one model on this host (seconds)."""

    model: str
    prompt_len: int
    context: int
    block_prefill_s: tuple[float, ...]
    block_decode_s: tuple[float, ...]
    decode_token_s: float  # LocalEngine.decode, fastest token (embed + blocks + head)
    prefill_s: float  # LocalEngine.prefill of the prompt


def model_timing(name: str | None = None, prompt_len: int = 32, context: int = 128,
                 decode_tokens: int = 32) -> ModelTiming:
    """Time a real model: per block (prefill of ``prompt_len`` tokens, decode at ``context``)
    and end to end through ``LocalEngine`` as ``edgeweave generate`` runs it."""
    import torch

    from edgeweave.models import DEFAULT_MODEL, load
    from edgeweave.runtime.engine import LocalEngine
    from edgeweave.runtime.fast import accelerate_decode

    lm = load(name or DEFAULT_MODEL)
    model = accelerate_decode(lm.model.eval())
    n = model.cfg.num_layers
    ids = torch.randint(0, model.cfg.vocab_size, (1, prompt_len))
    engine = LocalEngine(model, max_len=context + decode_tokens + 8)
    with torch.inference_mode():
        prefill = _best(lambda: engine.prefill(ids[0].tolist()), repeats=2, budget_s=1.0)
        # end-to-end decode: fill the cache to `context`, then time single tokens
        engine.prefill(torch.randint(0, model.cfg.vocab_size, (context,)).tolist())
        times = []
        for t in range(decode_tokens):
            t0 = time.perf_counter()
            engine.decode(int(t % 100))
            times.append(time.perf_counter() - t0)
        # the least disturbed token: on a shared machine slower ones waited for a core
        decode = float(np.min(times[2:]))
        # per block: prefill chunk and single-token decode, cache at `context`
        cache = engine.cache
        h_pre = model.embed(ids)
        h_dec = model.embed(ids[:, :1])
        pre, dec = [], []
        cache.truncate(0)
        model.block(0, h_pre, cache)  # warm up the prefill path once; blocks share shapes
        for i in range(n):
            cache.truncate(0)
            t0 = time.perf_counter()
            model.block(i, h_pre, cache)
            pre.append(time.perf_counter() - t0)

            def run_dec(i: int = i) -> None:
                cache.truncate(context)
                model.block(i, h_dec, cache)

            cache.lengths = [context] * len(cache.lengths)
            dec.append(_best(run_dec, repeats=3, budget_s=0.1))
    return ModelTiming(lm.name, prompt_len, context, tuple(pre), tuple(dec), decode, prefill)
