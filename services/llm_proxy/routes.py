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
from dataclasses import dataclass
from typing import Any, cast

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from services.common.errors import APIError, check_json_content_type, error_body
from services.llm_proxy.auth import Caller
from services.llm_proxy.auth import caller as authenticate
from services.llm_proxy.cache import (
    CachedResponse,
    cache_key,
    completed,
    decode_entry,
    directives,
    eligible,
    encode_entry,
    semantic_text,
    sse_replay,
)
from services.llm_proxy.catalog import CacheOptions
from services.llm_proxy.gateway import Outcome, usage_of
from services.llm_proxy.guardrails import GuardrailBlocked, Hit, Rails
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
from services.llm_proxy.policy import Policy, blocked, choose_route, embed
from services.llm_proxy.router import Candidate
from services.llm_proxy.state import ProxyState, State
from services.llm_proxy.structured import (
    OutputSpec,
    StructuredRequestError,
    normalize,
    output_spec,
    repair_messages,
    violations,
)
from services.llm_proxy.telemetry import (
    end_llm_span,
    set_guardrail_attributes,
    set_route_attributes,
    start_llm_span,
)
from services.llm_proxy.upstream import Stream, call, open_stream, target

router = APIRouter()
log = logging.getLogger("llmops.llm_proxy")
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
    _charge(state, caller, alias, dep.name, usage, cost, reservation)
    return cost


def _charge(
    state: ProxyState,
    caller: KeyRecord,
    alias: str,
    deployment: str,
    usage: tuple[int, int],
    cost: float,
    reservation: Reservation | None,
) -> None:
    """The key's spend (and budget gauge) for a call, and its reservation settled."""
    tin, tout = usage
    if not caller.admin:
        m = state.metrics
        state.spend.add(caller.id, alias, deployment, tin, tout, cost)
        m.key_spend.labels(caller.id).inc(cost)
        if caller.max_budget_usd:
            # The key's spend as last read (key cache TTL, spend flush) plus this call: close
            # enough to warn before the budget is reached; the limiter enforces it exactly.
            used = (caller.spend_usd + cost) / caller.max_budget_usd
            m.key_budget_used.labels(caller.id).set(used)
    if reservation is not None:
        state.limiter.settle(reservation, tin + tout, to_nano(cost))


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
    router = state.router
    policies = router.policies
    headers: dict[str, str] = {}
    spec = router.catalog.aliases[alias]
    if spec.routing is not None:
        decision = await choose_route(state, policies, alias, spec, messages)
        state.metrics.routes.labels(alias, decision.route, decision.target).inc()
        headers["x-llmops-route"] = decision.route
        headers["x-llmops-route-target"] = decision.target
        headers["x-llmops-route-score"] = f"{decision.score:.3f}"
        set_route_attributes(decision)
        alias = decision.target
    policy = policies.by_alias[alias]
    rails = policies.rails(alias, caller)
    try:
        wanted = output_spec(data)
    except StructuredRequestError as exc:
        raise APIError(400, exc.message, param=exc.param, code="invalid_response_format") from None
    hits: list[Hit] = []
    if rails.pre:
        try:
            hits = rails.check_request(messages)
        except GuardrailBlocked as exc:
            _count_hits(state, [exc.hit])
            raise blocked(exc) from None
    in_tokens = estimate_prompt_tokens(messages)
    if data.get("tools"):
        in_tokens += _text_tokens(orjson.dumps(data["tools"]).decode())
    out_tokens = (max_out or state.settings.default_max_tokens) * n
    reservation = await _reserve(
        state, caller, alias, in_tokens + out_tokens, out_tokens, in_tokens
    )
    _count_hits(state, hits, headers)
    if state.settings.log_payloads:
        payload_log.debug("request", extra={"alias": alias, "messages": messages})
    try:
        if wanted is not None or rails.post or policy.cache is not None:
            checked = Checked(policy, rails, wanted, headers)
            return await _chat_with_policy(
                state, request, caller, alias, data, checked, in_tokens, out_tokens,
                reservation, started,
            )  # fmt: skip
        if stream:
            return await _stream(
                state, caller, alias, data, in_tokens, reservation, started, headers
            )
        return await _complete(
            state, caller, alias, data, "chat/completions", in_tokens + out_tokens, reservation,
            started, headers,
        )  # fmt: skip
    except BaseException:
        _refund(state, reservation)
        raise


