"""Token logprobs in OpenAI's two shapes.

* chat: ``choices[i].logprobs = {"content": [{token, logprob, bytes, top_logprobs: [...]}],
  "refusal": None}``, ``top_logprobs`` exactly ``k`` entries;
* legacy completions: ``choices[i].logprobs = {tokens, token_logprobs, top_logprobs,
  text_offset}``, each ``top_logprobs`` entry a ``{token text: logprob}`` map of the ``k``
  likeliest tokens plus the sampled one (so up to ``k + 1``, as OpenAI documents).
  ``text_offset`` counts characters of the generated text from 0 (vLLM's convention without
  ``echo``), continuing across the chunks of a stream.

A token's text is its bytes decoded with U+FFFD for a partial character; ``bytes`` keeps the
exact bytes, so a client can join them into the right characters.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from edgeweave.models.tokenizer import Tokenizer
from edgeweave.runtime.logprobs import TokenLogprob

# JSON has no -inf (a logits codec that keeps the top 64 sets the rest to -inf): vLLM's stand-in
_NEG_INF = -9999.0


def _finite(x: float) -> float:
    return x if x > _NEG_INF else _NEG_INF


class LogprobView:
    """Renders one request's logprobs; holds its running text offset (legacy shape)."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.offset = 0
        self._cache: dict[int, tuple[str, bytes]] = {}

    def token(self, token_id: int) -> tuple[str, bytes]:
        hit = self._cache.get(token_id)
        if hit is None:
            raw = self.tokenizer.token_bytes(token_id)
            hit = self._cache[token_id] = (raw.decode("utf-8", "replace"), raw)
        return hit

    def _entry(self, token_id: int, logprob: float) -> dict[str, Any]:
        text, raw = self.token(token_id)
        return {"token": text, "logprob": _finite(logprob), "bytes": list(raw)}

    def chat(self, records: Sequence[TokenLogprob]) -> dict[str, Any]:
        return {"content": [{**self._entry(r.token, r.logprob),
                             "top_logprobs": [self._entry(t, lp) for t, lp in r.top]}
                            for r in records],
                "refusal": None}

    def legacy(self, records: Sequence[TokenLogprob]) -> dict[str, Any]:
        tokens, token_logprobs, tops, offsets = [], [], [], []
        for r in records:
            text = self.token(r.token)[0]
            tokens.append(text)
            token_logprobs.append(_finite(r.logprob))
            top = {self.token(t)[0]: _finite(lp) for t, lp in r.top}
            # two tokens can share a text (parts of one character both read U+FFFD): the
            # key of the sampled token's text then carries the sampled token's logprob
            top[text] = _finite(r.logprob)
            tops.append(top)
            offsets.append(self.offset)
            self.offset += len(text)
        return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": tops,
                "text_offset": offsets}

    def render(self, kind: str, records: Sequence[TokenLogprob]) -> dict[str, Any]:
        return self.chat(records) if kind == "chat" else self.legacy(records)
