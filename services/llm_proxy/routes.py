"""The OpenAI-compatible API: chat completions (plain and streaming), embeddings, models.

Request bodies are parsed with orjson and checked by hand rather than through a pydantic model:
the proxy must pass through every field it does not know (tools, response_format, provider
extensions) untouched, and it is the hot path, so only what routing and accounting need is read.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from services.common.errors import APIError, check_json_content_type, error_body
from services.llm_proxy.auth import Caller
from services.llm_proxy.auth import caller as authenticate
from services.llm_proxy.gateway import Outcome, usage_of
from services.llm_proxy.keys import KeyRecord
from services.llm_proxy.limits import (
    LimiterUnavailable,
    Limits,
    RateLimited,
    Reservation,
    to_nano,
)
from services.llm_proxy.openapi import (
    CHAT_REQUEST,
    CHAT_RESPONSES,
    EMBEDDINGS_REQUEST,
    EMBEDDINGS_RESPONSES,
    ModelCard,
    ModelList,
    json_body,
)
from services.llm_proxy.router import Candidate
from services.llm_proxy.state import ProxyState, State
from services.llm_proxy.telemetry import end_llm_span, start_llm_span
from services.llm_proxy.upstream import Stream, UpstreamError, open_stream, post_json, target

router = APIRouter()
payload_log = logging.getLogger("llmops.payloads")

JSON = "application/json"


async def _json_object(request: Request) -> dict[str, Any]:
    check_json_content_type(request.headers.get("content-type"))
    body = await request.body()
    if not body:
        raise APIError(400, "The request body is empty; send a JSON object.", code="invalid_json")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise APIError(
            400, f"The request body is not valid JSON: {exc}.", code="invalid_json"
        ) from None
    if not isinstance(data, dict):
        raise APIError(400, "The request body must be a JSON object.", code="invalid_json")
    return data


def _alias(state: ProxyState, caller: KeyRecord, data: dict[str, Any], mode: str) -> str:
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise APIError(400, "Missing required parameter: 'model'.", param="model", code="missing")
    router = state.router
    if model not in router.modes:
        raise APIError(
            404,
            f"The model '{model}' does not exist; GET /v1/models lists the ones you can use.",
            param="model",
            code="model_not_found",
        )
    if not caller.may_use(model):
        raise APIError(
            403,
            f"This API key may not use the model '{model}'; it may use: "
            f"{', '.join(sorted(caller.aliases or ())) or 'none'}.",
            param="model",
            code="model_not_allowed",
        )
    if router.modes[model] != mode:
        endpoint = "/v1/embeddings" if mode == "chat" else "/v1/chat/completions"
        raise APIError(
            400,
            f"The model '{model}' is served at {endpoint}.",
            param="model",
            code="wrong_endpoint",
        )
    return model


def _positive_int(data: dict[str, Any], name: str) -> int | None:
    value = data.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise APIError(400, f"Invalid value for '{name}': expected a positive integer.", param=name)
    return value


def _text_tokens(text: str) -> int:
    return len(text) // 4 + 1


def estimate_prompt_tokens(messages: list[Any]) -> int:
    """A cheap upper-leaning estimate (4 characters a token, plus framing) for reservations."""
    total = 3
    for m in messages:
        total += 4
        content = m.get("content")
        if isinstance(content, str):
            total += _text_tokens(content)
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict):
                    if isinstance(part.get("text"), str):
                        total += _text_tokens(part["text"])
                    elif part.get("type") == "image_url":
                        total += 85
        if m.get("tool_calls"):
            total += _text_tokens(orjson.dumps(m["tool_calls"]).decode())
    return total


def _check_messages(data: dict[str, Any]) -> list[Any]:
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        raise APIError(
            400,
            "Missing required parameter: 'messages' must be a non-empty list.",
            param="messages",
            code="missing",
        )
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise APIError(
                400,
                f"Invalid value for 'messages[{i}]': expected an object with a 'role'.",
                param=f"messages[{i}]",
            )
    return messages


async def _reserve(
    state: ProxyState, caller: KeyRecord, alias: str, tokens: int, out_tokens: int, in_tokens: int
) -> Reservation | None:
    if caller.rpm is None and caller.tpm is None and caller.max_budget_usd is None:
        return None
    if caller.tpm is not None and tokens > caller.tpm:
        raise APIError(
            400,
            f"This request may use up to {tokens} tokens (prompt estimate plus max_tokens), "
            f"more than this key's limit of {caller.tpm} tokens per minute; lower max_tokens.",
            param="max_tokens",
            code="tokens_exceed_limit",
        )
    prices = state.router.prices[alias]
    cost = to_nano((in_tokens * prices.input_per_1k + out_tokens * prices.output_per_1k) / 1000)
    limits = Limits(
        f"key:{caller.id}",
        rpm=caller.rpm,
        tpm=caller.tpm,
        budget_nano=None if caller.max_budget_usd is None else to_nano(caller.max_budget_usd),
        spent_nano=to_nano(caller.spend_usd),
    )
    try:
        return await state.limiter.reserve(limits, tokens, cost)
    except RateLimited as exc:
        state.metrics.rate_limited.labels(exc.reason).inc()
        if exc.reason == "budget":
            raise APIError(
                429,
                f"This API key has reached its budget of ${caller.max_budget_usd:g}; "
                f"ask an admin to raise max_budget_usd.",
                code="budget_exceeded",
                type="insufficient_quota",
            ) from exc
        per = f"{caller.rpm} requests" if exc.reason == "rpm" else f"{caller.tpm} tokens"
        raise APIError(
            429,
            f"Rate limit reached for this API key: {per} per minute; retry in {exc.retry_after} s.",
            code=f"rate_limit_{exc.reason}",
            headers={"Retry-After": str(exc.retry_after)},
        ) from exc
    except LimiterUnavailable as exc:
        state.metrics.rate_limited.labels("limiter_unavailable").inc()
        raise APIError(
            503,
            "The shared rate limiter (Redis) is unreachable and this proxy is configured to fail "
            "closed, so requests with limits or budgets are refused; retry shortly.",
            code="limiter_unavailable",
            headers={"Retry-After": "1"},
        ) from exc


def _account(
    state: ProxyState,
    caller: KeyRecord,
    alias: str,
    cand: Candidate,
    usage: tuple[int, int],
    reservation: Reservation | None,
) -> float:
    """Tokens, cost and spend for a finished call; settles the reservation. Returns USD."""
    dep = cand.state.deployment
    tin, tout = usage
    cost = dep.cost(tin, tout)
    m = state.metrics
    m.tokens.labels(alias, dep.name, "input").inc(tin)
    m.tokens.labels(alias, dep.name, "output").inc(tout)
    if cost:
        m.cost.labels(alias, dep.name).inc(cost)
    if not caller.admin:
        state.spend.add(caller.id, alias, dep.name, tin, tout, cost)
        m.key_spend.labels(caller.id).inc(cost)
        if caller.max_budget_usd:
            # The key's spend as last read (key cache TTL, spend flush) plus this call: close
            # enough to warn before the budget is reached; the limiter enforces it exactly.
            used = (caller.spend_usd + cost) / caller.max_budget_usd
            m.key_budget_used.labels(caller.id).set(used)
    if reservation is not None:
        state.limiter.settle(reservation, tin + tout, to_nano(cost))
    return cost


def _refund(state: ProxyState, reservation: Reservation | None) -> None:
    if reservation is not None:
        state.limiter.settle(reservation, 0, 0)


def _headers(outcome: Outcome, overhead_s: float, cost: float | None) -> dict[str, str]:
    h = {
        "x-llmops-deployment": outcome.candidate.state.deployment.name,
        "x-llmops-attempts": str(outcome.attempts),
        "x-llmops-overhead-ms": f"{overhead_s * 1000:.3f}",
    }
    if cost is not None:
        h["x-llmops-cost-usd"] = f"{cost:.9f}"
    return h


@router.post(
    "/v1/chat/completions",
    summary="OpenAI-compatible chat completions.",
    openapi_extra=json_body(CHAT_REQUEST),
    responses=CHAT_RESPONSES,
)
async def chat_completions(request: Request) -> Response:
    started = time.perf_counter()
    # The hot path resolves its two dependencies by hand: FastAPI's injection costs ~60 us.
    state: ProxyState = request.app.state.proxy
    caller = await authenticate(request)
    data = await _json_object(request)
    alias = _alias(state, caller, data, "chat")
    messages = _check_messages(data)
    stream = data.get("stream", False)
    if not isinstance(stream, bool):
        raise APIError(400, "Invalid value for 'stream': expected true or false.", param="stream")
    # Both are checked: the current name wins, but a bad deprecated one is not passed on.
    max_tokens = _positive_int(data, "max_tokens")
    max_out = _positive_int(data, "max_completion_tokens") or max_tokens
    n = _positive_int(data, "n") or 1
    in_tokens = estimate_prompt_tokens(messages)
    if data.get("tools"):
        in_tokens += _text_tokens(orjson.dumps(data["tools"]).decode())
    out_tokens = (max_out or state.settings.default_max_tokens) * n
    reservation = await _reserve(
        state, caller, alias, in_tokens + out_tokens, out_tokens, in_tokens
    )
    if state.settings.log_payloads:
        payload_log.debug("request", extra={"alias": alias, "messages": messages})
    try:
        if stream:
            return await _stream(state, caller, alias, data, in_tokens, reservation, started)
        return await _complete(
            state, caller, alias, data, "chat/completions", in_tokens + out_tokens, reservation,
            started,
        )  # fmt: skip
    except BaseException:
        _refund(state, reservation)
        raise


async def _complete(
    state: ProxyState,
    caller: KeyRecord,
    alias: str,
    data: dict[str, Any],
    endpoint: str,
    tokens: int,
    reservation: Reservation | None,
    started: float,
) -> Response:
    settings = state.settings

    async def attempt(cand: Candidate) -> tuple[bytes, dict[str, Any]]:
        dep = cand.state.deployment
        data["model"] = dep.model
        body = orjson.dumps(data)
        t = target(dep, cand.state.api_key, endpoint)
        raw, obj = await post_json(
            state.session, t, body, dep.timeout_s, settings.connect_timeout_s
        )
        if endpoint == "chat/completions" and not isinstance(obj.get("choices"), list):
            raise UpstreamError("retry", "the upstream answer has no 'choices'")
        if endpoint == "embeddings" and not isinstance(obj.get("data"), list):
            raise UpstreamError("retry", "the upstream answer has no 'data'")
        return raw, obj

    span = start_llm_span(
        state.tracer, "chat" if endpoint == "chat/completions" else "embeddings", alias, data
    )
    try:
        (raw, obj), outcome = await state.gateway.call(alias, tokens, attempt)
    except APIError as exc:
        _observe(state, alias, "none", exc.status_code, started, None)
        end_llm_span(span, outcome=None, error=exc.message)
        raise
    usage = usage_of(obj) or (tokens, 0)
    cost = _account(state, caller, alias, outcome.candidate, usage, reservation)
    end_llm_span(span, outcome=outcome, usage=usage, cost=cost)
    if settings.log_payloads:
        payload_log.debug("response", extra={"alias": alias, "body": obj})
    overhead = _observe(
        state, alias, outcome.candidate.state.deployment.name, 200, started, outcome
    )
    return Response(raw, media_type=JSON, headers=_headers(outcome, overhead, cost))


def _observe(
    state: ProxyState,
    alias: str,
    deployment: str,
    status: int,
    started: float,
    outcome: Outcome | None,
) -> float:
    total = time.perf_counter() - started
    m = state.metrics
    m.requests.labels(alias, deployment, str(status)).inc()
    m.request_seconds.labels(alias).observe(total)
    overhead = total - (outcome.upstream_s if outcome else 0.0)
    if outcome is not None:
        m.overhead_seconds.observe(overhead)
    return overhead


def _sse_error(message: str, code: str) -> bytes:
    return b"data: " + error_body(message, type="upstream_error", code=code) + b"\n\n"


async def _stream(
    state: ProxyState,
    caller: KeyRecord,
    alias: str,
    data: dict[str, Any],
    in_tokens: int,
    reservation: Reservation | None,
    started: float,
) -> Response:
    settings = state.settings
    options = data.get("stream_options")
    client_wants_usage = isinstance(options, dict) and options.get("include_usage") is True
    data["stream_options"] = {
        **(options if isinstance(options, dict) else {}),
        "include_usage": True,
    }

    async def attempt(cand: Candidate) -> Stream:
        dep = cand.state.deployment
        data["model"] = dep.model
        t = target(dep, cand.state.api_key, "chat/completions")
        return await open_stream(
            state.session, t, orjson.dumps(data), dep.timeout_s, settings.connect_timeout_s
        )

    span = start_llm_span(state.tracer, "chat", alias, data)
    try:
        upstream, outcome = await state.gateway.call(alias, in_tokens, attempt)
    except APIError as exc:
        _observe(state, alias, "none", exc.status_code, started, None)
        end_llm_span(span, outcome=None, error=exc.message)
        raise
    dep_name = outcome.candidate.state.deployment.name
    overhead = time.perf_counter() - started - outcome.upstream_s
    state.metrics.overhead_seconds.observe(overhead)

    done = False

    def finish(status: int, usage: tuple[int, int] | None, chunks: int) -> None:
        """Close the upstream and account for the call, exactly once, however it ended."""
        nonlocal done
        if done:
            return
        done = True
        upstream.close()
        # Without usage from the upstream, count each chunk as a token: better than nothing.
        final = usage or (in_tokens, chunks)
        cost = _account(state, caller, alias, outcome.candidate, final, reservation)
        _observe(state, alias, dep_name, status, started, outcome)
        end_llm_span(
            span,
            outcome=outcome,
            usage=final,
            cost=cost,
            error=None if status == 200 else f"stream ended with {status}",
        )

    async def relay() -> AsyncIterator[bytes]:
        usage: tuple[int, int] | None = None
        chunks = 0
        status = 200
        finished = False
        try:
            state.metrics.ttft_seconds.labels(alias).observe(time.perf_counter() - started)
            yield b"data: " + upstream.first + b"\n\n"
            chunks += 1
            async for event in upstream.events():
                if event == b"[DONE]":
                    finished = True
                    yield b"data: [DONE]\n\n"
                    break
                try:
                    obj = orjson.loads(event)
                except orjson.JSONDecodeError:
                    status = 502
                    yield _sse_error(
                        "The upstream sent an invalid stream event; the answer is incomplete.",
                        "upstream_stream_error",
                    )
                    return
                if isinstance(obj, dict) and obj.get("error"):
                    status = 502
                    yield _sse_error(
                        f"The upstream failed mid-stream: {obj['error']}", "upstream_stream_error"
                    )
                    return
                found = usage_of(obj)
                if found is not None:
                    usage = found
                    if not client_wants_usage and not obj.get("choices"):
                        continue
                chunks += 1
                yield b"data: " + event + b"\n\n"
            if not finished:
                status = 502
                yield _sse_error(
                    "The upstream closed the stream before it finished; the answer is incomplete.",
                    "upstream_stream_cut",
                )
        except (TimeoutError, OSError, Exception) as exc:  # aiohttp errors included
            status = 504 if isinstance(exc, asyncio.TimeoutError) else 502
            yield _sse_error(
                f"The upstream stream failed: {type(exc).__name__}; the answer is incomplete.",
                "upstream_stream_error",
            )
        finally:
            if status == 200 and not finished:
                status = 499  # the client went away; the upstream request is cancelled
            finish(status, usage, chunks)

    headers = _headers(outcome, overhead, None)
    headers.update({"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    return RelayResponse(
        relay(), on_close=lambda: finish(499, None, 0), media_type="text/event-stream",
        headers=headers,
    )  # fmt: skip


class RelayResponse(StreamingResponse):
    """A stream whose upstream is closed even if the body never starts (client gone first)."""

    def __init__(self, content: AsyncIterator[bytes], on_close: Callable[[], None], **kw: Any):
        super().__init__(content, **kw)
        self.on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.on_close()


def _token_ids(value: Any) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(t, int) and not isinstance(t, bool) for t in value)
    )


def _input_tokens(inputs: Any) -> int:
    """Tokens of an embeddings ``input`` (for limits), in OpenAI's four forms: a text, texts,
    the token ids of one input, or of several; anything else is the caller's 400."""
    if isinstance(inputs, str):
        return _text_tokens(inputs)
    if isinstance(inputs, list) and inputs:
        if all(isinstance(t, str) for t in inputs):
            return sum(_text_tokens(t) for t in inputs)
        if _token_ids(inputs):
            return len(inputs)
        if all(_token_ids(t) for t in inputs):
            return sum(len(t) for t in inputs)
    if inputs is None:
        raise APIError(400, "Missing required parameter: 'input'.", param="input", code="missing")
    raise APIError(
        400,
        "Invalid value for 'input': expected a string, a non-empty list of strings, or token "
        "ids (a non-empty list of integers, or a list of such lists).",
        param="input",
        code="invalid_value",
    )


