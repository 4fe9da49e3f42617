"""Pure ASGI middleware shared by every service.

Pure ASGI (not ``BaseHTTPMiddleware``) keeps the per-request cost to a few microseconds and
leaves streaming responses unbuffered, which the LLM proxy relies on.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractContextManager, nullcontext

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from starlette.datastructures import State
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.common.context import reset_request_id, set_request_id
from services.common.errors import APIError, error_response, internal_error, render_error
from services.common.metrics import Metrics
from services.common.tracing import extract_context, traceresponse

access_log = logging.getLogger("llmops.access")
error_log = logging.getLogger("llmops.errors")

OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
_NOOP_TRACER = trace.NoOpTracer()


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}


class RequestContextMiddleware:
    """Request id, server span (continuing an incoming ``traceparent``), RED metrics, access log.

    Also the last line of defence: an unhandled exception becomes a JSON 500 naming the request
    id, rather than a bare text response without it.
    """

    def __init__(self, app: ASGIApp, *, metrics: Metrics, state: State) -> None:
        self.app = app
        self.metrics = metrics
        self.state = state
        settings = getattr(state, "settings", None)
        self.exporting = bool(getattr(settings, "otlp_endpoint", None))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = _headers(scope)
        rid = headers.get("x-request-id", "")
        if not _REQUEST_ID.match(rid):
            rid = os.urandom(16).hex()  # a random id, without uuid4's object overhead
        token = set_request_id(rid)
        method: str = scope["method"]
        path: str = scope["path"]
        tracer = getattr(self.state, "tracer", None) or _NOOP_TRACER
        status = 500
        started = False
        start = time.perf_counter()
        self.metrics.in_flight.inc()
        # A span only when it can go somewhere: an exporter is configured, or the caller sent a
        # traceparent to continue (its trace then travels on to our upstreams). Otherwise the
        # request id correlates logs, and the ~100 us of a non-recording span is saved.
        if self.exporting or "traceparent" in headers:
            scope_cm: AbstractContextManager[trace.Span] = tracer.start_as_current_span(
                method, context=extract_context(headers), kind=SpanKind.SERVER
            )
        else:
            scope_cm = nullcontext(trace.INVALID_SPAN)
        with scope_cm as span:
            extra = [(b"x-request-id", rid.encode())]
            tr = traceresponse(span)
            if tr:
                extra.append((b"traceresponse", tr.encode()))

            async def send_wrapper(message: Message) -> None:
                nonlocal status, started
                if message["type"] == "http.response.start":
                    status = message["status"]
                    started = True
                    message["headers"] = [*message.get("headers", ()), *extra]
                await send(message)

            try:
                await self.app(scope, receive, send_wrapper)
            except Exception as exc:
                error_log.exception("unhandled error on %s %s", method, path, exc_info=exc)
                span.record_exception(exc)
                if not started:
                    await internal_error(rid)(scope, receive, send_wrapper)
            finally:
                elapsed = time.perf_counter() - start
                route = scope.get("route")
                template = getattr(route, "path", None) or "<unmatched>"
                span.update_name(f"{method} {template}")
                span.set_attribute("http.request.method", method)
                span.set_attribute("http.route", template)
                span.set_attribute("http.response.status_code", status)
                if status >= 500:
                    span.set_status(Status(StatusCode.ERROR))
                self.metrics.observe_request(method, template, status, elapsed)
                self.metrics.in_flight.dec()
                level = logging.DEBUG if path in OPEN_PATHS else logging.INFO
                if access_log.isEnabledFor(level):
                    access_log.log(
                        level,
                        "%s %s %d",
                        method,
                        path,
                        status,
                        extra={
                            "method": method,
                            "path": path,
                            "route": template,
                            "status": status,
                            "duration_ms": round(elapsed * 1000, 3),
                        },
                    )
                reset_request_id(token)


class BodyTooLarge(StarletteHTTPException):
    """Raised while reading a body past the limit; FastAPI re-raises HTTP exceptions as-is."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            413,
            f"Request body is larger than the {limit}-byte limit; send fewer or shorter inputs.",
        )


class BodyLimitMiddleware:
    """413 before reading when Content-Length is too big, or as soon as a chunked body passes it."""

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes
        for key, value in scope["headers"]:
            if key == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared > limit:
                    exc = BodyTooLarge(limit)
                    await _too_large(exc)(scope, receive, send)
                    return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)
            return message

        await self.app(scope, limited, send)


def _too_large(exc: BodyTooLarge) -> Response:
    return error_response(413, str(exc.detail), code="request_too_large")


FastHandler = Callable[[Request], Awaitable[Response]]


class _FixedRoute:
    __slots__ = ("path",)

    def __init__(self, path: str) -> None:
        self.path = path


class FastRouteMiddleware:
    """Serves a few hot ``(method, path)`` pairs straight from their handler, skipping FastAPI's
    router, dependency solving and exception middleware (about a quarter of the CPU of a proxied
    request). The same handlers stay registered as FastAPI routes, for the OpenAPI schema. It is
    the innermost middleware: request id, metrics, logs, body limit and auth still apply.
    """

    def __init__(self, app: ASGIApp, *, routes: Mapping[tuple[str, str], FastHandler]) -> None:
        self.app = app
        self.routes = dict(routes)
        # What RequestContextMiddleware reads for the metrics' route label.
        self._route_of = {path: _FixedRoute(path) for _, path in self.routes}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            handler = self.routes.get((scope["method"], scope["path"]))
            if handler is not None:
                scope["route"] = self._route_of[scope["path"]]
                request = Request(scope, receive)
                try:
                    response = await handler(request)
                except (APIError, StarletteHTTPException) as exc:
                    response = await render_error(request, exc)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
