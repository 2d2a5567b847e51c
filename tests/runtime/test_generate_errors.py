"""Bad generation input and broken model folders: one GenerationError/CheckpointError line."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from edgeweave.errors import CheckpointError, GenerationError
from edgeweave.models.checkpoint import load_folder, read_config
from edgeweave.models.config import ModelConfig
from edgeweave.runtime.engine import LocalEngine
from edgeweave.runtime.generate import SamplingParams, check_text, generate
from tests.helpers import cli_error

BAD_UTF8 = b"\xff\xfe abc".decode("utf-8", "surrogateescape")  # what argv gives Python




@pytest.mark.parametrize("kwargs,needle", [
    ({"temperature": math.inf}, "temperature must be >= 0 and <= 2"),
    ({"temperature": math.nan}, "temperature must be >= 0 and <= 2"),
    ({"temperature": 2.5}, "temperature must be >= 0 and <= 2"),
    ({"temperature": "1"}, "temperature must be"),
    ({"top_p": math.nan}, "top_p must be in (0, 1]"),
    ({"top_p": 1.5}, "top_p must be in (0, 1]"),
    ({"top_k": -1}, "top_k must be an integer >= 0"),
    ({"top_k": 2.5}, "top_k must be an integer >= 0"),
    ({"repetition_penalty": math.inf}, "repetition_penalty must be a finite number > 0"),
    ({"repetition_penalty": 0}, "repetition_penalty must be a finite number > 0"),
    ({"seed": 99999999999999999999999}, "seed must be an integer in [0, 2**63-1]"),
    ({"seed": -1}, "seed must be an integer in [0, 2**63-1]"),
    ({"seed": 1.5}, "seed must be an integer"),
    ({"max_tokens": 2.0}, "max_tokens must be > 0"),
    ({"stop": (BAD_UTF8,)}, "a stop string is not valid UTF-8"),
    ({"stop_token_ids": (-4,)}, "stop_token_ids must be non-negative integers"),
])
def test_sampling_values_are_validated_for_the_python_api(kwargs: dict, needle: str) -> None:
    with pytest.raises(GenerationError) as e:
        SamplingParams(**kwargs)
    assert needle in str(e.value)


def test_the_edges_of_the_ranges_are_accepted() -> None:
    SamplingParams(temperature=0.0, top_p=1.0, top_k=0, seed=0)
    SamplingParams(temperature=2.0, top_p=1e-9, repetition_penalty=1e-3, seed=2**63 - 1)


def test_invalid_utf8_in_a_prompt_names_the_byte_and_the_fix(tiny_folder: Path) -> None:
    with pytest.raises(GenerationError, match=r"byte 0xff at character 0.*LANG=C.UTF-8"):
        check_text(BAD_UTF8)
    lm = load_folder(tiny_folder)
    eng = LocalEngine(lm.model, max_len=64)
    with pytest.raises(GenerationError, match="not valid UTF-8"):
        generate(eng, lm.tokenizer, BAD_UTF8, SamplingParams(max_tokens=2))
    with pytest.raises(GenerationError, match="content of a 'user' message is not valid UTF-8"):
        generate(eng, lm.tokenizer, [{"role": "user", "content": BAD_UTF8}],
                 SamplingParams(max_tokens=2))


@pytest.mark.parametrize("extra,needle", [
    ([BAD_UTF8], "the prompt is not valid UTF-8 text (byte 0xff"),
    (["hello", "--seed", "99999999999999999999999"], "seed must be an integer in [0, 2**63-1]"),
    (["hello", "-t", "inf"], "temperature must be >= 0 and <= 2 (got inf)"),
    (["hello", "-t", "nan"], "temperature must be >= 0 and <= 2"),
    (["hello", "--top-p", "nan"], "top_p must be in (0, 1]"),
    (["hello", "--repetition-penalty", "inf"], "repetition_penalty must be a finite number"),
    (["hello", "--stop", BAD_UTF8], "a stop string is not valid UTF-8"),
])
def test_generate_cli_prints_one_line_and_exits_2(tiny_folder: Path, capsys, extra: list[str],
                                                  needle: str) -> None:
    err = cli_error(capsys, ["generate", *extra, "--model", str(tiny_folder), "-n", "2"])
    assert needle in err


@pytest.fixture
def broken(tiny_folder: Path, tmp_path: Path) -> Path:
    out = tmp_path / "broken"
    shutil.copytree(tiny_folder, out)
    return out


@pytest.mark.parametrize("content,needle", [
    (bytes(range(256)), "is not a valid model config"),
    (b"[1, 2]", "a model config is a JSON object"),
    (b"{not json", "is not a valid model config"),
])
def test_a_garbage_config_json_is_a_checkpoint_error(broken: Path, content: bytes,
                                                     needle: str) -> None:
    (broken / "config.json").write_bytes(content)
    with pytest.raises(CheckpointError, match=needle):
        read_config(broken)
    with pytest.raises(CheckpointError, match=needle):
        load_folder(broken)


@pytest.mark.parametrize("key,value,needle", [
    ("hidden_size", "64", "hidden_size must be an integer, got str '64'"),
    ("hidden_size", 0, "hidden_size must be a positive integer"),
    ("num_attention_heads", 0, "num_heads must be a positive integer"),
    ("rms_norm_eps", "tiny", "rms_norm_eps must be a number"),
    ("tie_word_embeddings", "no", "tie_word_embeddings must be true or false"),
    ("eos_token_id", ["x"], "eos_token_id must be an integer or a list of integers"),
    ("rope_scaling", "llama3", "rope_scaling must be an object"),
    ("num_hidden_layers", None, "the config lacks 'num_hidden_layers'"),
    ("intermediate_size", 96, "do not match its config.json (size mismatch for "),
])
def test_wrong_config_values_are_checkpoint_errors(broken: Path, key: str, value: object,
                                                   needle: str) -> None:
    cfg = json.loads((broken / "config.json").read_text())
    cfg[key] = value
    (broken / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError) as e:
        load_folder(broken)
    assert needle in str(e.value)


def test_a_garbage_tokenizer_config_is_a_checkpoint_error(broken: Path) -> None:
    (broken / "tokenizer_config.json").write_bytes(bytes(range(256)))
    with pytest.raises(CheckpointError, match="tokenizer_config.json"):
        load_folder(broken)


def test_generate_cli_with_a_garbage_config(broken: Path, capsys) -> None:
    (broken / "config.json").write_bytes(bytes(range(256)))
    err = cli_error(capsys, ["generate", "hello", "--model", str(broken)])
    assert "config.json is not a valid model config" in err


def test_config_values_are_checked_for_the_python_api_too() -> None:
    with pytest.raises(CheckpointError, match="num_heads must be a positive integer"):
        ModelConfig(family="llama", vocab_size=8, hidden_size=8, intermediate_size=8,
                    num_layers=1, num_heads=0, num_kv_heads=1, head_dim=8)
