"""OpenTelemetry tracing with W3C ``traceparent`` in and out.

Server spans are made when an OTLP endpoint is configured (Langfuse's ``/api/public/otel`` or
any collector) or when the caller sent a ``traceparent`` (so its trace is continued, in logs and
downstream calls). Nothing leaves the process without an endpoint.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, MutableMapping

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased
from pydantic import SecretStr


def parse_headers(raw: SecretStr | None) -> dict[str, str]:
    """``"Authorization=Basic abc,x-tenant=t1"`` -> dict (the OTLP env convention)."""
    if raw is None:
        return {}
    out: dict[str, str] = {}
    for part in raw.get_secret_value().split(","):
        if "=" in part:
            key, _, value = part.partition("=")
            out[key.strip()] = value.strip()
    return out


def traces_url(endpoint: str) -> str:
    endpoint = endpoint.rstrip("/")
    return endpoint if endpoint.endswith("/v1/traces") else f"{endpoint}/v1/traces"


def build_tracer_provider(
    service_name: str, endpoint: str | None, headers: SecretStr | None
) -> TracerProvider:
    # Without an exporter, a root span is not recorded (its ids still exist for logs and
    # propagation): recording costs ~0.1 ms a request for spans nobody would ever see. A caller
    # that sampled its trace still gets a recorded span, so the sampled flag travels on.
    sampler = ParentBased(ALWAYS_ON if endpoint else ALWAYS_OFF)
    provider = TracerProvider(
        resource=Resource.create({"service.name": service_name}), sampler=sampler
    )
    if endpoint:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=traces_url(endpoint), headers=parse_headers(headers))
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def extract_context(headers: Mapping[str, str]) -> Context:
    return propagate.extract(headers)


def inject_headers(headers: MutableMapping[str, str]) -> None:
    """Add ``traceparent`` (and ``tracestate``) for the current span to outgoing headers."""
    propagate.inject(headers)


def traceresponse(span: trace.Span) -> str | None:
    """W3C Trace Context ``traceresponse`` header value, so a caller learns our trace id."""
    ctx = span.get_span_context()
    if not ctx.is_valid:
        return None
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


def trace_id_for(interaction_id: str) -> str:
    """The trace of an interaction that came without one: what Langfuse's SDKs compute with
    ``create_trace_id(seed=interaction_id)`` (the first 16 bytes of SHA-256, as hex), so a
    client using their SDK with the same seed lands on the same trace."""
    return hashlib.sha256(interaction_id.encode()).digest()[:16].hex()
