"""Request bodies of the OpenAI API subset we serve, and their translation to our types.

Field names follow OpenAI. Options we cannot honour (``n > 1``, logprobs, penalties) are
refused with a 400 that names the field, never silently ignored. ``top_k``,
``repetition_penalty`` and ``ignore_eos`` are extensions (as in vLLM), sent by the
``openai`` client through ``extra_body``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from edgeweave.errors import GenerationError
from edgeweave.runtime.generate import SamplingParams
from edgeweave.serve.config import ServeConfig
from edgeweave.serve.errors import APIError, bad_request


class StreamOptions(BaseModel):
    include_usage: bool = False


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")  # name, tool_call_id, ... are accepted, unused
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
    model_config = ConfigDict(extra="ignore")
    model: str
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    n: int | None = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    user: str | None = None
    # extensions
    top_k: int | None = None
    repetition_penalty: float | None = None
    ignore_eos: bool = False

    def refuse_unsupported(self) -> None:
        if self.n not in (None, 1):
            raise bad_request("only n=1 is supported: send separate requests for more "
                              "choices", "n")
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name) not in (None, 0, 0.0):
                raise bad_request(f"{name} is not supported: use repetition_penalty "
                                  "(extra_body) instead", name)

    def requested_max_tokens(self) -> int | None:
        return self.max_tokens

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
        try:
            return SamplingParams(
                max_tokens=max_tokens,
                temperature=cfg.default_temperature if self.temperature is None
                else self.temperature,
                top_p=1.0 if self.top_p is None else self.top_p,
                top_k=self.top_k or 0,
                repetition_penalty=self.repetition_penalty or 1.0,
                stop=tuple(s for s in stop if s),
                seed=self.seed,
                ignore_eos=self.ignore_eos,
            )
        except GenerationError as e:
            raise bad_request(str(e)) from e


class ChatCompletionRequest(_Common):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = None
    logprobs: bool | None = None

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None \
            else self.max_tokens

    def refuse_unsupported(self) -> None:
        super().refuse_unsupported()
        if self.logprobs:
            raise bad_request("logprobs are not supported by this server", "logprobs")

    def chat(self) -> list[dict[str, str]]:
        # "developer" is OpenAI's newer name for the system role; chat templates know "system"
        return [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                for m in self.messages]


class CompletionRequest(_Common):
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool = False
    suffix: str | None = None
    logprobs: int | None = None
    best_of: int | None = None

    def refuse_unsupported(self) -> None:
        super().refuse_unsupported()
        for name, default in (("echo", False), ("suffix", None), ("logprobs", None),
                              ("best_of", None)):
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


__all__ = ["APIError", "ChatCompletionRequest", "ChatMessage", "CompletionRequest"]
