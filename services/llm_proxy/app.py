"""LLM proxy: ``create_app(settings)``; the lifespan owns the upstream pool, Redis, the key
store, the spend writer and the routing-config watcher."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from sqlalchemy import exc as sa_exc

from services.common.app import build_app
from services.common.db import SchemaGate
from services.common.errors import error_response
from services.llm_proxy import admin, routes
from services.llm_proxy.cache import (
    MemoryCache,
    MemorySemanticIndex,
    RedisCache,
    ResponseCache,
    SemanticIndex,
)
from services.llm_proxy.catalog import Catalog, CatalogWatcher, load_catalog
from services.llm_proxy.config import ProxySettings
from services.llm_proxy.db import check_schema, migrate
from services.llm_proxy.gateway import Gateway, ProxyMetrics
from services.llm_proxy.keys import KeyCache, KeyStore, make_engine
from services.llm_proxy.limits import Limiter, MemoryLimiter, RedisLimiter
from services.llm_proxy.router import Router
from services.llm_proxy.spend import SpendLog
from services.llm_proxy.state import ProxyState
from services.llm_proxy.upstream import create_session

log = logging.getLogger("llmops.llm_proxy")


def _redis(settings: ProxySettings) -> Redis:
    assert settings.redis_url is not None
    return Redis.from_url(
        settings.redis_url.get_secret_value(),
        socket_timeout=settings.redis_timeout_s,
        socket_connect_timeout=settings.redis_timeout_s,
        health_check_interval=30,
        # A pooled connection that Redis closed (a restart, a failover) fails once on its next
        # use; from_url retries nothing, so each stale connection would put the replica back
        # into its fail mode for REDIS_RETRY_AFTER_S after Redis had returned. One reconnect
        # on a closed connection only: a timeout is not retried (no doubled stall).
        retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
    )


def _limiter(settings: ProxySettings, metrics: ProxyMetrics) -> Limiter:
    if settings.redis_url is None:
        return MemoryLimiter()
    return RedisLimiter(
        _redis(settings),
        fail_open=settings.redis_fail_mode == "open",
        backoff_s=settings.redis_retry_after_s,
        on_error=metrics.redis_errors.inc,
    )


def _caches(
    settings: ProxySettings, metrics: ProxyMetrics
) -> tuple[ResponseCache, SemanticIndex | MemorySemanticIndex]:
    """The response cache in Redis (shared by the replicas) when there is one, else in memory.
    Its own client: a slow cache read never queues behind the limiter's calls."""
    if settings.redis_url is None:
        return MemoryCache(), MemorySemanticIndex()
    redis = _redis(settings)
    on_error = metrics.redis_errors.inc
    backoff = settings.redis_retry_after_s
    return (
        RedisCache(redis, backoff_s=backoff, on_error=on_error),
        SemanticIndex(redis, backoff_s=backoff, on_error=on_error),
    )


