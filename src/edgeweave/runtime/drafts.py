"""Draft models for speculative decoding: what runs on the entry device to propose tokens.

A :class:`DraftSpec` names one of three kinds (``--draft``):

* a **variant** of the served model (``int4``, ``int8``, ...: any name of
  ``edgeweave.variants``), the whole model in fewer bits;
* an **early exit** (``early-exit:K``): the served model's first ``K`` blocks with its own
  final norm and head, no training;
* an **artifact** folder made by ``edgeweave compress`` (``--recipe distill-18``: the
  distilled student), which must share the served model's vocabulary.

:func:`build_draft` turns one into a whole-model stage engine in this process; sessions on
it (``EngineSession``) are what ``runtime.speculative.SpeculativeSession`` drafts with.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeweave.errors import ConfigError
from edgeweave.runtime.speculative import SpeculationConfig

if TYPE_CHECKING:
    from edgeweave.runtime.engines.base import StageEngine
    from edgeweave.runtime.local import EngineChoice

EARLY_EXIT = "early-exit:"


@dataclass(frozen=True)
class DraftSpec:
    """``kind`` is ``variant``, ``early-exit`` or ``artifact``; ``value`` the variant name,
    the block count, or the folder."""

    kind: str
    value: str

    @classmethod
    def parse(cls, text: str) -> DraftSpec:
        text = text.strip()
        if not text:
            raise ConfigError("--draft is empty: give a variant (int4), early-exit:K or a "
                              "compressed artifact folder")
        if text.startswith(EARLY_EXIT):
            blocks = text.removeprefix(EARLY_EXIT)
            if not blocks.isdigit() or int(blocks) < 1:
                raise ConfigError(f"--draft {text!r}: early-exit takes a block count >= 1, "
                                  "e.g. early-exit:8")
            return cls("early-exit", str(int(blocks)))
        if (Path(text) / "manifest.json").is_file():
            return cls("artifact", str(Path(text)))
        if "/" in text or Path(text).exists():
            raise ConfigError(f"--draft {text!r} is not a compressed artifact folder (it has no "
                              "manifest.json): make one with `edgeweave compress`")
        from edgeweave.variants import get

        get(text)  # an unknown variant fails here, with the names there are
        return cls("variant", text)

    @property
    def label(self) -> str:
        return {"variant": self.value, "early-exit": f"early-exit:{self.value}",
                "artifact": Path(self.value).name}[self.kind]


@dataclass(frozen=True)
class Speculation:
    """Speculative decoding as a verb's options give it: the draft and ``k``."""

    draft: DraftSpec
    config: SpeculationConfig = SpeculationConfig()

    @classmethod
    def from_options(cls, draft: str | None, k: int = 0) -> Speculation | None:
        """``--draft`` and ``--draft-k``; None without a draft (plain decoding)."""
        if not draft:
            if k:
                raise ConfigError("--draft-k needs --draft: name the draft model that "
                                  "proposes the tokens")
            return None
        return cls(DraftSpec.parse(draft), SpeculationConfig(k=k))


def build_draft(spec: DraftSpec, model: str, choice: EngineChoice | None = None
                ) -> StageEngine:
    """The draft of ``spec`` for the served ``model`` as a whole-model stage engine of
    ``choice``'s backend (the variant of ``choice`` is ignored: the draft names its own)."""
    from edgeweave.runtime.local import EngineChoice, n_layers, whole_model

    base = choice or EngineChoice()
    if spec.kind == "variant":
        engine = whole_model(model, EngineChoice(base.backend, spec.value, base.threads))
    elif spec.kind == "artifact":
        engine = whole_model(spec.value, EngineChoice(base.backend, threads=base.threads))
    else:
        blocks, total = int(spec.value), n_layers(model)
        if blocks >= total:
            raise ConfigError(f"--draft early-exit:{blocks}: {model} has {total} blocks; exit "
                              f"earlier (1..{total - 1})")
        engine = _early_exit(model, blocks, base)
    _check_vocab(engine, model)
    return engine


