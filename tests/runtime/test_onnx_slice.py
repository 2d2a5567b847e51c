"""Stage graphs cut from a wider cached export equal the exporter's own graphs of the range."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from edgeweave.errors import RuntimeStageError  # noqa: E402
from edgeweave.runtime.engines.base import EngineConfig  # noqa: E402
from edgeweave.runtime.engines.onnx import SessionProfile, open_engine  # noqa: E402
from edgeweave.runtime.engines.onnx_build import Export, ensure  # noqa: E402
from edgeweave.runtime.engines.onnx_chain import StageChain  # noqa: E402
from edgeweave.runtime.engines.onnx_export import ExportSpec, build_stage, save  # noqa: E402
from edgeweave.runtime.engines.onnx_slice import covering_exports, slice_export  # noqa: E402
from edgeweave.types import Shard  # noqa: E402
from tests.conftest import make_cfg, random_model, save_folder  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPT = [5, 9, 3, 7, 11, 40, 2, 33]
STEPS = [4, 8, 15, 16, 23]
MODELS = {"llama": make_cfg(), "gemma3": make_cfg("gemma3", num_layers=6)}


@pytest.fixture(params=sorted(MODELS))
def model(request):
    return random_model(MODELS[request.param])


def _spec(model, start: int, end: int, weights: str) -> ExportSpec:
    return ExportSpec(start, end, weights=weights, max_len=model.cfg.max_position)


def _write(proto, folder: Path) -> Path:
    folder.mkdir(parents=True)
    save(proto, folder)
    return folder


def _engine(model, folder: Path, start: int, end: int, weights: str):
    n = model.cfg.num_layers
    cfg = EngineConfig("tiny", Shard(start, end, n), "fp32", backend="onnx", threads=1)
    export = Export(folder / "model.onnx", True, _spec(model, start, end, weights), {}, model.cfg)
    return open_engine(cfg, export, SessionProfile(threads=1))


def _trace(stages) -> list[np.ndarray]:
    chain = StageChain(stages, 64)
    return [chain.prefill(PROMPT), *(chain.decode(t) for t in STEPS)]


@pytest.mark.parametrize("weights", ["fp32", "int4"])
def test_cut_stages_compute_what_the_exporter_builds(model, tmp_path, weights):
    n = model.cfg.num_layers
    cuts = [0, 1, n // 2 + 1, n]
    ranges = list(zip(cuts, cuts[1:], strict=False))
    whole = _write(build_stage(model, _spec(model, 0, n, weights)), tmp_path / "whole")
    direct = [_engine(model, _write(build_stage(model, _spec(model, a, b, weights)),
                                    tmp_path / f"direct-{a}-{b}"), a, b, weights)
              for a, b in ranges]
    cut = [_engine(model, _write(slice_export(whole, a, b, n), tmp_path / f"cut-{a}-{b}"),
                   a, b, weights) for a, b in ranges]
    for want, got in zip(_trace(direct), _trace(cut), strict=True):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_a_cut_from_a_middle_export_equals_the_direct_one(model, tmp_path):
    n = model.cfg.num_layers
    wide = _write(build_stage(model, _spec(model, 1, n, "int4")), tmp_path / "wide")
    pieces = [(0, 1), (1, 2), (2, n - 1), (n - 1, n)]
    head = _write(build_stage(model, _spec(model, 0, 1, "int4")), tmp_path / "head")
    got = [_engine(model, head, 0, 1, "int4")] + [
        _engine(model, _write(slice_export(wide, a, b, n), tmp_path / f"cut-{a}-{b}"), a, b,
                "int4") for a, b in pieces[1:]]
    want = _engine(model, _write(build_stage(model, _spec(model, 0, n, "int4")),
                                 tmp_path / "whole"), 0, n, "int4")
    for a, b in zip(_trace([want]), _trace(got), strict=True):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-5)


def test_a_range_the_export_does_not_hold_is_refused(model, tmp_path):
    n = model.cfg.num_layers
    part = _write(build_stage(model, _spec(model, 1, 3, "fp32")), tmp_path / "part")
    with pytest.raises(RuntimeStageError, match=r"holds blocks \[1, 3\)"):
        slice_export(part, 0, 2, n)


def test_ensure_cuts_a_missing_stage_from_the_cached_whole_export(model, tmp_path, tmp_home):
    folder = save_folder(model, tmp_path / "tiny")
    n = model.cfg.num_layers
    whole = ensure(EngineConfig(str(folder), Shard(0, n, n), "fp32", "onnx"), build="process")
    assert [(c, d) for c, d, _ in covering_exports(whole.path.parent.parent, 1, 3)] == [(0, n)]
    # "never": building is refused, so only a cut can give the stage
    part = ensure(EngineConfig(str(folder), Shard(1, 3, n), "fp32", "onnx"), build="never")
    assert part.path.parent.name == "1-3" and part.spec.start == 1 and part.spec.end == 3
    again = ensure(EngineConfig(str(folder), Shard(1, 3, n), "fp32", "onnx"), build="never")
    assert again.reused and again.path == part.path
    with pytest.raises(RuntimeStageError, match="no ONNX export yet"):
        ensure(EngineConfig(str(folder), Shard(0, 2, n), "int8", "onnx",), build="never")


def test_a_child_build_exports_every_block_once_so_later_stages_are_cuts(tmp_path, tmp_home):
    model = random_model(MODELS["llama"])
    folder = save_folder(model, tmp_path / "tiny")
    n = model.cfg.num_layers
    part = ensure(EngineConfig(str(folder), Shard(1, 3, n), "fp32", "onnx"), build="child")
    variant_dir = part.path.parent.parent
    assert sorted(p.name for p in variant_dir.iterdir() if p.is_dir()) == [f"0-{n}", "1-3"]
    later = ensure(EngineConfig(str(folder), Shard(2, n, n), "fp32", "onnx"), build="never")
    assert later.path.parent.name == f"2-{n}"
