"""The stage engine interface: one block range ``[start, end)`` with per-session KV caches.

Every backend (``torch.py`` reference, ``onnx.py`` fast path) implements :class:`StageEngine`
and registers a factory with :func:`register_engine`; a node's
:class:`~edgeweave.runtime.stage.StageHost` and the in-process transport only ever talk to
this interface.

Data contract (batch ``B`` is 1 in practice, ``T`` tokens in this step, ``H`` hidden size):

* ``forward(session_id, x)`` on a **first** stage takes int64 token ids ``(B, T)``; on any
  other stage float32 hidden states ``(B, T, H)``.
* It returns float32 hidden states ``(B, T, H)`` or, on a **last** stage, the float32 logits
  of the last position only ``(B, vocab)`` (the head runs where it is needed).
* A stage that is both first and last maps ids to logits.
* Tensors are numpy arrays, so a process that runs only ONNX stages never imports torch
  (about 245 MB of RSS); the torch engine wraps them with ``torch.from_numpy`` / ``.numpy()``
  (zero-copy both ways).
* ``max_position`` is the longest sequence the stage's model can hold (its context).
* Each call appends ``T`` positions to that session's cache; ``truncate(session_id, n)``
  forgets everything after ``n`` tokens (replay, rollback), ``length`` says how many are held.

Batched steps: ``forward_batch(session_ids, xs)`` runs one step for several sessions at
once, session ``j`` taking ``xs[j]`` exactly as ``forward`` would (its own length, its own
cache; decode steps and prefill chunks may be mixed), and returns what ``forward`` would
return for each, in order. Decode of a small model is memory-bound, so one pass over the
weights for the whole batch costs little more than one for a single session. Engines without
a batched kernel use :func:`forward_each` (a loop); results equal single-session steps up to
float rounding of the batched kernels (exact for the sequences' tokens under greedy decoding
on the fp32 reference, checked in ``tests/runtime/test_batch_forward.py``).

All positions (speculative decoding's verifier): ``forward_all(session_id, x)`` is
``forward`` (it appends the same ``T`` positions to the cache) except that a **last** stage
returns the float32 logits of *every* position ``(B, T, vocab)``: row ``t`` is what
``forward`` would return after the tokens up to ``t``, so one multi-token step scores ``k``
drafted tokens and the one after them. On any other stage it returns what ``forward``
returns. A rejected draft is rolled back with ``truncate``. It is optional
(:func:`supports_forward_all`); both bundled engines have it.

Memory accounting is per session (``session_bytes``) so the server can cap and evict.

Prefix caching (``runtime.prefix``): ``save_prefix(session_id, prefix_id, length)`` keeps
the first ``length`` tokens of a session's cache as a *donor* ``prefix_id``, a cache of
exactly that size that is never stepped; ``load_prefix(prefix_id, session_id, length)``
makes an open session hold the first ``length`` tokens of a donor (or of another session),
so it only computes the rest of its prompt. A donor answers ``length``, ``session_bytes``
and ``close`` like a session but is not listed by ``sessions()``.

LoRA adapters (``runtime.adapters``) are registered once with ``add_adapter`` and chosen per
session when it opens (``open(..., adapter=name)``); they run unmerged beside the base
layers, so sessions with and without adapters share one set of base weights.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from edgeweave.errors import ConfigError, RuntimeStageError
from edgeweave.types import Shard

if TYPE_CHECKING:
    from edgeweave.runtime.adapters import Adapter

_VARIANT_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*")  # e.g. fp32, int8, int4, int4-rtn


class SessionNotFound(RuntimeStageError):
    """The stage holds no cache for this session (never opened, closed or evicted)."""


def check_batch_invariant(backend: str, batch_invariant: bool) -> None:
    if batch_invariant and backend != "onnx":
        raise ConfigError(f"--batch-invariant is a mode of the onnx backend (the {backend} "
                          "engine has no such mode): use --backend onnx")


@dataclass(frozen=True)
class EngineConfig:
    """What a node needs to build one stage: model source, block range, weight variant.

    ``model`` is a bundled name, a Hugging Face folder, or a compression artifact folder;
    ``variant`` names the weights (``fp32`` or a ``compress.variant`` name such as ``int8``);
    ``threads`` 0 keeps the process default. ``batch_invariant`` (ONNX stages): every step
    of one row runs as a batch of two, so a session's numbers do not depend on how many
    others step beside it (low-bit kernels round a single row unlike a batch).
    """

    model: str
    shard: Shard
    variant: str = "fp32"
    backend: str = "torch"
    threads: int = 0
    batch_invariant: bool = False

    def __post_init__(self) -> None:
        if not self.model:
            raise ConfigError("EngineConfig needs a model name or folder")
        if not _VARIANT_NAME.fullmatch(self.variant):
            raise ConfigError(f"variant {self.variant!r} is not a variant name: use fp32, "
                              "int8, int4 or another name `edgeweave.compress` knows")
        if self.threads < 0:
            raise ConfigError(f"threads must be >= 0 (got {self.threads})")
        check_batch_invariant(self.backend, self.batch_invariant)

    @property
    def key(self) -> str:
        """Stable name of this stage on a node, e.g. ``"0-10:fp32"`` (``"0-10:int4+bi"``
        batch-invariant: another engine than the default one of the same blocks)."""
        mode = "+bi" if self.batch_invariant else ""
        return f"{self.shard.start}-{self.shard.end}:{self.variant}{mode}"


@runtime_checkable
class StageEngine(Protocol):
    """One block range of one model, serving many sessions (see module docstring)."""

    config: EngineConfig
    hidden_size: int
    vocab_size: int
    max_position: int

    def open(self, session_id: str, max_len: int, adapter: str | None = None) -> None:
        """Create (or reset to empty) the session's KV cache for up to ``max_len`` tokens;
        its steps run with the registered adapter ``adapter`` (None: the base model)."""
        ...

    def add_adapter(self, adapter: Adapter) -> None:
        """Register a LoRA adapter (its factors of this stage's blocks) under its name."""
        ...

    def forward(self, session_id: str, x: np.ndarray) -> np.ndarray:
        """Run the shard on ``x`` (ids or hidden states), appending to the session's cache."""
        ...

    def forward_all(self, session_id: str, x: np.ndarray) -> np.ndarray:
        """``forward``, but a last stage returns the logits of every position ``(B, T,
        vocab)`` (optional: see :func:`supports_forward_all`)."""
        ...

    def forward_batch(self, session_ids: Sequence[str], xs: Sequence[np.ndarray]
                      ) -> list[np.ndarray]:
        """One step for every session in ``session_ids`` (distinct), ``xs[j]`` its input."""
        ...

    def truncate(self, session_id: str, length: int) -> None:
        """Keep only the first ``length`` tokens of the session's cache."""
        ...

    def length(self, session_id: str) -> int:
        """Tokens currently held for the session."""
        ...

    def close(self, session_id: str) -> None:
        """Free the session's cache (no error if it is unknown)."""
        ...

    def session_bytes(self, session_id: str) -> int:
        """Bytes reserved by the session's cache."""
        ...

    def save_prefix(self, session_id: str, prefix_id: str, length: int) -> None:
        """Keep the first ``length`` tokens of the session's cache as the donor
        ``prefix_id`` (a new cache of exactly ``length`` tokens, never stepped)."""
        ...

    def load_prefix(self, prefix_id: str, session_id: str, length: int) -> None:
        """Make the open session hold the first ``length`` tokens of ``prefix_id`` (a donor
        or another session) and nothing after them."""
        ...

    def sessions(self) -> list[str]:
        ...


def forward_each(engine: StageEngine, session_ids: Sequence[str], xs: Sequence[np.ndarray]
                 ) -> list[np.ndarray]:
    """``forward_batch`` as a loop: the fallback of engines without a batched kernel."""
    check_batch(session_ids, xs)
    return [engine.forward(s, x) for s, x in zip(session_ids, xs, strict=True)]


def check_batch(session_ids: Sequence[str], xs: Sequence[np.ndarray]) -> None:
    if len(session_ids) != len(xs):
        raise RuntimeStageError(f"a batched step needs one input per session (got "
                                f"{len(session_ids)} sessions and {len(xs)} inputs)")
    if len(set(session_ids)) != len(session_ids):
        raise RuntimeStageError("a batched step takes each session at most once: its inputs "
                                "would depend on each other's outputs")
    for x in xs:
        if x.ndim < 2 or x.shape[0] != 1 or x.shape[1] < 1:
            raise RuntimeStageError(f"each input of a batched step is one sequence (1, T) or "
                                    f"(1, T, H) with T >= 1, not shape {tuple(x.shape)}")


def supports_prefix(engine: object) -> bool:
    """Whether ``engine`` can keep prefix donors (``save_prefix``/``load_prefix``); the
    prefix cache is off for a backend that cannot."""
    return callable(getattr(engine, "save_prefix", None)) and \
        callable(getattr(engine, "load_prefix", None))


def supports_forward_all(engine: object) -> bool:
    """Whether ``engine`` can return the logits of every position of a step
    (``forward_all``), which speculative decoding's verifier needs."""
    return callable(getattr(engine, "forward_all", None))


def check_prefix(stage: str, source: str, held: int, length: int, room: int | None = None
                 ) -> None:
    """Refuse a prefix copy of ``length`` tokens from a cache holding ``held`` into one
    with room for ``room`` (None: a new donor of exactly that size)."""
    if length < 1 or length > held:
        raise RuntimeStageError(f"stage {stage}: cannot copy {length} tokens of {source!r}, "
                                f"which holds {held}: copy between 1 and {held}")
    if room is not None and length > room:
        raise RuntimeStageError(f"stage {stage}: a prefix of {length} tokens does not fit a "
                                f"session opened for {room}: open it with a larger max_len")


EngineFactory = Callable[[EngineConfig], StageEngine]
_ENGINES: dict[str, EngineFactory] = {}


def register_engine(name: str) -> Callable[[EngineFactory], EngineFactory]:
    """Decorator: ``@register_engine("onnx")`` on a factory ``(EngineConfig) -> StageEngine``."""

    def deco(factory: EngineFactory) -> EngineFactory:
        _ENGINES[name] = factory
        return factory

    return deco


def _import_backend(name: str) -> None:
    import importlib

    # backends register on import; importing lazily keeps `import edgeweave` light
    module = f"edgeweave.runtime.engines.{name}"
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name != module:  # the backend exists but lacks a dependency: say which
            raise ConfigError(f"stage backend {name!r} needs {e.name!r}: pip install it") from e


def create_engine(config: EngineConfig) -> StageEngine:
    """Build the stage engine for ``config.backend`` (``torch`` or any registered one)."""
    if config.backend not in _ENGINES:
        _import_backend(config.backend)
    if config.backend not in _ENGINES:
        raise ConfigError(f"unknown stage backend {config.backend!r}: registered backends are "
                          f"{', '.join(sorted(_ENGINES)) or 'none'}")
    return _ENGINES[config.backend](config)
