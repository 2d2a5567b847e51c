"""A re-plan loads its new stages beside the running plan, which keeps serving meanwhile.

The stage factory here builds real (tiny, torch) engines but holds the build of the new
plan's stages until the old plan has served a token: were the load done under the
coordinator's plan lock, or under the node's request lock, that token could never come
and the test fails on its timeout instead of hanging.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from edgeweave.models import load
from edgeweave.runtime import codec as codecs
from edgeweave.runtime.coordinator import Coordinator
from edgeweave.runtime.engine import LocalEngine
from edgeweave.runtime.engines.base import EngineConfig
from edgeweave.runtime.engines.torch import TorchStageEngine
from edgeweave.runtime.generate import SamplingParams, generate_step
from edgeweave.runtime.stage import StageHost
from edgeweave.runtime.transport.frame import Frame, Op
from edgeweave.runtime.transport.inproc import InProcessLink
from edgeweave.types import Plan

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPT = [1, 5, 9, 17, 33, 3, 40, 41]
WAIT_S = 60.0


class GatedFactory:
    """Builds torch stage engines; a build of a stage in ``gated`` waits for ``release``."""

    def __init__(self, model, gated: set[tuple[int, int]]) -> None:  # noqa: ANN001
        self.model = model
        self.gated = gated
        self.release = threading.Event()
        self.waiting = threading.Event()  # a gated build has started
        self.built: list[str] = []

    def __call__(self, cfg: EngineConfig) -> TorchStageEngine:
        if (cfg.shard.start, cfg.shard.end) in self.gated:
            self.waiting.set()
            if not self.release.wait(WAIT_S):
                raise TimeoutError("the test never released the gated build")
        self.built.append(cfg.key)
        return TorchStageEngine(cfg, model=self.model)


@pytest.fixture
def lm(tiny_folder):
    return load(str(tiny_folder))


def _load_frame(start: int, end: int, n: int) -> Frame:
    return Frame(Op.LOAD, payload=Frame.json_bytes(
        {"shard": {"start": start, "end": end, "n_layers": n}, "variant": "fp32",
         "backend": "torch"}))


def test_a_node_answers_its_stages_while_it_loads_another(lm):
    factory = GatedFactory(lm.model, gated={(2, 4)})
    host = StageHost(str(lm.folder), engine_factory=factory)
    n = lm.model.cfg.num_layers
    key = host.handle(_load_frame(0, n, n)).stage
    assert host.handle(Frame(Op.OPEN, key, "s", arg=64)).op == Op.OK

    loading = threading.Thread(target=host.handle, args=(_load_frame(2, 4, n),))
    loading.start()
    assert factory.waiting.wait(WAIT_S)
    ids = np.asarray([PROMPT], np.int64)
    # the load is still held: this forward must not queue behind it
    resp = host.handle(Frame(Op.FORWARD, key, "s", arg=0, shape=ids.shape,
                             codec=codecs.IDS.id, reply_codec=codecs.FP32.id,
                             payload=codecs.IDS.encode(ids)))
    assert loading.is_alive()
    factory.release.set()
    loading.join(WAIT_S)
    assert resp.op == Op.OK, resp.payload
    assert set(host.engines) == {key, "2-4:fp32"}


def test_two_loads_of_one_stage_build_it_once(lm):
    factory = GatedFactory(lm.model, gated={(0, 2)})
    host = StageHost(str(lm.folder), engine_factory=factory)
    n = lm.model.cfg.num_layers
    threads = [threading.Thread(target=host.handle, args=(_load_frame(0, 2, n),))
               for _ in range(3)]
    for t in threads:
        t.start()
    assert factory.waiting.wait(WAIT_S)
    factory.release.set()
    for t in threads:
        t.join(WAIT_S)
    assert factory.built == ["0-2:fp32"]


def test_apply_plan_keeps_the_old_plan_serving_while_the_new_one_loads(lm):
    n = lm.model.cfg.num_layers
    old, new = Plan.split(n, [2], ["a", "b"]), Plan.split(n, [1], ["a", "b"])
    factory = GatedFactory(lm.model, gated={(0, 1), (1, n)})
    hosts = {d: StageHost(str(lm.folder), engine_factory=factory) for d in ("a", "b")}
    coord = Coordinator(old, str(lm.folder), lambda d: InProcessLink(hosts[d], d),
                        max_len=128)
    params = SamplingParams(max_tokens=12, ignore_eos=True)
    want = list(generate_step(LocalEngine(lm.model, max_len=128), PROMPT, params))

    session = coord.new_session()
    tokens = generate_step(session, PROMPT, params)
    got = [next(tokens)]
    switch = threading.Thread(target=coord.apply_plan, args=(new,))
    switch.start()
    assert factory.waiting.wait(WAIT_S)
    got.append(next(tokens))  # served by the old plan while the new stages are held
    assert coord.plan == old
    factory.release.set()
    switch.join(WAIT_S)
    assert not switch.is_alive() and coord.plan == new
    got.extend(tokens)  # the rest on the new plan, replayed exactly
    assert got == want
    session.close()
    coord.close()


def test_a_switch_frees_the_stages_the_new_plan_does_not_use(lm):
    n = lm.model.cfg.num_layers
    old, new = Plan.split(n, [2], ["a", "b"]), Plan.split(n, [1], ["a", "b"])
    factory = GatedFactory(lm.model, gated=set())
    hosts = {d: StageHost(str(lm.folder), engine_factory=factory) for d in ("a", "b")}
    coord = Coordinator(old, str(lm.folder), lambda d: InProcessLink(hosts[d], d),
                        max_len=128)
    params = SamplingParams(max_tokens=8, ignore_eos=True)
    want = list(generate_step(LocalEngine(lm.model, max_len=128), PROMPT, params))
    session = coord.new_session()
    tokens = generate_step(session, PROMPT, params)
    got = [next(tokens)]
    coord.apply_plan(new)  # the open session moves to the new stages first
    assert set(hosts["a"].engines) == {"0-1:fp32"}
    assert set(hosts["b"].engines) == {f"1-{n}:fp32"}
    got.extend(tokens)
    assert got == want
    session.close()
    coord.close()


def test_a_stage_in_use_is_kept_and_one_unloaded_elsewhere_is_loaded_again(lm):
    n = lm.model.cfg.num_layers
    factory = GatedFactory(lm.model, gated=set())
    host = StageHost(str(lm.folder), engine_factory=factory)
    key = host.handle(_load_frame(0, n, n)).stage
    assert host.handle(Frame(Op.OPEN, key, "s", arg=64)).op == Op.OK
    assert host.handle(Frame(Op.UNLOAD, key)).json() == {"unloaded": False}
    host.handle(Frame(Op.CLOSE, key, "s"))
    assert host.handle(Frame(Op.UNLOAD, key)).json() == {"unloaded": True}
    assert key not in host.engines
    # a coordinator whose plan still names the stage opens a session: it LOADs it again
    coord = Coordinator(Plan.single(n, "a"), str(lm.folder), lambda d: InProcessLink(host, d),
                        max_len=128)
    host.handle(Frame(Op.UNLOAD, key))
    params = SamplingParams(max_tokens=4, ignore_eos=True)
    with coord.new_session() as s:
        got = list(generate_step(s, PROMPT, params))
    assert got == list(generate_step(LocalEngine(lm.model, max_len=128), PROMPT, params))
    coord.close()
