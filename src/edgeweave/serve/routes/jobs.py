"""Running one generation job: submit it to the scheduler, then relay its events.

The scheduler thread calls the job's sink; the sink hands each event to the request's event
loop. A streaming request gets them as server-sent events, any other one whole once the job
finishes. Either way the job is cancelled when the request ends (a no-op once it finished),
so a client that goes away stops its generation.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from edgeweave.runtime.generate import GenerationMetrics, SamplingParams
from edgeweave.serve.errors import from_exception, rate_limited
from edgeweave.serve.logprobs import LogprobView
from edgeweave.serve.metrics import ServeMetrics, TokenClock, response_metrics
from edgeweave.serve.responses import Shape, sse, usage
from edgeweave.serve.scheduler import Busy, Event, Job
from edgeweave.serve.schema import ChatCompletionRequest, CompletionRequest
from edgeweave.serve.state import AppState

_DISCONNECT_POLL_S = 1.0  # how often a non-streaming request checks for a vanished client


def event_queue(metrics: ServeMetrics) -> tuple[asyncio.Queue[Event], Callable[[Event], None]]:
    """A queue on the running loop and the sink the scheduler thread feeds it with."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Event] = asyncio.Queue()
    clock = TokenClock(metrics)

    def sink(ev: Event) -> None:  # called on the scheduler thread
        if ev.piece is not None and ev.piece.tokens:
            clock.tick(ev.piece.metrics)
        # RuntimeError: the event loop is gone (shutdown), nobody is left to tell
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(queue.put_nowait, ev)

    return queue, sink


def submit(state: AppState, job: Job) -> None:
    """Hand ``job`` to the scheduler; all slots busy is a 429."""
    try:
        state.submit(job)
    except Busy as e:
        raise rate_limited(str(e)) from e


async def run(state: AppState, shape: Shape, ids: list[int], params: SamplingParams,
              body: ChatCompletionRequest | CompletionRequest, request: Request) -> Response:
    queue, sink = event_queue(state.metrics)
    job = Job(ids, params, sink, tag="chat" if shape.kind == "chat" else "completions",
              adapter=body.model if body.model in state.adapters else None)
    submit(state, job)
    view = LogprobView(state.backend.tokenizer) if params.logprobs is not None else None
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(stream(state, shape, job, queue, include_usage, view),
                                 media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})
    return await collect(state, shape, job, queue, request, view)


def edgeweave_fields(state: AppState, job: Job, metrics: GenerationMetrics) -> dict[str, Any]:
    """What every response adds under ``edgeweave``: its metrics and what ran it."""
    queue_s = (job.started or job.arrived) - job.arrived
    return {**response_metrics(metrics, queue_s), **state.runtime()}


async def stream(state: AppState, shape: Shape, job: Job, queue: asyncio.Queue[Event],
                 include_usage: bool, view: LogprobView | None) -> AsyncIterator[str]:
    try:
        if shape.kind == "chat":
            yield sse(shape.chunk("", first=True))
        while True:
            ev = await queue.get()
            if ev.piece is None:
                yield sse(from_exception(ev.error).body())
                break
            piece = ev.piece
            lp = view.render(shape.kind, piece.logprobs) \
                if view is not None and piece.logprobs else None
            if piece.text or lp is not None:
                yield sse(shape.chunk(piece.text, logprobs=lp))
            if piece.finish_reason is not None:
                m = piece.metrics
                final = shape.chunk(None, piece.finish_reason)
                final["edgeweave"] = edgeweave_fields(state, job, m)
                yield sse(final)
                if include_usage:
                    yield sse(shape.usage_chunk(usage(m.prompt_tokens, m.generated_tokens,
                                                      m.cached_tokens)))
                break
        yield sse("[DONE]")
    finally:
        job.cancel()  # no-op when finished; stops generation when the client went away


async def collect(state: AppState, shape: Shape, job: Job, queue: asyncio.Queue[Event],
                  request: Request, view: LogprobView | None) -> JSONResponse:
    pieces: list[str] = []
    records: list[Any] = []
    try:
        while True:
            try:
                ev = await asyncio.wait_for(queue.get(), _DISCONNECT_POLL_S)
            except TimeoutError:
                if await request.is_disconnected():
                    return JSONResponse({}, status_code=499)
                continue
            if ev.piece is None:
                return from_exception(ev.error).response()
            pieces.append(ev.piece.text)
            records.extend(ev.piece.logprobs)
            if ev.piece.finish_reason is not None:
                m = ev.piece.metrics
                lp = None if view is None else view.render(shape.kind, records)
                out = shape.whole("".join(pieces), ev.piece.finish_reason,
                                  usage(m.prompt_tokens, m.generated_tokens,
                                        m.cached_tokens), lp)
                out["edgeweave"] = edgeweave_fields(state, job, m)
                return JSONResponse(out)
    finally:
        job.cancel()
