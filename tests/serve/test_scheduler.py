"""Round-robin fairness, slot limits and cancellation of the scheduler thread."""

from __future__ import annotations

import threading

import pytest

from edgeweave.runtime.generate import SamplingParams
from edgeweave.serve.scheduler import Busy, Event, Job, Scheduler


class Recorder:
    def __init__(self) -> None:
        self.order: list[int] = []
        self.done = threading.Semaphore(0)
        self.errors: list[BaseException] = []
        self.tokens = 0

    def sink(self, name: int):  # type: ignore[no-untyped-def]
        def push(ev: Event) -> None:
            if ev.error is not None:
                self.errors.append(ev.error)
                self.done.release()
                return
            self.order.append(name)  # one scheduler step
            self.tokens += len(ev.piece.tokens)
            if ev.piece.finish_reason:
                self.done.release()
        return push


def test_sessions_advance_one_token_each_in_turn(tiny_sessions, monkeypatch):
    rec = Recorder()
    gate = threading.Event()
    sched = Scheduler(tiny_sessions, max_active=8)
    # hold the thread in the first job's first step until all three are queued
    new_session = tiny_sessions.new_session
    monkeypatch.setattr(tiny_sessions, "new_session",
                        lambda max_len=None: (gate.wait(5), new_session(max_len))[1])
    try:
        params = SamplingParams(max_tokens=30, ignore_eos=True)
        for i in range(3):
            sched.submit(Job([1, 5 + i, 9], params, rec.sink(i)))
        gate.set()
        for _ in range(3):
            assert rec.done.acquire(timeout=30)
    finally:
        sched.stop()
    assert not rec.errors and rec.tokens == 90
    # once all three run, no session takes a second step before the others took theirs (a
    # step is one token, or a few when a token adds no visible text yet); a job arriving
    # mid-round joins the next round, so count from the last one's first step
    start = max(rec.order.index(i) for i in range(3))
    assert start <= 3
    end = min(max(k for k, x in enumerate(rec.order) if x == i) for i in range(3))
    for k in range(start, end):
        counts = [rec.order[start:k].count(i) for i in range(3)]
        assert max(counts) - min(counts) <= 1, (k, counts)


def test_full_slots_refuse_and_cancel_frees_them(tiny_sessions, monkeypatch):
    rec = Recorder()
    gate = threading.Event()
    new_session = tiny_sessions.new_session
    monkeypatch.setattr(tiny_sessions, "new_session",
                        lambda max_len=None: (gate.wait(5), new_session(max_len))[1])
    sched = Scheduler(tiny_sessions, max_active=1)
    try:
        job = Job([1, 5, 9], SamplingParams(max_tokens=200, ignore_eos=True), rec.sink(0))
        sched.submit(job)  # the slot is held until the job finishes or is cancelled
        with pytest.raises(Busy, match="1 session slots are busy"):
            sched.submit(Job([1, 5], SamplingParams(max_tokens=2), rec.sink(1)))
        job.cancel()
        gate.set()
        for _ in range(500):
            if sched.active == 0:
                break
            threading.Event().wait(0.01)
        assert sched.active == 0 and rec.tokens <= 1  # stopped after at most one step
        sched.submit(Job([1, 5], SamplingParams(max_tokens=2, ignore_eos=True), rec.sink(1)))
        assert rec.done.acquire(timeout=10) and rec.order.count(1) >= 1
    finally:
        sched.stop()


def test_a_failing_session_reports_its_error_and_spares_the_others(tiny_sessions):
    rec = Recorder()
    sched = Scheduler(tiny_sessions, max_active=4)
    try:
        sched.submit(Job([], SamplingParams(max_tokens=3), rec.sink(0)))  # empty prompt
        sched.submit(Job([1, 5], SamplingParams(max_tokens=3, ignore_eos=True), rec.sink(1)))
        assert rec.done.acquire(timeout=10) and rec.done.acquire(timeout=10)
    finally:
        sched.stop()
    assert len(rec.errors) == 1 and "prompt is empty" in str(rec.errors[0])
    assert rec.tokens == 3