def _count_hits(state: ProxyState, hits: list[Hit], headers: dict[str, str] | None = None) -> None:
    """Each rail that acted: counted, named on the request's span (never what matched) and,
    given the answer's headers, added to ``x-llmops-guardrails``."""
    for h in hits:
        state.metrics.guardrails.labels(h.rail, h.stage, h.action).inc()
    if hits:
        set_guardrail_attributes(hits)
        if headers is not None:
            labels = [h.label for h in hits]
            if "x-llmops-guardrails" in headers:
                labels.insert(0, headers["x-llmops-guardrails"])
            headers["x-llmops-guardrails"] = ",".join(labels)


async def _complete(
    state: ProxyState,
    caller: KeyRecord,
    alias: str,
    data: dict[str, Any],
    endpoint: str,
    tokens: int,
    reservation: Reservation | None,
    started: float,
    extra: dict[str, str] | None = None,
) -> Response:
    settings = state.settings

    async def attempt(cand: Candidate) -> tuple[bytes, dict[str, Any]]:
        return await call(
            state.session, cand.state.deployment, cand.state.api_key, endpoint, data,
            settings.connect_timeout_s,
        )  # fmt: skip

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
    headers = _headers(outcome, overhead, cost)
    if extra:
        headers.update(extra)
    return Response(raw, media_type=JSON, headers=headers)


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
    extra: dict[str, str] | None = None,
    checked: Checked | None = None,
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

    watch = _Watch(checked) if checked is not None else None

    async def relay() -> AsyncIterator[bytes]:
        usage: tuple[int, int] | None = None
        chunks = 0
        status = 200
        finished = False
        try:
            if watch is not None and not watch.see(upstream.first_obj):
                status = 400
                yield watch.error(state)
                return
            state.metrics.ttft_seconds.labels(alias).observe(time.perf_counter() - started)
            yield b"data: " + upstream.first + b"\n\n"
            chunks += 1
            async for event in upstream.events():
                if event == b"[DONE]":
                    finished = True
                    if watch is not None:
                        await watch.done(state, outcome)
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
                if watch is not None and not watch.see(obj):
                    status = 400
                    yield watch.error(state)
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
    if extra:
        headers.update(extra)
    return RelayResponse(
        relay(), on_close=lambda: finish(499, None, 0), media_type="text/event-stream",
        headers=headers,
    )  # fmt: skip


class RelayResponse(StreamingResponse):
    """A stream whose upstream is closed even if the body never starts (client gone first).

    The head and the first event (already in hand: the upstream answered with it) are sent
    before Starlette's streaming machinery starts: with uvicorn's ASGI 2.3 it first opens a task
    group and a task to watch for the client's disconnect, an event-loop turn and about 0.1 ms
    that would otherwise come before the first token (docs/benchmarks.md, the proxy's TTFT).
    The rest streams as Starlette streams it, the disconnect watched."""

    def __init__(self, content: AsyncIterator[bytes], on_close: Callable[[], None], **kw: Any):
        super().__init__(content, **kw)
        self.on_close = on_close
        self._head_sent = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            body = cast(AsyncIterator[bytes], self.body_iterator)
            first = await anext(body, None)
            await send(
                {"type": "http.response.start", "status": self.status_code,
                 "headers": self.raw_headers}
            )  # fmt: skip
            self._head_sent = True
            if first is not None:
                await send({"type": "http.response.body", "body": first, "more_body": True})
            await super().__call__(scope, receive, send)
        finally:
            self.on_close()

    async def stream_response(self, send: Send) -> None:
        if not self._head_sent:
            await send(
                {"type": "http.response.start", "status": self.status_code,
                 "headers": self.raw_headers}
            )  # fmt: skip
        async for chunk in self.body_iterator:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


@dataclass
class Checked:
    """What a chat request is checked against beyond routing: its alias' policy, the rails in
    force (the key's own or the alias'), the output it asked for, and the headers so far."""

    policy: Policy
    rails: Rails
    wanted: OutputSpec | None
    headers: dict[str, str]
    cache: CacheLookup | None = None


