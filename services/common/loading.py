"""Loading a model after the server starts, for the services that hold one.

``/healthz`` answers at once and ``/readyz`` turns 200 when the model is loaded, so Kubernetes
neither kills a slow-loading pod nor sends it traffic too early. The blocking load runs in a
daemon thread: stopping the service during a long first load does not wait for it to end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

from fastapi import FastAPI

from services.common.app import Lifespan
from services.common.errors import APIError
from services.common.lifecycle import freeze_heap

T = TypeVar("T")
log = logging.getLogger("llmops.loading")


def in_daemon_thread(fn: Callable[[], T], name: str = "load-model") -> asyncio.Future[T]:
    """Run ``fn`` in a daemon thread; its result (or error) arrives as a future on this loop."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(ok: bool, value: object) -> None:
        if future.done():
            return
        if ok:
            future.set_result(value)  # type: ignore[arg-type]
        else:
            assert isinstance(value, BaseException)
            future.set_exception(value)

    def work() -> None:
        try:
            result: object = fn()
            ok = True
        except BaseException as exc:
            result, ok = exc, False
        with contextlib.suppress(RuntimeError):  # the loop is closed: shutting down
            loop.call_soon_threadsafe(settle, ok, result)

    threading.Thread(target=work, name=name, daemon=True).start()
    return future


def model_lifespan(
    load: Callable[[FastAPI], Awaitable[None]], stop: Callable[[FastAPI], Awaitable[None]]
) -> Lifespan:
    """A lifespan that runs ``load`` in the background and ``stop`` at shutdown.

    A failed load is kept in ``app.state.load_error`` for the readiness check to report, and
    fails liveness: it does not come back without a restart (``load`` retries on its own what
    may, such as a registry that is down).
    """

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.load_error = None

        async def guarded() -> None:
            try:
                await load(app)
                freeze_heap()  # the model's objects too
            except Exception as exc:
                app.state.load_error = f"{type(exc).__name__}: {exc}"
                app.state.lifecycle.fatal(f"the model failed to load ({app.state.load_error})")
                log.exception("model failed to load")

        loader = asyncio.create_task(guarded(), name="load-model")
        try:
            yield
        finally:
            loader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loader
            await stop(app)

    return lifespan


def not_ready(app: FastAPI, retry_after_s: int) -> APIError:
    """The 503 a model route answers before the model is there: loading, or failed to load."""
    error = getattr(app.state, "load_error", None)
    if error:
        return APIError(503, f"The model failed to load: {error}", code="model_load_failed")
    return APIError(
        503,
        "The model is still loading; retry shortly.",
        code="model_loading",
        headers={"Retry-After": str(retry_after_s)},
    )
