"""Speculative decoding on tiny models: greedy identity for every draft kind (embedded and
over gRPC), rewinding after partial acceptance, failover mid-speculation, the options."""

from __future__ import annotations

import numpy as np
import pytest

from edgeweave.errors import ConfigError
from edgeweave.models import load
from edgeweave.runtime.drafts import DraftSpec, Speculation, build_draft
from edgeweave.runtime.engine import EngineSession, LocalEngine
from edgeweave.runtime.engines.base import EngineConfig
from edgeweave.runtime.engines.torch import TorchStageEngine
from edgeweave.runtime.generate import SamplingParams, generate_step, stream_generate
from edgeweave.runtime.launch import embedded, launch
from edgeweave.runtime.speculative import SpeculationConfig, SpeculativeSession
from edgeweave.types import Plan, Shard
from tests.conftest import make_cfg, random_model, save_folder

PROMPT = [1, 5, 9, 17, 33, 3, 40, 41]
PARAMS = SamplingParams(max_tokens=24, ignore_eos=True)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _reference(model) -> list[int]:
    return list(generate_step(LocalEngine(model, max_len=128), PROMPT, PARAMS))


def _tokens(engine, tokenizer, params=PARAMS) -> list[int]:
    return [t for r in stream_generate(engine, tokenizer, PROMPT, params) for t in r.tokens]


def _whole(model, name: str = "mem") -> TorchStageEngine:
    n = model.cfg.num_layers
    return TorchStageEngine(EngineConfig(name, Shard(0, n, n)), model=model)


@pytest.fixture
def lm(tiny_folder):
    return load(str(tiny_folder))


def _drafts(lm, kind: str):
    if kind == "same":  # the model itself: (nearly) everything is accepted
        return _whole(lm.model)
    if kind == "other":  # another random model: most proposals are rejected
        return _whole(random_model(make_cfg(), seed=11))
    return build_draft(DraftSpec.parse("early-exit:2"), str(lm.folder),
                       _torch_choice())  # the first 2 of 4 blocks


def _torch_choice():
    from edgeweave.runtime.local import EngineChoice

    return EngineChoice("torch", "fp32")


@pytest.mark.parametrize("kind", ["same", "other", "early-exit"])
@pytest.mark.parametrize("k", [3, 0])
def test_greedy_output_is_plain_decoding_for_every_draft_kind(lm, kind, k):
    # Prepare: a 2-stage plan in this process verifies, a draft proposes
    coord = embedded(str(lm.folder), Plan.split(4, [2]), loaded=lm, max_len=128,
                     backend="torch").coordinator
    draft = _drafts(lm, kind)
    # Execute
    with SpeculativeSession(coord.new_session(), EngineSession(draft, 128),
                            SpeculationConfig(k=k)) as spec:
        got = _tokens(spec, lm.tokenizer)
        stats = spec.stats
    coord.close()
    # Assert: the text plain decoding gives, with fewer verifier passes where drafts hit
    assert got == _reference(lm.model)
    assert stats["spec_rounds"] >= 1
    if kind == "same":
        assert stats["spec_acceptance"] > 0.9
        assert stats["steps"] < 24  # fewer target steps than tokens: several per pass
    if kind == "other":
        assert stats["spec_acceptance"] < 0.6


@pytest.mark.parametrize("kind", ["same", "other"])
def test_drafting_ahead_during_the_verify_pass_keeps_greedy_output(lm, kind):
    coord = embedded(str(lm.folder), Plan.split(4, [2]), loaded=lm, max_len=128,
                     backend="torch").coordinator
    with SpeculativeSession(coord.new_session(), EngineSession(_drafts(lm, kind), 128),
                            SpeculationConfig(k=3, overlap=True)) as spec:
        got = _tokens(spec, lm.tokenizer)
        stats = spec.stats
    coord.close()
    assert got == _reference(lm.model)
    assert stats["spec_rounds"] >= 1


def test_over_a_delayed_link_the_draft_works_while_the_pass_travels(tmp_path):
    # Prepare: a real node behind a link of 10 ms each way, the model itself as the draft
    from edgeweave.runtime.launch import attach
    from edgeweave.runtime.transport.delay_proxy import LinkShape, NodeDelayProxy

    model = random_model(make_cfg(), seed=5)
    reference = _reference(model)
    folder = save_folder(model, tmp_path / "tiny")
    lm = load(str(folder))
    plan = Plan.split(4, [], ["n0"])
    with launch(plan, str(folder), threads=1, max_len=128, backend="torch") as dep, \
            NodeDelayProxy(dep.addresses["n0"], LinkShape(delay_ms=10)) as proxy:
        far = attach(plan, str(folder), {"n0": proxy.address}, backend="torch", max_len=128)
        # Execute
        with SpeculativeSession(far.coordinator.new_session(),
                                EngineSession(_whole(lm.model), 128),
                                SpeculationConfig(k=3, overlap=True)) as spec:
            got = _tokens(spec, lm.tokenizer)
            stats = spec.stats
        far.close()
    # Assert: the same text, and rounds whose proposals were ready when they started
    assert got == reference
    assert stats["spec_rounds_drafted_ahead"] >= 1
    assert stats["spec_rounds"] + stats["spec_plain_steps"] < 24


