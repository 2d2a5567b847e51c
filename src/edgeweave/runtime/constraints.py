"""Structured output: a grammar masks the logits where sampling happens.

A :class:`OutputFormat` is a typed, frozen request (OpenAI's ``response_format`` shapes:
``json_object``, ``json_schema`` with ``strict``; plus ``choice`` for a fixed label set and
``regex``). :func:`matcher_for` compiles it once per request against the model's tokenizer with
`llguidance <https://github.com/guidance-ai/llguidance>`_; generation then removes every token
the grammar does not allow before sampling and feeds the sampled token back, so output that
breaks the format cannot be produced (not filtered afterwards). It runs on the logits in the
generation loop, so every ``LogitsEngine`` (one process, a split plan, remote nodes) gets it.

Why llguidance over xgrammar (both measured here, the bundled tokenizer): llguidance is one
Rust wheel with no dependencies and a numpy bitmask API; xgrammar 0.2.9 requires torch,
transformers and triton (several hundred MB), which an ONNX-only server must not import.
Mask times are in ``benchmarks/structured.py``.
"""

from __future__ import annotations

import functools
import json
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeweave.errors import GenerationError

if TYPE_CHECKING:
    from edgeweave.models.tokenizer import Tokenizer

KINDS = ("json_object", "json_schema", "choice", "regex")
# compact JSON: a small model given flexible whitespace tends to fill max_tokens with newlines
JSON_OPTIONS = {"whitespace_flexible": False}


@dataclass(frozen=True)
class OutputFormat:
    """What the output must be. ``schema`` (json_schema) is a JSON object; ``choices`` the
    allowed strings; ``pattern`` a regex (Rust ``regex`` syntax)."""

    kind: str
    schema: str = ""  # JSON text of the schema, so the value stays hashable and frozen
    choices: tuple[str, ...] = ()
    pattern: str = ""
    name: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise GenerationError(f"unknown output format {self.kind!r}: choose one of "
                                  f"{', '.join(KINDS)}")
        if self.kind == "json_schema":
            try:
                doc = json.loads(self.schema)
            except (TypeError, ValueError) as e:
                raise GenerationError(f"the JSON schema is not valid JSON ({e}): pass a JSON "
                                      "object, e.g. {\"type\": \"object\"}") from None
            if not isinstance(doc, dict):
                raise GenerationError("a JSON schema must be a JSON object")
        if self.kind == "choice" and (not self.choices or not all(self.choices)):
            raise GenerationError("a choice format needs at least one non-empty label")
        if self.kind == "regex" and not self.pattern:
            raise GenerationError("a regex format needs a pattern")

    @classmethod
    def json_schema(cls, schema: dict[str, Any], name: str = "") -> OutputFormat:
        return cls("json_schema", json.dumps(schema, sort_keys=True), name=name)

    @classmethod
    def labels(cls, choices: tuple[str, ...] | list[str]) -> OutputFormat:
        return cls("choice", choices=tuple(choices))

    def grammar(self) -> str:
        """The llguidance grammar of this format."""
        from llguidance import LLMatcher

        if self.kind == "json_object":
            return LLMatcher.grammar_from_json_schema({"type": "object"}, defaults=JSON_OPTIONS)
        if self.kind == "json_schema":
            return LLMatcher.grammar_from_json_schema(self.schema, defaults=JSON_OPTIONS)
        if self.kind == "choice":
            from llguidance import grammar_from

            return grammar_from("choice", json.dumps(list(self.choices)))
        return LLMatcher.grammar_from_regex(self.pattern)


_TOKENIZERS: dict[int, Any] = {}
_LOCK = threading.Lock()