class _Watch:
    """A streamed answer under check: block rails on each delta (linear), flag rails and the
    cache write once it has finished."""

    def __init__(self, checked: Checked) -> None:
        self.checked = checked
        self.checker = checked.rails.stream_checker()
        self.chunks: list[dict[str, Any]] | None = [] if checked.cache is not None else None
        self.hit: Hit | None = None

    def see(self, obj: Any) -> bool:
        """False when a block rail stops the stream here."""
        if not isinstance(obj, dict):
            return True
        if self.chunks is not None:
            self.chunks.append(obj)
        for choice in obj.get("choices") or ():
            delta = choice.get("delta") if isinstance(choice, dict) else None
            text = delta.get("content") if isinstance(delta, dict) else None
            if isinstance(text, str) and text:
                try:
                    self.checker.feed(text)
                except GuardrailBlocked as exc:
                    self.hit = exc.hit
                    return False
        return True

    def error(self, state: ProxyState) -> bytes:
        assert self.hit is not None
        _count_hits(state, [self.hit])
        message = GuardrailBlocked(self.hit).message
        return (
            b"data: "
            + error_body(message, type="invalid_request_error", code="guardrail_blocked")
            + b"\n\n"
        )

    async def done(self, state: ProxyState, outcome: Outcome) -> None:
        _count_hits(state, self.checker.flags())
        lookup = self.checked.cache
        if lookup is not None and self.chunks is not None and lookup.may_write:
            completion = completed(self.chunks)
            if completion is not None:
                body = orjson.dumps(completion)
                dep = outcome.candidate.state.deployment.name
                await _cache_store(state, lookup, completion, body, dep)


async def _chat_with_policy(
    state: ProxyState,
    request: Request,
    caller: KeyRecord,
    alias: str,
    data: dict[str, Any],
    checked: Checked,
    in_tokens: int,
    out_tokens: int,
    reservation: Reservation | None,
    started: float,
) -> Response:
    """Chat with guardrails on the answer, the response cache or a response_format in force.

    A stream is relayed as it comes when only block/flag rails check it (``check``); with a
    schema to validate, a redact rail, or ``stream_guardrails: buffer`` the answer is fetched
    whole, checked, then sent as a stream: nothing unchecked reaches the client.
    """
    stream = data.get("stream") is True
    policy, rails, headers = checked.policy, checked.rails, checked.headers
    if policy.cache is not None:
        checked.cache = lookup = await _cache_lookup(
            state, request, caller, alias, data, rails, policy.cache
        )
        headers["x-llmops-cache"] = lookup.result
        if lookup.entry is not None:
            return _cached_answer(state, caller, alias, data, lookup, reservation, started, headers)
    buffer = (
        checked.wanted is not None
        or rails.post_redacts
        or (bool(rails.post) and policy.stream_guardrails == "buffer")
    )
    if stream and not buffer:
        return await _stream(
            state, caller, alias, data, in_tokens, reservation, started, headers, checked
        )
    span = start_llm_span(state.tracer, "chat", alias, data)
    try:
        completion, outcome, usage = await _checked_completion(
            state, alias, data, checked, in_tokens + out_tokens
        )
    except _OutputInvalid as exc:
        # The failed attempts were made and are paid for, like any upstream call.
        cost = _account(state, caller, alias, exc.outcome.candidate, exc.usage, reservation)
        dep = exc.outcome.candidate.state.deployment.name
        _observe(state, alias, dep, 502, started, exc.outcome)
        end_llm_span(span, outcome=exc.outcome, usage=exc.usage, cost=cost, error=exc.error.message)
        raise exc.error from None
    except APIError as exc:
        _observe(state, alias, "none", exc.status_code, started, None)
        end_llm_span(span, outcome=None, error=exc.message)
        raise
    cost = _account(state, caller, alias, outcome.candidate, usage, reservation)
    if rails.post:
        try:
            hits = rails.check_completion(completion)
        except GuardrailBlocked as exc:
            _count_hits(state, [exc.hit])
            _observe(state, alias, outcome.candidate.state.deployment.name, 400, started, outcome)
            end_llm_span(span, outcome=outcome, usage=usage, cost=cost, error=exc.message)
            raise blocked(exc) from None
        _count_hits(state, hits, headers)
    end_llm_span(span, outcome=outcome, usage=usage, cost=cost)
    dep = outcome.candidate.state.deployment.name
    body = orjson.dumps(completion)
    if checked.cache is not None and checked.cache.may_write:
        await _cache_store(state, checked.cache, completion, body, dep)
    overhead = _observe(state, alias, dep, 200, started, outcome)
    headers.update(_headers(outcome, overhead, cost))
    if stream:
        return _replay(completion, data, headers)
    return Response(body, media_type=JSON, headers=headers)


