"""Plain functions behind ``edgeweave generate`` (the CLI only parses options)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeweave.errors import GenerationError
from edgeweave.models.catalog import DEFAULT_MODEL
from edgeweave.runtime.engine import EngineSession
from edgeweave.runtime.generate import (
    GenerationResult,
    SamplingParams,
    check_text,
    encode_prompt,
    stream_generate,
)
from edgeweave.runtime.local import EngineChoice, engine_info, tokenizer_for, whole_model

if TYPE_CHECKING:
    from edgeweave.runtime.drafts import Speculation


def run_generate(prompt: str, *, model: str = DEFAULT_MODEL, chat: bool = False,
                 stream: bool = False, echo: Callable[[str], None] = print,
                 report: Callable[[GenerationResult], None] | None = None,
                 choice: EngineChoice | None = None, adapter: str | Path | None = None,
                 speculation: Speculation | None = None,
                 **sampling: object) -> GenerationResult:
    """Build ``model``'s engine (``choice``: ONNX Runtime int4 by default), generate for
    ``prompt`` and echo text (streamed or at the end); ``adapter`` is a LoRA adapter folder
    (``edgeweave finetune --out``) run unmerged on the base; ``speculation``
    (``runtime.drafts``) decodes with a draft model's proposals, verified by the model."""
    params = SamplingParams(**sampling)  # validate before the (slow) model load
    if not prompt.strip():
        raise GenerationError("the prompt is empty: give some text to continue or answer")
    check_text(prompt)
    choice = choice or EngineChoice()
    lora = None
    if adapter is not None:  # checked against the model before it loads
        from edgeweave.runtime.adapters import AdapterSpec, load_checked

        lora = load_checked((AdapterSpec("adapter", Path(adapter)),), model)["adapter"]
    stage = whole_model(model, choice)
    if lora is not None:
        stage.add_adapter(lora)
    tokenizer = tokenizer_for(model)
    ids = encode_prompt(tokenizer, prompt, chat)
    # a KV cache for this request, not for the model's whole context (8192 positions of
    # SmolLM2 are 377 MB of fp32 cache)
    n = len(ids) + params.max_tokens
    engine: Any = EngineSession(stage, n, None if lora is None else lora.name)
    info = engine_info(stage)
    if speculation is not None:
        from edgeweave.runtime.drafts import build_draft
        from edgeweave.runtime.speculative import SpeculativeSession

        draft = build_draft(speculation.draft, model, choice)
        engine = SpeculativeSession(engine, EngineSession(draft, n), speculation.config)
        info = {**info, "draft": speculation.draft.label}
    pieces: list[str] = []
    tokens: list[int] = []
    last = None
    for r in stream_generate(engine, tokenizer, ids, params):
        pieces.append(r.text)
        tokens.extend(r.tokens)
        if stream and r.text:
            echo(r.text)
        last = r
    assert last is not None
    text = "".join(pieces)
    if not stream:
        echo(text)
    engine.close()
    result = GenerationResult(text, tokens, last.finish_reason or "length", last.metrics, info)
    if report:
        report(result)
    return result