@pytest.mark.parametrize("seed", [None, 7])
def test_sampled_requests_draft_ahead_unless_they_are_seeded(tmp_path, seed):
    # Prepare: a node behind 10 ms each way; nearly greedy sampling with the model itself as
    # the draft, so the draft's guesses of the bonus token often hold
    from edgeweave.runtime.launch import attach
    from edgeweave.runtime.transport.delay_proxy import LinkShape, NodeDelayProxy

    model = random_model(make_cfg(), seed=5)
    folder = save_folder(model, tmp_path / "tiny")
    lm = load(str(folder))
    params = SamplingParams(max_tokens=24, temperature=0.05, seed=seed, ignore_eos=True)
    plan = Plan.split(4, [], ["n0"])
    with launch(plan, str(folder), threads=1, max_len=128, backend="torch") as dep, \
            NodeDelayProxy(dep.addresses["n0"], LinkShape(delay_ms=10)) as proxy:
        far = attach(plan, str(folder), {"n0": proxy.address}, backend="torch", max_len=128)
        # Execute
        with SpeculativeSession(far.coordinator.new_session(),
                                EngineSession(_whole(lm.model), 128),
                                SpeculationConfig(k=3, overlap=True)) as spec:
            got = _tokens(spec, lm.tokenizer, params)
            stats = spec.stats
        far.close()
    # Assert: every token came; proposals drafted ahead only where no seed must repeat
    assert len(got) == 24
    assert stats["spec_rounds"] >= 1
    if seed is None:
        assert stats["spec_rounds_drafted_ahead"] >= 1
    else:
        assert stats["spec_rounds_drafted_ahead"] == 0


def test_rejected_tokens_are_rewound_at_every_stage(lm):
    dep = embedded(str(lm.folder), Plan.split(4, [1, 3]), loaded=lm, max_len=128,
                   backend="torch")
    coord = dep.coordinator
    target = coord.new_session()
    spec = SpeculativeSession(target, EngineSession(_drafts(lm, "other"), 128),
                              SpeculationConfig(k=4))
    got = _tokens(spec, lm.tokenizer)
    assert got == _reference(lm.model)
    assert spec.counters.rejected > 0
    # the target holds the committed tokens and at most one round of drafts past them
    committed = len(PROMPT) + len(got) - 1  # the last token is returned, never fed
    assert committed <= target.length <= committed + 5
    # rewinding cuts the replay records at once and every stage's cache by the next step
    keep = committed - 2
    target.rewind(keep)
    assert target.length == keep
    assert all(sum(r.shape[1] for r in rec) == keep for rec in target.records)
    target.decode(got[-3])
    view = coord.state.view
    for st, key in zip(view.plan.stages, view.keys, strict=True):
        assert dep.hosts[st.device].engines[key].length(target.id) == keep + 1
    with pytest.raises(Exception, match="rewind to"):
        target.rewind(keep + 2)
    spec.close()
    coord.close()


def test_verify_scores_every_position_as_decoding_would(lm):
    coord = embedded(str(lm.folder), Plan.split(4, [2]), loaded=lm, max_len=128,
                     backend="torch").coordinator
    with coord.new_session() as a, coord.new_session() as b:
        a.prefill(PROMPT[:4])
        rows = a.verify(PROMPT[4:])
        b.prefill(PROMPT[:4])
        one = [b.decode(t) for t in PROMPT[4:]]
    coord.close()
    assert rows.shape == (4, lm.model.cfg.vocab_size)
    np.testing.assert_allclose(rows, np.stack(one), rtol=1e-4, atol=1e-4)


def test_sampled_speculation_keeps_a_seeded_stream_reproducible(lm):
    params = SamplingParams(max_tokens=16, temperature=0.9, top_k=20, seed=7, ignore_eos=True)

    def run() -> list[int]:
        spec = SpeculativeSession(EngineSession(_whole(lm.model), 128),
                                  EngineSession(_drafts(lm, "same"), 128), SpeculationConfig(k=3))
        with spec:
            return _tokens(spec, lm.tokenizer, params)

    first = run()
    assert len(first) == 16 and run() == first