class _OutputInvalid(Exception):
    def __init__(self, error: APIError, outcome: Outcome, usage: tuple[int, int]) -> None:
        super().__init__(error.message)
        self.error, self.outcome, self.usage = error, outcome, usage


async def _checked_completion(
    state: ProxyState, alias: str, data: dict[str, Any], checked: Checked, tokens: int
) -> tuple[dict[str, Any], Outcome, tuple[int, int]]:
    """One non-streamed answer that meets the requested schema: an invalid one is sent back
    with what is wrong, up to ``max_repairs`` times, then the caller gets a 502 (never a 200
    with invalid JSON). Every attempt's tokens are counted."""
    settings = state.settings
    body = {k: v for k, v in data.items() if k not in ("stream", "stream_options")}
    messages = body["messages"]
    wanted = checked.wanted
    repairs = checked.policy.structured.max_repairs
    total_in = total_out = 0
    metric = state.metrics.structured

    async def attempt(cand: Candidate) -> dict[str, Any]:
        _, obj = await call(
            state.session, cand.state.deployment, cand.state.api_key, "chat/completions", body,
            settings.connect_timeout_s,
        )  # fmt: skip
        return obj

    upstream_s = 0.0
    calls = 0
    for round_ in range(repairs + 1):
        obj, outcome = await state.gateway.call(alias, tokens, attempt)
        upstream_s += outcome.upstream_s
        calls += outcome.attempts
        tin, tout = usage_of(obj) or (tokens, 0)
        total_in, total_out = total_in + tin, total_out + tout
        if wanted is None or outcome.candidate.state.deployment.structured_outputs == "trust":
            break
        problems = violations(wanted, obj)
        if not problems:
            metric.labels(alias, "valid" if round_ == 0 else "repaired").inc()
            obj = normalize(wanted, obj)  # an accepted ```json fence goes: bare JSON out
            break
        metric.labels(alias, "violation").inc()
        if round_ == repairs:
            metric.labels(alias, "failed").inc()
            error = APIError(
                502,
                f"The model's answer did not match the requested {wanted.describe()} after "
                f"{round_ + 1} attempts ({repairs} repairs with the error fed back): "
                + "; ".join(problems[:3]),
                code="structured_output_invalid",
                type="upstream_error",
            )
            raise _OutputInvalid(error, outcome, (total_in, total_out))
        body["messages"] = repair_messages(messages, obj, problems, wanted)
    return obj, Outcome(outcome.candidate, calls, upstream_s), (total_in, total_out)


@dataclass
class CacheLookup:
    """One request's visit to the response cache, and what a miss should store."""

    result: str  # hit, semantic_hit, miss, bypass
    scope: str
    key: str | None = None
    may_write: bool = False
    entry: CachedResponse | None = None
    options: CacheOptions | None = None
    data: dict[str, Any] | None = None
    namespace: str = ""  # the alias, and the rails in force, the entry is kept under
    vector: Any = None


def cache_scope(caller: KeyRecord) -> str:
    """The tenant a cached answer belongs to: the key's ``metadata.cache_scope`` (keys that
    share on purpose), else the key itself. Never shared across keys by default."""
    scope = caller.metadata.get("cache_scope") if caller.metadata else None
    return f"scope:{scope}" if isinstance(scope, str) and scope else f"key:{caller.id}"


