"""Artifacts: compressed weights (safetensors) + ``manifest.json`` + tokenizer, in one folder.

Written atomically (``paths.atomic_dir``); every file's sha256 is in the manifest and checked
on load, so a tampered or truncated artifact is refused with :class:`ArtifactError`.
``load_artifact(path, shard)`` rebuilds a :class:`BlockModel` whose linears are the packed
modules of :mod:`edgeweave.compress.modules` (only the blocks of ``shard`` are read).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

# the manifest half lives in compress.manifest (no torch): re-exported for old callers
from edgeweave.compress.manifest import (  # noqa: E402, F401
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    RECOMPRESS,
    TOKENIZER_FILES,
    WEIGHTS,
    manifest_config,
    read_manifest,
    verify,
)
from edgeweave.compress.modules import KINDS, linear_state, set_module
from edgeweave.compress.recipes import Recipe
from edgeweave.errors import ArtifactError
from edgeweave.models.checkpoint import LoadedModel
from edgeweave.models.config import ModelConfig
from edgeweave.models.llama import BlockModel
from edgeweave.models.tokenizer import Tokenizer
from edgeweave.paths import atomic_dir, atomic_write_json, sha256_file
from edgeweave.types import Shard
from edgeweave.validate import first_mismatch

SPARSE_MIN = 0.1  # store a linear as bitmask + values once at least 10% of it is zero


@dataclass
class Artifact:
    """A compressed model in memory (``model``) and, once saved, on disk (``path``)."""

    model: BlockModel
    recipe: Recipe
    source: dict[str, Any]
    calibration: dict[str, Any] | None = None
    tokenizer_folder: Path | None = None
    compress_seconds: float = 0.0
    notes: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def config(self) -> ModelConfig:
        return self.model.cfg

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        tensors, modules = export_state(self.model)
        with atomic_dir(path) as tmp:
            from safetensors.torch import save_file

            save_file(tensors, str(tmp / WEIGHTS), metadata={"format": FORMAT})
            (tmp / "config.json").write_text(json.dumps(self.config.to_hf(), indent=2))
            if self.tokenizer_folder is not None:
                for name in TOKENIZER_FILES:
                    if (self.tokenizer_folder / name).is_file():
                        shutil.copy2(self.tokenizer_folder / name, tmp / name)
            size = (tmp / WEIGHTS).stat().st_size
            self.manifest = self._manifest(modules, tensors, size)
            self.manifest["files"] = {p.name: sha256_file(p) for p in sorted(tmp.iterdir())
                                      if p.is_file()}
            atomic_write_json(tmp / MANIFEST, self.manifest)
        self.path = path
        return path

    def _manifest(self, modules: dict[str, Any], tensors: dict[str, torch.Tensor],
                  size: int) -> dict[str, Any]:
        src_params = int(self.source.get("params", 0)) or self.config.num_params()
        weights = [m for m in self.model.modules() if isinstance(m, nn.Linear)]
        total = sum(m.weight.numel() for m in weights)
        zeros = sum(int((m.weight == 0).sum()) for m in weights)
        return {
            "format": FORMAT, "format_version": FORMAT_VERSION,
            "recipe": self.recipe.to_dict(), "recipe_label": self.recipe.label(),
            # what engines and exporters read (edgeweave.variants), never parsed from a name
            "weights": self.recipe.weight_format().to_dict(),
            "source": self.source,
            "calibration": self.calibration,
            "config": self.config.to_hf(),
            "modules": modules,
            "stats": {
                "size_bytes": size,
                "fp16_size_bytes": 2 * src_params,
                "size_vs_fp16": size / (2 * src_params),
                "bits_per_weight": 8 * size / src_params,
                "params_source": src_params,
                "blocks": self.config.num_layers,
                # zeros among the weights held by plain (dense-run) linears
                "sparsity_dense_linears": zeros / total if total else 0.0,
            },
            "runtime": _runtime_note(modules),
            "compress_seconds": round(self.compress_seconds, 2),
            "notes": self.notes,
            "metrics": self.metrics,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }

    def update_metrics(self, metrics: dict[str, Any]) -> None:
        """Add evaluation results to the saved manifest (the manifest is not self-hashed)."""
        self.metrics.update(metrics)
        if self.path is not None:
            self.manifest["metrics"] = self.metrics
            atomic_write_json(self.path / MANIFEST, self.manifest)


def _runtime_note(modules: dict[str, Any]) -> str:
    kinds = {m["kind"] for m in modules.values()}
    parts = []
    if "int8" in kinds:
        parts.append("int8 linears run fbgemm W8A8-dynamic kernels")
    if "int4" in kinds:
        parts.append("int4 linears run torch's int4pack kernel (bf16 activations)")
    if "sparse" in kinds:
        parts.append("sparse linears are stored as bitmask + values but run DENSE (no speed-up)")
    if "lowrank" in kinds:
        parts.append("low-rank linears run as two smaller matmuls")
    return "; ".join(parts) or "dense fp32"


def export_state(model: BlockModel) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Flatten a (compressed) model into safetensors tensors + a per-module description."""
    tensors: dict[str, torch.Tensor] = {}
    modules: dict[str, Any] = {}
    tied = model.cfg.tie_word_embeddings
    handled: set[str] = set()
    for name, mod in model.named_modules():
        if not name or any(name.startswith(h + ".") for h in handled):
            continue
        if name == "lm_head" and tied:
            handled.add(name)
            continue
        if hasattr(mod, "state") and hasattr(mod, "kind"):
            kind, state, meta = mod.kind, mod.state(), mod.meta()
        elif type(mod) is nn.Linear:
            zero = float((mod.weight == 0).float().mean())
            kind, state, meta = linear_state(mod, sparse=zero >= SPARSE_MIN)
        else:
            continue
        handled.add(name)
        modules[name] = {"kind": kind, "meta": meta}
        for k, t in state.items():
            tensors[f"{name}.{k}"] = t.contiguous()
    for key, p in model.state_dict().items():
        owner = key.rsplit(".", 1)[0]
        if owner in handled or key.startswith("lm_head.") and tied:
            continue
        if key.startswith("embed_tokens."):
            tensors[key] = p.detach().half().contiguous()
        elif not any(key.startswith(h + ".") for h in handled):
            tensors[key] = p.detach().float().contiguous()  # norms: tiny, keep exact
    return tensors, modules


