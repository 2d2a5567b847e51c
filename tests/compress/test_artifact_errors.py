"""Damaged or edited artifacts: one ArtifactError with the fix, never a traceback."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from edgeweave.cli.app import main
from edgeweave.compress import RTN, compress, load_artifact, read_manifest, verify
from edgeweave.compress.artifact import MANIFEST
from edgeweave.errors import ArtifactError
from edgeweave.paths import atomic_write_json, sha256_file


@pytest.fixture(scope="module")
def saved(tiny_lm, tmp_path_factory):
    return compress(tiny_lm, RTN(bits=4, group_size=64), out=tmp_path_factory.mktemp("a") / "x")


@pytest.fixture
def copy(saved, tmp_path) -> Path:
    out = tmp_path / "copy"
    shutil.copytree(saved.path, out)
    return out


def edit_manifest(folder: Path, change: Callable[[dict], object]) -> None:
    m = json.loads((folder / MANIFEST).read_text())
    change(m)  # edits in place
    (folder / MANIFEST).write_text(json.dumps(m))


def rehash(folder: Path, name: str) -> None:
    """Update the manifest's sha256 of ``name``, as someone tampering on purpose would."""
    edit_manifest(folder, lambda m: m["files"].__setitem__(name, sha256_file(folder / name)))


def first_module(m: dict) -> dict:
    return m["modules"][next(iter(m["modules"]))]


@pytest.mark.parametrize("text,needle", [
    ("[]", "holds a list, not a manifest object"),
    ("null", "holds null, not a manifest object"),
    ('"x"', "holds a string, not a manifest object"),
])
def test_a_manifest_that_is_not_an_object(copy: Path, text: str, needle: str) -> None:
    (copy / MANIFEST).write_text(text)
    with pytest.raises(ArtifactError, match=needle):
        load_artifact(copy)


def test_a_binary_manifest(copy: Path) -> None:
    (copy / MANIFEST).write_bytes(bytes(range(256)))
    with pytest.raises(ArtifactError, match="is not valid JSON.*re-run `edgeweave compress`"):
        read_manifest(copy)


@pytest.mark.parametrize("change,needle", [
    (lambda m: m.__setitem__("files", list(m["files"])), "`files` must map file names"),
    (lambda m: m.__setitem__("modules", []), "`modules` must map module names"),
    (lambda m: first_module(m).__setitem__("meta", None), "must be an object with a string "
                                                          "`kind` and a `meta` object"),
    (lambda m: m.__setitem__("config", "llama"), "`config` must be the model's config"),
    (lambda m: m.__setitem__("format_version", "1"), "this edgeweave reads"),
    (lambda m: m.__setitem__("source", {"name": 5}), "`source` must be an object"),
])
def test_manifest_fields_of_the_wrong_type(copy: Path, change, needle: str) -> None:
    edit_manifest(copy, change)
    with pytest.raises(ArtifactError, match=needle):
        load_artifact(copy)


def test_emptied_module_metadata(copy: Path, tmp_path: Path) -> None:
    edit_manifest(copy, lambda m: first_module(m).__setitem__("meta", {}))
    with pytest.raises(ArtifactError, match="does not match its metadata.*re-run"):
        load_artifact(copy)
    other = tmp_path / "other"
    shutil.copytree(copy, other)
    edit_manifest(other, lambda m: m.__setitem__("modules", {}))
    with pytest.raises(ArtifactError, match="lacks .* tensors.*`modules` of manifest.json"):
        load_artifact(other)


@pytest.mark.parametrize("value,needle", [
    ("big", "hidden_size must be an integer, got str 'big'"),
    ("128", "hidden_size must be an integer, got str '128'"),
    (64, "the weights do not match the config"),
    (-1, "hidden_size must be a positive integer"),
])
def test_an_edited_config_in_the_manifest(copy: Path, value: object, needle: str) -> None:
    edit_manifest(copy, lambda m: m["config"].__setitem__("hidden_size", value))
    with pytest.raises(ArtifactError, match=needle):
        load_artifact(copy)


def test_a_corrupt_safetensors_header_with_a_matching_hash(copy: Path) -> None:
    w = copy / "model.safetensors"
    data = bytearray(w.read_bytes())
    data[8:20] = b"{" * 12  # inside the JSON header
    w.write_bytes(bytes(data))
    rehash(copy, "model.safetensors")
    verify(copy)  # the hashes agree: only reading the file finds the damage
    with pytest.raises(ArtifactError, match="cannot be read .*re-run `edgeweave compress`"):
        load_artifact(copy)


def test_an_unlisted_file_is_refused(copy: Path) -> None:
    (copy / "notes.txt").write_text("hello")
    with pytest.raises(ArtifactError, match="holds notes.txt, which manifest.json does not list"):
        load_artifact(copy)


def test_an_unlisted_folder_is_refused(copy: Path) -> None:
    (copy / "onnx").mkdir()
    with pytest.raises(ArtifactError, match="holds onnx, which"):
        verify(copy)


def test_a_tokenizer_without_a_hash_is_refused(copy: Path) -> None:
    # before: the hash entry could be dropped and any tokenizer.json would load unverified
    edit_manifest(copy, lambda m: m["files"].pop("tokenizer.json"))
    with pytest.raises(ArtifactError, match="holds tokenizer.json, which manifest.json does not "
                                            "list.*delete what you added there, or re-run"):
        load_artifact(copy)


@pytest.mark.parametrize("name", ["../outside.json", "sub/config.json", ".", "manifest.json"])
def test_files_must_be_plain_names_in_the_folder(copy: Path, name: str) -> None:
    edit_manifest(copy, lambda m: m["files"].__setitem__(name, "0" * 64))
    with pytest.raises(ArtifactError, match="which is not a plain file name"):
        verify(copy)


def test_update_metrics_and_its_temp_file_stay_loadable(saved, copy: Path) -> None:
    saved.update_metrics({"ppl_wikipedia": 12.5})  # rewrites manifest.json, which is unhashed
    assert verify(saved.path)["metrics"]["ppl_wikipedia"] == 12.5
    # what atomic_write_json leaves while it writes (or if killed mid-write)
    (copy / f".{MANIFEST}.k3j2x.tmp").write_text("{")
    atomic_write_json(copy / MANIFEST, {**read_manifest(copy), "metrics": {"q": 1}})
    load_artifact(copy)
    (copy / ".evil.tmp").write_text("x")
    with pytest.raises(ArtifactError, match=r"holds \.evil\.tmp"):
        verify(copy)


def test_onnx_exports_are_cached_outside_the_artifact(tmp_home) -> None:
    from edgeweave.compress.variants import variant_path
    from edgeweave.runtime.engines.onnx_cache import export_dir
    from edgeweave.runtime.engines.onnx_export import ExportSpec

    art = variant_path("int4")
    exported = export_dir("smollm2-135m-instruct", "int4", ExportSpec(0, 30, weights="int4"))
    assert not exported.is_relative_to(art) and exported.is_relative_to(tmp_home)


@pytest.mark.parametrize("damage", ["unlisted", "list-manifest", "meta"])
def test_eval_cli_prints_one_line_and_exits_2(copy: Path, capsys, damage: str) -> None:
    if damage == "unlisted":
        (copy / "extra.bin").write_bytes(b"\0")
    elif damage == "list-manifest":
        (copy / MANIFEST).write_text("[]")
    else:
        edit_manifest(copy, lambda m: first_module(m).__setitem__("meta", {}))
    assert main(["eval", "--artifact", str(copy), "--tokens", "64", "--no-questions"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "re-run" in lines[0]
