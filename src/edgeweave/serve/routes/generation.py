"""``/v1/chat/completions`` and ``/v1/completions``: validate, tokenize, submit.

What can be refused is refused before the work it would waste: the model, the options and
the prompt's size before tokenizing (:func:`precheck`), the token count before the
scheduler sees the job (:func:`admit`). Tokenizing runs off the event loop.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from edgeweave.errors import EdgeweaveError
from edgeweave.runtime.constraints import supports_formats
from edgeweave.runtime.generate import SamplingParams
from edgeweave.serve.errors import bad_request, model_not_found
from edgeweave.serve.responses import Shape
from edgeweave.serve.routes.jobs import run
from edgeweave.serve.routes.keys import ApiKeys
from edgeweave.serve.schema import ChatCompletionRequest, CompletionRequest
from edgeweave.serve.state import AppState

Generation = ChatCompletionRequest | CompletionRequest


def prompt_param(body: Generation) -> str:
    return "messages" if isinstance(body, ChatCompletionRequest) else "prompt"


def check_model(state: AppState, body: Generation) -> None:
    if body.model in state.generative:
        return
    embedder = state.embedder
    if embedder is not None and body.model == embedder.name:
        raise bad_request(f"{embedder.name!r} is an embedding model: send it to "
                          f"/v1/embeddings, or generate with {state.model_id!r}", "model")
    raise model_not_found(body.model, state.served)


def precheck(state: AppState, body: Generation) -> SamplingParams:
    """What can be refused before tokenizing: the model, the options, the prompt's size."""
    check_model(state, body)
    params = body.sampling(state.config)
    if params.output is not None:
        try:  # the format needs a tokenizer the grammar library can read
            supports_formats(state.backend.tokenizer)
        except EdgeweaveError as e:
            raise bad_request(str(e), "response_format") from e
    limit = state.config.max_prompt_tokens
    if isinstance(body, ChatCompletionRequest) and len(body.messages) > limit:
        # the chat template gives every message at least one token of its own
        raise bad_request(f"{len(body.messages)} messages cannot fit in this server's "
                          f"prompt limit of {limit} tokens: send fewer", "messages",
                          "context_length_exceeded")
    chars, most = body.prompt_chars(), state.max_prompt_chars
    if chars > most:
        raise bad_request(
            f"the prompt has {chars} characters, more than this server's limit of {limit} "
            f"tokens can hold (at most {most} characters): shorten it",
            prompt_param(body), "context_length_exceeded")
    return params


def admit(state: AppState, body: Generation, ids: list[int], params: SamplingParams) -> None:
    """Refuse a tokenized prompt above the server's limit or the model's context."""
    limit, context = state.config.max_prompt_tokens, state.backend.max_len
    if len(ids) > limit:
        raise bad_request(
            f"the prompt has {len(ids)} tokens, above this server's limit of "
            f"{limit}: shorten it", prompt_param(body), "context_length_exceeded")
    if len(ids) + params.max_tokens > context:
        raise bad_request(
            f"prompt ({len(ids)} tokens) + max_tokens ({params.max_tokens}) exceeds the "
            f"model's context of {context} tokens: shorten the prompt or lower "
            "max_tokens", "max_tokens", "context_length_exceeded")


async def chat(state: AppState, body: ChatCompletionRequest, request: Request) -> Response:
    params = precheck(state, body)
    messages = body.chat()
    if not any(m["content"].strip() for m in messages):
        raise bad_request("every message is empty: give some content", "messages")
    ids = await run_in_threadpool(state.backend.tokenizer.encode_chat, messages)
    admit(state, body, ids, params)
    return await run(state, Shape("chat", body.model), ids, params, body, request)


async def complete(state: AppState, body: CompletionRequest, request: Request) -> Response:
    params = precheck(state, body)
    prompt = body.single_prompt()
    tokenizer = state.backend.tokenizer
    if isinstance(prompt, str):
        if not prompt.strip():
            raise bad_request("the prompt is empty: give some text", "prompt")
        ids = await run_in_threadpool(tokenizer.encode, prompt, True)
        admit(state, body, ids, params)
    else:
        ids = list(prompt)
        admit(state, body, ids, params)  # first: a long list is refused before it is scanned
        vocab = tokenizer.vocab_size
        if any(not 0 <= t < vocab for t in ids):
            raise bad_request(f"token ids must be in [0, {vocab})", "prompt")
    return await run(state, Shape("text", body.model), ids, params, body, request)


def generation_router(state: AppState, keys: ApiKeys) -> APIRouter:
    router = APIRouter(prefix="/v1", dependencies=[Depends(keys)])

    @router.post("/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        return await chat(state, body, request)

    @router.post("/completions")
    async def completions(body: CompletionRequest, request: Request) -> Response:
        return await complete(state, body, request)

    return router
