"""Exported stage graphs cached on disk with a manifest; a stale export is rebuilt.

Layout: ``$EDGEWEAVE_HOME/onnx/<model>/<variant>/<start>-<end>/{model.onnx,
model.onnx.data, manifest.json}``. The manifest records the source fingerprint (files of
the model folder or compression artifact), the export spec, the opset and the onnx /
onnxruntime versions. A cached export is reused only when all of them still match; every
write goes through :func:`edgeweave.paths.atomic_dir`, so readers see a complete folder or
nothing.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgeweave.paths import atomic_dir, atomic_write_json, build_once, home
from edgeweave.runtime.engines.onnx_spec import EXPORTER_VERSION, MS_OPSET, OPSET, ExportSpec

MANIFEST = "manifest.json"


def fingerprint(folder: Path) -> str:
    """Cheap identity of a model/artifact folder: names, sizes and mtimes of its files.

    An artifact manifest with a content hash is trusted instead (it is verified on load)."""
    folder = Path(folder)
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file() and not p.name.startswith("."):
            st = p.stat()
            h.update(f"{p.relative_to(folder)}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:32]


def export_dir(model_name: str, variant: str, spec: ExportSpec) -> Path:
    return home() / "onnx" / model_name / variant / f"{spec.start}-{spec.end}"


def _versions() -> dict[str, Any]:
    # package metadata, not imports: checking a cached export must not load onnx (or torch)
    from importlib.metadata import PackageNotFoundError, version

    def v(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "missing"

    return {"opset": OPSET, "ms_opset": MS_OPSET, "exporter": EXPORTER_VERSION,
            "onnx": v("onnx"), "onnxruntime": v("onnxruntime")}


def expected_manifest(source_fp: str, spec: ExportSpec, recipe: dict[str, Any]) -> dict[str, Any]:
    return {"source_fingerprint": source_fp, "spec": spec.to_dict(), "recipe": recipe,
            **_versions()}


def matches(folder: Path, want: dict[str, Any]) -> bool:
    """A complete export is in ``folder`` and its manifest has every entry of ``want``."""
    try:
        have = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    if not (folder / "model.onnx").is_file():
        return False
    return all(have.get(k) == v for k, v in want.items())


def cached_export(folder: Path, want: dict[str, Any],
                  build: Callable[[], Any]) -> tuple[Path, bool]:
    """Return ``(model.onnx path, reused)``: the cached graph if its manifest still matches
    ``want``, else the graph from ``build()`` written atomically with a fresh manifest."""
    folder = Path(folder)

    def write(final: Path) -> None:
        t0 = time.perf_counter()
        proto = build()
        with atomic_dir(final) as tmp:
            save(proto, tmp)
            atomic_write_json(tmp / MANIFEST, {
                **want, "export_s": round(time.perf_counter() - t0, 2),
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})

    # nodes started together on one host export a stage once: the others wait and reuse it
    built = build_once(folder, lambda f: matches(f, want), write)
    return folder / "model.onnx", not built


def save(model_proto: Any, folder: Path, name: str = "model.onnx") -> None:
    """Write the graph with its weights in one external data file (no 2 GiB proto limit);
    torch-free, so a node writes the stages it cuts (``onnx_slice``) without loading torch."""
    import onnx

    onnx.save_model(model_proto, str(folder / name), save_as_external_data=True,
                    all_tensors_to_one_file=True, location=f"{name}.data", size_threshold=1024)
