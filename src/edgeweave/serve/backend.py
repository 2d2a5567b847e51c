"""Where sessions come from: one :class:`LogitsEngine` per request.

The server never touches a model directly. A :class:`SessionFactory` hands out a fresh
engine per request (its own KV cache, or its own remote session for a coordinator) and is
closed once at shutdown. ``LocalSessions`` shares one loaded model's weights between all
sessions; ``CoordinatorSessions`` plugs a distributed coordinator in the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from edgeweave.errors import ConfigError
from edgeweave.models.checkpoint import LoadedModel
from edgeweave.models.tokenizer import Tokenizer
from edgeweave.runtime.engine import LocalEngine, LogitsEngine


@runtime_checkable
class SessionFactory(Protocol):
    """What the server needs from a backend."""

    model_id: str
    tokenizer: Tokenizer
    max_len: int  # the longest sequence (prompt + generated) one session can hold

    def new_session(self, max_len: int | None = None) -> LogitsEngine:
        """A fresh engine with its own state, able to hold ``max_len`` tokens (or the most)."""
        ...

    def close(self) -> None:
        """Release everything (models, connections); called once at shutdown."""
        ...


def close_session(engine: LogitsEngine) -> None:
    """Release a session's state if the engine holds any outside this process."""
    close = getattr(engine, "close", None)
    if callable(close):
        close()


class LocalSessions:
    """All sessions run one in-process model; each gets its own preallocated KV cache.

    Caches are sized to what a request can use (prompt + max_tokens), not to the model's
    whole context: 20 sessions of SmolLM2 at 2048 positions would hold 1.9 GB of cache.
    """

    def __init__(self, lm: LoadedModel, max_len: int | None = None, accelerate: bool = True
                 ) -> None:
        if not (lm.model.shard.is_first and lm.model.shard.is_last):
            raise ConfigError("LocalSessions serves a whole model; load it without a shard")
        if accelerate:
            from edgeweave.runtime.fast import accelerate_decode

            accelerate_decode(lm.model)  # once: the weights are shared by every session
        self.lm = lm
        self.model_id = lm.name
        self.tokenizer = lm.tokenizer
        self.max_len = min(max_len or lm.config.max_position, lm.config.max_position)

    @classmethod
    def load(cls, model: str, max_len: int | None = None) -> LocalSessions:
        from edgeweave.models import load

        return cls(load(model), max_len)

    def new_session(self, max_len: int | None = None) -> LogitsEngine:
        return LocalEngine(self.lm.model, min(max_len or self.max_len, self.max_len))

    def close(self) -> None:
        pass  # the weights go with the process; nothing remote to release


class CoordinatorSessions:
    """Sessions of a distributed (or embedded) :class:`~edgeweave.runtime.coordinator.
    Coordinator`: each request is one coordinator session across the plan's stages, and
    failover or a plan switch happens under the server without it noticing."""

    def __init__(self, coordinator: Any, tokenizer: Tokenizer | None = None,
                 model_id: str | None = None) -> None:
        tok = tokenizer if tokenizer is not None else getattr(coordinator, "tokenizer", None)
        if tok is None:
            raise ConfigError("the coordinator has no tokenizer: pass tokenizer=...")
        self.coordinator = coordinator
        self.tokenizer = tok
        self.model_id = model_id or Path(str(coordinator.model)).name
        self.max_len = int(coordinator.max_len)

    def new_session(self, max_len: int | None = None) -> LogitsEngine:
        return self.coordinator.new_session(min(max_len or self.max_len, self.max_len))

    def close(self) -> None:
        self.coordinator.close()
