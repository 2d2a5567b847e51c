"""The core watch behind ONNX Runtime's spin mode, and engines that follow it."""

from __future__ import annotations

import numpy as np
import pytest

from edgeweave.errors import ConfigError
from edgeweave.runtime import contention
from edgeweave.runtime.contention import SLEEP, SPIN, CoreWatch, read_runnable
from edgeweave.types import Shard


class _Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _watch(runnable: list[int], spare: int = 0, **kw) -> tuple[CoreWatch, _Clock]:
    clock = _Clock()
    box = iter(runnable)
    kw.setdefault("interval_s", 0.05)
    w = CoreWatch(spare, reader=lambda: next(box, runnable[-1]), clock=clock, **kw)
    return w, clock


def _feed(w: CoreWatch, clock: _Clock, n: int, step: float = 0.06) -> list[str]:
    modes = []
    for _ in range(n):
        clock.t += step
        modes.append(w.sample())
    return modes


def test_the_kernel_reports_at_least_the_reading_thread_as_runnable():
    n = read_runnable()
    if n is None:
        pytest.skip("no /proc/loadavg on this system")
    assert n >= 1


def test_quiet_cores_keep_spinning():
    w, clock = _watch([1])
    assert set(_feed(w, clock, 100)) == {SPIN} and w.changes == 0


def test_a_busy_core_turns_spinning_off_after_enough_samples_not_before():
    w, clock = _watch([1, 2], min_samples=8)  # the first read only probes the file
    modes = _feed(w, clock, 12)
    assert modes[:7] == [SPIN] * 7  # 7 busy samples are not enough
    assert modes[7:] == [SLEEP] * 5
    assert w.changes == 1 and w.info()["mode"] == SLEEP


def test_others_that_fit_beside_our_threads_are_no_contention():
    """4 cores, 2 threads of ours: one other runnable thread (2 in all) leaves a core."""
    w, clock = _watch([2], spare=2)
    assert set(_feed(w, clock, 50)) == {SPIN}
    w, clock = _watch([4], spare=2)  # three others: one more than the spare cores
    assert _feed(w, clock, 50)[-1] == SLEEP


def test_it_spins_again_once_the_cores_are_free_for_a_full_window_after_the_dwell():
    shares = {"busy_share": 0.5, "quiet_share": 0.1}
    w, clock = _watch([1] + [3] * 10 + [1] * 200, window=20, dwell_s=2.0, **shares)
    modes = _feed(w, clock, 10)
    slept_at = 0.06 * (modes.index(SLEEP) + 1)
    assert modes[-1] == SLEEP
    back = _feed(w, clock, 60)  # quiet from now on
    first_spin = back.index(SPIN)
    spun_at = 0.06 * (len(modes) + first_spin + 1)
    assert spun_at - slept_at >= 2.0  # the dwell
    assert first_spin >= 20  # a full window of quiet samples
    assert set(back[first_spin:]) == {SPIN} and w.changes == 2
    w, clock = _watch([1] + [3] * 10 + [1] * 200, window=20, dwell_s=0.0, **shares)
    _feed(w, clock, 10)
    # without the dwell the window decides: 18 quiet of 20 is the 10 % it allows
    assert _feed(w, clock, 60).index(SPIN) == 17


def test_samples_are_rate_limited_and_stale_ones_dropped():
    calls = []

    def reader() -> int:
        calls.append(1)
        return 3

    clock = _Clock()
    w = CoreWatch(0, reader=reader, clock=clock, interval_s=0.05, min_samples=5)
    calls.clear()
    for _ in range(100):  # all within one interval: one read
        clock.t += 0.0001
        w.sample()
    assert len(calls) == 1
    for _ in range(3):
        clock.t += 0.06
        w.sample()
    assert w.mode == SPIN and len(w._samples) == 4  # 4 busy samples: not enough to decide
    clock.t += 60.0  # an idle minute: what was seen before is not about now
    w.sample()
    assert len(w._samples) == 1 and w.mode == SPIN


def test_without_proc_loadavg_it_never_spins():
    w = CoreWatch(0, reader=lambda: None)
    assert w.mode == SLEEP and not w.available
    assert w.sample() == SLEEP and w.changes == 0


