"""One span per LLM call with OpenTelemetry GenAI attributes, which Langfuse reads as a
generation (model, tokens, cost). Only made when the request's trace is being recorded, so an
untraced request pays nothing for it. Prompts and completions are never put on spans."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer

from services.llm_proxy.gateway import Outcome
from services.llm_proxy.guardrails import Hit
from services.llm_proxy.query_routing import Decision

_REQUEST_PARAMS = {
    "max_tokens": "gen_ai.request.max_tokens",
    "max_completion_tokens": "gen_ai.request.max_tokens",
    "temperature": "gen_ai.request.temperature",
    "top_p": "gen_ai.request.top_p",
    "seed": "gen_ai.request.seed",
}


def start_llm_span(tracer: Tracer, operation: str, alias: str, data: dict[str, Any]) -> Span | None:
    if not trace.get_current_span().is_recording():
        return None
    span = tracer.start_span(f"{operation} {alias}", kind=SpanKind.CLIENT)
    span.set_attribute("gen_ai.operation.name", operation)
    span.set_attribute("gen_ai.system", "openai")
    span.set_attribute("gen_ai.request.model", alias)
    for field, attr in _REQUEST_PARAMS.items():
        value = data.get(field)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            span.set_attribute(attr, value)
    if data.get("stream") is True:
        span.set_attribute("llmops.stream", True)
    return span


def set_route_attributes(decision: Decision) -> None:
    """A routing alias' choice, on the request's span (when it is recorded)."""
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attribute("llmops.route", decision.route)
        span.set_attribute("llmops.route.target", decision.target)
        span.set_attribute("llmops.route.score", decision.score)
        span.set_attribute("llmops.route.reason", decision.reason)


def set_guardrail_attributes(hits: Sequence[Hit]) -> None:
    """Which rails acted, as ``rail:action`` and their details (kinds and counts, no text)."""
    span = trace.get_current_span()
    if span.is_recording():
        span.add_event(
            "guardrails",
            {
                "llmops.guardrails": [h.label for h in hits],
                "llmops.guardrails.stage": [h.stage for h in hits],
                "llmops.guardrails.detail": [h.detail for h in hits],
            },
        )


def end_llm_span(
    span: Span | None,
    *,
    outcome: Outcome | None,
    usage: tuple[int, int] | None = None,
    cost: float | None = None,
    error: str | None = None,
) -> None:
    if span is None:
        return
    if outcome is not None:
        dep = outcome.candidate.state.deployment
        span.set_attribute("gen_ai.response.model", dep.model)
        span.set_attribute("llmops.deployment", dep.name)
        span.set_attribute("llmops.attempts", outcome.attempts)
    if usage is not None:
        span.set_attribute("gen_ai.usage.input_tokens", usage[0])
        span.set_attribute("gen_ai.usage.output_tokens", usage[1])
    if cost is not None:
        span.set_attribute("gen_ai.usage.cost", cost)
        span.set_attribute("llmops.cost_usd", cost)
    if error is not None:
        span.set_status(Status(StatusCode.ERROR, error))
    span.end()
