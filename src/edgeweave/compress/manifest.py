"""The manifest half of an artifact: read, shape-check and verify ``manifest.json``.

Pure Python (no torch), so a process that only runs ONNX stage graphs can check that the
artifact behind its cached export is the one it expects without importing torch. The
weights half (building and loading packed modules) is :mod:`edgeweave.compress.artifact`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgeweave.errors import ArtifactError, CheckpointError
from edgeweave.models.config import ModelConfig
from edgeweave.paths import sha256_file
from edgeweave.validate import is_int, kind

FORMAT = "edgeweave-artifact"
FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
MANIFEST = "manifest.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
                   "special_tokens_map.json", "generation_config.json")

RECOMPRESS = "re-run `edgeweave compress` to rebuild the artifact"


def _unlisted_ok(name: str) -> bool:
    """Files an artifact folder may hold without a hash in ``files``.

    Only the manifest itself (it holds the hashes and ``update_metrics`` rewrites it), and the
    temporary file ``paths.atomic_write_json`` writes next to it while doing so (named
    ``.manifest.json.<random>.tmp``; also left behind if that write is killed). Nothing loads
    either as weights, config or tokenizer. Everything else must be hashed: the loaders read
    tokenizer and template files by name from the folder, so an unlisted one would be used
    unverified. ONNX exports of an artifact do not live here but under
    ``$EDGEWEAVE_HOME/onnx/`` (``runtime/engines/onnx_cache.export_dir``), so no cache
    subfolder needs an exception.
    """
    return name == MANIFEST or name.startswith(f".{MANIFEST}.") and name.endswith(".tmp")


def _manifest_shape(mf: Path, m: Any) -> None:
    """Refuse a manifest whose fields have the wrong JSON types (hand-edited or damaged)."""
    def need(ok: bool, what: str) -> None:
        if not ok:
            raise ArtifactError(f"{mf}: {what}; the manifest was edited or damaged: {RECOMPRESS}")

    need(isinstance(m.get("files"), dict) and all(isinstance(k, str) and isinstance(v, str)
                                                  for k, v in m["files"].items()),
         "`files` must map file names to sha256 strings")
    need(isinstance(m.get("config"), dict), "`config` must be the model's config object")
    need(isinstance(m.get("recipe"), dict), "`recipe` must be a recipe object")
    need(isinstance(m.get("source", {}), dict)
         and isinstance(m.get("source", {}).get("name", ""), str),
         "`source` must be an object with a string `name`")
    mods = m.get("modules")
    need(isinstance(mods, dict), "`modules` must map module names to {kind, meta}")
    for name, spec in mods.items():
        need(isinstance(spec, dict) and isinstance(spec.get("kind"), str)
             and isinstance(spec.get("meta"), dict),
             f"module {name!r} must be an object with a string `kind` and a `meta` object")


def read_manifest(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    mf = path / MANIFEST
    if not mf.is_file():
        raise ArtifactError(f"{path} is not an edgeweave artifact (no {MANIFEST}): create one "
                            "with `edgeweave compress --out DIR`")
    try:
        manifest = json.loads(mf.read_bytes().decode("utf-8"))
    except OSError as e:
        raise ArtifactError(f"cannot read {mf}: {e}") from e
    except ValueError as e:  # not UTF-8 or not JSON
        raise ArtifactError(f"{mf} is not valid JSON ({e}): the artifact is damaged, "
                            f"{RECOMPRESS}") from e
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{mf} holds {kind(manifest)}, not a manifest object: the "
                            f"artifact is damaged, {RECOMPRESS}")
    version = manifest.get("format_version", 0)
    if manifest.get("format") != FORMAT or not is_int(version) or version > FORMAT_VERSION:
        raise ArtifactError(f"{path} has format {manifest.get('format')!r} "
                            f"v{manifest.get('format_version')}; this edgeweave reads "
                            f"{FORMAT} v{FORMAT_VERSION}: upgrade edgeweave or re-compress")
    _manifest_shape(mf, manifest)
    return manifest


def verify(path: str | Path, manifest: dict[str, Any] | None = None) -> dict[str, Any]:
    """Check that the folder holds exactly the files of the manifest, each with its sha256."""
    path = Path(path)
    manifest = manifest or read_manifest(path)
    files = manifest["files"]
    if WEIGHTS not in files:
        raise ArtifactError(f"{path}/{MANIFEST} lists no {WEIGHTS}: {RECOMPRESS}")
    for name in files:
        if name in (".", "..", MANIFEST) or Path(name).name != name or "\\" in name:
            raise ArtifactError(f"{path}/{MANIFEST} lists {name!r}, which is not a plain file "
                                f"name of the folder: the manifest was edited; {RECOMPRESS}")
    extra = sorted(p.name for p in path.iterdir() if p.name not in files
                   and not _unlisted_ok(p.name))
    if extra:
        raise ArtifactError(
            f"{path} holds {', '.join(extra)}, which {MANIFEST} does not list with a sha256 "
            "(every file of an artifact is hashed, so a swapped tokenizer or config cannot load "
            f"unnoticed): delete what you added there, or {RECOMPRESS}")
    for name, digest in files.items():
        f = path / name
        if not f.is_file():
            raise ArtifactError(f"{f} is missing from the artifact: copy the whole folder "
                                "or re-run `edgeweave compress`")
        if sha256_file(f) != digest:
            raise ArtifactError(f"{f} does not match the sha256 in {MANIFEST}: the artifact "
                                "was modified or damaged; re-run `edgeweave compress`")
    return manifest


def manifest_config(path: Path, manifest: dict[str, Any]) -> ModelConfig:
    """The model config a (read) manifest carries, refused with the fix when edited."""
    try:
        return ModelConfig.from_hf(manifest["config"])
    except CheckpointError as e:
        raise ArtifactError(f"{path}/{MANIFEST} config: {e}; {RECOMPRESS}") from e
