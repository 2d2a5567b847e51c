"""Request bodies of the OpenAI API subset we serve, and their translation to our types.

Field names follow OpenAI. Options we cannot honour (``n > 1``, penalties, tools, ``echo``)
are refused with a 400 that names the field, never silently ignored.
``top_k``, ``repetition_penalty`` and ``ignore_eos`` are extensions (as in vLLM), sent by the
``openai`` client through ``extra_body``.

Types are strict: ``"stream": "yes"`` or ``"max_tokens": true`` is a client bug, and lax
coercion would turn it into a request the client did not mean. Every string of a body must
be valid Unicode: JSON can escape a lone UTF-16 surrogate (``"\\ud800"``), which the
tokenizer cannot take.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from edgeweave.errors import GenerationError
from edgeweave.runtime.constraints import OutputFormat, check_format
from edgeweave.runtime.generate import SamplingParams
from edgeweave.runtime.logprobs import MAX_TOP_LOGPROBS
from edgeweave.serve.config import ServeConfig
from edgeweave.serve.errors import APIError, bad_request

_STRICT = ConfigDict(strict=True, allow_inf_nan=False)
# torch.Generator.manual_seed takes at most 64 bits (10**30 was a 500); SamplingParams
# refuses negative seeds, so the API refuses them here, naming the field
_MAX_SEED = 2**63 - 1
# vLLM's line too: below it, logits / temperature overflow float32 (1e-40 gave NaN
# probabilities and a 500), and sampling at a temperature this close to 0 is greedy anyway
_GREEDY_BELOW = 1e-5
# the smallest normal float32: sampling compares top_p in float32, where a smaller value can
# round to 0 and drop every token (NaN probabilities). Any top_p this small keeps the top
# token alone, so raising it to this changes no answer.
_F32_TINY = 1.1754943508222875e-38


def _first_invalid_unicode(value: Any) -> str | None:
    """The dotted path of the first string (or key) in ``value`` UTF-8 cannot encode."""
    stack: list[tuple[Any, tuple[str, ...]]] = [(value, ())]
    while stack:
        v, where = stack.pop()
        if isinstance(v, str):
            if not v.isascii():
                try:
                    v.encode("utf-8")
                except UnicodeEncodeError:
                    return ".".join(where) or "body"
        elif isinstance(v, dict):
            if any(isinstance(k, str) and _first_invalid_unicode(k) for k in v):
                return ".".join(where) or "body"  # a key itself is bad: name its object
            # reversed: the stack pops the first child first, so the path is the first in order
            stack.extend(reversed([(item, (*where, str(k))) for k, item in v.items()]))
        elif isinstance(v, list):
            stack.extend(reversed([(item, (*where, str(i))) for i, item in enumerate(v)]))
    return None


def _check_unicode(data: Any) -> Any:
    where = _first_invalid_unicode(data)
    if where is not None:
        raise PydanticCustomError(
            "invalid_unicode", "{param}: the text holds a lone UTF-16 surrogate (such as "
            "\\ud800), which is not valid Unicode: send the character itself, or both "
            "halves of its surrogate pair", {"param": where})
    return data


class StreamOptions(BaseModel):
    model_config = _STRICT
    include_usage: bool = False


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow", **_STRICT)
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    # name, tool_call_id, ... are accepted, unused
    model_config = ConfigDict(extra="allow", **_STRICT)
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None

    def text(self) -> str:
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        for part in self.content:
            if part.type != "text":
                raise bad_request(f"content parts of type {part.type!r} are not supported: "
                                  "this model reads text only", "messages")
        return "".join(p.text or "" for p in self.content)


class _Common(BaseModel):
    model_config = ConfigDict(extra="ignore", **_STRICT)
    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int | None = Field(1, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, le=_MAX_SEED)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    # extensions
    top_k: int | None = Field(None, ge=0)
    # 1 disables it; the bounds keep logits / penalty and logits * penalty finite in float32
    repetition_penalty: float | None = Field(None, ge=1e-3, le=1e3)
    ignore_eos: bool = False
    # vLLM's names for a label set and a pattern (structured output without a JSON schema)
    guided_choice: list[str] | None = None
    guided_regex: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _valid_unicode(cls, data: Any) -> Any:
        return _check_unicode(data)

    def refuse_unsupported(self) -> None:
        if self.n not in (None, 1):
            raise bad_request("only n=1 is supported: send separate requests for more "
                              "choices", "n")
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name) not in (None, 0, 0.0):
                raise bad_request(f"{name} is not supported: use repetition_penalty "
                                  "(extra_body) instead", name)
        if self.logit_bias:
            raise bad_request("logit_bias is not supported yet", "logit_bias")

    def prompt_chars(self) -> int:
        """Characters of prompt text, known before tokenizing (0 for token ids)."""
        return 0

    def requested_max_tokens(self) -> int | None:
        return self.max_tokens

    def logprob_count(self) -> int | None:
        """How many alternatives each token's logprobs carry; None: no logprobs."""
        return None

    def output_format(self) -> OutputFormat | None:
        """The structured-output request, refused with 400 when it cannot be honoured."""
        if self.guided_choice is not None and self.guided_regex is not None:
            raise bad_request("give guided_choice or guided_regex, not both", "guided_choice")
        if self.guided_choice is None and self.guided_regex is None:
            return None
        param = "guided_choice" if self.guided_choice is not None else "guided_regex"
        try:
            if self.guided_choice is not None:
                fmt = OutputFormat.labels(self.guided_choice)
            else:
                fmt = OutputFormat("regex", pattern=self.guided_regex or "")
            check_format(fmt)
        except GenerationError as e:
            raise bad_request(str(e), param) from e
        return fmt

    def sampling(self, cfg: ServeConfig) -> SamplingParams:
        self.refuse_unsupported()
        max_tokens = self.requested_max_tokens()
        if max_tokens is None:
            max_tokens = cfg.default_max_tokens
        if max_tokens > cfg.max_tokens_limit:
            raise bad_request(f"max_tokens={max_tokens} is above this server's limit of "
                              f"{cfg.max_tokens_limit}: ask for fewer tokens", "max_tokens")
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        if len(stop) > 4:
            raise bad_request("at most 4 stop sequences are allowed", "stop")
        temperature = cfg.default_temperature if self.temperature is None else self.temperature
        try:
            return SamplingParams(
                max_tokens=max_tokens,
                temperature=0.0 if temperature < _GREEDY_BELOW else temperature,
                top_p=1.0 if self.top_p is None else max(self.top_p, _F32_TINY),
                top_k=self.top_k or 0,
                repetition_penalty=1.0 if self.repetition_penalty is None
                else self.repetition_penalty,
                stop=tuple(s for s in stop if s),
                seed=self.seed,
                ignore_eos=self.ignore_eos,
                output=self.output_format(),
                logprobs=self.logprob_count(),
            )
        except GenerationError as e:
            raise bad_request(str(e)) from e


