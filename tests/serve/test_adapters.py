"""LoRA adapters served per request, unmerged, on both engines.

A tiny random-weight model and two adapters with random non-zero factors (saved by the real
``save_adapter``), served by a real server on 127.0.0.1 and asked through the official
``openai`` client: each model name gives its own answer, the base's answer does not change
after adapter requests, and the unmerged logits equal the merged model's (``merge_lora``)
within a stated tolerance, on the torch engine and on ONNX Runtime.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeweave.errors import ConfigError
from edgeweave.finetune.adapter import save_adapter
from edgeweave.models.checkpoint import load_folder
from edgeweave.runtime.adapters import AdapterSpec
from edgeweave.runtime.engine import LocalEngine
from edgeweave.runtime.generate import SamplingParams, generate
from edgeweave.runtime.local import EngineChoice
from edgeweave.serve.backend import LocalSessions
from edgeweave.serve.config import ServeConfig
from edgeweave.serve.server import BackgroundServer
from tests.adapter_helpers import (
    ATOL,
    LORAS,
    PROMPT,
    adapter_model,
    reference,
    run_logits,
    world_fixture,
)
from tests.conftest import make_cfg, random_model
from tests.helpers import cli_error
from tests.serve.conftest import client


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    yield from world_fixture(tmp_path_factory)


def _backend(world: dict, engine: str) -> LocalSessions:
    if engine == "torch":
        return LocalSessions.from_loaded(load_folder(world["folder"]), adapters=world["specs"])
    return LocalSessions.load(str(world["folder"]), EngineChoice("onnx", "fp32"),
                              adapters=world["specs"])


@pytest.fixture(scope="module", params=["torch", "onnx"])
def served(request: pytest.FixtureRequest, world: dict) -> Iterator[tuple[str, LocalSessions, str]]:
    backend = _backend(world, request.param)
    with BackgroundServer(backend, ServeConfig(max_tokens_limit=32, default_max_tokens=16)) as url:
        yield request.param, backend, url


def _complete(url: str, model: str) -> str:
    r = client(url).completions.create(model=model, prompt=PROMPT, max_tokens=8, temperature=0)
    assert r.model == model
    return r.choices[0].text


def test_models_lists_the_base_and_each_adapter(served):
    _, _, url = served
    data = {m.id: m for m in client(url).models.list().data}
    # the generative models first (the embedding model, when installed, comes after them)
    assert list(data)[:3] == ["tiny-llama", "home-a", "home-b"]
    assert set(list(data)[3:]) <= {"all-MiniLM-L6-v2"}
    assert data["home-a"].parent == "tiny-llama" and data["tiny-llama"].parent is None
    assert data["home-b"].root.endswith("home-b")
    assert data["home-b"].edgeweave["adapter"]["rank"] == 2
    assert client(url).models.retrieve("home-a").id == "home-a"


def test_each_model_name_runs_its_adapter_and_the_base_stays_unchanged(served, world):
    engine, _, url = served
    tok = load_folder(world["folder"]).tokenizer
    params = SamplingParams(max_tokens=8, temperature=0)
    want = {name: generate(LocalEngine(m, 64), tok, PROMPT, params).text
            for name, m in world["merged"].items()}
    assert len(set(want.values())) == 3, want  # the three models answer differently
    before = _complete(url, "tiny-llama")
    got = {name: _complete(url, name) for name in ("home-a", "home-b")}
    after = _complete(url, "tiny-llama")
    assert before == after == want["tiny-llama"], engine
    assert got == {"home-a": want["home-a"], "home-b": want["home-b"]}, engine


def test_unmerged_logits_equal_the_merged_models(served, world):
    engine, backend, _ = served
    base_ref = reference(world["merged"]["tiny-llama"])
    base_before = run_logits(backend.new_session(64))
    for name in ("home-a", "home-b"):
        got = run_logits(backend.new_session(64, adapter=name))
        want = reference(world["merged"][name])
        np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)
        assert np.abs(got - base_ref).max() > 0.05  # the adapter really changes the logits
    a = run_logits(backend.new_session(64, adapter="home-a"))
    b = run_logits(backend.new_session(64, adapter="home-b"))
    assert np.abs(a - b).max() > 0.05
    base_after = run_logits(backend.new_session(64))
    np.testing.assert_allclose(base_before, base_ref, atol=ATOL, rtol=0)
    assert np.array_equal(base_after, base_before)  # bit-identical: the base path untouched


def test_an_unknown_model_is_an_openai_404_naming_the_served_ones(served):
    import openai

    _, _, url = served
    with pytest.raises(openai.NotFoundError) as e:
        client(url).chat.completions.create(model="home-c", max_tokens=2,
                                            messages=[{"role": "user", "content": "hello"}])
    err = e.value.body
    assert err["code"] == "model_not_found" and err["param"] == "model"
    assert "'home-a'" in err["message"] and "'home-b'" in err["message"]


def test_sessions_with_different_adapters_share_one_batched_forward(world):
    # the torch hook applies each row's adapter to its rows only: one base matmul per layer
    from edgeweave.runtime.adapters import load_adapter
    from edgeweave.runtime.engines import torch_lora

    model = random_model(world["cfg"], 0)
    tables = {}
    for spec in world["specs"]:
        tables[spec.name] = torch_lora.table(load_adapter(spec), 0, 4)
        torch_lora.install(model, list(tables[spec.name]))
        torch_lora.install(model, list(tables[spec.name]))  # twice: still one hook each
    ids = torch.tensor([PROMPT, PROMPT[::-1], PROMPT])
    rows = [tables["home-a"], None, tables["home-b"]]
    with torch.inference_mode():
        with torch_lora.active(rows):
            batched = model(ids)[:, -1]
        for b, name in enumerate(["home-a", "tiny-llama", "home-b"]):
            ref = world["merged"][name](ids[b:b + 1])[0, -1]
            torch.testing.assert_close(batched[b], ref, atol=1e-4, rtol=0)


def test_an_adapter_of_another_base_is_refused_at_startup(world, capsys):
    root, cfg = world["root"], world["cfg"]
    lora = LORAS["home-a"]
    other = root / "other-base"
    save_adapter(other, adapter_model(cfg, lora, 7), lora, base="another-model",
                 base_fingerprint="0" * 64)
    narrow = root / "narrow"  # no fingerprint recorded, but the shapes are another model's
    small = make_cfg(hidden_size=32, head_dim=8)
    save_adapter(narrow, adapter_model(small, lora, 8), lora)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    argv = ["serve", "--model", str(world["folder"]), "--port", port, "--backend", "torch"]
    line = cli_error(capsys, [*argv, "--adapter", f"x={other}"])
    assert "trained on another-model" in line and "fingerprints differ" in line
    line = cli_error(capsys, [*argv, "--adapter", f"x={narrow}"])
    assert "features but tiny-llama's maps" in line
    assert "NAME=DIR" in cli_error(capsys, [*argv, "--adapter", str(other)])
    assert "not an adapter folder" in cli_error(capsys, [*argv, "--adapter",
                                                         f"x={world['folder']}"])
    spec = world["specs"][0]
    assert "used twice" in cli_error(capsys, [*argv, "--adapter", f"tiny-llama={spec.folder}"])


@pytest.mark.parametrize("engine", ["torch", "onnx"])
def test_a_plans_stages_run_the_adapters_sent_to_them(world, tmp_path, engine):
    # `edgeweave serve --plan P --adapter ...` without nodes: an embedded coordinator whose
    # stages get each adapter's blocks over frames (Op.ADAPTER), as nodes over gRPC do
    import json

    from edgeweave.serve.deploy import build
    from edgeweave.types import Plan

    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(Plan.split(4, [1, 3], ["a", "b", "a"]).to_dict()))
    dep = build(str(world["folder"]), plan=plan, choice=EngineChoice(engine, "fp32"),
                adapters=world["specs"])
    try:
        backend = dep.backend
        assert sorted(backend.adapters) == ["home-a", "home-b"]
        base = run_logits(backend.new_session(64))
        for name in ("home-a", "home-b", "tiny-llama"):
            adapter = None if name == "tiny-llama" else name
            got = run_logits(backend.new_session(64, adapter=adapter))
            np.testing.assert_allclose(got, reference(world["merged"][name]), atol=ATOL, rtol=0)
        assert np.array_equal(run_logits(backend.new_session(64)), base)
        # device b fails mid-session: its stage is rebuilt on a (same process, same shared
        # weights) and replayed with the session's adapter, which a got when it was loaded
        s = backend.new_session(64, adapter="home-a")
        out = [s.prefill(PROMPT)]
        backend.coordinator.mark_failed("b")
        for _ in range(3):
            out.append(s.decode(int(out[-1].argmax())))
        assert [st.device for st in backend.coordinator.plan.stages] == ["a", "a", "a"]
        np.testing.assert_allclose(np.stack(out), reference(world["merged"]["home-a"]),
                                   atol=ATOL, rtol=0)
    finally:
        dep.close()
    with pytest.raises(ConfigError, match="no adapter 'nope'"):
        LocalSessions.from_loaded(load_folder(world["folder"])).new_session(8, adapter="nope")


def test_an_adapter_from_edgeweave_finetune_loads_as_it_is(world, tmp_path, monkeypatch):
    from edgeweave.cli.app import main

    monkeypatch.setenv("EDGEWEAVE_HOME", str(tmp_path / "home"))
    text = tmp_path / "notes.txt"
    text.write_text("\n\n".join("the sensor reads temperature in the kitchen and the door is "
                                "high low on off" for _ in range(30)))
    ad, merged = tmp_path / "ft", tmp_path / "merged"
    assert main(["finetune", "--model", str(world["folder"]), "--data", str(text), "--steps",
                 "3", "--lr", "0.02", "--seq-len", "16", "--rank", "2", "--targets",
                 "q_proj,v_proj,down_proj", "--out", str(ad), "--merge-out",
                 str(merged)]) == 0
    backend = LocalSessions.from_loaded(load_folder(world["folder"]),
                                        adapters=[AdapterSpec("ft", ad)])
    got = run_logits(backend.new_session(64, adapter="ft"))
    want = reference(load_folder(Path(merged)).model)
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)
    assert np.abs(got - run_logits(backend.new_session(64))).max() > 1e-3


def test_an_adapter_from_edgeweave_federate_loads_as_it_is(world, tmp_path, monkeypatch):
    # rank-heterogeneous tiers (2, 4, 8) with rolling windows, zero-pad aggregation: the
    # global adapter has the largest rank on every block of the region
    import json

    from edgeweave.cli.app import main
    from edgeweave.finetune.adapter import merge_to_folder

    monkeypatch.setenv("EDGEWEAVE_HOME", str(tmp_path / "home"))
    ad = tmp_path / "fed"
    assert main(["federate", "--model", str(world["folder"]), "--task", "pattern", "--clients",
                 "3", "--rounds", "1", "--local-steps", "2", "--lr", "0.05", "--region", "2-4",
                 "--aggregation", "pad", "--adapter-out", str(ad)]) == 0
    man = json.loads((ad / "manifest.json").read_text())
    assert man["lora"]["layers"] == [2, 3] and man["lora"]["rank"] == 8
    backend = LocalSessions.from_loaded(load_folder(world["folder"]),
                                        adapters=[AdapterSpec("fed", ad)])
    got = run_logits(backend.new_session(64, adapter="fed"))
    want = reference(load_folder(merge_to_folder(world["folder"], ad, tmp_path / "m")).model)
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)
    assert np.abs(got - run_logits(backend.new_session(64))).max() > 1e-4


def test_an_onnx_server_with_adapters_never_imports_torch(world):
    # the adapter is read with safetensors' numpy API and the LoRA twin graph is found in
    # the cache (or built in a child process): the serving process stays free of torch
    import json
    import os
    import subprocess
    import sys
    import textwrap

    specs = {s.name: str(s.folder) for s in world["specs"]}
    code = textwrap.dedent(f"""
        import json, sys
        from edgeweave.runtime.adapters import AdapterSpec
        from edgeweave.runtime.local import EngineChoice
        from edgeweave.serve.backend import LocalSessions
        b = LocalSessions.load({str(world["folder"])!r}, EngineChoice("onnx", "fp32"),
                               adapters=[AdapterSpec(n, f) for n, f in {specs!r}.items()])
        rows = [b.new_session(16, adapter=a).prefill({PROMPT!r}).tolist()
                for a in (None, "home-a")]
        print(json.dumps({{"torch": "torch" in sys.modules, "rows": rows}}))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ}, check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["torch"] is False
    for row, name in zip(got["rows"], ("tiny-llama", "home-a"), strict=True):
        np.testing.assert_allclose(row, reference(world["merged"][name], 0)[0],
                                   atol=ATOL, rtol=0)