def load_artifact(path: str | Path, shard: Shard | None = None) -> LoadedModel:
    """Load (the ``shard`` of) a verified artifact as a model with packed modules."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    manifest = verify(path)
    cfg = manifest_config(path, manifest)
    with torch.device("meta"):
        model = BlockModel(cfg, shard)
    present = {n for n, _ in model.named_modules()}
    tied = cfg.tie_word_embeddings and model.lm_head is not None
    try:
        with safe_open(str(path / WEIGHTS), framework="pt") as fh:
            keys = list(fh.keys())
            for name, spec in manifest["modules"].items():
                if name not in present:
                    continue
                prefix = name + "."
                t = {k[len(prefix):]: fh.get_tensor(k) for k in keys if k.startswith(prefix)}
                build = KINDS.get(spec["kind"])
                if build is None:
                    raise ArtifactError(f"{path} uses module kind {spec['kind']!r} unknown to "
                                        "this edgeweave: upgrade edgeweave")
                try:
                    set_module(model, name, build(t, spec["meta"]))
                except (KeyError, TypeError, ValueError, RuntimeError, IndexError,
                        AttributeError) as e:  # meta or tensors edited apart from each other
                    raise ArtifactError(
                        f"{path}: module {name!r} ({spec['kind']}) does not match its metadata "
                        f"in {MANIFEST} ({type(e).__name__}: {e}): {RECOMPRESS}") from e
            wanted = model.state_dict()
            state = {k: fh.get_tensor(k).float() for k in keys
                     if k in wanted and wanted[k].is_meta}
    except SafetensorError as e:  # a header that parses wrong, with its hash updated to match
        raise ArtifactError(f"{path / WEIGHTS} cannot be read ({e}): the weights are damaged; "
                            f"{RECOMPRESS}") from e
    if tied:
        emb = model.embed_tokens
        if hasattr(emb, "as_linear"):
            model.lm_head = emb.as_linear()
        elif "embed_tokens.weight" in state:
            state.pop("lm_head.weight", None)
    try:
        model.load_state_dict(state, strict=False, assign=True)
    except RuntimeError as e:  # shapes disagree with the manifest's config
        raise ArtifactError(f"{path}: the weights do not match the config in {MANIFEST} "
                            f"({first_mismatch(e)}): {RECOMPRESS}") from e
    if tied and isinstance(model.lm_head, nn.Linear):
        model.lm_head.weight = model.embed_tokens.weight
    left = [k for k, v in model.state_dict().items() if v.is_meta]
    if left:
        raise ArtifactError(f"{path} lacks {len(left)} tensors, e.g. {left[:3]}: the weights or "
                            f"the `modules` of {MANIFEST} were changed; {RECOMPRESS}")
    model.init_buffers()
    model.eval().requires_grad_(False)
    return LoadedModel(name=manifest.get("source", {}).get("name", path.name) + "@" + path.name,
                       folder=path, config=cfg, model=model, tokenizer=Tokenizer(path))

