"""HTTP routes of the local-llm service: OpenAI's ``/v1/chat/completions`` and ``/v1/models``."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from starlette.background import BackgroundTask

from services.common.errors import APIError, ErrorBody, error_body
from services.common.loading import not_ready
from services.common.openapi import event_stream
from services.common.routing import JsonRoute
from services.common.scopes import needs_scope
from services.local_llm.config import LocalLLMSettings
from services.local_llm.constrained import ANY_OBJECT, UnsupportedSchema, parser_for
from services.local_llm.generator import (
    Completion,
    Generator,
    Job,
    QueueFull,
    SamplingParams,
    Scheduler,
    SchedulerStopped,
)
from services.local_llm.schemas import (
    CHUNK,
    ChatCompletion,
    ChatCompletionRequest,
    ChatMessage,
    ModelCard,
    ModelList,
)

router = APIRouter(tags=["chat"], route_class=JsonRoute)

MAX_STOP_STRINGS = 16

# The answer is built by hand (a dict, or server-sent events): documented here for the schema.
CHAT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "model": ChatCompletion,
        "description": "The completion.",
        "content": event_stream(
            CHUNK,
            "With stream: true: the role, content deltas as generated, the finish reason (and "
            "the usage if asked for), then [DONE]; a failure after the first byte is an error "
            "event.",
        ),
    },
    429: {
        "model": ErrorBody,
        "description": "The generation queue is full; retry after the Retry-After header.",
    },
}


def _ready(request: Request) -> tuple[Generator, Scheduler]:
    generator: Generator | None = getattr(request.app.state, "generator", None)
    scheduler: Scheduler | None = getattr(request.app.state, "scheduler", None)
    if generator is None or scheduler is None:
        raise not_ready(request.app, retry_after_s=5)
    return generator, scheduler


def _card(generator: Generator, settings: LocalLLMSettings, created: int) -> ModelCard:
    return ModelCard(
        id=generator.info.name,
        created=created,
        context_length=generator.info.context_length,
        max_output_tokens=min(settings.max_new_tokens_limit, generator.info.context_length),
    )


def _check_model(model: str, settings: LocalLLMSettings) -> None:
    if model != settings.served_model_name:
        raise APIError(
            404,
            f"The model '{model}' does not exist here; this service serves "
            f"'{settings.served_model_name}' (see GET /v1/models).",
            param="model",
            code="model_not_found",
        )


@router.get(
    "/v1/models",
    openapi_extra=needs_scope("chat"),
    summary="The served model, with its context and output limits.",
    response_model=None,  # the dict is documented by ModelList, not validated by it
    responses={200: {"model": ModelList}},
)
async def list_models(request: Request) -> dict[str, Any]:
    generator, _ = _ready(request)
    card = _card(generator, request.app.state.settings, request.app.state.loaded_at)
    return {"object": "list", "data": [card.model_dump()]}


@router.get("/v1/models/{model}", openapi_extra=needs_scope("chat"), summary="One served model.")
async def get_model(model: str, request: Request) -> ModelCard:
    generator, _ = _ready(request)
    settings: LocalLLMSettings = request.app.state.settings
    _check_model(model, settings)
    return _card(generator, settings, request.app.state.loaded_at)


def _content(message: ChatMessage, i: int) -> str:
    content = message.content
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts: list[str] = []
    for j, part in enumerate(content):
        kind = part.get("type")
        text = part.get("text")
        if kind not in ("text", "input_text") or not isinstance(text, str):
            raise APIError(
                400,
                f"'messages[{i}].content[{j}]' is of type {kind!r}; this model reads text "
                "only: send content as a string or as parts of type 'text'.",
                param=f"messages[{i}].content[{j}]",
                code="unsupported_content",
            )
        parts.append(text)
    return "\n".join(parts)


def _messages(messages: list[ChatMessage]) -> list[dict[str, str]]:
    if not messages:
        raise APIError(
            400,
            "'messages' must not be empty: send at least one message.",
            param="messages",
            code="empty_messages",
        )
    out = []
    for i, message in enumerate(messages):
        # The chat template knows system/user/assistant; 'developer' is OpenAI's new 'system'.
        role = "system" if message.role == "developer" else message.role
        out.append({"role": role, "content": _content(message, i)})
    return out


def _check_request(body: ChatCompletionRequest, settings: LocalLLMSettings) -> None:
    if body.n is not None and body.n > 1:
        raise APIError(
            400,
            f"'n' is {body.n}; this service generates one choice per request. Send n=1 (or "
            "omit it) and make several requests for several answers.",
            param="n",
            code="unsupported_value",
        )
    wanted = body.requested_max_tokens
    if wanted is not None and wanted > settings.max_new_tokens_limit:
        param = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
        raise APIError(
            400,
            f"'{param}' is {wanted}; this service generates at most "
            f"{settings.max_new_tokens_limit} tokens per request.",
            param=param,
            code="invalid_value",
        )
    if body.no_repeat_ngram_size == 1:
        raise APIError(
            400,
            "'no_repeat_ngram_size' is 1, which would forbid any token from appearing twice; "
            "send 0 (off) or at least 2.",
            param="no_repeat_ngram_size",
            code="invalid_value",
        )
    if len(body.stop_list) > MAX_STOP_STRINGS:
        raise APIError(
            400,
            f"'stop' has {len(body.stop_list)} strings; at most {MAX_STOP_STRINGS} are accepted.",
            param="stop",
            code="invalid_value",
        )


def _repetition(body: ChatCompletionRequest, settings: LocalLLMSettings) -> dict[str, Any]:
    """The request's repetition controls, the server's settings where it sets none."""
    names = ("frequency_penalty", "presence_penalty", "repetition_penalty", "no_repeat_ngram_size")
    return {
        name: getattr(settings, name) if getattr(body, name) is None else getattr(body, name)
        for name in names
    }


def _json_schema(body: ChatCompletionRequest) -> dict[str, Any] | None:
    """The schema decoding must follow, from ``response_format``; 400 when it cannot."""
    fmt = body.response_format
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return ANY_OBJECT
    if fmt.json_schema is None:
        raise APIError(
            400,
            "'response_format.json_schema' is missing: with type 'json_schema' send "
            '{"name": ..., "schema": {...}}.',
            param="response_format.json_schema",
            code="invalid_value",
        )
    schema = fmt.json_schema.json_schema
    if schema is None:
        return ANY_OBJECT
    try:
        parser_for(schema)
    except UnsupportedSchema as exc:
        raise APIError(
            400,
            f"Invalid value for 'response_format.json_schema.schema': this server cannot "
            f"constrain decoding to it ({exc}).",
            param="response_format.json_schema.schema",
            code="invalid_value",
        ) from None
    return schema


def _budget(body: ChatCompletionRequest, settings: LocalLLMSettings, prompt: int, ctx: int) -> int:
    """Tokens this request may generate; 400 when prompt (+ max_tokens) overflow the context."""
    if prompt >= ctx:
        raise APIError(
            400,
            f"The messages are {prompt} tokens long; this model's context holds {ctx} tokens "
            "(prompt and completion together). Shorten or drop earlier messages.",
            param="messages",
            code="context_length_exceeded",
        )
    wanted = body.requested_max_tokens
    if wanted is None:
        return min(settings.default_max_tokens, ctx - prompt)
    if prompt + wanted > ctx:
        raise APIError(
            400,
            f"The messages are {prompt} tokens and max_tokens asks for {wanted} more, but this "
            f"model's context holds {ctx} tokens. Lower max_tokens to at most {ctx - prompt} or "
            "shorten the messages.",
            param="messages",
            code="context_length_exceeded",
        )
    return wanted


@router.post(
    "/v1/chat/completions",
    openapi_extra=needs_scope("chat"),
    summary="Create a chat completion (OpenAI-compatible).",
    responses=CHAT_RESPONSES,
)
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
    generator, scheduler = _ready(request)
    settings: LocalLLMSettings = request.app.state.settings
    _check_model(body.model, settings)
    _check_request(body, settings)
    json_schema = _json_schema(body)
    messages = _messages(body.messages)
    prompt_ids = await asyncio.to_thread(generator.encode_chat, messages)
    max_new = _budget(body, settings, len(prompt_ids), generator.info.context_length)
    params = SamplingParams(
        max_new_tokens=max_new,
        temperature=body.temperature,
        top_p=body.top_p,
        seed=None if body.seed is None else body.seed % 2**64,  # torch takes 64-bit seeds
        stop=tuple(body.stop_list),
        json_schema=json_schema,
        **_repetition(body, settings),
    )
    try:
        job = scheduler.submit(prompt_ids, params, stream=bool(body.stream))
    except QueueFull as exc:
        raise APIError(
            429,
            "The generation queue is full; retry after the number of seconds in Retry-After.",
            code="queue_full",
            headers={"Retry-After": str(exc.retry_after)},
        ) from exc
    except SchedulerStopped as exc:
        raise _shutting_down() from exc

    completion_id = f"chatcmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(
            _sse(job, scheduler, completion_id, created, body.model, include_usage),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            # Runs even when the client left before the body started: the job never lingers.
            background=BackgroundTask(_abandon, scheduler, job),
        )

    result = await _collect(job, scheduler, request)
    payload = {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": body.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": result.text},
                "logprobs": None,
                "finish_reason": result.finish_reason,
            }
        ],
        "usage": _usage(result),
    }
    return Response(orjson.dumps(payload), media_type="application/json")


async def _abandon(scheduler: Scheduler, job: Job) -> None:
    """Async so Starlette runs it on the event loop, not in a thread (the queue is not locked)."""
    scheduler.abandon(job)


def _shutting_down() -> APIError:
    return APIError(
        503,
        "The service is shutting down; retry on another replica.",
        code="shutting_down",
        headers={"Retry-After": "1"},
    )


def _usage(result: Completion) -> dict[str, int]:
    return {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "total_tokens": result.total_tokens,
    }


async def _watch_disconnect(request: Request, job: Job, scheduler: Scheduler) -> None:
    """Cancel the generation when the client hangs up (the body is already read)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            scheduler.abandon(job)
            return