def _early_exit(model: str, blocks: int, choice: EngineChoice) -> StageEngine:
    """Blocks ``[0, blocks)`` of ``model`` with its final norm and head, as a model of its
    own: on torch in this process; on ONNX exported once (int4) under the model's export
    cache by a child process, so the serving process never imports torch (its thread pools
    would take cores from the stages)."""
    from edgeweave.runtime.engines.base import EngineConfig
    from edgeweave.types import Shard

    shard = Shard(0, blocks, blocks)
    if choice.backend == "torch":
        from edgeweave.runtime.engines.torch import TorchStageEngine

        config = EngineConfig(model, shard, "fp32", "torch", choice.threads)
        return TorchStageEngine(config, early_exit_model(model, blocks))
    from edgeweave.runtime.engines.onnx import open_engine
    from edgeweave.runtime.engines.onnx_build import Export
    from edgeweave.runtime.engines.onnx_cache import matches

    config = EngineConfig(model, shard, "int4", choice.backend, choice.threads)
    folder, want, spec, cfg = _early_exit_export(model, blocks)
    if not matches(folder, want):
        _export_in_child(model, blocks)
    return open_engine(config, Export(folder / "model.onnx", True, spec, {}, cfg))


def early_exit_model(model: str, blocks: int) -> Any:
    """The torch ``BlockModel`` of the first ``blocks`` blocks of ``model`` and its head."""
    import torch

    from edgeweave.models.catalog import resolve
    from edgeweave.models.checkpoint import load_state, read_config
    from edgeweave.models.llama import BlockModel

    folder = resolve(model)[1]
    m = BlockModel(read_config(folder).subset(list(range(blocks))))
    m.load_state_dict(load_state(folder, m, torch.float32), strict=False)
    if m.cfg.tie_word_embeddings:
        m.lm_head.weight = m.embed_tokens.weight
    return m.eval()


def _early_exit_export(model: str, blocks: int) -> tuple[Path, dict[str, Any], Any, Any]:
    """Where the early exit's int4 graph is cached and the manifest it must match."""
    from edgeweave.models.catalog import resolve
    from edgeweave.models.checkpoint import read_config
    from edgeweave.paths import home
    from edgeweave.runtime.engines.onnx_build import export_spec
    from edgeweave.runtime.engines.onnx_cache import expected_manifest, fingerprint
    from edgeweave.types import Shard
    from edgeweave.variants import get

    name, folder = resolve(model)
    cfg = read_config(folder).subset(list(range(blocks)))
    spec = export_spec(get("int4"), Shard(0, blocks, blocks), cfg.max_position)
    out = home() / "onnx" / name / f"early-exit-{blocks}" / "int4"
    return out, expected_manifest(fingerprint(folder), spec, {}), spec, cfg


def _export_in_child(model: str, blocks: int) -> None:
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", __name__, model, str(blocks)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        raise ConfigError(f"exporting the early-exit draft of {model} failed: "
                          f"{lines[-1] if lines else proc.returncode}")


def _main(argv: list[str]) -> int:
    """Child process: export the early exit of ``argv = [model, blocks]`` into the cache."""
    from edgeweave.runtime.engines.onnx_cache import cached_export
    from edgeweave.runtime.engines.onnx_export import build_stage

    model, blocks = argv[0], int(argv[1])
    folder, want, spec, _ = _early_exit_export(model, blocks)
    m = early_exit_model(model, blocks)
    cached_export(folder, want, lambda: build_stage(m, spec))
    return 0


def _check_vocab(engine: StageEngine, model: str) -> None:
    from edgeweave.models.catalog import resolve
    from edgeweave.models.checkpoint import read_config

    given = Path(model)
    folder = given if (given / "manifest.json").is_file() else resolve(model)[1]
    vocab = read_config(folder).vocab_size
    if engine.vocab_size != vocab:
        raise ConfigError(f"the draft has a vocabulary of {engine.vocab_size} tokens and "
                          f"{model} one of {vocab}: a draft must share the served model's "
                          "tokenizer (use a variant, early-exit:K or a student of it)")


if __name__ == "__main__":
    import sys

    sys.exit(_main(sys.argv[1:]))

