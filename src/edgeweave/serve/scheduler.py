"""One thread advances every active session one step at a time, round-robin.

The model is CPU-bound and torch already uses every core for one matrix-vector product, so
running sessions in parallel threads would only make them fight. Instead a single scheduler
thread visits the active sessions in turn and pulls one response from each session's
``stream_generate`` (one token in the common case; a few when text is held back for a
partial character or stop-string prefix). A long answer therefore never starves a short
one, and a new request's prefill waits at most one round.

Results leave through each job's ``sink`` callback, called on the scheduler thread; the
HTTP layer hands them to its event loop.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from edgeweave.errors import EdgeweaveError
from edgeweave.runtime.engine import LogitsEngine
from edgeweave.runtime.generate import GenerationResponse, SamplingParams, stream_generate
from edgeweave.serve.backend import SessionFactory, close_session


class Busy(EdgeweaveError):
    """Every session slot is taken; the client should retry later (HTTP 429)."""


@dataclass(frozen=True)
class Event:
    """What a job emits: a response piece, or a final error (``error`` set, ``piece`` None)."""

    piece: GenerationResponse | None
    error: BaseException | None = None


@dataclass(eq=False)  # identity: two jobs with equal fields are still two requests
class Job:
    prompt_ids: list[int]
    params: SamplingParams
    sink: Callable[[Event], None]
    tag: str = ""  # the endpoint, for metrics
    adapter: str | None = None  # the LoRA adapter the request named as its model
    arrived: float = field(default_factory=time.perf_counter)
    started: float | None = None  # when its session was created (end of queueing)
    cancelled: bool = False
    engine: LogitsEngine | None = None
    stream: Iterator[GenerationResponse] | None = None
    id: int = field(default_factory=itertools.count().__next__)

    def cancel(self) -> None:
        """Ask the scheduler to drop this job (client went away); safe from any thread."""
        self.cancelled = True


class Scheduler:
    def __init__(self, sessions: SessionFactory, max_active: int,
                 on_finish: Callable[[Job, GenerationResponse | None], None] | None = None
                 ) -> None:
        self.sessions = sessions
        self.max_active = max_active
        self.on_finish = on_finish
        self._jobs: list[Job] = []
        self._cv = threading.Condition()
        self._running = True
        self._thread = threading.Thread(target=self._loop, name="edgeweave-scheduler",
                                        daemon=True)
        self._thread.start()

    @property
    def active(self) -> int:
        with self._cv:
            return len(self._jobs)

    def submit(self, job: Job) -> None:
        with self._cv:
            if not self._running:
                raise Busy("the server is shutting down: retry on another replica")
            if len(self._jobs) >= self.max_active:
                raise Busy(f"all {self.max_active} session slots are busy: retry shortly, or "
                           "start the server with a higher concurrency limit")
            self._jobs.append(job)
            self._cv.notify()

    def stop(self, timeout: float = 5.0) -> None:
        with self._cv:
            self._running = False
            self._cv.notify()
        self._thread.join(timeout)
        for job in list(self._jobs):
            self._finish(job, None, EdgeweaveError("the server shut down during generation"))
        self._jobs.clear()

    def _loop(self) -> None:
        while True:
            with self._cv:
                while self._running and not self._jobs:
                    self._cv.wait()
                if not self._running:
                    return
                round_ = list(self._jobs)  # new arrivals join the next round
            for job in round_:
                self._step(job)

    def _step(self, job: Job) -> None:
        if job.cancelled:
            self._finish(job, None, None)
            return
        try:
            if job.stream is None:
                job.started = time.perf_counter()
                n = len(job.prompt_ids) + job.params.max_tokens
                job.engine = (self.sessions.new_session(n) if job.adapter is None else
                              self.sessions.new_session(n, adapter=job.adapter))
                job.stream = stream_generate(job.engine, self.sessions.tokenizer,
                                             job.prompt_ids, job.params)
            piece = next(job.stream)
        except Exception as e:  # noqa: BLE001 - one broken session must not stop the others
            self._finish(job, None, e)
            return
        job.sink(Event(piece))
        if piece.finish_reason is not None:
            self._finish(job, piece, None)

    def _finish(self, job: Job, last: GenerationResponse | None,
                error: BaseException | None) -> None:
        with self._cv:
            if job in self._jobs:
                self._jobs.remove(job)
        if job.engine is not None:
            with contextlib.suppress(Exception):  # releasing a session is best effort
                close_session(job.engine)
            job.engine = None
        if error is not None:
            job.sink(Event(None, error))
        if self.on_finish is not None:
            self.on_finish(job, last)
