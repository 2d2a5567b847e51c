"""Plain functions behind ``edgeweave generate`` (the CLI only parses options)."""

from __future__ import annotations

from collections.abc import Callable

from edgeweave.errors import GenerationError
from edgeweave.models import load
from edgeweave.runtime.engine import LocalEngine
from edgeweave.runtime.fast import accelerate_decode
from edgeweave.runtime.generate import (
    GenerationMetrics,
    GenerationResult,
    SamplingParams,
    check_text,
    stream_generate,
)


def run_generate(prompt: str, *, model: str = "smollm2-135m-instruct", chat: bool = False,
                 stream: bool = False, echo: Callable[[str], None] = print,
                 report: Callable[[GenerationMetrics], None] | None = None,
                 **sampling: object) -> GenerationResult:
    """Load ``model``, generate for ``prompt`` and echo text (streamed or at the end)."""
    params = SamplingParams(**sampling)  # validate before the (slow) model load
    if not prompt.strip():
        raise GenerationError("the prompt is empty: give some text to continue or answer")
    check_text(prompt)
    lm = load(model)
    accelerate_decode(lm.model)
    engine = LocalEngine(lm.model)
    pieces: list[str] = []
    tokens: list[int] = []
    last = None
    for r in stream_generate(engine, lm.tokenizer, prompt, params, chat=chat):
        pieces.append(r.text)
        tokens.extend(r.tokens)
        if stream and r.text:
            echo(r.text)
        last = r
    assert last is not None
    text = "".join(pieces)
    if not stream:
        echo(text)
    if report:
        report(last.metrics)
    return GenerationResult(text, tokens, last.finish_reason or "length", last.metrics)
