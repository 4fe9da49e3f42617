"""RAG service: ``create_app(settings)``; the lifespan owns the clients of retrieval, the proxy
and feedback, the prompt registry and the interaction outbox."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI

from services.common.app import build_app
from services.common.http import create_client
from services.common.spool import Spool
from services.rag import routes
from services.rag.config import RagSettings
from services.rag.outbox import InteractionOutbox
from services.rag.registry import PromptRegistry
from services.rag.state import RagMetrics, RagState

log = logging.getLogger("llmops.rag")


def _secret(value: Any) -> str | None:
    return None if value is None else str(value.get_secret_value())


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: RagSettings = app.state.settings
    metrics: RagMetrics = app.state.rag_metrics
    retrieval = create_client(
        settings.retrieval_url,
        api_key=_secret(settings.retrieval_api_key),
        timeout=settings.retrieval_timeout_s,
    )
    proxy = create_client(
        settings.proxy_url, api_key=_secret(settings.proxy_api_key), timeout=settings.llm_timeout_s
    )
    feedback = None
    if settings.feedback_url:
        feedback = create_client(
            settings.feedback_url,
            api_key=_secret(settings.feedback_api_key),
            timeout=settings.feedback_timeout_s,
            max_connections=16,
        )
    spool = Spool(settings.outbox_dir, dead_letter_max_bytes=settings.dead_letter_max_bytes)
    await asyncio.to_thread(spool.open)

    def on_dead_letter(s: Spool) -> None:
        metrics.dead_letter_entries.labels(str(s.dead_letter_path)).set(s.dead_letters)
        metrics.dead_letter_dropped.set(s.dead_letters_dropped)

    on_dead_letter(spool)
    outbox = InteractionOutbox(
        spool,
        feedback,
        on_depth=metrics.outbox_depth.set,
        on_sent=metrics.outbox_sent.inc,
        on_failure=lambda reason: metrics.outbox_failures.labels(reason).inc(),
        on_dead_letter=on_dead_letter,
    )
    prompts = PromptRegistry(
        settings.mlflow_tracking_uri,
        settings.prompt_name,
        settings.effective_alias(),
        settings.prompt_ttl_s,
        settings.bundled_prompt,
    )
    app.state.rag = RagState(
        settings=settings,
        retrieval=retrieval,
        proxy=proxy,
        prompts=prompts,
        outbox=outbox,
        metrics=metrics,
        tracer=app.state.tracer,
    )
    for name, task in outbox.start().items():
        app.state.lifecycle.watch(name, task)
    # Warm the registry (MLflow's import and the first fetch take seconds) without holding up
    # the start: until it answers, asks get the bundled prompt, flagged.
    warm = asyncio.create_task(_warm(prompts), name="prompt-warmup")
    log.info(
        "rag ready",
        extra={
            "prompt": settings.prompt_name,
            "alias": settings.effective_alias(),
            "mlflow": bool(settings.mlflow_tracking_uri),
            "outbox_depth": outbox.depth,
        },
    )
    try:
        yield
    finally:
        warm.cancel()
        await outbox.stop(app.state.lifecycle.drain_budget())
        for client in (retrieval, proxy, feedback):
            if client is not None:
                await client.aclose()


async def _warm(prompts: PromptRegistry) -> None:
    try:
        await prompts.get()
    except Exception as exc:  # said by /readyz and by each ask's degraded list
        log.warning("prompt registry not usable yet: %s", exc)


async def readiness(app: FastAPI) -> tuple[bool, dict[str, Any]]:
    """Ready when started: the degraded modes answer (and say so) rather than leave the pool."""
    state: RagState | None = getattr(app.state, "rag", None)
    if state is None:
        return False, {"reason": "starting"}
    detail: dict[str, Any] = {
        "prompt": state.prompts.status(),
        "outbox_depth": state.outbox.depth,
    }
    if state.outbox.last_error:
        detail["feedback"] = f"unreachable: {state.outbox.last_error}"
    return True, detail


def create_app(settings: RagSettings | None = None) -> FastAPI:
    settings = settings or RagSettings()
    app = build_app(settings, title="llmops rag", lifespan=lifespan, readiness=readiness)
    app.state.rag_metrics = RagMetrics.create(app.state.metrics)
    app.include_router(routes.router)
    return app
