"""The app-factory helper every service's ``create_app(settings)`` calls.

It wires what all services share (errors, auth, body limit, request context, metrics, tracing,
health endpoints) so a service only adds its routes and its own lifespan. Nothing runs at
import; clients are opened in the lifespan and kept on ``app.state``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import orjson
from fastapi import APIRouter, FastAPI, Request
from starlette.responses import PlainTextResponse, Response

from services.common.auth import AuthMiddleware
from services.common.errors import ERROR_RESPONSES, error_response, install_exception_handlers
from services.common.lifecycle import Lifecycle, freeze_heap
from services.common.logging import setup_logging
from services.common.metrics import Metrics, mark_worker_dead
from services.common.middleware import (
    BodyLimitMiddleware,
    FastHandler,
    FastRouteMiddleware,
    RequestContextMiddleware,
)
from services.common.settings import ServiceSettings
from services.common.tracing import build_tracer_provider

Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]
Readiness = Callable[[FastAPI], Awaitable[tuple[bool, dict[str, Any]]]]

health_router = APIRouter(tags=["health"])


@health_router.get(
    "/healthz", summary="Liveness: 503 when a loop the service needs has died (restart it)."
)
async def healthz(request: Request) -> Response:
    lifecycle: Lifecycle = request.app.state.lifecycle
    dead = lifecycle.dead()
    if dead:
        return error_response(503, f"Not alive: {'; '.join(dead)}.", code="not_alive")
    return Response(content=b'{"status":"ok"}', media_type="application/json")


@health_router.get("/readyz", summary="Readiness: the service's dependencies are ready.")
async def readyz(request: Request) -> Response:
    lifecycle: Lifecycle = request.app.state.lifecycle
    gauge = request.app.state.metrics.ready
    if lifecycle.stopping:
        gauge.set(0)
        return error_response(
            503, "Not ready: shutting down.", code="shutting_down", headers={"Retry-After": "1"}
        )
    check: Readiness = request.app.state.readiness
    ready, detail = await check(request.app)
    gauge.set(1 if ready else 0)
    if ready:
        return Response(
            content=orjson.dumps({"status": "ready", **detail}), media_type="application/json"
        )
    reason = detail.get("reason", "dependencies are not ready")
    return error_response(
        503, f"Not ready: {reason}.", code="not_ready", headers={"Retry-After": "1"}
    )


@health_router.get(
    "/metrics",
    summary="Prometheus metrics.",
    response_class=PlainTextResponse,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format."}},
)
async def metrics(request: Request) -> Response:
    body, content_type = request.app.state.metrics.render()
    return Response(content=body, media_type=content_type)


async def _always_ready(_: FastAPI) -> tuple[bool, dict[str, Any]]:
    return True, {}


def build_app(
    settings: ServiceSettings,
    *,
    title: str,
    version: str = "0.1.0",
    lifespan: Lifespan | None = None,
    readiness: Readiness = _always_ready,
    metrics_namespace: str = "llmops",
    fast_routes: Mapping[tuple[str, str], FastHandler] | None = None,
) -> FastAPI:
    setup_logging(settings.log_level, settings.log_redact_pii)
    metrics = Metrics(metrics_namespace)

    @asynccontextmanager
    async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
        provider = build_tracer_provider(
            settings.service_name, settings.otlp_endpoint, settings.otlp_headers
        )
        app.state.tracer_provider = provider
        app.state.tracer = provider.get_tracer(f"llmops.{settings.service_name}")
        try:
            with app.state.lifecycle.signals():
                if lifespan is None:
                    freeze_heap()
                    yield
                else:
                    async with lifespan(app):
                        freeze_heap()
                        yield
        finally:
            provider.shutdown()
            mark_worker_dead()

    # FastAPI's own telemetry stays off: middleware.py makes the spans and metrics, once.
    app = FastAPI(
        title=title,
        version=version,
        lifespan=_lifespan,
        telemetry={"tracing": False, "metrics": False, "logs": False},
        responses=ERROR_RESPONSES,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.readiness = readiness
    app.state.lifecycle = Lifecycle(settings.shutdown_delay_s, settings.graceful_shutdown_s)
    install_exception_handlers(app)
    app.include_router(health_router)
    # Added innermost first: requests pass context -> body limit -> auth -> routes.
    if fast_routes:
        app.add_middleware(FastRouteMiddleware, routes=fast_routes)
    if settings.static_api_keys and not settings.auth_disabled:
        app.add_middleware(AuthMiddleware, key_hashes=settings.api_key_hashes, routes=app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestContextMiddleware, metrics=metrics, state=app.state)
    return app