def test_failover_mid_speculation_loses_no_token(tmp_path):
    model = random_model(make_cfg(), seed=5)
    reference = _reference(model)
    folder = save_folder(model, tmp_path / "tiny")
    lm = load(str(folder))
    with launch(Plan.split(4, [1, 3], ["n0", "n1", "n2"]), str(folder), threads=1,
                max_len=128, backend="torch") as dep:
        spec = SpeculativeSession(dep.coordinator.new_session(),
                                  EngineSession(_whole(lm.model), 128),
                                  SpeculationConfig(k=3, overlap=True))
        stream = stream_generate(spec, lm.tokenizer, PROMPT, PARAMS)
        pieces = [next(stream)]
        while sum(len(p.tokens) for p in pieces) < 6:
            pieces.append(next(stream))
        dep.kill("n1")  # between two rounds, with drafted tokens pending
        pieces += list(stream)
        spec.close()
    got = [t for p in pieces for t in p.tokens]
    assert got == reference
    final = pieces[-1].metrics.extra
    assert final["failovers"] == 1 and final["spec_rounds"] >= 2


def test_draft_options_are_checked():
    assert DraftSpec.parse("int4") == DraftSpec("variant", "int4")
    assert DraftSpec.parse("early-exit:08") == DraftSpec("early-exit", "8")
    assert Speculation.from_options("", 0) is None
    for bad, msg in [("early-exit:0", "block count"), ("early-exit:x", "block count"),
                     ("/no/such/folder", "artifact"), ("int5", "int5")]:
        with pytest.raises(ConfigError, match=msg):
            DraftSpec.parse(bad)
    with pytest.raises(ConfigError, match="needs --draft"):
        Speculation.from_options("", 3)
    with pytest.raises(ConfigError, match="0..16"):
        SpeculationConfig(k=17)


def test_a_draft_with_another_vocabulary_is_refused(tiny_folder, tmp_path):
    other = save_folder(random_model(make_cfg(vocab_size=120)), tmp_path / "other")
    with pytest.raises(ConfigError, match="vocabulary"):
        from edgeweave.runtime.drafts import _check_vocab

        _check_vocab(_whole(load(str(other)).model), str(tiny_folder))


def test_early_exit_must_exit_before_the_last_block(lm):
    with pytest.raises(ConfigError, match="exit earlier"):
        build_draft(DraftSpec.parse("early-exit:4"), str(lm.folder), _torch_choice())


def test_an_onnx_early_exit_is_exported_by_a_child_and_keeps_greedy_output(lm, tmp_home):
    from edgeweave.runtime.local import EngineChoice

    draft = build_draft(DraftSpec.parse("early-exit:2"), str(lm.folder),
                        EngineChoice("onnx", "fp32"))
    assert draft.config.backend == "onnx" and (tmp_home / "onnx").is_dir()
    coord = embedded(str(lm.folder), Plan.split(4, [2]), loaded=lm, max_len=128,
                     backend="torch").coordinator
    with SpeculativeSession(coord.new_session(), EngineSession(draft, 128),
                            SpeculationConfig(k=2)) as spec:
        assert _tokens(spec, lm.tokenizer) == _reference(lm.model)
    coord.close()
    # a second build finds the export: no child, the same graph
    again = build_draft(DraftSpec.parse("early-exit:2"), str(lm.folder),
                        EngineChoice("onnx", "fp32"))
    assert again.path == draft.path


def test_an_int8_variant_drafts_for_the_fp32_model_and_agrees_with_it(lm, tmp_home):
    # the draft the README recommends: the served model in 8 bits, on the default engine
    from edgeweave.runtime.local import EngineChoice

    draft = build_draft(DraftSpec.parse("int8"), str(lm.folder), EngineChoice("onnx"))
    assert draft.config.variant == "int8" and draft.config.backend == "onnx"
    coord = embedded(str(lm.folder), Plan.split(4, [2]), loaded=lm, max_len=128,
                     backend="torch").coordinator
    with SpeculativeSession(coord.new_session(), EngineSession(draft, 128),
                            SpeculationConfig(k=4)) as spec:
        got = _tokens(spec, lm.tokenizer)
        stats = spec.stats
    coord.close()
    assert got == _reference(lm.model)
    # 8-bit weights round the fp32 model's logits only slightly: its proposals mostly hold
    assert stats["spec_acceptance"] > 0.8
    assert stats["steps"] < 16
