"""Embeddings service: ``create_app(settings)`` and the lifespan that owns the model.

The model loads in the background after the server starts (``common/loading.py``):
``/healthz`` answers at once, ``/readyz`` turns 200 when the model is loaded. A model from
MLflow's registry (``EMBEDDINGS_MODEL_URI``) is fetched first; while the registry is down or
lacks the version, ``/readyz`` says so and the fetch is retried, never replaced by another model
(see ``mlflow_model.py``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from fastapi import FastAPI

from services.common.app import build_app
from services.common.loading import in_daemon_thread, model_lifespan
from services.embeddings import routes
from services.embeddings.batcher import Batcher
from services.embeddings.config import EmbeddingsSettings
from services.embeddings.encoder import Encoder, load_encoder
from services.embeddings.mlflow_model import RegistryError

log = logging.getLogger("llmops.embeddings")

RETRY_MAX_S = 30.0  # longest pause between two attempts to fetch the model from MLflow


async def _load_encoder(app: FastAPI, settings: EmbeddingsSettings) -> Encoder:
    """``load_encoder`` off the event loop. A registry that is down or lacks the version is
    asked again with back-off, the reason on ``/readyz`` meanwhile, so a pod that started
    during an MLflow outage becomes ready without a restart; any other failure is final."""
    delay = 1.0
    while True:
        try:
            encoder = await in_daemon_thread(lambda: load_encoder(settings))
        except RegistryError as exc:
            app.state.load_error = f"{exc}; retrying in {delay:.0f} s"
            log.warning(
                "model not fetched from MLflow",
                extra={"reason": str(exc), "retry_in_s": delay},
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_S)
            continue
        app.state.load_error = None
        return encoder


async def _load(app: FastAPI) -> None:
    settings: EmbeddingsSettings = app.state.settings
    started = time.perf_counter()
    encoder = await _load_encoder(app, settings)
    batcher = Batcher(
        encoder,
        app.state.metrics,
        max_batch_size=settings.max_batch_size,
        max_batch_tokens=settings.max_batch_tokens,
        max_wait_s=settings.max_wait_ms / 1000,
        max_queue_texts=settings.max_queue_texts,
    )
    app.state.lifecycle.watch("embedding batcher", batcher.start())
    app.state.loaded_at = int(time.time())
    app.state.batcher = batcher
    app.state.encoder = encoder
    info = encoder.info
    log.info(
        "model ready",
        extra={
            "model": info.name,
            "source": info.source,
            "backend": info.backend,
            "dimension": info.dimension,
            "max_tokens": info.max_tokens,
            "load_seconds": round(time.perf_counter() - started, 2),
        },
    )


async def _stop(app: FastAPI) -> None:
    if app.state.batcher is not None:
        await app.state.batcher.stop()


async def readiness(app: FastAPI) -> tuple[bool, dict[str, Any]]:
    if app.state.load_error:
        return False, {"reason": f"the model failed to load ({app.state.load_error})"}
    batcher: Batcher | None = app.state.batcher
    if app.state.encoder is None or batcher is None:
        return False, {"reason": "the model is loading"}
    if not batcher.running:
        return False, {"reason": "the batcher is not running"}
    info = app.state.encoder.info
    return True, {"model": info.name, "source": info.source, "queue_depth": batcher.depth}


def create_app(settings: EmbeddingsSettings | None = None) -> FastAPI:
    settings = settings or EmbeddingsSettings()
    app = build_app(
        settings,
        title="llmops embeddings",
        lifespan=model_lifespan(_load, _stop),
        readiness=readiness,
    )
    app.state.encoder = None
    app.state.batcher = None
    app.include_router(routes.router)
    return app
