"""local-llm service: ``create_app(settings)`` and the lifespan that owns the model.

The model loads in the background after the server starts (~40 s the first time, while the
GGUF file is converted; ~3 s from the cache afterwards): ``/healthz`` answers at once and
``/readyz`` turns 200 once the model is loaded and warmed up. The loader is a daemon thread,
so stopping the service during a first, long conversion does not wait for it to finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI

from services.common.app import build_app
from services.local_llm import routes
from services.local_llm.config import LocalLLMSettings
from services.local_llm.generator import Generator, Scheduler, load_generator

log = logging.getLogger("llmops.local_llm")


def _load_in_daemon(settings: LocalLLMSettings) -> asyncio.Future[Generator]:
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Generator] = loop.create_future()

    def succeed(generator: Generator) -> None:
        if not future.done():
            future.set_result(generator)

    def fail(error: BaseException) -> None:
        if not future.done():
            future.set_exception(error)

    def work() -> None:
        try:
            generator = load_generator(settings)
        except BaseException as exc:
            with contextlib.suppress(RuntimeError):  # the loop is closed: shutting down
                loop.call_soon_threadsafe(fail, exc)
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(succeed, generator)

    threading.Thread(target=work, name="load-model", daemon=True).start()
    return future


async def _load(app: FastAPI, settings: LocalLLMSettings) -> None:
    started = time.perf_counter()
    try:
        generator = await _load_in_daemon(settings)
    except Exception as exc:
        app.state.load_error = f"{type(exc).__name__}: {exc}"
        log.exception("model failed to load")
        return
    scheduler = Scheduler(generator, app.state.metrics, max_queue=settings.max_queue)
    scheduler.start()
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


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: LocalLLMSettings = app.state.settings
    app.state.generator = None
    app.state.scheduler = None
    app.state.load_error = None
    loader = asyncio.create_task(_load(app, settings), name="load-model")
    try:
        yield
    finally:
        loader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loader
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
    app = build_app(settings, title="llmops local-llm", lifespan=lifespan, readiness=readiness)
    app.include_router(routes.router)
    return app
