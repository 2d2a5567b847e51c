"""A coordinator session's rewind costs no round trip: its TRUNCATE frames travel just ahead of
the next step's frames, on the same streams, to real nodes."""

from __future__ import annotations

import numpy as np
import pytest

from edgeweave.runtime.engine import LocalEngine
from edgeweave.runtime.launch import launch
from edgeweave.runtime.transport.frame import Op
from edgeweave.types import Plan
from tests.conftest import make_cfg, random_model, save_folder

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPT = [1, 5, 9, 17, 33, 3, 40, 41]
DRAFT = [7, 8, 9, 10]  # tokens a draft proposed; all but the first are rejected


def _record(coord) -> list[tuple[str, Op]]:  # noqa: ANN001
    sent: list[tuple[str, Op]] = []
    for dev, link in coord.links.items():
        def submit(frame, timeout, _send=link.submit, _dev=dev):  # noqa: ANN001, ANN202
            sent.append((_dev, Op(frame.op)))
            return _send(frame, timeout)
        link.submit = submit
    return sent


def _reference(model, after: int) -> np.ndarray:  # noqa: ANN001
    ref = LocalEngine(model, max_len=64)
    ref.prefill(PROMPT)
    ref.decode(DRAFT[0])
    return ref.decode(after)


@pytest.fixture
def world(tmp_path):  # type: ignore[no-untyped-def]
    model = random_model(make_cfg(), seed=3)
    return model, save_folder(model, tmp_path / "tiny")


def test_a_rewind_sends_nothing_and_its_cut_precedes_the_next_step(world):
    model, folder = world
    with launch(Plan.split(4, [2], ["n0", "n1"]), str(folder), threads=1, max_len=64,
                backend="torch") as dep:
        s = dep.coordinator.new_session()
        s.prefill(PROMPT)
        rows = s.verify(DRAFT)
        assert rows.shape[0] == len(DRAFT)
        sent = _record(dep.coordinator)
        s.rewind(len(PROMPT) + 1)  # keep the first drafted token only
        assert sent == [] and s.length == len(PROMPT) + 1
        logits = s.decode(11)
        assert sent == [("n0", Op.TRUNCATE), ("n1", Op.TRUNCATE), ("n0", Op.FORWARD),
                        ("n1", Op.FORWARD)]
        np.testing.assert_allclose(logits, _reference(model, 11), rtol=0, atol=1e-4)
        s.rewind(len(PROMPT) + 1)
        s.rewind(len(PROMPT) + 1)  # nothing to cut: a no-op
        again = s.decode(11)
        np.testing.assert_allclose(again, logits, rtol=0, atol=1e-5)
        s.close()


def test_a_node_lost_between_a_rewind_and_the_next_step_loses_nothing(world):
    model, folder = world
    with launch(Plan.split(4, [1, 3], ["n0", "n1", "n2"]), str(folder), threads=1,
                max_len=64, backend="torch") as dep:
        s = dep.coordinator.new_session()
        s.prefill(PROMPT)
        s.verify(DRAFT)
        s.rewind(len(PROMPT) + 1)
        dep.kill("n1")  # the cut was never sent to it: the replay rebuilds from the records
        logits = s.decode(11)
        assert s.stats["failovers"] == 1
        np.testing.assert_allclose(logits, _reference(model, 11), rtol=0, atol=1e-4)
        s.close()