def test_generate_and_local_model_run_an_adapter_folder(world, capsys):
    from edgeweave.cli.app import main
    from edgeweave.runtime.local import LocalModel

    tok = load_folder(world["folder"]).tokenizer
    params = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)
    want = generate(LocalEngine(world["merged"]["home-a"], 64), tok, "the sensor reads",
                    params).text
    base = generate(LocalEngine(world["merged"]["tiny-llama"], 64), tok, "the sensor reads",
                    params).text
    assert want != base
    spec = world["specs"][0]
    assert main(["generate", "the sensor reads", "--model", str(world["folder"]), "--backend",
                 "torch", "--variant", "fp32", "-n", "6", "--adapter", str(spec.folder)]) == 0
    assert capsys.readouterr().out.startswith(want)
    lm = LocalModel.load(str(world["folder"]), EngineChoice("onnx", "fp32"), adapters=[spec])
    got = generate(lm.new_session(64, adapter="home-a"), lm.tokenizer, "the sensor reads",
                   params).text
    assert got == want and lm.adapters == ("home-a",)
    assert generate(lm.new_session(64), lm.tokenizer, "the sensor reads", params).text == base


def test_sessions_of_different_adapters_step_in_one_batch(served, world):
    """One batched round over the base and both adapters: each session gets the logits of
    its own merged model (the engine packs or groups sessions by adapter)."""
    from edgeweave.runtime.sequence import StepInput, step_batch

    _, backend, _ = served
    names = ["tiny-llama", "home-a", "home-b", "home-a"]
    sessions = [backend.new_session(64) if n == "tiny-llama" else
                backend.new_session(64, adapter=n) for n in names]
    try:
        first = step_batch([(s, StepInput(tuple(PROMPT), True)) for s in sessions])
        toks = [int(np.asarray(x).argmax()) for x in first]
        second = step_batch([(s, StepInput((t,), False)) for s, t in zip(sessions, toks,
                                                                         strict=True)])
        for name, a, b in zip(names, first, second, strict=True):
            ref = reference(world["merged"][name], steps=1)
            np.testing.assert_allclose(np.asarray(a).reshape(-1), ref[0], atol=ATOL)
            np.testing.assert_allclose(np.asarray(b).reshape(-1), ref[1], atol=ATOL)
    finally:
        for s in sessions:
            close = getattr(s, "close", None)
            if close:
                close()