async def _cache_lookup(
    state: ProxyState,
    request: Request,
    caller: KeyRecord,
    alias: str,
    data: dict[str, Any],
    rails: Rails,
    options: CacheOptions,
) -> CacheLookup:
    scope = cache_scope(caller)
    read, write = directives(request.headers.get("cache-control"))
    opt_in = request.headers.get("x-llmops-cache", "").strip().lower() == "force"
    if not (read or write) or not eligible(data, opt_in):
        state.metrics.cache.labels(alias, "bypass").inc()
        return CacheLookup("bypass", scope)
    # The rails in force are part of the key: an answer checked by other rails is not served.
    namespace = alias if not rails.names else f"{alias}|{','.join(rails.names)}"
    key = cache_key(scope, namespace, data)
    lookup = CacheLookup("miss", scope, key, write, options=options, data=data, namespace=namespace)
    if not read:
        state.metrics.cache.labels(alias, "bypass").inc()
        lookup.result = "bypass"
        return lookup
    raw = await state.cache.get(key)
    entry = decode_entry(raw, scope) if raw is not None else None
    if entry is not None:
        lookup.result, lookup.entry = "hit", entry
    elif options.semantic is not None and (text := semantic_text(data)) is not None:
        sem = options.semantic
        try:
            lookup.vector = (await embed(state, sem.embedding_alias, [text]))[0]
        except APIError as exc:
            log.warning("semantic cache skipped: %s", exc.message)
        if lookup.vector is not None:
            found = await state.semantic.lookup(
                scope, namespace, data, lookup.vector, threshold=sem.threshold,
                embedder=sem.embedding_alias,
            )  # fmt: skip
            raw = await state.cache.get(found.key) if found is not None else None
            entry = decode_entry(raw, scope) if raw is not None else None
            if entry is not None:
                lookup.result, lookup.entry = "semantic_hit", entry
    state.metrics.cache.labels(alias, lookup.result).inc()
    return lookup


async def _cache_store(
    state: ProxyState, lookup: CacheLookup, completion: dict[str, Any], body: bytes, dep: str
) -> None:
    """Keep a fresh answer (``body``: ``completion`` serialised) for its tenant; a cache
    failure never fails the request."""
    options, key = lookup.options, lookup.key
    if options is None or key is None or not completion.get("choices"):
        return
    entry = encode_entry(lookup.scope, body, dep, usage_of(completion))
    await state.cache.set(key, entry, options.ttl_s)
    if options.semantic is not None and lookup.vector is not None and lookup.data is not None:
        # The row points at the exact entry just written.
        await state.semantic.add(
            lookup.scope, lookup.namespace, lookup.data, lookup.vector, key,
            ttl_s=options.ttl_s, embedder=options.semantic.embedding_alias,
        )  # fmt: skip


def _cached_answer(
    state: ProxyState,
    caller: KeyRecord,
    alias: str,
    data: dict[str, Any],
    lookup: CacheLookup,
    reservation: Reservation | None,
    started: float,
    headers: dict[str, str],
) -> Response:
    """A stored answer: no upstream call; charged only if the alias says ``charge_hits``."""
    entry, options = lookup.entry, lookup.options
    assert entry is not None and options is not None
    cost = 0.0
    if options.charge_hits:
        usage = entry.usage or (0, 0)
        dep = next(
            (d for d in state.router.catalog.deployments if d.name == entry.deployment), None
        )
        cost = dep.cost(*usage) if dep is not None else 0.0
        _charge(state, caller, alias, "cache", usage, cost, reservation)
    else:
        _refund(state, reservation)
    _observe(state, alias, "cache", 200, started, None)
    headers.update(
        {
            "x-llmops-deployment": entry.deployment,
            "x-llmops-attempts": "0",
            "x-llmops-cost-usd": f"{cost:.9f}",
            "x-llmops-cache-age": str(max(0, int(time.time() - entry.created))),
        }
    )
    if data.get("stream") is True:
        return _replay(entry.completion(), data, headers)
    return Response(entry.body, media_type=JSON, headers=headers)


def _replay(completion: dict[str, Any], data: dict[str, Any], headers: dict[str, str]) -> Response:
    """A whole answer sent as the stream the client asked for."""
    options = data.get("stream_options")
    usage = isinstance(options, dict) and options.get("include_usage") is True
    events = sse_replay(completion, include_usage=usage)

    async def body() -> AsyncIterator[bytes]:
        for event in events:
            yield event

    headers.update({"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    return StreamingResponse(body(), media_type="text/event-stream", headers=headers)


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
