"""Artifacts: tamper detection, shards, named variants, distillation resume."""

from __future__ import annotations

import json

import pytest
import torch

from edgeweave.compress import RTN, compress, load_artifact
from edgeweave.compress.distill.kd import train_student
from edgeweave.compress.recipes import Distill
from edgeweave.errors import ArtifactError
from edgeweave.types import Shard


@pytest.fixture(scope="module")
def saved(tiny_lm, tmp_path_factory):
    return compress(tiny_lm, RTN(bits=4, group_size=64), out=tmp_path_factory.mktemp("a") / "x")


def test_tampered_weights_are_refused(saved, tmp_path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(saved.path, copy)
    data = bytearray((copy / "model.safetensors").read_bytes())
    data[-10] ^= 0xFF
    (copy / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="does not match the sha256"):
        load_artifact(copy)


def test_missing_file_and_not_an_artifact(saved, tmp_path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(saved.path, copy)
    (copy / "tokenizer.json").unlink()
    with pytest.raises(ArtifactError, match="missing"):
        load_artifact(copy)
    with pytest.raises(ArtifactError, match="not an edgeweave artifact"):
        load_artifact(tmp_path)


def test_manifest_describes_the_artifact(saved) -> None:
    m = json.loads((saved.path / "manifest.json").read_text())
    assert m["stats"]["size_bytes"] == (saved.path / "model.safetensors").stat().st_size
    assert m["modules"]["layers.0.mlp.up_proj"] == {
        "kind": "int4", "meta": {"in_features": 128, "out_features": 256, "group_size": 64,
                                 "bits": 4, "zero_point": "float"}}
    assert m["modules"]["embed_tokens"]["kind"] == "qembed"
    assert "lm_head" not in m["modules"]  # tied: the head reuses the embedding's integers
    assert set(m["files"]) >= {"model.safetensors", "config.json", "tokenizer.json"}


def test_shards_load_only_their_blocks_and_chain_to_the_full_model(saved) -> None:
    full = load_artifact(saved.path).model
    n = full.cfg.num_layers
    a = load_artifact(saved.path, Shard(0, 2, n)).model
    b = load_artifact(saved.path, Shard(2, n, n)).model
    assert set(a.layers) == {"0", "1"} and a.lm_head is None
    ids = torch.randint(0, 128, (1, 10))
    assert torch.equal(b.head(b.run_blocks(a.run_blocks(a.embed(ids)))), full(ids))


def test_named_variant_is_built_once_and_reused(monkeypatch, tiny_lm) -> None:
    from edgeweave.compress import variants

    calls = []
    monkeypatch.setattr("edgeweave.models.load", lambda name: calls.append(name) or tiny_lm)
    p1 = variants.variant("int8", model="tiny")
    p2 = variants.variant("int8", model="tiny")
    assert p1 == p2 and calls == ["tiny"]
    assert load_artifact(p1).config == tiny_lm.config


def test_distillation_resumes_from_its_checkpoint(tiny_lm, calib, tmp_path) -> None:
    r = Distill(student_layers=2, steps=4, batch=2, checkpoint_every=2)
    ckpt = tmp_path / "kd.pt"
    _, first = train_student(tiny_lm.model, r, calib.ids, ckpt, stop_after=2)
    assert first["steps_done"] == 2 and ckpt.is_file()
    resumed, second = train_student(tiny_lm.model, r, calib.ids, ckpt)
    assert second["resumed_from"] == 2 and second["steps_done"] == 4
    straight, third = train_student(tiny_lm.model, r, calib.ids, tmp_path / "other.pt")
    ids = calib.ids[:1]
    assert torch.allclose(resumed(ids), straight(ids), atol=1e-4)


def test_distillation_logs_its_progress(tiny_lm, calib, tmp_path, caplog) -> None:
    r = Distill(student_layers=2, steps=20, batch=2, checkpoint_every=50)
    with caplog.at_level("INFO", logger="edgeweave.compress.distill.kd"):
        train_student(tiny_lm.model, r, calib.ids, tmp_path / "kd.pt")
    lines = [rec.getMessage() for rec in caplog.records if rec.getMessage().startswith("distill")]
    assert len(lines) == 10  # every 2nd step of 20
    assert lines[0].startswith("distill: step 2/20, loss ") and "s a step" in lines[0]
    assert lines[-1].startswith("distill: step 20/20,") and "about 0 s left" in lines[-1]
