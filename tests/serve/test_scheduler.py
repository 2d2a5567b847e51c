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
    """Every round steps every running session by one token in one batch: whenever a piece
    leaves, no session is more than one token ahead of another (the ones fed earlier in the
    round hold the one extra token), and all three ran in the same batched call."""
    rec = Recorder()
    gate = threading.Event()
    sched = Scheduler(tiny_sessions, max_active=8)
    jobs: list[Job] = []
    spreads: list[int] = []
    batches: list[int] = []
    # hold the thread in the first job's first step until all three are queued
    new_session = tiny_sessions.new_session
    monkeypatch.setattr(tiny_sessions, "new_session",
                        lambda max_len=None: (gate.wait(5), new_session(max_len))[1])

    def sink(i):  # type: ignore[no-untyped-def]
        push = rec.sink(i)

        def watch(ev: Event) -> None:
            counts = [len(j.generation.tokens) for j in jobs if j.generation is not None
                      and j.generation.finish_reason is None]
            if len(counts) == 3:
                spreads.append(max(counts) - min(counts))
                batches.append(sched.last_batch)
            push(ev)
        return watch

    try:
        params = SamplingParams(max_tokens=30, ignore_eos=True)
        for i in range(3):
            jobs.append(Job([1, 5 + i, 9], params, sink(i)))
            sched.submit(jobs[-1])
        gate.set()
        for _ in range(3):
            assert rec.done.acquire(timeout=30)
    finally:
        sched.stop()
    assert not rec.errors and rec.tokens == 90
    assert spreads and max(spreads) <= 1, spreads
    assert max(batches) == 3


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


def _run_all(sched: Scheduler, prompts, params):  # type: ignore[no-untyped-def]
    results: dict[int, list[int]] = {i: [] for i in range(len(prompts))}
    texts: dict[int, str] = {i: "" for i in range(len(prompts))}
    done = threading.Semaphore(0)
    errors: list[BaseException] = []

    def sink(i):  # type: ignore[no-untyped-def]
        def push(ev: Event) -> None:
            if ev.error is not None:
                errors.append(ev.error)
                done.release()
                return
            results[i].extend(ev.piece.tokens)
            texts[i] += ev.piece.text
            if ev.piece.finish_reason:
                done.release()
        return push

    jobs = [Job(list(p), params, sink(i)) for i, p in enumerate(prompts)]
    for job in jobs:
        sched.submit(job)
    for _ in prompts:
        assert done.acquire(timeout=60)
    assert not errors, errors
    return results, texts, jobs


def test_batched_serving_equals_one_stream_at_a_time(tiny_sessions):
    """Greedy output of 6 concurrent requests (one with a prompt fed in several chunks, one
    with a stop string) equals each request generated alone, on the fp32 torch reference."""
    from edgeweave.runtime.generate import stream_generate

    prompts = [[1, 5, 9], [1, *range(10, 50)], [1, 7], [1, 8, 8, 8], [1, 60, 61], [1, 3]]
    params = SamplingParams(max_tokens=12, ignore_eos=True, stop=("z",))
    alone = []
    for p in prompts:
        eng = tiny_sessions.new_session(len(p) + 12)
        alone.append([t for r in stream_generate(eng, tiny_sessions.tokenizer, p, params)
                      for t in r.tokens])
        eng.close()
    sched = Scheduler(tiny_sessions, max_active=8, prefill_chunk=8, prefill_budget=16)
    try:
        got, _, _ = _run_all(sched, prompts, params)
    finally:
        sched.stop()
    assert [got[i] for i in range(len(prompts))] == alone
    assert any(len(a) == 12 for a in alone)


def test_a_long_prompt_does_not_stall_running_streams(tiny_sessions):
    """While a 120-token prompt is fed in 8-token chunks, a running stream keeps producing a
    token every round instead of waiting for the whole prefill."""
    sched = Scheduler(tiny_sessions, max_active=4, prefill_chunk=8, prefill_budget=8)
    seen: list[tuple[int, int]] = []  # (short stream's tokens, long prompt's fed tokens)
    done = threading.Semaphore(0)
    jobs: list[Job] = []

    def short_sink(ev: Event) -> None:
        long_gen = jobs[1].generation if len(jobs) > 1 else None
        if long_gen is not None and long_gen.prefilling:
            seen.append((len(jobs[0].generation.tokens), long_gen._fed))
        if ev.error is not None or ev.piece.finish_reason:
            done.release()

    def long_sink(ev: Event) -> None:
        if ev.error is not None or ev.piece.finish_reason:
            done.release()

    try:
        jobs.append(Job([1, 5, 9], SamplingParams(max_tokens=60, ignore_eos=True), short_sink))
        sched.submit(jobs[0])
        while jobs[0].generation is None or not jobs[0].generation.tokens:
            threading.Event().wait(0.005)
        jobs.append(Job([1, *([7, 8, 9] * 40)], SamplingParams(max_tokens=4, ignore_eos=True),
                        long_sink))
        sched.submit(jobs[1])
        assert done.acquire(timeout=60) and done.acquire(timeout=60)
    finally:
        sched.stop()
    fed = sorted({f for _, f in seen})
    # the short stream got pieces at several stages of the long prompt's prefill
    assert len(fed) >= 5 and fed[0] < 120, fed


def test_prefill_settings_are_checked(tiny_sessions):
    with pytest.raises(Exception, match="prefill_chunk"):
        Scheduler(tiny_sessions, max_active=1, prefill_chunk=8, prefill_budget=4)


def test_a_prompt_with_no_stream_to_protect_goes_in_whole(tiny_sessions):
    """Chunks exist for running streams; alone, a 120-token prompt takes one engine step
    (chunks of 8 would take 15)."""
    fed: list[int] = []  # prompt tokens in the cache when each round starts
    job = Job([1, *([21, 22, 23] * 40)], SamplingParams(max_tokens=3, ignore_eos=True),
              lambda ev: done.set() if ev.error or ev.piece.finish_reason else None)
    done = threading.Event()
    sched = Scheduler(tiny_sessions, max_active=2, prefill_chunk=8, prefill_budget=8,
                      on_step=lambda n: fed.append(job.generation._fed))
    try:
        sched.submit(job)
        assert done.wait(60)
    finally:
        sched.stop()
    assert fed[:2] == [0, 121] and len(fed) == 3, fed
