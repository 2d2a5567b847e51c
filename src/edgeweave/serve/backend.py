"""Where sessions come from: one :class:`LogitsEngine` per request.

The server never touches a model directly. A :class:`SessionFactory` hands out a fresh
engine per request (its own KV cache, or its own remote session for a coordinator) and is
closed once at shutdown. ``LocalSessions`` shares one whole-model stage engine (ONNX Runtime
by default, or torch) between all sessions; ``CoordinatorSessions`` plugs a distributed
coordinator in the same way. Both say what they run (``engine_info``: backend and variant),
which ``/health``, ``/v1/models`` and every response report, and what their caches hold
(``cache_usage``), which ``/metrics`` reads at every scrape.

Both keep a prefix KV cache (``runtime.prefix``; ``--prefix-cache-mb``, 0 disables it):
prompts that start alike reuse the keys and values already computed, and ``cache_usage``
reports its hits for ``/metrics``.

LoRA adapters (``--adapter NAME=DIR``) are registered with the shared engine once and run
unmerged; ``new_session(adapter=NAME)`` opens a session that uses one, so requests for the
base and for any adapter share the same base weights.

``SpeculativeSessions`` wraps either with speculative decoding (``--draft``): a draft model
in this process proposes tokens that the wrapped sessions verify several at a time.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from edgeweave.errors import ConfigError
from edgeweave.models.tokenizer import Tokenizer
from edgeweave.runtime.adapters import Adapter, AdapterSpec, load_checked
from edgeweave.runtime.engine import EngineSession, LogitsEngine
from edgeweave.runtime.engines.base import EngineConfig, StageEngine, supports_prefix
from edgeweave.runtime.local import EngineChoice, engine_info, tokenizer_for, whole_model
from edgeweave.runtime.prefix import DEFAULT_BUDGET_MB, PrefixStore, PrefixUsage
from edgeweave.runtime.speculative import SpeculationConfig, SpeculativeSession

if TYPE_CHECKING:
    from edgeweave.models.checkpoint import LoadedModel
    from edgeweave.runtime.coordinator import Coordinator

DEFAULT_PREFIX_BYTES = DEFAULT_BUDGET_MB << 20


@dataclass(frozen=True)
class CacheUsage:
    """What a backend's caches hold now, read by ``/metrics`` at every scrape.

    ``kv_bytes``: the KV caches of open sessions; ``kv_capacity_bytes``: the memory cap they
    live under, None when there is none. The prefix fields are cumulative token counts of
    prefix-cache lookups (``queried``: prompt tokens looked up, ``hit``: tokens found) and the
    bytes the prefix cache holds; 0 while a backend has no prefix cache.
    """

    kv_bytes: int = 0
    kv_capacity_bytes: int | None = None
    prefix_bytes: int = 0
    prefix_queried_tokens: int = 0
    prefix_hit_tokens: int = 0


@runtime_checkable
class SessionFactory(Protocol):
    """What the server needs from a backend."""

    model_id: str
    tokenizer: Tokenizer
    max_len: int  # the longest sequence (prompt + generated) one session can hold
    adapters: dict[str, Adapter]  # LoRA adapters a request may name as its model

    def new_session(self, max_len: int | None = None, adapter: str | None = None
                    ) -> LogitsEngine:
        """A fresh engine with its own state, able to hold ``max_len`` tokens (or the most),
        running the adapter named ``adapter`` (None: the base model)."""
        ...

    def close(self) -> None:
        """Release everything (models, connections); called once at shutdown."""
        ...

    def engine_info(self) -> dict[str, str]:
        """What runs the sessions: ``backend`` and ``variant`` (a plan: its stages')."""
        ...

    @property
    def coordinator(self) -> Coordinator | None:
        """The coordinator running a distributed plan (``/health`` shows its stages), None
        when one process runs the whole model."""
        ...

    def cache_usage(self) -> CacheUsage:
        """What the caches hold now (zeros for caches a backend does not have)."""
        ...


def close_session(engine: LogitsEngine) -> None:
    """Release a session's state if the engine holds any outside this process."""
    close = getattr(engine, "close", None)
    if callable(close):
        close()


class LocalSessions:
    """All sessions run one in-process stage engine of the whole model (the weights are
    shared); each session gets its own KV cache in it, sized to what the request can use
    (prompt + max_tokens), not to the model's whole context: 20 sessions of SmolLM2 at 2048
    positions would hold 1.9 GB of cache."""

    def __init__(self, engine: StageEngine, tokenizer: Tokenizer, model_id: str,
                 max_len: int | None = None,
                 prefix_cache_bytes: int = DEFAULT_PREFIX_BYTES) -> None:
        sh = engine.config.shard
        if not (sh.is_first and sh.is_last):
            raise ConfigError("LocalSessions serves a whole model; build its engine unsplit")
        self.engine = engine
        self.model_id = model_id
        self.tokenizer = tokenizer
        self.max_len = min(max_len or engine.max_position, engine.max_position)
        self.adapters: dict[str, Adapter] = {}
        self.coordinator: Coordinator | None = None  # one process: no plan to report
        self.prefixes = PrefixStore(engine, prefix_cache_bytes) \
            if prefix_cache_bytes > 0 and supports_prefix(engine) else None

    def add_adapters(self, specs: Sequence[AdapterSpec]) -> LocalSessions:
        """Load, check (against the served model) and register ``specs``; all or none."""
        loaded = load_checked(tuple(specs), self.engine.config.model, self.model_id)
        clash = sorted(set(loaded) & set(self.adapters))
        if clash:
            raise ConfigError(f"adapter names {clash} are served already: pick other names")
        for adapter in loaded.values():
            self.engine.add_adapter(adapter)
        self.adapters.update(loaded)
        return self

    @classmethod
    def from_loaded(cls, lm: LoadedModel, max_len: int | None = None,
                    adapters: Sequence[AdapterSpec] = (),
                    prefix_cache_bytes: int = DEFAULT_PREFIX_BYTES) -> LocalSessions:
        """Serve an already loaded ``LoadedModel`` on the torch reference engine (its
        weights are shared, not copied): for tests and notebooks that hold a model."""
        from edgeweave.runtime.engines.torch import TorchStageEngine
        from edgeweave.types import Shard

        n = lm.config.num_layers
        cfg = EngineConfig(str(lm.folder), Shard(0, n, n), "fp32", "torch")
        return cls(TorchStageEngine(cfg, model=lm.model), lm.tokenizer, lm.name,
                   max_len, prefix_cache_bytes).add_adapters(adapters)

    @classmethod
    def load(cls, model: str, choice: EngineChoice | None = None,
             max_len: int | None = None, adapters: Sequence[AdapterSpec] = (),
             prefix_cache_bytes: int = DEFAULT_PREFIX_BYTES) -> LocalSessions:
        if adapters:  # a wrong adapter is refused before the (slow) model load
            load_checked(tuple(adapters), model, Path(model).name)
        return cls(whole_model(model, choice), tokenizer_for(model), Path(model).name,
                   max_len, prefix_cache_bytes).add_adapters(adapters)

    def new_session(self, max_len: int | None = None, adapter: str | None = None
                    ) -> LogitsEngine:
        if adapter is not None and adapter not in self.adapters:
            raise ConfigError(f"no adapter {adapter!r} is served here (adapters: "
                              f"{sorted(self.adapters)})")
        return EngineSession(self.engine, min(max_len or self.max_len, self.max_len), adapter,
                             self.prefixes)

    def close(self) -> None:
        if self.prefixes is not None:  # the weights go with the process; the donors now
            self.prefixes.clear()

    def engine_info(self) -> dict[str, str]:
        return engine_info(self.engine)

    def cache_usage(self) -> CacheUsage:
        """Bytes reserved by the open sessions' KV caches (no cap in one process: the
        request limits bound them)."""
        from edgeweave.runtime.engines.base import SessionNotFound

        used = 0
        for sid in self.engine.sessions():  # a copy: the scheduler thread may close one now
            # closed between listing and asking: it holds nothing any more
            with contextlib.suppress(SessionNotFound, KeyError):
                used += self.engine.session_bytes(sid)
        return with_prefix(CacheUsage(kv_bytes=used),
                           self.prefixes.usage() if self.prefixes is not None else None)


def with_prefix(usage: CacheUsage, prefix: PrefixUsage | None) -> CacheUsage:
    """``usage`` with a prefix cache's figures (unchanged when there is none)."""
    if prefix is None:
        return usage
    return replace(usage, prefix_bytes=prefix.nbytes,
                               prefix_queried_tokens=prefix.queried_tokens,
                               prefix_hit_tokens=prefix.hit_tokens)


class CoordinatorSessions:
    """Sessions of a distributed (or embedded) :class:`~edgeweave.runtime.coordinator.
    Coordinator`: each request is one coordinator session across the plan's stages, and
    failover or a plan switch happens under the server without it noticing."""

    def __init__(self, coordinator: Coordinator, tokenizer: Tokenizer | None,
                 model_id: str | None = None) -> None:
        if tokenizer is None:
            raise ConfigError("serving a coordinator needs the model's tokenizer: attach(..., "
                              "tokenizer='auto') loads it, or pass tokenizer=...")
        self.coordinator = coordinator
        self.tokenizer = tokenizer
        self.model_id = model_id or Path(str(coordinator.model)).name
        self.max_len = int(coordinator.max_len)
        # the coordinator's own table: it sends each adapter to every stage it loads
        self.adapters: dict[str, Adapter] = coordinator.adapters

    def add_adapters(self, specs: Sequence[AdapterSpec]) -> CoordinatorSessions:
        """Load, check (against the coordinator's model) and send ``specs`` to every stage."""
        loaded = load_checked(tuple(specs), str(self.coordinator.model), self.model_id)
        clash = sorted(set(loaded) & set(self.adapters))
        if clash:
            raise ConfigError(f"adapter names {clash} are served already: pick other names")
        for adapter in loaded.values():
            self.coordinator.add_adapter(adapter)
        return self

    def new_session(self, max_len: int | None = None, adapter: str | None = None
                    ) -> LogitsEngine:
        n = min(max_len or self.max_len, self.max_len)
        if adapter is None:
            return self.coordinator.new_session(n)
        return self.coordinator.new_session(n, adapter=adapter)

    def close(self) -> None:
        self.coordinator.close()

    def engine_info(self) -> dict[str, str]:
        variants = sorted({st.variant for st in self.coordinator.plan.stages})
        info = {"backend": self.coordinator.backend, "variant": ",".join(variants)}
        if self.coordinator.batch_invariant:
            info["batch_invariant"] = "true"
        return info

    def cache_usage(self) -> CacheUsage:
        """The plan's prefix cache (the nodes' KV caches are theirs to report)."""
        prefixes = self.coordinator.prefixes
        return with_prefix(CacheUsage(), prefixes.usage() if prefixes is not None else None)


class SpeculativeSessions:
    """Any :class:`SessionFactory` with speculative decoding: each session is the inner
    factory's (the verifier: local, or the fleet's plan) paired with a session of ``draft``,
    a whole-model stage engine in this process (``runtime.drafts``)."""

    def __init__(self, inner: SessionFactory, draft: StageEngine, draft_label: str,
                 config: SpeculationConfig | None = None) -> None:
        self.inner, self.draft, self.draft_label = inner, draft, draft_label
        config = config or SpeculationConfig()
        self.config = replace(config, overlap=verifier_elsewhere(inner.coordinator))
        self.model_id, self.tokenizer = inner.model_id, inner.tokenizer
        self.max_len = min(inner.max_len, draft.max_position)
        self.adapters = inner.adapters

    @property
    def coordinator(self) -> Coordinator | None:
        return self.inner.coordinator

    def new_session(self, max_len: int | None = None, adapter: str | None = None
                    ) -> LogitsEngine:
        n = min(max_len or self.max_len, self.max_len)
        target = self.inner.new_session(n, adapter)
        try:  # the draft runs the base model: an adapter's tokens are only accepted less
            return SpeculativeSession(target, EngineSession(self.draft, n), self.config)
        except BaseException:
            close_session(target)
            raise

    def close(self) -> None:
        self.inner.close()

    def engine_info(self) -> dict[str, str]:
        return {**self.inner.engine_info(), "draft": self.draft_label,
                "draft_k": str(self.config.k or "auto")}

    def cache_usage(self) -> CacheUsage:
        return self.inner.cache_usage()


def verifier_elsewhere(coord: Coordinator | None) -> bool:
    """Whether the plan's stages run on other machines: the draft then goes on while a
    verify pass is away (``SpeculationConfig.overlap``), on cores nothing else needs. In
    this process, or on nodes of this host (loopback), both would share the same cores, and
    measured there drafting ahead slows the pass more than it saves."""
    from edgeweave.netaddr import split_hostport

    if coord is None:
        return False
    links = [coord.link(st.device) for st in coord.plan.stages]
    if not all(link.parallel for link in links):
        return False  # in-process stages

    def here(link: object) -> bool:
        parts = split_hostport(str(getattr(link, "address", "")))
        host = parts[0] if parts else ""
        return host in ("localhost", "::1") or host.startswith("127.")

    return not all(here(link) for link in links)

