"""Retrieval service: ``create_app(settings)``; the lifespan owns Qdrant and embeddings clients."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI

from services.common.app import build_app
from services.retrieval import routes
from services.retrieval.config import RetrievalSettings
from services.retrieval.embedder import EmbeddingsClient
from services.retrieval.ingest import Ingestor
from services.retrieval.store import QdrantStore

log = logging.getLogger("llmops.retrieval")


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: RetrievalSettings = app.state.settings
    metrics = app.state.metrics
    store = QdrantStore(settings, metrics)
    embedder = EmbeddingsClient(settings)
    app.state.store = store
    app.state.embedder = embedder
    app.state.ingestor = Ingestor(settings, store, embedder, metrics)
    try:
        await store.check_sizes()  # local collections already past RETRIEVAL_LOCAL_WARN_POINTS
    except Exception:  # a warning must never keep the service from starting
        log.exception("could not count the local collections' points")
    try:
        yield
    finally:
        await embedder.close()
        await store.close()


async def readiness(app: FastAPI) -> tuple[bool, dict[str, Any]]:
    if await app.state.store.ping():
        return True, {"qdrant": "ok"}
    return False, {"reason": "Qdrant does not answer"}


def create_app(settings: RetrievalSettings | None = None) -> FastAPI:
    settings = settings or RetrievalSettings()
    app = build_app(settings, title="llmops retrieval", lifespan=lifespan, readiness=readiness)
    m = app.state.metrics
    app.state.search_metrics = {
        "seconds": m.histogram("retrieval_search_seconds", "Seconds per search."),
        "results": m.histogram(
            "retrieval_search_results", "Results per search.", buckets=(0, 1, 2, 5, 10, 20, 50, 100)
        ),
        "empty": m.counter("retrieval_search_empty_total", "Searches that found nothing."),
        "modes": m.counter(
            "retrieval_searches_total",
            "Searches, by mode (dense, sparse, hybrid).",
            ["mode"],
            initial=("dense", "sparse", "hybrid"),
        ),
    }
    app.include_router(routes.router)
    return app