class ChatCompletionRequest(_Common):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    # declared so that they are refused, not dropped as unknown keys: a client that sends
    # them relies on them, and an answer without tool calls or JSON would be a silent lie
    tools: list[Any] | None = None
    tool_choice: str | dict[str, Any] | None = None
    functions: list[Any] | None = None
    function_call: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None \
            else self.max_tokens

    def logprob_count(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None

    def refuse_unsupported(self) -> None:
        super().refuse_unsupported()
        if self.top_logprobs is not None and not self.logprobs:
            raise bad_request("top_logprobs needs logprobs: true as well", "top_logprobs")
        for name in ("tools", "functions"):
            if getattr(self, name):
                raise bad_request(f"{name} (function calling) are not supported yet: send the "
                                  "request without them", name)
        for name in ("tool_choice", "function_call"):
            if getattr(self, name) not in (None, "none", "auto"):
                raise bad_request(f"{name} is not supported yet: this server calls no tools",
                                  name)

    def output_format(self) -> OutputFormat | None:
        """OpenAI's ``response_format``: text, json_object or json_schema (``strict`` or not:
        the schema is always enforced, so the output cannot break it)."""
        rf = self.response_format
        if rf is None:
            return super().output_format()
        if not isinstance(rf, dict) or not isinstance(rf.get("type"), str):
            raise bad_request("response_format must be an object with a string `type`: text, "
                              "json_object or json_schema", "response_format")
        kind = rf["type"]
        if kind != "text" and (self.guided_choice is not None or self.guided_regex is not None):
            raise bad_request("give response_format or guided_choice/guided_regex, not both",
                              "response_format")
        try:
            if kind == "text":
                return super().output_format()
            if kind == "json_object":
                fmt = OutputFormat("json_object")
            elif kind == "json_schema":
                spec = rf.get("json_schema")
                if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), dict):
                    raise GenerationError("response_format json_schema needs {'json_schema': "
                                          "{'name': ..., 'schema': {...}, 'strict': true}}")
                fmt = OutputFormat.json_schema(spec.get("schema", {}), str(spec.get("name", "")))
            else:
                raise GenerationError(f"response_format {kind!r} is not supported: choose text, "
                                      "json_object or json_schema")
            check_format(fmt)
        except GenerationError as e:
            raise bad_request(str(e), "response_format") from e
        return fmt

    def prompt_chars(self) -> int:
        return sum(len(m.text()) for m in self.messages)

    def chat(self) -> list[dict[str, str]]:
        # "developer" is OpenAI's newer name for the system role; chat templates know "system"
        return [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                for m in self.messages]


