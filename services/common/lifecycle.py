"""Liveness, readiness and the stop of one app, as Kubernetes probes and SIGTERM see them.

* **Liveness** (``/healthz``) fails when something the service cannot work without is gone for
  good: a background loop it registered with :meth:`Lifecycle.watch` ended (the embeddings
  batcher, a committer, an outbox sender, the spend writer), or :meth:`Lifecycle.fatal` was
  called (a model that cannot load). The kubelet then restarts the container, as vLLM gets by
  exiting when its engine dies.
* **Readiness** turns 503 the moment SIGTERM arrives. The service keeps serving for
  ``shutdown_delay_s`` (so the endpoint leaves every load balancer before the listener closes),
  then uvicorn stops accepting and gives in-flight requests ``graceful_shutdown_s``; the
  lifespan's drains use :meth:`Lifecycle.drain_budget` for what is left of that time.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

log = logging.getLogger("llmops.lifecycle")

MIN_DRAIN_S = 5.0
Handler = Callable[[int, FrameType | None], Any]


def freeze_heap() -> None:
    """Move everything alive now (modules, settings, clients, a loaded model) out of the
    garbage collector's reach.

    A service starts with about 150k tracked objects; a full collection walks them all and took
    30-90 ms on our 2-core machines, a pause every request in flight at that moment pays
    (docs/benchmarks.md: the proxy's p99). Objects made at start live as long as the process, so
    collecting them is pure cost; what requests allocate is still collected as before.
    """
    gc.collect()
    gc.freeze()


class Lifecycle:
    def __init__(self, shutdown_delay_s: float, graceful_shutdown_s: float) -> None:
        self.shutdown_delay_s = shutdown_delay_s
        self.graceful_shutdown_s = graceful_shutdown_s
        self.stopping = False
        self._stop_at: float | None = None  # monotonic time the drains must be done by
        self._vital: dict[str, asyncio.Task[Any]] = {}
        self._fatal: str | None = None

    # -- liveness --------------------------------------------------------------------------------

    def watch(self, name: str, task: asyncio.Task[Any] | None) -> None:
        """A background task the service cannot work without: liveness fails if it ends."""
        if task is not None:
            self._vital[name] = task

    def fatal(self, reason: str) -> None:
        """Something that will not come back without a restart (a model that cannot load)."""
        self._fatal = reason

    def dead(self) -> list[str]:
        """Why the process should be restarted; empty while it is alive (or stopping)."""
        if self.stopping:
            return []
        out = [self._fatal] if self._fatal else []
        for name, task in self._vital.items():
            if not task.done():
                continue
            exc = None if task.cancelled() else task.exception()
            out.append(
                f"the {name} loop stopped"
                + (f" ({type(exc).__name__}: {str(exc)[:200]})" if exc else "")
            )
        return out

    # -- stopping --------------------------------------------------------------------------------

    def begin_stop(self) -> None:
        if not self.stopping:
            self.stopping = True
            self._stop_at = time.monotonic() + self.shutdown_delay_s + self.graceful_shutdown_s
            log.info(
                "stopping: readiness is 503 now",
                extra={"delay_s": self.shutdown_delay_s, "grace_s": self.graceful_shutdown_s},
            )

    def drain_budget(self) -> float:
        """Seconds the lifespan's drains may take: what is left of the grace period, at least
        :data:`MIN_DRAIN_S` (the grace period itself when the stop came without a signal)."""
        if self._stop_at is None:
            return max(MIN_DRAIN_S, self.graceful_shutdown_s)
        return max(MIN_DRAIN_S, self._stop_at - time.monotonic())

    @contextlib.contextmanager
    def signals(self) -> Iterator[None]:
        """Put the delay in front of uvicorn's own SIGTERM handler (installed before the
        lifespan runs); a second signal, or SIGINT, goes straight through."""
        if threading.current_thread() is not threading.main_thread():
            yield  # an app served from a thread (tests) has no signals of its own
            return
        previous: dict[int, Any] = {}

        def handler(sig: int, frame: FrameType | None) -> None:
            first = not self.stopping
            self.begin_stop()
            forward = previous.get(sig)
            if not callable(forward):
                return
            if first and sig == signal.SIGTERM and self.shutdown_delay_s > 0:
                timer = threading.Timer(self.shutdown_delay_s, forward, args=(sig, None))
                timer.daemon = True
                timer.start()
            else:
                forward(sig, frame)

        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.getsignal(sig)
            signal.signal(sig, handler)
        try:
            yield
        finally:
            for number, old in previous.items():
                with contextlib.suppress(ValueError, TypeError):
                    signal.signal(number, old)