@router.post(
    "/v1/embeddings",
    summary="OpenAI-compatible embeddings, routed like chat.",
    openapi_extra=json_body(EMBEDDINGS_REQUEST),
    responses=EMBEDDINGS_RESPONSES,
)
async def embeddings(request: Request) -> Response:
    started = time.perf_counter()
    state: ProxyState = request.app.state.proxy
    caller = await authenticate(request)
    data = await _json_object(request)
    alias = _alias(state, caller, data, "embeddings")
    in_tokens = _input_tokens(data.get("input"))
    reservation = await _reserve(state, caller, alias, in_tokens, 0, in_tokens)
    try:
        return await _complete(
            state, caller, alias, data, "embeddings", in_tokens, reservation, started
        )
    except BaseException:
        _refund(state, reservation)
        raise


@router.get(
    "/v1/models", summary="The aliases this key may use.", responses={200: {"model": ModelList}}
)
async def list_models(state: State, caller: Caller) -> Response:
    catalog = state.router.catalog
    created = state.started_at
    data = [
        {"id": name, "object": "model", "created": created, "owned_by": "llmops"}
        for name in catalog.aliases
        if caller.may_use(name)
    ]
    return Response(orjson.dumps({"object": "list", "data": data}), media_type=JSON)


@router.get(
    "/v1/models/{model}",
    summary="One alias, if this key may use it.",
    responses={200: {"model": ModelCard}},
)
async def get_model(model: str, state: State, caller: Caller) -> Response:
    if model not in state.router.catalog.aliases or not caller.may_use(model):
        raise APIError(
            404, f"The model '{model}' does not exist or this key may not use it.",
            param="model", code="model_not_found",
        )  # fmt: skip
    body = {"id": model, "object": "model", "created": state.started_at, "owned_by": "llmops"}
    return Response(orjson.dumps(body), media_type=JSON)
