"""Pooled HTTP client for service-to-service calls, carrying trace context and request id."""

from __future__ import annotations

import httpx

from services.common.context import current_request_id
from services.common.tracing import inject_headers


def context_headers() -> dict[str, str]:
    """``traceparent`` (when a span is current) and ``x-request-id`` for an outgoing call; every
    HTTP client of the platform (httpx here, aiohttp in the LLM proxy) sends these."""
    carrier: dict[str, str] = {}
    inject_headers(carrier)
    rid = current_request_id()
    if rid:
        carrier["x-request-id"] = rid
    return carrier


async def _propagate(request: httpx.Request) -> None:
    for name, value in context_headers().items():
        if name != "x-request-id" or name not in request.headers:
            request.headers[name] = value


def create_client(
    base_url: str,
    *,
    api_key: str | None,
    timeout: float = 30.0,
    max_connections: int = 100,
) -> httpx.AsyncClient:
    """One per upstream, opened in a lifespan and kept on ``app.state``; never per request."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return httpx.AsyncClient(
        base_url=base_url,
        headers=headers,
        timeout=timeout,
        limits=httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        ),
        event_hooks={"request": [_propagate]},
    )
