"""``edgeweave demo``: the main job on the embedded default (no cluster, no network).

First version (foundation): load the bundled model and answer IoT-flavoured prompts,
each with its metrics. Later stages of the pipeline hook in here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from edgeweave.models import DEFAULT_MODEL, catalog
from edgeweave.runtime.engine import LocalEngine
from edgeweave.runtime.fast import accelerate_decode
from edgeweave.runtime.generate import GenerationResult, SamplingParams, generate

IOT_PROMPTS = (
    "A kitchen sensor reads 31 degrees Celsius and 85% humidity at 3 am. Is that normal? "
    "Answer in one sentence.",
    "In one sentence: why should a battery-powered door sensor send data less often?",
    "List two things a smart thermostat can do to save energy.",
)


@dataclass(frozen=True)
class DemoAnswer:
    prompt: str
    result: GenerationResult


def answer_prompts(prompts: tuple[str, ...] = IOT_PROMPTS, model: str = DEFAULT_MODEL,
                   max_tokens: int = 64,
                   on_answer: Callable[[DemoAnswer], None] | None = None) -> list[DemoAnswer]:
    lm = catalog.load(model)
    accelerate_decode(lm.model)
    engine = LocalEngine(lm.model, max_len=512)
    answers = []
    for p in prompts:
        r = generate(engine, lm.tokenizer, p, SamplingParams(max_tokens=max_tokens), chat=True)
        a = DemoAnswer(p, r)
        answers.append(a)
        if on_answer:
            on_answer(a)
    return answers
