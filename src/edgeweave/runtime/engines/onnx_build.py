"""Find, or build once, the ONNX export of a stage: the weights source, the spec, the cache.

Where a stage's weights come from:

* an artifact folder given as the model (``edgeweave compress --out DIR``): that artifact,
  whatever its variant (its manifest says, :func:`edgeweave.variants.from_manifest`);
* the ``fp32`` variant: the model folder itself;
* any other built-in variant: its artifact under ``$EDGEWEAVE_HOME/artifacts`` (compressed
  once by ``compress.variant``), or the fp32 weights quantized by the exporter's own RTN
  when ``from_fp32`` asks for it (benchmarks compare both).

A valid cached export is found from file metadata alone (the source's fingerprint, the spec,
the versions): no torch. A missing one is built where ``build`` says: ``process`` (here),
``child`` (a child process, so this one never imports torch and keeps its memory small) or
``auto`` (here when torch is already loaded, else a child).

``lora=True`` finds or builds the stage's LoRA twin instead (the same graph with LoRA
factor inputs, ``onnx_lora``), cached beside the base export in ``<start>-<end>+lora``.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from edgeweave.errors import ConfigError, EdgeweaveError, RuntimeStageError
from edgeweave.models.config import ModelConfig
from edgeweave.runtime.engines.base import EngineConfig
from edgeweave.runtime.engines.onnx_spec import ExportSpec, check_exportable
from edgeweave.types import Shard
from edgeweave.variants import Variant, from_manifest, get

log = logging.getLogger(__name__)

BUILD_MODES = ("auto", "process", "child", "never")


@dataclass(frozen=True)
class Export:
    """A built stage graph and what it was built from."""

    path: Path  # model.onnx
    reused: bool
    spec: ExportSpec
    recipe: dict[str, Any]
    cfg: ModelConfig
    variant: Variant | None = None

    def info(self) -> dict[str, Any]:
        return {"export_reused": self.reused, "spec": self.spec.to_dict(),
                "recipe": self.recipe,
                "variant": None if self.variant is None else self.variant.name,
                "weights": None if self.variant is None else self.variant.format.to_dict()}


@dataclass(frozen=True)
class Source:
    name: str  # the model's name in the cache layout
    label: str  # the variant's folder in the cache layout
    variant: Variant
    folder: Path | None  # what the fingerprint covers; None: the artifact is not built yet
    recipe: dict[str, Any]  # recorded in the export manifest
    cfg: ModelConfig


def export_spec(variant: Variant, shard: Shard, max_len: int,
                overrides: dict[str, Any] | None = None) -> ExportSpec:
    """The export of ``shard`` for ``variant``'s weight format (``overrides`` win)."""
    fmt = variant.format
    kw: dict[str, Any] = {"weights": {4: "int4", 8: "int8"}.get(fmt.bits, "fp32"),
                          "max_len": max_len}
    if fmt.bits == 4:  # how plain layers (an unquantized head) are quantized to match
        kw.update(group_size=fmt.group_size, symmetric=fmt.zero_point == "none")
    kw.update(overrides or {})
    return ExportSpec(shard.start, shard.end, **kw)


def _artifact_source(folder: Path, name: str, variant: Variant) -> Source:
    from edgeweave.compress.manifest import manifest_config, read_manifest

    m = read_manifest(folder)
    return Source(name, variant.name, variant, folder,
                  {"source": "artifact", "artifact": str(folder), "recipe": m.get("recipe")},
                  manifest_config(folder, m))


def source(config: EngineConfig, from_fp32: bool = False,
           overrides: dict[str, Any] | None = None) -> Source:
    """Where ``config``'s weights come from (see the module docstring); reads no weights."""
    from edgeweave.compress.variants import built_variant
    from edgeweave.models.catalog import resolve
    from edgeweave.models.config import read_config

    given = Path(config.model)
    if (given / "manifest.json").is_file():  # an artifact folder is its own variant
        from edgeweave.compress.manifest import verify

        verify(given)
        return _artifact_source(given, given.name, from_manifest(given))
    v = get(config.variant)
    name, folder = resolve(config.model)
    cfg = read_config(folder)
    if v.name == "fp32" or from_fp32 or v.recipe is None:
        if v.name == "fp32":
            return Source(name, v.name, v, folder, {"source": "model"}, cfg)
        gs = (overrides or {}).get("group_size", v.format.group_size or 32)
        return Source(name, f"{v.name}-rtn-g{gs}", v, folder,
                      {"source": "onnx-rtn", "note": "quantized by the ONNX exporter's RTN"},
                      cfg)
    art = built_variant(v, config.model)
    if art is None:
        return Source(name, v.name, v, None, {}, cfg)
    return _artifact_source(art, name, v)