def _ll_tokenizer(tokenizer: Tokenizer) -> Any:
    """The tokenizer as llguidance sees it (built once per tokenizer: about a second)."""
    key = id(tokenizer)
    with _LOCK:
        if key not in _TOKENIZERS:
            from llguidance import LLTokenizer

            eos = tokenizer.eos_token_id
            try:
                ll = LLTokenizer(tokenizer.to_json(), eos_token=eos)
            except ValueError as e:  # e.g. a WordPiece decoder: no byte form of its tokens
                raise GenerationError(f"structured output needs a byte-level BPE or "
                                      f"SentencePiece tokenizer; this model's cannot be used "
                                      f"({e}): send the request without a format") from None
            # the tokenizer rides along so that its id is not reused while cached
            _TOKENIZERS[key] = (tokenizer, ll)
        return _TOKENIZERS[key][1]


def supports_formats(tokenizer: Tokenizer) -> None:
    """Raise :class:`GenerationError` when ``tokenizer`` cannot drive a grammar."""
    _ll_tokenizer(tokenizer)


@functools.lru_cache(maxsize=64)  # the same schema for many requests compiles once
def _checked_grammar(fmt: OutputFormat) -> str:
    from llguidance import LLMatcher

    grammar = fmt.grammar()
    is_error, messages = LLMatcher.validate_grammar_with_warnings(grammar)
    if is_error:
        raise GenerationError(f"the {fmt.kind} format cannot be compiled: {messages[0]}")
    return grammar


def parse_format(json_object: bool = False, schema: str | None = None,
                 choices: tuple[str, ...] = (), regex: str | None = None) -> OutputFormat | None:
    """At most one format from the CLI's options (``--schema`` a .json file or inline JSON)."""
    given = [n for n, v in (("--json", json_object), ("--schema", schema),
                            ("--choice", choices), ("--regex", regex)) if v]
    if len(given) > 1:
        raise GenerationError(f"give one of {', '.join(given)}, not several")
    if json_object:
        return OutputFormat("json_object")
    if schema:
        from pathlib import Path

        text = schema
        if not schema.lstrip().startswith("{"):
            try:
                text = Path(schema).read_text()
            except (OSError, UnicodeDecodeError) as e:
                raise GenerationError(f"cannot read the schema file {schema!r} ({e}): pass a "
                                      ".json file or the schema itself as JSON") from None
        fmt = OutputFormat("json_schema", schema=text)
        check_format(fmt)
        return fmt
    if choices:
        return OutputFormat.labels(choices)
    if regex:
        fmt = OutputFormat("regex", pattern=regex)
        check_format(fmt)
        return fmt
    return None


def check_format(fmt: OutputFormat) -> None:
    """Compile ``fmt``'s grammar now (cached), so a bad schema fails the request, not its
    first token."""
    _checked_grammar(fmt)


class Matcher:
    """One request's grammar state: the mask before each token, the token after."""

    def __init__(self, fmt: OutputFormat, tokenizer: Tokenizer) -> None:
        from llguidance import LLMatcher

        self.format = fmt
        ll = _ll_tokenizer(tokenizer)
        self._m = LLMatcher(ll, _checked_grammar(fmt), log_level=0)
        if self._m.is_error():
            raise GenerationError(f"the {fmt.kind} format cannot be used: {self._m.get_error()}")
        self._words = np.zeros(-(-ll.vocab_size // 32), dtype=np.int32)

    def mask(self, logits: np.ndarray) -> np.ndarray:
        """``logits`` with every token the grammar forbids at -inf (a copy)."""
        self._m.unsafe_compute_mask_ptr(self._words.ctypes.data, self._words.nbytes)
        allowed = np.unpackbits(self._words.view(np.uint8), bitorder="little")
        out = np.asarray(logits, dtype=np.float32).copy()
        n = min(out.size, allowed.size)
        out[:n][allowed[:n] == 0] = -np.inf
        out[n:] = -np.inf  # padded vocabulary rows the tokenizer does not have
        return out

    def accept(self, token: int) -> None:
        if not self._m.consume_token(int(token)):
            raise GenerationError(f"the sampled token {token} breaks the {self.format.kind} "
                                  f"format: {self._m.get_error()}")

    @property
    def done(self) -> bool:
        """The grammar is complete and allows nothing more."""
        return self._m.is_stopped()

    @property
    def accepting(self) -> bool:
        return self._m.is_accepting()
