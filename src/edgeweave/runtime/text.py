"""Text at the edges of generation: prompt and stop-string validity, and incremental
detokenisation (token ids to text deltas, with the tail that may still become a stop string
held back). Used by the one-request stream (``runtime.generate``) and by the batched state
machine (``runtime.sequence``) alike.
"""

from __future__ import annotations

from collections.abc import Sequence

from edgeweave.errors import GenerationError
from edgeweave.models.tokenizer import Tokenizer


def check_text(text: str, what: str = "the prompt") -> None:
    """Refuse text that is not valid Unicode (lone surrogates).

    Python hands undecodable bytes of ``argv`` (or of a file read with ``surrogateescape``)
    over as surrogates U+DC80..U+DCFF; the tokenizer cannot encode them."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        bad = ord(text[e.start])
        byte = f"byte {bad - 0xDC00:#04x}" if 0xDC80 <= bad <= 0xDCFF else f"U+{bad:04X}"
        raise GenerationError(
            f"{what} is not valid UTF-8 text ({byte} at character {e.start}): pass UTF-8 "
            "(check the terminal's locale, e.g. LANG=C.UTF-8, or re-encode the input file)"
        ) from None


class IncrementalDecoder:
    """Token ids to text without decoding the whole sequence at every step.

    Decoding token ``t`` alone can differ from decoding it in context (a leading space, a
    multi-byte character split over tokens), so each step decodes a short window twice, from
    the same start token: with and without the new tokens; the difference is the new text
    (vLLM's incremental detokenizer works this way). Cost per token: two decodes of a few
    tokens, instead of one of the whole sequence.
    """

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.tokens: list[int] = []
        self.text = ""
        self._prefix = 0  # window start (token index)
        self._read = 0  # tokens already turned into text

    def push(self, token: int) -> bool:
        """Add a token; True when ``text`` grew to a complete character boundary."""
        self.tokens.append(token)
        window = self.tokens[self._prefix:]
        before = self.tokenizer.decode(self.tokens[self._prefix:self._read])
        after = self.tokenizer.decode(window)
        if after.endswith("\ufffd") or len(after) <= len(before):
            return False
        self.text += after[len(before):]
        self._prefix, self._read = self._read, len(self.tokens)
        return True

    def flush(self) -> str:
        """The text of every token pushed, including an incomplete character at the end."""
        if self._read < len(self.tokens):
            before = self.tokenizer.decode(self.tokens[self._prefix:self._read])
            after = self.tokenizer.decode(self.tokens[self._prefix:])
            self.text += after[len(before):]
            self._prefix = self._read = len(self.tokens)
        return self.text


def held_back(text: str, stops: Sequence[str]) -> int:
    """How many trailing characters might still become a stop string."""
    keep = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:n]):
                keep = max(keep, n)
                break
    return keep
