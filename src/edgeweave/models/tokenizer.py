"""Tokenizer and chat template straight from a checkpoint folder (``tokenizers`` + jinja2),
without importing ``transformers`` on the hot path."""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgeweave.errors import CheckpointError


class Tokenizer:
    def __init__(self, folder: Path) -> None:
        from tokenizers import Tokenizer as _Tok

        tok_file = folder / "tokenizer.json"
        if not tok_file.is_file():
            raise CheckpointError(f"{folder} has no tokenizer.json: copy the checkpoint's "
                                  "tokenizer files next to config.json")
        try:
            self._tok = _Tok.from_file(str(tok_file))
        except Exception as e:  # tokenizers raises a bare Exception on bad JSON
            raise CheckpointError(f"cannot read {tok_file}: {e}; re-download or re-export it") from e
        cfg_file = folder / "tokenizer_config.json"
        self.config: dict[str, Any] = _read_json(cfg_file) if cfg_file.is_file() else {}
        template = self.config.get("chat_template")
        jinja_file = folder / "chat_template.jinja"
        if jinja_file.is_file():
            template = _read_text(jinja_file)
        self.chat_template: str | None = template if isinstance(template, str) else None
        self.bos_token = _token_str(self.config.get("bos_token"))
        self.eos_token = _token_str(self.config.get("eos_token"))
        self.eos_token_id = self.token_to_id(self.eos_token) if self.eos_token else None
        self.add_bos = bool(self.config.get("add_bos_token", False))
        self.vocab_size = self._tok.get_vocab_size()

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def to_json(self) -> str:
        """The whole tokenizer as ``tokenizer.json`` text (what grammar libraries load)."""
        return self._tok.to_str()

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        ids = self._tok.encode(text, add_special_tokens=add_special_tokens).ids
        if self.add_bos and add_special_tokens and self.bos_token:
            bos = self.token_to_id(self.bos_token)
            if bos is not None and (not ids or ids[0] != bos):
                ids = [bos, *ids]
        return ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_bytes(self, token_id: int) -> bytes:
        """The exact bytes one token stands for (a byte-level token may be part of a
        character, which ``decode`` would turn into U+FFFD): what OpenAI's logprobs carry."""
        piece = self._tok.id_to_token(token_id)
        if piece is None:
            return b""
        if token_id in self._special_ids():
            return piece.encode("utf-8")
        if type(self._tok.decoder).__name__ == "ByteLevel":  # GPT-2 style: a char per byte
            table = _byte_of_char()
            if all(c in table for c in piece):
                return bytes(table[c] for c in piece)
        if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
            return bytes([int(piece[3:5], 16)])  # sentencepiece byte fallback
        return self._tok.decode([token_id], skip_special_tokens=False).encode("utf-8")

    def _special_ids(self) -> frozenset[int]:
        ids = getattr(self, "_special", None)
        if ids is None:
            ids = frozenset(self._tok.get_added_tokens_decoder())
            self._special = ids
        return ids

    def render_chat(self, messages: Sequence[dict[str, str]], add_generation_prompt: bool = True) -> str:
        if not self.chat_template:
            # No template: a plain transcript still gives a base model something to continue.
            body = "".join(f"{m['role']}: {m['content']}\n" for m in messages)
            return body + ("assistant:" if add_generation_prompt else "")
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise
        return env.from_string(self.chat_template).render(
            messages=list(messages), add_generation_prompt=add_generation_prompt,
            bos_token=self.bos_token or "", eos_token=self.eos_token or "",
        )

    def encode_chat(self, messages: Sequence[dict[str, str]]) -> list[int]:
        # a template writes its own BOS; the plain transcript of a base model needs the
        # tokenizer's (Gemma without <bos> produces noise)
        return self.encode(self.render_chat(messages),
                           add_special_tokens=self.chat_template is None)


@functools.lru_cache(maxsize=1)
def _byte_of_char() -> dict[str, int]:
    """GPT-2's byte-level alphabet reversed: printable bytes stand for themselves, the other
    bytes for the code points from 256 up, in byte order (the published mapping)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("\u00a1"), ord("\u00ac") + 1),
                 *range(ord("\u00ae"), ord("\u00ff") + 1)]
    table = {chr(b): b for b in printable}
    extra = 0
    for b in range(256):
        if b not in printable:
            table[chr(256 + extra)] = b
            extra += 1
    return table


def _read_text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"cannot read {path} ({e}): restore the checkpoint's tokenizer "
                              "files or re-download the model") from e


def _read_json(path: Path) -> dict[str, Any]:
    try:
        d = json.loads(_read_text(path))
    except ValueError as e:
        raise CheckpointError(f"{path} is not valid JSON ({e}): restore the checkpoint's "
                              "tokenizer files or re-download the model") from e
    if not isinstance(d, dict):
        raise CheckpointError(f"{path} must hold a JSON object, got {type(d).__name__}: restore "
                              "the checkpoint's tokenizer files")
    return d


def _token_str(tok: Any) -> str | None:
    if isinstance(tok, dict):
        return tok.get("content")
    return tok if isinstance(tok, str) else None


def _raise(msg: str) -> None:
    raise CheckpointError(f"chat template refused the messages: {msg}")