def lora_dir(folder: Path) -> Path:
    """Where the LoRA twin of the export in ``folder`` lives."""
    return folder.with_name(folder.name + "+lora")


def lora_manifest(want: dict[str, Any]) -> dict[str, Any]:
    from edgeweave.runtime.engines.onnx_lora import LORA_GRAPH_VERSION

    return {**want, "lora_inputs": LORA_GRAPH_VERSION}


def _want(src: Source, spec: ExportSpec, lora: bool) -> tuple[Path, dict[str, Any]]:
    from edgeweave.runtime.engines.onnx_cache import expected_manifest, export_dir, fingerprint

    assert src.folder is not None
    folder = export_dir(src.name, src.label, spec)
    want = expected_manifest(fingerprint(src.folder), spec, src.recipe)
    return (lora_dir(folder), lora_manifest(want)) if lora else (folder, want)


def _cached(src: Source, spec: ExportSpec, lora: bool = False) -> Export | None:
    from edgeweave.runtime.engines.onnx_cache import matches

    if src.folder is None:
        return None
    folder, want = _want(src, spec, lora)
    if matches(folder, want):
        return Export(folder / "model.onnx", True, spec, src.recipe, src.cfg, src.variant)
    return None


def _cut(src: Source, spec: ExportSpec) -> Export | None:
    """The stage cut from a cached export of a wider block range (``onnx_slice``: no torch,
    well under a second), when one was built from the same source and spec."""
    import time

    from edgeweave.runtime.engines.onnx_cache import cached_export
    from edgeweave.runtime.engines.onnx_slice import covering_exports, read_manifest, same_export

    if src.folder is None:
        return None
    target, want = _want(src, spec, False)
    for c, d, folder in covering_exports(target.parent, spec.start, spec.end):
        manifest = read_manifest(folder)
        if manifest is None or not same_export(manifest, want):
            continue
        t0 = time.perf_counter()
        try:
            path, reused = cached_export(target, want, lambda f=folder: _slice(f, spec, src))
        except (EdgeweaveError, OSError, ValueError) as e:  # a damaged wider export: build
            log.warning("cannot cut stage %d-%d from the export %d-%d (%s)", spec.start,
                        spec.end, c, d, e)
            continue
        log.info("cut stage %d-%d from the cached export %d-%d in %.2f s", spec.start,
                 spec.end, c, d, time.perf_counter() - t0)
        return Export(path, reused, spec, src.recipe, src.cfg, src.variant)
    return None


def _whole_if_it_fits(config: EngineConfig, src: Source) -> EngineConfig | None:
    """The whole model's stage, when a child building it would use at most a quarter of
    the memory free now (its weights, read once); None for a stage that is the whole model,
    an artifact not compressed yet, or a model too big for this device."""
    import psutil

    sh = config.shard
    if src.folder is None or (sh.start == 0 and sh.end == sh.n_layers):
        return None
    weights = sum(f.stat().st_size for f in src.folder.glob("*.safetensors"))
    if not weights or 4 * weights > psutil.virtual_memory().available:
        return None
    return replace(config, shard=Shard(0, sh.n_layers, sh.n_layers))


def _slice(folder: Path, spec: ExportSpec, src: Source) -> Any:
    from edgeweave.runtime.engines.onnx_slice import slice_export

    return slice_export(folder, spec.start, spec.end, src.cfg.num_layers)