async def _collect(job: Job, scheduler: Scheduler, request: Request) -> Completion:
    watcher = asyncio.create_task(_watch_disconnect(request, job, scheduler))
    try:
        while True:
            event = await job.events.get()
            if isinstance(event, Completion):
                return event
            if isinstance(event, SchedulerStopped):
                raise _shutting_down()
            if isinstance(event, BaseException):
                raise event
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        scheduler.abandon(job)  # a no-op once finished; stops it if this request was cancelled


def _chunk(
    completion_id: str,
    created: int,
    model: str,
    choices: list[dict[str, Any]],
    usage: dict[str, int] | None = None,
    include_usage: bool = False,
) -> bytes:
    payload: dict[str, Any] = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": choices,
    }
    if include_usage:  # as OpenAI does: null on every chunk but the last
        payload["usage"] = usage
    return b"data: " + orjson.dumps(payload) + b"\n\n"


async def _sse(
    job: Job,
    scheduler: Scheduler,
    completion_id: str,
    created: int,
    model: str,
    include_usage: bool,
) -> AsyncIterator[bytes]:
    """Server-sent events: role, content deltas as produced, finish reason, usage, [DONE]."""

    def delta(content: dict[str, str], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": content, "logprobs": None, "finish_reason": finish}
        return _chunk(completion_id, created, model, [choice], None, include_usage)

    try:
        yield delta({"role": "assistant", "content": ""})
        while True:
            event = await job.events.get()
            if isinstance(event, str):
                yield delta({"content": event})
                continue
            if isinstance(event, Completion):
                yield delta({}, event.finish_reason)
                if include_usage:
                    yield _chunk(completion_id, created, model, [], _usage(event), True)
                yield b"data: [DONE]\n\n"
                return
            # The status line is already sent: report the error in the stream, as OpenAI does.
            if isinstance(event, SchedulerStopped):
                err = _shutting_down()
                body = error_body(err.message, type=err.type, code=err.code)
            else:
                body = error_body(
                    "The generation failed; see the service logs.",
                    type="server_error",
                    code="internal_error",
                )
            yield b"data: " + body + b"\n\n"
            return
    finally:
        scheduler.abandon(job)
