"""Speculative sessions in one batch: while several streams need the verifier at once they
step plain in one batched call (``SpeculativeSession.forward_many``); alone, a stream
speculates again. Greedy text stays plain decoding's (embedded plan, gRPC nodes, local)."""

from __future__ import annotations

import pytest

from edgeweave.models import load
from edgeweave.runtime.engine import EngineSession, LocalEngine
from edgeweave.runtime.engines.base import EngineConfig
from edgeweave.runtime.engines.torch import TorchStageEngine
from edgeweave.runtime.generate import SamplingParams, generate_step
from edgeweave.runtime.launch import embedded, launch
from edgeweave.runtime.sequence import Generation, step_batch
from edgeweave.runtime.speculative import SpeculationConfig, SpeculativeSession
from edgeweave.types import Plan, Shard
from tests.conftest import make_cfg, random_model, save_folder

PROMPTS = [[1, 5, 9, 17, 33, 3, 40, 41], [2, 7, 7, 19, 4], [60, 61, 3, 9, 12, 14]]
LONG = SamplingParams(max_tokens=24, ignore_eos=True)
SHORT = SamplingParams(max_tokens=8, ignore_eos=True)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _whole(model) -> TorchStageEngine:
    n = model.cfg.num_layers
    return TorchStageEngine(EngineConfig("mem", Shard(0, n, n)), model=model)


def _draft(lm, kind: str) -> TorchStageEngine:
    # "same": the model itself (every proposal holds); "other": a random model (most fail)
    return _whole(lm.model if kind == "same" else random_model(make_cfg(), seed=11))


def _run(specs: list[SpeculativeSession], lm, starts: list[int],
         params: list[SamplingParams], each_round=None) -> list[list[int]]:
    """The serve scheduler's cycle, by hand: stream ``j`` joins once stream 0 has
    ``starts[j]`` tokens; every round steps all running streams in one ``step_batch``."""
    gens: list[Generation | None] = [None] * len(specs)
    while True:
        made = len(gens[0].tokens) if gens[0] is not None else 0
        if each_round is not None:
            each_round(made)
        for j, spec in enumerate(specs):
            if gens[j] is None and made >= starts[j]:
                gens[j] = Generation(spec, lm.tokenizer, PROMPTS[j], params[j])
        work = [(g, g.next_input()) for g in gens if g is not None and not g.finished]
        if not work:
            return [list(g.tokens) for g in gens]  # type: ignore[union-attr]
        for (g, _step), y in zip(work, step_batch([(g.engine, s) for g, s in work]),
                                 strict=True):
            if isinstance(y, BaseException):
                raise y
            g.feed(y)


def _reference(model, j: int, params: SamplingParams) -> list[int]:
    return list(generate_step(LocalEngine(model, max_len=128), PROMPTS[j], params))


@pytest.fixture
def lm(tiny_folder):
    return load(str(tiny_folder))


@pytest.mark.parametrize("kind", ["same", "other"])
@pytest.mark.parametrize("where", ["plan", "local"])
def test_streams_that_meet_step_in_one_batch_and_keep_greedy_output(lm, kind, where):
    # Prepare: stream 0 speculates alone, streams 1 and 2 join after 6 tokens, end after 8
    if where == "plan":
        coord = embedded(str(lm.folder), Plan.split(4, [2]), loaded=lm, max_len=128,
                         backend="torch").coordinator
        targets = [coord.new_session() for _ in PROMPTS]
    else:
        engine = _whole(lm.model)
        targets = [EngineSession(engine, 128) for _ in PROMPTS]
    draft = _draft(lm, kind)
    specs = [SpeculativeSession(t, EngineSession(draft, 128), SpeculationConfig(k=3))
             for t in targets]
    params = [LONG, SHORT, SHORT]
    # Execute
    got = _run(specs, lm, [0, 6, 6], params)
    stats = [s.stats for s in specs]
    for s in specs:
        s.close()
    # Assert: every stream's text is plain decoding's
    for j, p in enumerate(params):
        assert got[j] == _reference(lm.model, j, p)
    assert stats[0]["spec_rounds"] >= 2  # alone before the others came and after they left
    if kind == "other":  # rejections every round: the streams meet and step together
        assert all(s["spec_batched_steps"] >= 1 for s in stats)


def test_a_batch_over_grpc_nodes_keeps_greedy_output(tmp_path):
    # Prepare: two real nodes; the streams' plain steps go as one FORWARD_BATCH per stage
    model = random_model(make_cfg(), seed=5)
    folder = save_folder(model, tmp_path / "tiny")
    lm = load(str(folder))
    other = _whole(random_model(make_cfg(), seed=11))
    with launch(Plan.split(4, [2], ["n0", "n1"]), str(folder), threads=1, max_len=128,
                backend="torch") as dep:
        specs = [SpeculativeSession(dep.coordinator.new_session(), EngineSession(other, 128),
                                    SpeculationConfig(k=3)) for _ in PROMPTS[:2]]
        # Execute
        got = _run(specs, lm, [0, 4], [LONG, SHORT])
        stats = [s.stats for s in specs]
        for s in specs:
            s.close()
    # Assert
    assert got == [_reference(model, 0, LONG), _reference(model, 1, SHORT)]
    assert all(s["spec_batched_steps"] >= 1 for s in stats)



def test_failover_in_the_middle_of_a_batch_loses_no_token(tmp_path):
    # Prepare: three nodes; the middle one dies while two streams step in one batch
    model = random_model(make_cfg(), seed=5)
    folder = save_folder(model, tmp_path / "tiny")
    lm = load(str(folder))
    other = _whole(random_model(make_cfg(), seed=11))
    with launch(Plan.split(4, [1, 3], ["n0", "n1", "n2"]), str(folder), threads=1,
                max_len=128, backend="torch") as dep:
        specs = [SpeculativeSession(dep.coordinator.new_session(), EngineSession(other, 128),
                                    SpeculationConfig(k=3)) for _ in PROMPTS[:2]]
        killed: list[int] = []

        def kill_once(made: int) -> None:
            if made >= 10 and not killed and specs[1].counters.batched_steps >= 2:
                dep.kill("n1")
                killed.append(made)

        # Execute
        got = _run(specs, lm, [0, 4], [LONG, LONG], kill_once)
        stats = [s.stats for s in specs]
        for s in specs:
            s.close()
    # Assert: both texts are plain decoding's, after one failover mid-batch
    assert killed
    assert got == [_reference(model, 0, LONG), _reference(model, 1, LONG)]
    assert stats[0]["failovers"] >= 1 and stats[1]["failovers"] >= 1
