"""One engine choice for every verb: which backend runs the stages, in which weight variant.

``generate``, ``serve``, ``node``, ``demo``, ``bench`` and ``eval`` all take ``--backend`` and
``--variant`` and turn them into an :class:`EngineChoice`; the Python API takes the same
value. ONNX Runtime is the default (the fast path: fused decoder kernels, int4/int8
MatMulNBits, no torch in the process); ``torch`` is the reference. The default variant is
``int4`` (as Ollama defaults to a 4-bit quantization), built once and cached.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeweave.errors import ConfigError
from edgeweave.runtime.engines.base import EngineConfig, check_batch_invariant
from edgeweave.types import Shard

if TYPE_CHECKING:
    from collections.abc import Sequence

    from edgeweave.models.tokenizer import Tokenizer
    from edgeweave.runtime.adapters import AdapterSpec
    from edgeweave.runtime.engines.base import StageEngine

DEFAULT_VARIANT = "int4"


def backends() -> tuple[str, ...]:
    """The stage backends: each module of ``runtime/engines`` named after its backend (one
    lower-case word, registered with ``@register_engine(NAME)``). ``base`` and the helpers a
    backend splits into (``onnx_export``, ``torch_lora``, ...) are not backends. Found from the
    folder without importing anything, so a new backend is one new file."""
    import pkgutil

    from edgeweave.runtime import engines

    return tuple(sorted(m.name for m in pkgutil.iter_modules(engines.__path__)
                        if m.name.isalpha() and m.name.islower() and m.name != "base"))


def default_backend() -> str:
    """``onnx`` where ONNX Runtime is installed (a core dependency), else ``torch``."""
    return "onnx" if importlib.util.find_spec("onnxruntime") is not None else "torch"


@dataclass(frozen=True)
class EngineChoice:
    """``backend`` (``onnx`` | ``torch``; empty = the default) and ``variant`` (a name of
    :mod:`edgeweave.variants`; ignored when the model is an artifact folder, which is its own
    variant); ``threads`` 0 lets the process policy decide; ``batch_invariant``: a session's
    numbers do not depend on the sessions batched beside it (ONNX only, see EngineConfig)."""

    backend: str = ""
    variant: str = DEFAULT_VARIANT
    threads: int = 0
    batch_invariant: bool = False

    def __post_init__(self) -> None:
        if not self.backend:
            object.__setattr__(self, "backend", default_backend())
        if self.backend not in backends():
            raise ConfigError(f"--backend {self.backend!r}: choose one of "
                              f"{', '.join(backends())}")
        if self.backend == "onnx" and importlib.util.find_spec("onnxruntime") is None:
            raise ConfigError("--backend onnx needs onnxruntime: pip install onnxruntime, or "
                              "use --backend torch")
        from edgeweave.variants import get

        v = get(self.variant)  # unknown names fail here, with the choices
        if not v.buildable:
            raise ConfigError(f"variant {self.variant!r} is priced by the planner but cannot "
                              "be built yet: choose fp32, int8 or int4")
        if self.threads < 0:
            raise ConfigError(f"threads must be >= 0 (got {self.threads})")
        check_batch_invariant(self.backend, self.batch_invariant)

    def config(self, model: str, shard: Shard) -> EngineConfig:
        return EngineConfig(model, shard, self.variant, self.backend, self.threads,
                            self.batch_invariant)


def n_layers(model: str) -> int:
    from edgeweave.runtime.engines.onnx_build import n_layers as count

    return count(model)


def whole_model(model: str, choice: EngineChoice | None = None) -> StageEngine:
    """The whole model as one stage engine of ``choice`` (built or reused)."""
    from edgeweave.runtime.engines.base import create_engine

    choice = choice or EngineChoice()
    n = n_layers(model)
    return create_engine(choice.config(model, Shard(0, n, n)))


def tokenizer_for(model: str) -> Tokenizer:
    """The model's tokenizer without loading weights (an artifact folder holds its own)."""
    from edgeweave.models.tokenizer import Tokenizer

    given = Path(model)
    if (given / "manifest.json").is_file():
        return Tokenizer(given)
    from edgeweave.models.catalog import resolve

    return Tokenizer(resolve(model)[1])


def engine_info(engine: Any) -> dict[str, str]:
    """What a stage engine runs, as responses and ``/health`` report it."""
    cfg = engine.config
    info = getattr(engine, "info", None) or {}
    out = {"backend": cfg.backend, "variant": str(info.get("variant") or cfg.variant)}
    if getattr(cfg, "batch_invariant", False):
        out["batch_invariant"] = "true"
    return out


@dataclass
class LocalModel:
    """A model ready to generate in this process: its tokenizer and one whole-model stage
    engine (of an :class:`EngineChoice`) that every session shares. What ``eval``, ``bench``
    and the task suite hold instead of torch weights when they run the fast path."""

    name: str
    tokenizer: Any
    engine: Any  # StageEngine
    adapters: tuple[str, ...] = ()  # LoRA adapters added to the engine, by name

    @classmethod
    def load(cls, model: str, choice: EngineChoice | None = None,
             adapters: Sequence[AdapterSpec] = ()) -> LocalModel:
        """``adapters``: LoRA adapter folders (checked against ``model`` before it loads),
        run unmerged by sessions that name them."""
        from edgeweave.runtime.adapters import load_checked

        loaded = load_checked(tuple(adapters), model, Path(model).name)
        lm = cls(Path(model).name, tokenizer_for(model), whole_model(model, choice),
                 tuple(loaded))
        for adapter in loaded.values():
            lm.engine.add_adapter(adapter)
        return lm

    def new_session(self, max_len: int | None = None, adapter: str | None = None) -> Any:
        from edgeweave.runtime.engine import EngineSession

        if adapter is not None and adapter not in self.adapters:
            raise ConfigError(f"no adapter {adapter!r} was loaded (adapters: "
                              f"{list(self.adapters)})")
        return EngineSession(self.engine, max_len, adapter)

    def info(self) -> dict[str, str]:
        return engine_info(self.engine)