def ensure(config: EngineConfig, overrides: dict[str, Any] | None = None,
           from_fp32: bool = False, build: str = "auto", lora: bool = False) -> Export:
    """The export of ``config``'s stage (its LoRA twin when ``lora``), built once if it is
    missing (see ``build``)."""
    if build not in BUILD_MODES:
        raise ConfigError(f"build must be one of {BUILD_MODES} (got {build!r})")
    src = source(config, from_fp32, overrides)
    check_exportable(src.cfg.family)  # before any compression or export work starts
    spec = export_spec(src.variant, config.shard, src.cfg.max_position, overrides)
    found = _cached(src, spec, lora) or (None if lora else _cut(src, spec))
    if found is not None:
        return found
    mode = build if build != "auto" else ("process" if "torch" in sys.modules else "child")
    if mode == "never":
        raise RuntimeStageError(f"stage {config.key} of {config.model} has no ONNX export yet: "
                                "run `edgeweave export` once, or allow building it")
    if mode == "child":
        wide = None if lora else _whole_if_it_fits(config, src)
        if wide is not None:  # one build of every block: later re-plans only cut (onnx_slice)
            _build_in_child(wide, overrides, from_fp32)
            found = _cut(source(config, from_fp32, overrides), spec)
            if found is not None:
                return found
        _build_in_child(config, overrides, from_fp32, lora)
        src = source(config, from_fp32, overrides)
        found = _cached(src, spec, lora)
        if found is None:
            raise RuntimeStageError(f"the child process built no usable export of stage "
                                    f"{config.key}: run `edgeweave export` to see why")
        return Export(found.path, False, spec, found.recipe, found.cfg, found.variant)
    return _build_here(config, src, spec, lora)


def _build_here(config: EngineConfig, src: Source, spec: ExportSpec,
                lora: bool = False) -> Export:
    from edgeweave.runtime.engines.onnx_cache import cached_export
    from edgeweave.runtime.engines.onnx_export import build_stage

    if src.folder is None:  # the variant's artifact: compress it once
        from edgeweave.compress.variants import variant

        src = _artifact_source(variant(src.variant, config.model), src.name, src.variant)
    folder = src.folder
    assert folder is not None

    def load() -> Any:
        if src.recipe.get("source") == "artifact":
            from edgeweave.compress.artifact import load_artifact

            return load_artifact(folder, shard=config.shard).model
        from edgeweave.models import load as load_model

        return load_model(config.model, shard=config.shard).model

    target, want = _want(src, spec, lora)
    path, reused = cached_export(target, want, lambda: build_stage(load(), spec, lora=lora))
    return Export(path, reused, spec, src.recipe, src.cfg, src.variant)


def _build_in_child(config: EngineConfig, overrides: dict[str, Any] | None,
                    from_fp32: bool, lora: bool = False) -> None:
    request = {"model": config.model, "variant": config.variant,
               "shard": [config.shard.start, config.shard.end, config.shard.n_layers],
               "overrides": overrides or {}, "from_fp32": from_fp32, "lora": lora}
    log.info("building the ONNX export of stage %s of %s in a child process (keeps this "
             "process free of torch)", config.key, config.model)
    proc = subprocess.run([sys.executable, "-m", __name__, json.dumps(request)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        last = lines[-1] if lines else f"exit code {proc.returncode}"
        raise RuntimeStageError(f"building the ONNX export of stage {config.key} failed: "
                                f"{last.removeprefix('error: ')}")


def n_layers(model: str) -> int:
    """Blocks of a model (bundled name, folder or artifact folder), from its config."""
    given = Path(model)
    if (given / "manifest.json").is_file():
        from edgeweave.compress.manifest import manifest_config, read_manifest

        return manifest_config(given, read_manifest(given)).num_layers
    from edgeweave.models.catalog import resolve
    from edgeweave.models.config import read_config

    return read_config(resolve(model)[1]).num_layers


def _main(argv: list[str]) -> int:
    req = json.loads(argv[0])
    try:
        cfg = EngineConfig(req["model"], Shard(*req["shard"]), req["variant"], "onnx")
        ensure(cfg, req["overrides"] or None, req["from_fp32"], build="process",
               lora=bool(req.get("lora")))
    except EdgeweaveError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
