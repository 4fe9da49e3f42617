"""One ask: retrieve, render the registry's prompt with the contexts, ask the proxy, cite.

Each stage is a span (when traces are exported) and a latency observation; the outgoing calls
carry the request's ``traceparent``, so retrieval, embeddings, the proxy and (later) feedback
join one trace.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from services.common.errors import APIError, PeerResponse, peer_error
from services.common.http import context_headers
from services.common.injection import find_injection
from services.common.tracing import trace_id_for
from services.rag.citations import FLAGS, ShownStream, cite, number_contexts, shown_answer
from services.rag.fencing import fence_lines
from services.rag.outbox import OutboxUnavailable
from services.rag.registry import PromptNotFound, PromptUnavailable, ResolvedPrompt
from services.rag.state import RagState

log = logging.getLogger("llmops.rag")


@dataclass
class Ask:
    question: str
    collection: str
    filter: dict[str, Any] | None
    top_k: int
    session_id: str | None
    user_id: str | None
    prompt_version: str | None
    stream: bool


@dataclass
class Prepared:
    """Everything decided before the model is asked."""

    ask: Ask
    interaction_id: str
    trace_id: str
    context: Context
    started: float
    prompt: ResolvedPrompt
    messages: list[dict[str, str]]
    used: list[dict[str, Any]]
    degraded: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    total: float | None = None  # seconds, set by finish(): the ``total`` stage

    def stage_ms(self) -> dict[str, float]:
        """The stage times known so far, as ``llmops_rag_stage_seconds`` observes them (keyed
        by its ``stage`` label: retrieval, prompt, llm, then total once :func:`finish` has
        run), in milliseconds to one decimal."""
        out = {stage: round(seconds * 1000, 1) for stage, seconds in self.timings.items()}
        if self.total is not None:
            out["total"] = round(self.total * 1000, 1)
        return out


def _trace(interaction_id: str) -> tuple[str, Context]:
    """The ask's trace: the caller's (or the server span's), else one named after the
    interaction (Langfuse's seeded id). The stages' spans and every outgoing ``traceparent``
    hang from it, so retrieval, the proxy and feedback see one trace id even when nothing is
    exported; a feedback score on the interaction then lands on that same trace."""
    current = trace.get_current_span().get_span_context()
    if current.is_valid:
        return format(current.trace_id, "032x"), otel_context.get_current()
    trace_id = trace_id_for(interaction_id)
    parent = SpanContext(
        int(trace_id, 16),
        int.from_bytes(os.urandom(8), "big") or 1,
        is_remote=True,
        trace_flags=TraceFlags(0),
    )
    return trace_id, trace.set_span_in_context(NonRecordingSpan(parent))


async def _retrieve(state: RagState, ask: Ask, degraded: list[str]) -> list[dict[str, Any]]:
    body: dict[str, Any] = {"query": ask.question, "top_k": ask.top_k}
    if ask.filter:
        body["filter"] = ask.filter
    try:
        r = await state.retrieval.post(f"/v1/collections/{ask.collection}/search", json=body)
    except httpx.HTTPError as exc:
        return _retrieval_down(state, degraded, type(exc).__name__)
    if r.status_code == 200:
        try:
            results: list[dict[str, Any]] = r.json()["results"]
            return results
        except (ValueError, KeyError, TypeError):
            return _retrieval_down(state, degraded, "an unreadable search answer")
    if r.status_code in (401, 403):  # our key, not the caller's request: an operator's fix
        raise APIError(
            502,
            f"The retrieval service refused the rag service's key ({peer_error(r)['message']}); "
            "check RAG_RETRIEVAL_API_KEY.",
            code="retrieval_auth",
        )
    if r.status_code in (400, 404, 413, 422):  # the caller's collection, filter or question
        err = peer_error(r)
        raise APIError(
            400 if r.status_code == 422 else r.status_code,
            str(err["message"]),
            param="filter" if err.get("param") == "filter" else "collection",
            code=err.get("code") or "invalid_value",
        )
    return _retrieval_down(state, degraded, f"HTTP {r.status_code}")


def _retrieval_down(state: RagState, degraded: list[str], why: str) -> list[dict[str, Any]]:
    state.metrics.degraded.labels("retrieval_unavailable").inc()
    if state.settings.on_retrieval_failure == "fail":
        raise APIError(
            503,
            f"Retrieval is unavailable ({why}); retry shortly.",
            code="retrieval_unavailable",
            headers={"Retry-After": "2"},
        )
    degraded.append("retrieval_unavailable")
    return []


async def prepare(state: RagState, ask: Ask) -> Prepared:
    started = time.perf_counter()
    interaction_id = uuid.uuid4().hex
    trace_id, ctx = _trace(interaction_id)
    token = otel_context.attach(ctx)
    try:
        return await _prepare(state, ask, interaction_id, trace_id, ctx, started)
    finally:
        otel_context.detach(token)


async def _prepare(
    state: RagState, ask: Ask, interaction_id: str, trace_id: str, ctx: Context, started: float
) -> Prepared:
    degraded: list[str] = []
    tracer = state.tracer
    timings: dict[str, float] = {}
    with tracer.start_as_current_span("rag.retrieve") as span:
        t = time.perf_counter()
        chunks = await _retrieve(state, ask, degraded)
        timings["retrieval"] = time.perf_counter() - t
        span.set_attribute("rag.chunks", len(chunks))
    with tracer.start_as_current_span("rag.prompt") as span:
        t = time.perf_counter()
        try:
            prompt = await state.prompts.get(ask.prompt_version)
        except PromptNotFound as exc:
            if ask.prompt_version is not None:
                raise APIError(
                    404, str(exc), param="prompt_version", code="prompt_not_found"
                ) from None
            # Nothing registered under the alias yet (a new install): the bundled prompt,
            # flagged, rather than no answers at all.
            log.warning("%s; serving the bundled prompt", exc)
            prompt = state.prompts.bundled("prompt_not_registered")
        except PromptUnavailable as exc:
            raise APIError(
                503, str(exc), code="prompt_registry_unavailable", headers={"Retry-After": "5"}
            ) from None
        timings["prompt"] = time.perf_counter() - t
        span.set_attribute("rag.prompt.version", prompt.version or "bundled")
        span.set_attribute("rag.prompt.source", prompt.source)
        context, used = number_contexts(
            chunks, state.settings.max_context_chars, fence_lines(prompt.template)
        )
        flagged = flag_injections(state, ask, used)
        if flagged:
            span.set_attribute("rag.context.injection", flagged)
    for reason in prompt.degraded:
        degraded.append(reason)
        state.metrics.degraded.labels(reason).inc()
    text = prompt.render(context=context or "(no context was retrieved)", question=ask.question)
    return Prepared(
        ask=ask,
        interaction_id=interaction_id,
        trace_id=trace_id,
        context=ctx,
        started=started,
        prompt=prompt,
        messages=[{"role": "user", "content": text}],
        used=used,
        degraded=degraded,
        timings=timings,
    )


def flag_injections(state: RagState, ask: Ask, used: list[dict[str, Any]]) -> list[str]:
    """Look for prompt injection in the chunks the prompt shows: each hit is counted per
    heuristic, logged with the chunk's and document's ids (never its text: that is what the
    poisoned document wants repeated), and marked on the chunk (``flags`` of its context and
    citation). The chunk is still shown, fenced (see fencing.py): a heuristic can be wrong,
    and the answer's citations say which passage it came from. Returns the markers flagged."""
    flagged: list[str] = []
    for n, chunk in enumerate(used, start=1):
        names = find_injection(chunk.get("text") or "")
        if not names:
            continue
        chunk[FLAGS] = [f"prompt_injection:{name}" for name in names]
        flagged.append(f"[{n}]")
        for name in names:
            state.metrics.context_injection.labels(name).inc()
        log.warning(
            "retrieved chunk looks like a prompt injection",
            extra={
                "chunk_id": chunk.get("id"),
                "document_id": chunk.get("doc_id"),
                "collection": ask.collection,
                "heuristics": names,
            },
        )
    return flagged


def _chat_body(state: RagState, p: Prepared, stream: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": state.settings.model,
        "messages": p.messages,
        "max_tokens": state.settings.max_tokens,
        "temperature": state.settings.temperature,
        "user": p.ask.user_id or p.ask.session_id or "rag",
    }
    settings = state.settings
    if settings.stop:
        body["stop"] = settings.stop
    if settings.frequency_penalty is not None:
        body["frequency_penalty"] = settings.frequency_penalty
    if settings.presence_penalty is not None:
        body["presence_penalty"] = settings.presence_penalty
    if stream:
        body.update(stream=True, stream_options={"include_usage": True})
    return body


def _llm_error(r: PeerResponse) -> APIError:
    message = str(peer_error(r)["message"])
    if r.status_code == 429:
        return APIError(
            429,
            f"The model is rate limited: {message}",
            code="rate_limited",
            headers={"Retry-After": r.headers.get("retry-after", "1")},
        )
    if r.status_code in (401, 403):
        return APIError(
            502,
            "The LLM proxy refused the rag service's key (RAG_PROXY_API_KEY).",
            code="upstream_auth",
        )
    if r.status_code == 504:
        return APIError(504, f"The model timed out: {message}", code="upstream_timeout")
    return APIError(502, f"The model failed: {message}", code="upstream_error")


async def answer(state: RagState, p: Prepared) -> dict[str, Any]:
    token = otel_context.attach(p.context)
    try:
        return await _answer(state, p)
    finally:
        otel_context.detach(token)


def _link_prompt(span: trace.Span, prompt: ResolvedPrompt) -> None:
    """Langfuse links a generation to the registry's prompt version through these attributes
    (its OpenTelemetry mapping), so scores can be compared per prompt version there too."""
    if prompt.version is not None:
        span.set_attribute("langfuse.observation.type", "generation")
        span.set_attribute("langfuse.observation.prompt.name", prompt.name)
        span.set_attribute("langfuse.observation.prompt.version", int(prompt.version))


async def _answer(state: RagState, p: Prepared) -> dict[str, Any]:
    with state.tracer.start_as_current_span("rag.generate") as span:
        t = time.perf_counter()
        try:
            r = await state.proxy.post("/v1/chat/completions", json=_chat_body(state, p, False))
        except httpx.TimeoutException:
            raise APIError(
                504, "The model did not answer in time.", code="upstream_timeout"
            ) from None
        except httpx.HTTPError as exc:
            raise APIError(
                502,
                f"The LLM proxy is unreachable ({type(exc).__name__}).",
                code="upstream_unavailable",
            ) from None
        if r.status_code != 200:
            raise _llm_error(r)
        p.timings["llm"] = time.perf_counter() - t
        try:
            data = r.json()
            text = (data["choices"][0]["message"].get("content") or "").strip()
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            raise APIError(
                502,
                f"The LLM proxy answered with no readable completion: {r.text[:200]!r}",
                code="upstream_error",
            ) from None
        span.set_attribute("gen_ai.operation.name", "chat")
        span.set_attribute("gen_ai.request.model", state.settings.model)
        _link_prompt(span, p.prompt)
    return await finish(
        state, p, text, data.get("usage"), r.headers.get("x-llmops-deployment"), data.get("model")
    )


async def answer_stream(state: RagState, p: Prepared) -> AsyncIterator[bytes]:
    """SSE: ``rag.ask.chunk`` events with text deltas, then the whole ``rag.ask`` object, then
    ``[DONE]``; a failure after the first byte is an ``error`` event, never a silent cut.

    The 200 goes out before the answer exists, so a stream is acknowledged by its final
    ``rag.ask`` event: it is sent only once the interaction is durable in the outbox. The deltas
    are the shown answer's (:class:`ShownStream`): joined, they are the final ``answer``.

    Stage times: the response headers go out once retrieval and the prompt are done, before the
    model is asked, so their ``Server-Timing`` names those two stages only (see routes.py). The
    final ``rag.ask`` event carries all of them, ``timings_ms`` beside its ``latency_ms``: the
    same figures, keys and rounding as a non-streamed answer's ``Server-Timing`` header
    (:meth:`Prepared.stage_ms`). A trailer would be the header's own place, but Starlette's
    StreamingResponse cannot send one and the usual clients do not read them."""
    # The body runs in the response's own task, whose context is thrown away after it: no
    # detach needed (detaching across the yields would only log a spurious error).
    otel_context.attach(p.context)
    t = time.perf_counter()
    parts: list[str] = []
    shown = ShownStream(len(p.used))
    usage: dict[str, Any] | None = None
    model: str | None = None
    try:
        async with state.proxy.stream(
            "POST", "/v1/chat/completions", json=_chat_body(state, p, True)
        ) as r:
            if r.status_code != 200:
                await r.aread()
                raise _llm_error(r)
            deployment = r.headers.get("x-llmops-deployment")
            async for line in r.aiter_lines():
                if not line.startswith("data:"):
                    continue
                payload = line[5:].strip()
                if payload == "[DONE]":
                    break
                try:
                    event = orjson.loads(payload)
                except orjson.JSONDecodeError:
                    raise APIError(
                        502,
                        f"The LLM proxy sent an unreadable stream event: {payload[:200]!r}",
                        code="upstream_error",
                    ) from None
                if "error" in event:
                    raise APIError(
                        502,
                        str(event["error"].get("message", "stream failed")),
                        code="upstream_error",
                    )
                model = event.get("model") or model
                usage = event.get("usage") or usage
                for choice in event.get("choices") or []:
                    delta = (choice.get("delta") or {}).get("content")
                    if delta:
                        parts.append(delta)
                        if piece := shown.feed(delta):
                            yield _chunk_event(p, piece)
    except APIError as exc:
        state.metrics.asks.labels(exc.code or "error", "true").inc()
        yield _sse({"error": {"message": exc.message, "type": exc.type, "code": exc.code}})
        yield b"data: [DONE]\n\n"
        return
    except httpx.HTTPError as exc:
        state.metrics.asks.labels("upstream_error", "true").inc()
        yield _sse(
            {
                "error": {
                    "message": f"The LLM proxy failed mid-answer ({type(exc).__name__}).",
                    "type": "upstream_error",
                    "code": "upstream_error",
                }
            }
        )
        yield b"data: [DONE]\n\n"
        return
    p.timings["llm"] = time.perf_counter() - t
    if piece := shown.close():
        yield _chunk_event(p, piece)
    try:
        result = await finish(state, p, "".join(parts).strip(), usage, deployment, model)
    except APIError as exc:
        state.metrics.asks.labels(exc.code or "error", "true").inc()
        yield _sse({"error": {"message": exc.message, "type": exc.type, "code": exc.code}})
        yield b"data: [DONE]\n\n"
        return
    state.metrics.asks.labels("ok", "true").inc()
    result["timings_ms"] = p.stage_ms()
    yield _sse(result)
    yield b"data: [DONE]\n\n"


def _sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def _chunk_event(p: Prepared, delta: str) -> bytes:
    return _sse({"object": "rag.ask.chunk", "interaction_id": p.interaction_id, "delta": delta})


async def finish(
    state: RagState,
    p: Prepared,
    text: str,
    usage: dict[str, Any] | None,
    deployment: str | None,
    model: str | None,
) -> dict[str, Any]:
    """The response and the metrics, once the interaction for the feedback service is durable in
    the outbox (an ask answered 2xx is never lost to a crash). ``text`` is the model's answer;
    the response and the interaction carry it as shown (:func:`shown_answer`), and the
    interaction keeps the model's own text too when they differ."""
    citations, invalid = cite(text, p.used)
    shown = shown_answer(text, len(p.used))
    total = p.total = time.perf_counter() - p.started
    m = state.metrics
    for stage, seconds in p.timings.items():
        m.stage_seconds.labels(stage).observe(seconds)
    m.stage_seconds.labels("total").observe(total)
    m.citations.labels("valid").inc(len(citations))
    if invalid:
        m.citations.labels("invalid").inc(len(invalid))
    prompt = {"name": p.prompt.name, "version": p.prompt.version, "source": p.prompt.source}
    result: dict[str, Any] = {
        "object": "rag.ask",
        "interaction_id": p.interaction_id,
        "trace_id": p.trace_id,
        "answer": shown,
        "citations": citations,
        "invalid_citations": invalid,
        "contexts": [
            {
                "marker": f"[{n}]",
                "chunk_id": c.get("id"),
                "document_id": c.get("doc_id"),
                "heading_path": list(c.get("headings", [])),
                "score": c.get("score"),
                "flags": list(c.get(FLAGS, ())),
            }
            for n, c in enumerate(p.used, start=1)
        ],
        "prompt": prompt,
        "model": state.settings.model,
        "deployment": deployment,
        "usage": usage,
        "degraded": p.degraded,
        "latency_ms": round(total * 1000, 2),
    }
    settings = state.settings
    interaction = {
        "id": p.interaction_id,
        "trace_id": p.trace_id,
        "session_id": p.ask.session_id,
        "user_id": p.ask.user_id,
        "model": settings.model,
        "deployment": deployment,
        "prompt_name": p.prompt.name,
        "prompt_version": p.prompt.version or "bundled",
        "messages": p.messages,
        "question": p.ask.question,
        "context_ids": [str(c.get("id")) for c in p.used],
        "answer": shown,
        "latency_ms": result["latency_ms"],
        "usage": {
            k: v for k, v in (usage or {}).items() if k in ("prompt_tokens", "completion_tokens")
        }
        or None,
        "environment": settings.env,
        "metadata": {
            "collection": p.ask.collection,
            "top_k": p.ask.top_k,
            "degraded": p.degraded,
            "citations": [c["marker"] for c in citations],
            "served_model": model,
            **({"model_answer": text} if text != shown else {}),
        },
    }
    try:
        await state.outbox.record(interaction, context_headers())
    except OutboxUnavailable as exc:
        raise APIError(
            503,
            f"The answer could not be recorded: {exc}; nothing was kept. Retry shortly.",
            code="outbox_unavailable",
            headers={"Retry-After": "5"},
        ) from None
    m.outbox_depth.set(state.outbox.depth)
    return result
