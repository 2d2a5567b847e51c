"""Quality of a (compressed) model: held-out perplexity, a small IoT question set, and a
generation sanity check. Everything is deterministic for a given seed and token budget.

Perplexity uses the *eval* splits of :mod:`edgeweave.data.text` (calibration uses the
*calib* split, so the two never share a document): documents are shuffled with ``seed``,
joined with end-of-sequence tokens, cut to ``tokens`` tokens and scored in non-overlapping
windows of ``seq_len``; every token after the first of a window is predicted.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from edgeweave.errors import ConfigError
from edgeweave.models.checkpoint import LoadedModel

CORPORA: dict[str, Callable[[str], list[str]]] = {}


def _corpus(name: str):
    def deco(fn: Callable[[str], list[str]]) -> Callable[[str], list[str]]:
        CORPORA[name] = fn
        return fn
    return deco


@_corpus("wikipedia")
def _wiki(split: str) -> list[str]:
    from edgeweave.data.text import wiki_texts

    return wiki_texts(split)


@_corpus("shakespeare")
def _shakespeare(split: str) -> list[str]:
    from edgeweave.data.text import shakespeare_texts

    # plays are long: cut them into scenes-sized pieces so shuffling mixes several plays
    out = []
    for play in shakespeare_texts(split):
        paras = [p for p in play.split("\n\n") if p.strip()]
        out.extend("\n\n".join(paras[i:i + 40]) for i in range(0, len(paras), 40))
    return out


def eval_tokens(lm: LoadedModel, corpus: str, tokens: int, seed: int = 0,
                split: str = "eval") -> torch.Tensor:
    if corpus not in CORPORA:
        raise ConfigError(f"unknown corpus {corpus!r}: choose one of {', '.join(CORPORA)}")
    docs = list(CORPORA[corpus](split))
    random.Random(seed).shuffle(docs)
    eos = [lm.tokenizer.eos_token_id] if lm.tokenizer.eos_token_id is not None else []
    ids: list[int] = []
    for d in docs:
        ids.extend(lm.tokenizer.encode(d) + eos)
        if len(ids) >= tokens:
            break
    return torch.tensor(ids[:tokens], dtype=torch.long)


@torch.inference_mode()
def perplexity_of(model: torch.nn.Module, ids: torch.Tensor, seq_len: int = 256,
                  batch: int = 4) -> float:
    """exp(mean NLL) over non-overlapping windows of ``ids`` (1-D)."""
    n = ids.numel() // seq_len
    if n == 0:
        raise ConfigError(f"need at least {seq_len} tokens for perplexity, got {ids.numel()}")
    windows = ids[:n * seq_len].reshape(n, seq_len)
    nll, count = 0.0, 0
    for i in range(0, n, batch):
        x = windows[i:i + batch]
        logits = model(x)[:, :-1].float()
        nll += float(F.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten(), reduction="sum"))
        count += x[:, 1:].numel()
    return math.exp(nll / count)


def perplexity_engine(new_session: Any, ids: torch.Tensor | list[int], seq_len: int = 256
                      ) -> float:
    """exp(mean NLL) over non-overlapping windows, teacher-forced one token at a time through
    a ``LogitsEngine`` (``new_session(max_len)``): what the served engine itself computes,
    int8 activations of the fast path included."""
    import numpy as np

    ids = [int(t) for t in ids]
    n = len(ids) // seq_len
    if n == 0:
        raise ConfigError(f"need at least {seq_len} tokens for perplexity, got {len(ids)}")
    nll, count = 0.0, 0
    session = new_session(seq_len)
    for w in range(n):
        window = ids[w * seq_len:(w + 1) * seq_len]
        logits = session.prefill(window[:1])
        for t in window[1:]:
            z = np.asarray(logits, np.float64)
            m = z.max()
            nll += float(m + np.log(np.exp(z - m).sum()) - z[t])
            count += 1
            logits = session.decode(t)
    close = getattr(session, "close", None)
    if callable(close):
        close()
    return math.exp(nll / count)


def perplexity(lm: Any, corpus: str = "wikipedia", tokens: int = 4096,
               seq_len: int = 256, seed: int = 0) -> float:
    """Held-out perplexity of a torch ``LoadedModel`` (batched) or of an engine-backed
    ``runtime.local.LocalModel`` (teacher-forced through its engine)."""
    ids = eval_tokens(lm, corpus, tokens, seed)
    if hasattr(lm, "new_session"):
        return perplexity_engine(lm.new_session, ids, seq_len)
    return perplexity_of(lm.model, ids, seq_len)


def _session(lm: Any, max_len: int) -> Any:
    if hasattr(lm, "new_session"):
        return lm.new_session(max_len)
    from edgeweave.runtime.engine import LocalEngine

    return LocalEngine(lm.model, max_len=max_len)


@dataclass(frozen=True)
class Question:
    prompt: str
    accept: tuple[str, ...]  # any of these (lower-case) in the answer counts as correct


IOT_QUESTIONS = (
    Question("What is the capital of France?", ("paris",)),
    Question("Which gas do indoor air quality sensors measure in ppm to judge ventilation?",
             ("co2", "carbon dioxide")),
    Question("What does a thermostat control?", ("temperature", "heat")),
    Question("What does a PIR sensor detect?", ("motion", "infrared", "movement", "heat")),
    Question("What unit is used to measure electric power?", ("watt",)),
    Question("What does a hygrometer measure?", ("humidity", "moisture")),
    Question("Which messaging protocol with a broker and topics is popular in IoT?", ("mqtt",)),
    Question("What does GPS stand for?", ("global positioning",)),
    Question("What is the boiling point of water in degrees Celsius?", ("100",)),
    Question("What does an accelerometer measure?", ("acceleration", "motion", "movement")),
)


def iot_questions(lm: LoadedModel, max_tokens: int = 48) -> dict[str, Any]:
    """Greedy chat answers to :data:`IOT_QUESTIONS`; accuracy = a keyword appears."""
    from edgeweave.runtime.generate import SamplingParams, generate

    engine = _session(lm, 256)
    params = SamplingParams(max_tokens=max_tokens)
    rows = []
    for q in IOT_QUESTIONS:
        text = generate(engine, lm.tokenizer, q.prompt, params, chat=True).text
        rows.append({"q": q.prompt, "answer": text.strip(),
                     "correct": any(a in text.lower() for a in q.accept)})
    return {"accuracy": sum(r["correct"] for r in rows) / len(rows), "answers": rows}


def generation_sanity(lm: LoadedModel, max_tokens: int = 32) -> dict[str, Any]:
    """Greedy answer to a known question, plus decode speed from the response metrics."""
    from edgeweave.runtime.generate import SamplingParams, generate

    engine = _session(lm, 256)
    r = generate(engine, lm.tokenizer, "What is the capital of France?",
                 SamplingParams(max_tokens=max_tokens), chat=True)
    return {"text": r.text, "ok": "paris" in r.text.lower(),
            "decode_tps": r.metrics.decode_tps, "peak_rss_mb": r.metrics.peak_rss_mb}


def evaluate(lm: LoadedModel, tokens: int = 4096, seq_len: int = 256, seed: int = 0,
             questions: bool = True) -> dict[str, Any]:
    """Perplexity on both held-out corpora (+ IoT questions and a sanity generation)."""
    t0 = time.perf_counter()
    out: dict[str, Any] = {"tokens": tokens, "seq_len": seq_len, "seed": seed}
    for corpus in CORPORA:
        out[f"ppl_{corpus}"] = perplexity(lm, corpus, tokens, seq_len, seed)
    if questions:
        out["iot"] = iot_questions(lm)
        out["sanity"] = generation_sanity(lm)
    out["eval_seconds"] = round(time.perf_counter() - t0, 1)
    return out
