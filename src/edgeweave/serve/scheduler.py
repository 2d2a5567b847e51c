"""One thread steps every active session together: continuous batching.

The model is CPU-bound and one matrix-vector product already uses every core, so sessions
in parallel threads would only fight. Decode of a small model is memory-bound instead: one
pass over the weights for 16 sessions costs little more than for one. So a single scheduler
thread runs rounds: in each, every running session advances one token, all of them in one
batched engine call (``runtime.sequence.step_batch``: ``StageEngine.forward_batch`` for
sessions of one in-process engine; one FORWARD_BATCH frame per stage for the sessions of a
coordinator), and waiting
requests are admitted between rounds. A new prompt is fed in chunks of at most
``prefill_chunk`` tokens, at most ``prefill_budget`` prompt tokens per round, inside the same
batch, so a long prompt never stalls the running streams for more than one chunk. While no
stream is decoding there is nothing to protect, and prompts go in whole.

Each session is a ``runtime.sequence.Generation`` state machine (sampling, structured-output
mask, stop tokens and strings, detokenisation), the same one ``stream_generate`` runs.
Results leave through each job's ``sink`` callback, called on the scheduler thread; the HTTP
layer hands them to its event loop.
"""

from __future__ import annotations

import contextlib
import itertools
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from edgeweave.errors import EdgeweaveError
from edgeweave.runtime.engine import LogitsEngine
from edgeweave.runtime.generate import GenerationResponse, SamplingParams
from edgeweave.runtime.sequence import Generation, StepInput, step_batch
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
    generation: Generation | None = None
    id: int = field(default_factory=itertools.count().__next__)

    def cancel(self) -> None:
        """Ask the scheduler to drop this job (client went away); safe from any thread."""
        self.cancelled = True


# Prompt tokens per chunk and per round. A round's cost is its decode batch plus these
# prompt tokens, so the budget bounds how much a burst of new requests slows the running
# streams; the typical chat prompt here (40-90 tokens with the template) fits one chunk.
PREFILL_CHUNK = 64
PREFILL_BUDGET = 128


class Scheduler:
    def __init__(self, sessions: SessionFactory, max_active: int,
                 on_finish: Callable[[Job, GenerationResponse | None], None] | None = None,
                 prefill_chunk: int = PREFILL_CHUNK, prefill_budget: int = PREFILL_BUDGET,
                 on_step: Callable[[int], None] | None = None) -> None:
        if prefill_chunk < 1 or prefill_budget < prefill_chunk:
            raise EdgeweaveError(f"prefill_chunk must be >= 1 and prefill_budget >= it (got "
                                 f"{prefill_chunk}, {prefill_budget})")
        self.sessions = sessions
        self.max_active = max_active
        self.on_finish = on_finish
        self.on_step = on_step  # called with the batch size of every round (metrics)
        self.prefill_chunk, self.prefill_budget = prefill_chunk, prefill_budget
        self.last_batch = 0  # sessions stepped in the last round (metrics read it)
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
            self._round(round_)

    def _round(self, jobs: list[Job]) -> None:
        """One token for every running session and the next prompt chunks, in one batch."""
        work: list[tuple[Job, StepInput]] = []
        # chunks exist so prompts do not stall running streams; with none decoding, a prompt
        # goes in whole (a chunk costs an engine run of its own: 2 x 64 tokens take longer
        # than 1 x 128, which is most of a cached prompt's TTFT)
        decoding = any(j.generation is not None and not j.generation.prefilling for j in jobs)
        chunk = self.prefill_chunk if decoding else 0
        budget = self.prefill_budget if decoding else sys.maxsize
        for job in jobs:
            if job.cancelled:
                self._finish(job, None, None)
                continue
            try:
                gen = job.generation or self._start(job)
                if gen.prefilling:
                    if budget <= 0:
                        continue  # its next chunk waits for the next round
                    step = gen.next_input(min(chunk, budget) if chunk else 0)
                    budget -= len(step.ids)
                else:
                    step = gen.next_input()
            except Exception as e:  # noqa: BLE001 - one broken session must not stop the others
                self._finish(job, None, e)
                continue
            work.append((job, step))
        if not work:
            return
        self.last_batch = len(work)
        if self.on_step is not None:
            self.on_step(len(work))
        results = step_batch([(job.engine, step) for job, step in work])  # type: ignore[misc]
        for (job, _step), logits in zip(work, results, strict=True):
            if job.cancelled:
                self._finish(job, None, None)
                continue
            try:
                if isinstance(logits, BaseException):
                    raise logits
                pieces = job.generation.feed(logits)  # type: ignore[union-attr]
            except Exception as e:  # noqa: BLE001 - reported to this request only
                self._finish(job, None, e)
                continue
            for piece in pieces:
                job.sink(Event(piece))
                if piece.finish_reason is not None:
                    self._finish(job, piece, None)

    def _start(self, job: Job) -> Generation:
        job.started = time.perf_counter()
        n = len(job.prompt_ids) + job.params.max_tokens
        job.engine = (self.sessions.new_session(n) if job.adapter is None else
                      self.sessions.new_session(n, adapter=job.adapter))
        job.generation = Generation(job.engine, self.sessions.tokenizer, job.prompt_ids,
                                    job.params)
        return job.generation

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
