"""local-llm service: ``create_app(settings)`` and the lifespan that owns the model.

The model loads in the background after the server starts (~40 s the first time, while the
GGUF file is converted; ~3 s from the cache afterwards), through ``common/loading.py``.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from fastapi import FastAPI

from services.common.app import build_app
from services.common.loading import in_daemon_thread, model_lifespan
from services.local_llm import routes
from services.local_llm.config import LocalLLMSettings
from services.local_llm.generator import Scheduler, load_generator

log = logging.getLogger("llmops.local_llm")


async def _load(app: FastAPI) -> None:
    settings: LocalLLMSettings = app.state.settings
    started = time.perf_counter()
    generator = await in_daemon_thread(lambda: load_generator(settings))
    scheduler = Scheduler(generator, app.state.metrics, max_queue=settings.max_queue)
    app.state.lifecycle.watch("generation", scheduler.start())
    app.state.loaded_at = int(time.time())
    app.state.scheduler = scheduler
    app.state.generator = generator
    info = generator.info
    log.info(
        "model ready",
        extra={
            "model": info.name,
            "origin": info.origin,
            "context_length": info.context_length,
            "load_seconds": round(time.perf_counter() - started, 2),
            **{k: round(v, 2) for k, v in info.timings.items()},
        },
    )


async def _stop(app: FastAPI) -> None:
    if app.state.scheduler is not None:
        await app.state.scheduler.stop()


async def readiness(app: FastAPI) -> tuple[bool, dict[str, Any]]:
    if app.state.load_error:
        return False, {"reason": f"the model failed to load ({app.state.load_error})"}
    scheduler: Scheduler | None = app.state.scheduler
    if app.state.generator is None or scheduler is None:
        return False, {"reason": "the model is loading"}
    if not scheduler.running:
        return False, {"reason": "the generation loop is not running"}
    return True, {"model": app.state.generator.info.name, "queue_depth": scheduler.depth}


def create_app(settings: LocalLLMSettings | None = None) -> FastAPI:
    settings = settings or LocalLLMSettings()
    app = build_app(
        settings,
        title="llmops local-llm",
        lifespan=model_lifespan(_load, _stop),
        readiness=readiness,
    )
    app.state.generator = None
    app.state.scheduler = None
    app.include_router(routes.router)
    return app