async def _publish_breakers(state: ProxyState) -> None:
    """Keep the circuit-state gauge current, half-open transitions included, and the
    alias-to-deployment gauge equal to the routing in force (it changes on reload)."""
    published: set[tuple[str, str]] = set()
    while True:
        for name, value in state.router.breaker_states().items():
            state.metrics.circuit_state.labels(name).set(value)
        pairs = state.router.alias_deployments()
        if pairs != published:
            for alias, deployment in published - pairs:
                state.metrics.alias_deployment.remove(alias, deployment)
            for alias, deployment in pairs:
                state.metrics.alias_deployment.labels(alias, deployment).set(1)
            published = pairs
        await asyncio.sleep(1.0)


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: ProxySettings = app.state.settings
    metrics: ProxyMetrics = app.state.proxy_metrics
    catalog, keys = load_catalog(settings.config_path)
    router = Router(catalog, keys)
    engine = make_engine(settings.database_url.get_secret_value())
    if settings.auto_migrate:
        await asyncio.to_thread(migrate, engine)
    # Outside dev the migration Job owns the tables: unready (never crash-looping) until they
    # are at this version's head.
    schema = SchemaGate(lambda: check_schema(engine), passed=settings.auto_migrate)
    store = KeyStore(engine)
    limiter = _limiter(settings, metrics)
    session = create_session(settings.max_connections, settings.connect_timeout_s)
    spend = SpendLog(store, settings.spend_flush_s)
    cache, semantic = _caches(settings, metrics)
    master = settings.master_key
    state = ProxyState(
        settings=settings,
        router=router,
        session=session,
        limiter=limiter,
        store=store,
        keys=KeyCache(store, settings.key_cache_ttl_s),
        spend=spend,
        metrics=metrics,
        gateway=Gateway(lambda: state.router, limiter, metrics),
        master_hash=None
        if master is None
        else hashlib.sha256(master.get_secret_value().encode()).digest(),
        started_at=int(time.time()),
        tracer=app.state.tracer,
        schema=schema,
        cache=cache,
        semantic=semantic,
    )

    def reloaded(new: Catalog, new_keys: dict[str, str | None]) -> None:
        state.router.swap(new, new_keys)
        state.config_error = None
        metrics.config_reloads.labels("ok").inc()

    def rejected(error: str) -> None:
        state.config_error = error
        metrics.config_reloads.labels("rejected").inc()

    watcher = CatalogWatcher(settings.config_path, settings.config_reload_s, reloaded, rejected)
    app.state.proxy = state
    lifecycle = app.state.lifecycle
    lifecycle.watch("spend writer", spend.start())
    lifecycle.watch("routing-config watcher", watcher.start())
    publisher = asyncio.create_task(_publish_breakers(state), name="breaker-gauges")
    log.info(
        "llm proxy ready",
        extra={
            "aliases": sorted(catalog.aliases),
            "deployments": len(catalog.deployments),
            "limiter": "redis" if settings.redis_url else "memory",
            "database": engine.url.get_backend_name(),
        },
    )
    try:
        yield
    finally:
        publisher.cancel()
        await watcher.stop()
        # Spend summed since the last flush is written now; bounded by the grace period (a
        # failed write is logged with the sums it could not keep).
        budget = lifecycle.drain_budget()
        try:
            await asyncio.wait_for(spend.stop(), budget)
            await asyncio.wait_for(limiter.close(), max(1.0, budget / 4))
            await asyncio.wait_for(cache.close(), max(1.0, budget / 4))
        except TimeoutError:
            log.error("spend or limiter flush did not finish within %.0f s", budget)
        await session.close()
        engine.dispose()


async def readiness(app: FastAPI) -> tuple[bool, dict[str, Any]]:
    state: ProxyState | None = getattr(app.state, "proxy", None)
    if state is None:
        return False, {"reason": "starting"}
    blocked = await state.schema.blocked()
    if blocked:
        return False, {"reason": blocked}
    try:
        await asyncio.to_thread(state.store.ping)
    except Exception as exc:
        return False, {"reason": f"the key store does not answer ({type(exc).__name__})"}
    detail: dict[str, Any] = {"aliases": len(state.router.catalog.aliases)}
    if isinstance(state.limiter, RedisLimiter):
        detail["redis"] = "ok" if await state.limiter.ping() else "unreachable"
    if state.config_error:
        detail["config_error"] = state.config_error
    return True, detail


def create_app(settings: ProxySettings | None = None) -> FastAPI:
    settings = settings or ProxySettings()
    app = build_app(
        settings,
        title="llmops llm-proxy",
        lifespan=lifespan,
        readiness=readiness,
        fast_routes={
            ("POST", "/v1/chat/completions"): routes.chat_completions,
            ("POST", "/v1/embeddings"): routes.embeddings,
        },
    )
    app.state.proxy_metrics = ProxyMetrics.create(app.state.metrics)
    app.include_router(routes.router)
    app.include_router(admin.router)
    # The admin API reads and writes the key store directly: when it cannot be reached, say
    # so (503, retry) instead of an internal error.
    for exc_class in (sa_exc.OperationalError, sa_exc.InterfaceError):
        app.add_exception_handler(exc_class, _key_store_unreachable)
    return app


async def _key_store_unreachable(_: Request, exc: Exception) -> Response:
    log.warning("key store unreachable: %s", type(exc).__name__)
    return error_response(
        503,
        "The key store (database) is unreachable; retry shortly.",
        code="key_store_unavailable",
        headers={"Retry-After": "2"},
    )
