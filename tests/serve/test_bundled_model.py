"""The real bundled SmolLM2 behind the server, through the openai client."""

from __future__ import annotations

import pytest

from edgeweave.runtime.local import EngineChoice
from edgeweave.serve.backend import LocalSessions
from edgeweave.serve.config import ServeConfig
from edgeweave.serve.server import BackgroundServer
from tests.serve.conftest import client


@pytest.mark.integration
def test_capital_of_france_greedy_says_paris():
    # fp32 on the default backend: the reference weights answer this one (the 4-bit and
    # 8-bit variants of this 135M model start with "L'Étoile" instead; perplexity and the
    # task suite are their quality measures, see benchmarks/serve.py and tasks.py)
    sessions = LocalSessions.load("smollm2-135m-instruct", EngineChoice(variant="fp32"))
    with BackgroundServer(sessions, ServeConfig(api_keys=("k",))) as url:
        stream = client(url, "k").chat.completions.create(
            model="smollm2-135m-instruct", temperature=0, max_tokens=20, stream=True,
            messages=[{"role": "user", "content": "What is the capital of France?"}])
        chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "Paris" in text, text
    ew = next(c for c in chunks if c.choices and c.choices[0].finish_reason).model_extra
    assert ew["edgeweave"]["decode_tok_s"] > 0
    assert ew["edgeweave"]["backend"] == "onnx" and ew["edgeweave"]["variant"] == "fp32"


@pytest.mark.integration
def test_concurrent_streams_of_the_default_engine_agree_with_solo_streams():
    """Six greedy streams at once on the default int4 ONNX engine (batched decode rows) give
    the text each prompt gives alone, up to low-bit rounding with the batch size: every stream
    agrees on its first tokens, and most tokens come before the first difference
    (benchmarks/batching.py reports it)."""
    from concurrent.futures import ThreadPoolExecutor

    sessions = LocalSessions.load("smollm2-135m-instruct", EngineChoice())
    prompts = ["What is the capital of France?", "Name two uses of a motion sensor.",
               "Why do sensors sleep?", "What is humidity?", "Say hello.",
               "List three colors."]
    with BackgroundServer(sessions, ServeConfig(api_keys=("k",))) as url:
        def one(p: str) -> str:
            r = client(url, "k").chat.completions.create(
                model="smollm2-135m-instruct", temperature=0, max_tokens=24,
                messages=[{"role": "user", "content": p}], extra_body={"ignore_eos": True})
            return r.choices[0].message.content or ""

        solo = [one(p) for p in prompts]
        with ThreadPoolExecutor(len(prompts)) as pool:
            together = list(pool.map(one, prompts))
    tok = sessions.tokenizer
    same = total = 0
    firsts = []
    for a, b in zip(together, solo, strict=True):
        x, y = tok.encode(a, add_special_tokens=False), tok.encode(b, add_special_tokens=False)
        n = next((i for i, (u, v) in enumerate(zip(x, y, strict=False)) if u != v),
                 min(len(x), len(y)))
        firsts.append(n)
        same, total = same + n, total + max(len(y), 1)
    # Rows mixed up or a wrong mask in the batch break a stream at its first tokens; that
    # must never happen on any CPU.
    assert min(firsts) >= 4, (firsts, together, solo)
    # How long greedy text stays identical is the int4 kernels' rounding, and ONNX Runtime's
    # MatMulNBits rounds batch rows differently per instruction set: on AVX-512 hosts >= 90 %
    # of the tokens agree; on an AVX2-only AMD EPYC (2026-12-03) 64-70 %, 4 of 6 streams
    # parting after 6-14 tokens (an open finding of issue 17, in its notes).
    floor = 0.9 if _has_avx512() else 0.5
    assert same / total >= floor, (same, total, firsts, together, solo)


def _has_avx512() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            return "avx512f" in f.read()
    except OSError:
        return False