class CompletionRequest(_Common):
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool = False
    suffix: str | None = None
    # the legacy API's logprobs is a count (OpenAI allows 5; vLLM's default cap is 20)
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    best_of: int | None = None

    def logprob_count(self) -> int | None:
        return self.logprobs

    def prompt_chars(self) -> int:
        p = self.single_prompt()
        return len(p) if isinstance(p, str) else 0

    def refuse_unsupported(self) -> None:
        super().refuse_unsupported()
        for name, default in (("echo", False), ("suffix", None), ("best_of", None)):
            if getattr(self, name) not in (default, 1 if name == "best_of" else default):
                raise bad_request(f"{name} is not supported by this server", name)

    def single_prompt(self) -> str | list[int]:
        p: Any = self.prompt
        if isinstance(p, list) and p and isinstance(p[0], (str, list)):
            if len(p) != 1:
                raise bad_request("only one prompt per request is supported: send a string "
                                  "or a single list of token ids", "prompt")
            p = p[0]
        if isinstance(p, list) and not p:
            raise bad_request("the prompt is empty: give some text or token ids", "prompt")
        return p


class EmbeddingRequest(BaseModel):
    """OpenAI's embeddings body: ``input`` a string, a list of strings, a list of token ids or
    a list of such lists (ids of the embedding model's own vocabulary)."""

    model_config = ConfigDict(extra="ignore", **_STRICT)
    model: str
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
    user: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _valid_unicode(cls, data: Any) -> Any:
        return _check_unicode(data)

    @field_validator("input", mode="before")
    @classmethod
    def _one_shape(cls, v: Any) -> Any:
        # checked here, not by the union: its errors would name a union member ("input.str")
        def ids(x: Any) -> bool:
            return isinstance(x, list) and all(type(t) is int for t in x)

        if isinstance(v, str) or (isinstance(v, list) and (
                all(isinstance(t, str) for t in v) or ids(v) or all(ids(t) for t in v))):
            return v
        raise PydanticCustomError("input_shape", "input must be a string, a list of strings, a "
                                  "list of token ids or a list of such lists")

    def inputs(self) -> list[str] | list[list[int]]:
        """The inputs as a list of texts or a list of token-id lists."""
        x: Any = self.input
        if isinstance(x, str):
            return [x]
        if x and isinstance(x[0], int):
            return [list(x)]
        return list(x)


__all__ = ["APIError", "ChatCompletionRequest", "ChatMessage", "CompletionRequest",
           "EmbeddingRequest"]