def test_session_profiles_accept_auto_and_resolve_it_from_the_process_watch(monkeypatch):
    from edgeweave.runtime.engines.onnx_profile import SessionProfile

    monkeypatch.setattr(contention, "_WATCH", CoreWatch(0, reader=lambda: 1))
    p = SessionProfile(spinning="auto")
    assert p.spin_mode() == SPIN
    so = p.options()
    assert so.get_session_config_entry("session.intra_op.allow_spinning") == "1"
    assert so.get_session_config_entry("session.force_spinning_stop") == "1"
    contention._WATCH.mode = SLEEP
    assert p.options().get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert SessionProfile(spinning="off").spin_mode() == SLEEP
    with pytest.raises(ConfigError, match="auto"):
        SessionProfile(spinning="sometimes")


def test_an_onnx_engine_rebuilds_its_session_when_the_cores_get_busy_and_computes_the_same(
        tiny_model, tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    from edgeweave.runtime.engines.base import EngineConfig
    from edgeweave.runtime.engines.onnx import SessionProfile, engine_from_model
    from edgeweave.runtime.engines.onnx_export import ExportSpec

    seen = [1]  # what /proc/loadavg "says"
    watch = CoreWatch(0, reader=lambda: seen[0], interval_s=0.0, min_samples=2, window=4,
                      dwell_s=0.0)
    monkeypatch.setattr(contention, "_WATCH", watch)
    n = tiny_model.cfg.num_layers
    cfg = EngineConfig("tiny", Shard(0, n, n), backend="onnx", threads=1)

    def engine(spinning: str):
        return engine_from_model(tiny_model, cfg, tmp_path / "fp32",
                                 ExportSpec(0, n, max_len=tiny_model.cfg.max_position),
                                 SessionProfile(threads=1, spinning=spinning))

    auto, fixed = engine("auto"), engine("run")
    assert auto.spin == SPIN
    for e in (auto, fixed):
        e.open("s", 64)
    prompt = np.array([[5, 9, 3, 7]])
    np.testing.assert_array_equal(auto.forward("s", prompt), fixed.forward("s", prompt))
    modes = []
    for j, t in enumerate([4, 8, 15, 16, 23, 42, 7, 1, 2, 6]):
        seen[0] = 3 if j < 4 else 1  # busy for four steps, then quiet again
        x = np.array([[t]])
        np.testing.assert_array_equal(auto.forward("s", x), fixed.forward("s", x))
        modes.append(auto.spin)
    assert SLEEP in modes and modes[-1] == SPIN
    assert auto.respins == 2 and fixed.respins == 0
    assert auto.length("s") == fixed.length("s") == 14  # the caches survived the rebuilds


def test_the_lora_twin_is_rebuilt_with_the_base_graph(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    from edgeweave.runtime.adapters import load_adapter
    from edgeweave.runtime.engines.base import EngineConfig
    from edgeweave.runtime.engines.onnx import SessionProfile, engine_from_model
    from edgeweave.runtime.engines.onnx_export import ExportSpec
    from tests.adapter_helpers import build_world
    from tests.conftest import random_model

    monkeypatch.setenv("EDGEWEAVE_HOME", str(tmp_path / "home"))
    world = build_world(tmp_path)
    cfg = world["cfg"]
    n = cfg.num_layers
    seen = [1]
    monkeypatch.setattr(contention, "_WATCH", CoreWatch(
        0, reader=lambda: seen[0], interval_s=0.0, min_samples=1, window=2, dwell_s=0.0))

    def engine(spinning: str, folder: str):
        e = engine_from_model(random_model(cfg, 0), EngineConfig("tiny", Shard(0, n, n),
                                                                  backend="onnx", threads=1),
                              tmp_path / folder, ExportSpec(0, n, max_len=cfg.max_position),
                              SessionProfile(threads=1, spinning=spinning))
        e.add_adapter(load_adapter(world["specs"][0]))
        e.open("s", 64, adapter="home-a")
        return e

    auto, fixed = engine("auto", "a"), engine("run", "b")
    x = np.array([[5, 9, 14, 7]])
    np.testing.assert_array_equal(auto.forward("s", x), fixed.forward("s", x))
    seen[0] = 3
    for t in (30, 11, 2):
        np.testing.assert_array_equal(auto.forward("s", np.array([[t]])),
                                      fixed.forward("s", np.array([[t]])))
    assert auto.spin == SLEEP and auto.respins == 1
    assert auto._lora.get_session_options().get_session_config_entry(
        "session.intra_op.allow_spinning") == "0"
