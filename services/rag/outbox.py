"""Interactions on their way to the feedback service, off the response path and never lost.

An ask is answered only once its interaction is in the local spool, fsync'd (:meth:`record`),
so a ``kill -9`` right after the answer loses nothing. The fsync is shared (group commit): one
task writes everything that gathered while the previous write ran, in one write and one fsync,
so many concurrent asks wait for one fsync, not one each. Another task posts spooled
interactions to the feedback service. The feedback service is idempotent on the interaction id,
so a post repeated after a crash or a timeout is one row there. While it is down, the spool
grows and the sender backs off; nothing is dropped. A graceful stop sends what the spool holds
while the feedback service answers (within the drain budget), so a pod removed by a scale-down
leaves nothing behind on its volume; what is left is sent by the pod's next life.

The spool is not thread-safe and its calls run in worker threads: one lock orders the writes
and the sender's claims, so a claim never closes the segment a write is appending to.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from services.common.http import ServiceClient
from services.common.spool import Segment, Spool

log = logging.getLogger("llmops.rag.outbox")
T = TypeVar("T")


class OutboxUnavailable(Exception):
    """The spool could not be written (a full or failed disk): the interaction was not kept."""


class InteractionOutbox:
    def __init__(
        self,
        spool: Spool,
        client: ServiceClient | None,
        *,
        on_depth: Callable[[int], None],
        on_sent: Callable[[int], None],
        on_failure: Callable[[str], None],
        on_dead_letter: Callable[[Spool], None] = lambda _: None,
    ) -> None:
        self.spool = spool
        self.client = client
        self.on_depth = on_depth
        self.on_sent = on_sent
        self.on_failure = on_failure
        self.on_dead_letter = on_dead_letter
        self._memory: list[dict[str, Any]] = []
        self._waiters: list[asyncio.Future[None]] = []
        self._queued = asyncio.Event()
        self._lock = asyncio.Lock()  # one spool call at a time (see the module's docstring)
        self._tasks: list[asyncio.Task[None]] = []
        self._spooled = asyncio.Event()
        self.last_error: str | None = None

    async def record(self, interaction: dict[str, Any], headers: dict[str, str]) -> None:
        """Keep one interaction (with the trace headers of its request) durably: return once it
        is in the spool, fsync'd, sharing the write with every interaction that gathered
        meanwhile. Raises :class:`OutboxUnavailable` when the spool cannot be written (nothing
        kept). Without a feedback service configured, nothing is kept."""
        if self.client is None:
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._memory.append({"op": "interaction", "rows": [interaction], "headers": headers})
        self._waiters.append(done)
        self._queued.set()
        await done

    @property
    def depth(self) -> int:
        return len(self._memory) + self.spool.depth

    def start(self) -> dict[str, asyncio.Task[None]]:
        """The loops, by name (for liveness); none without a feedback service."""
        if self.client is None:
            return {}
        self._tasks = [
            asyncio.create_task(self._spool_loop(), name="outbox-spool"),
            asyncio.create_task(self._send_loop(), name="outbox-send"),
        ]
        return {"outbox spool": self._tasks[0], "outbox sender": self._tasks[1]}

    async def stop(self, budget_s: float = 30.0) -> None:
        # A write under way is shielded: it finishes, and answers its waiters, after the cancel.
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.flush()
        if self.client is not None and self.spool.has_pending():
            try:
                await asyncio.wait_for(self._send_all(), budget_s)
            except Exception as exc:  # kept in the spool for this pod's next life
                log.warning(
                    "outbox not emptied at stop (%s): %d interactions kept",
                    type(exc).__name__,
                    self.spool.depth,
                )
        self.spool.close()

    async def _send_all(self) -> None:
        while await self._send_some():
            pass

    async def flush(self) -> None:
        """Write what is in memory to the spool (one write, one fsync) and answer its waiters."""
        await asyncio.shield(self._flush())

    async def _flush(self) -> None:
        async with self._lock:
            if not self._memory:
                return
            batch, waiters = self._memory, self._waiters
            self._memory, self._waiters = [], []
            try:
                await asyncio.to_thread(self.spool.append, batch)
            except Exception as exc:  # a full disk: these asks are answered with an error
                log.error("outbox spool write failed: %s", exc)
                self.on_failure("spool")
                why = exc.strerror if isinstance(exc, OSError) else None
                error = OutboxUnavailable(
                    f"the outbox spool could not be written ({why or type(exc).__name__})"
                )
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_exception(error)
                return
            for waiter in waiters:
                if not waiter.done():  # its ask may have been cancelled (client gone)
                    waiter.set_result(None)
        self.on_depth(self.depth)
        self._spooled.set()

    async def _spool_loop(self) -> None:
        """Group commit: whatever gathered during the last write goes in the next one."""
        while True:
            await self._queued.wait()
            self._queued.clear()
            await self.flush()

    async def _send_loop(self) -> None:
        backoff = 0.5
        while True:
            try:
                sent = await self._send_some()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"[:300]
                self.on_failure("unavailable")
                log.warning(
                    "feedback service unavailable; interactions wait in the spool",
                    extra={"error": self.last_error},
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            backoff = 0.5
            if not sent:
                self._spooled.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._spooled.wait(), timeout=1.0)

    async def _send_some(self) -> bool:
        """Send the oldest segment; False when there was none (an empty one counts as sent)."""
        segment = await self._locked(self._claim)
        if segment is None:
            return False
        try:
            ops = await asyncio.to_thread(lambda: list(Spool.read(segment)))
            await self._post_all(segment, ops)
        except BaseException:
            segment.release()
            raise
        await self._locked(self.spool.finish, segment, len(ops))
        self.on_sent(len(ops))
        self.on_depth(self.depth)
        self.last_error = None
        return True

    async def _locked(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn`` in a worker thread under the spool lock. Shielded: a cancel (the stop) must
        not let the lock go while the thread still works on the spool."""

        async def run() -> T:
            async with self._lock:
                return await asyncio.to_thread(fn, *args)

        return await asyncio.shield(run())

    def _claim(self) -> Segment | None:
        """The oldest segment to send; the one asks were appending to is closed for it, so the
        next is opened here, off the asks' path (a file creation costs two fsyncs)."""
        segment = self.spool.claim()
        if segment is not None:
            try:
                self.spool.ready_segment()
            except OSError as exc:  # the next append tries again (and its asks hear why)
                log.error("outbox segment not opened ahead: %s", exc)
        return segment

    async def _post_all(self, segment: Segment, ops: list[dict[str, Any]]) -> None:
        assert self.client is not None
        client = self.client
        gate = asyncio.Semaphore(8)

        async def post(op: dict[str, Any]) -> None:
            async with gate:
                r = await client.post(
                    "/v1/interactions", json=op["rows"][0], headers=op.get("headers") or {}
                )
            if r.status_code in (200, 201, 202):
                return
            if r.status_code >= 500 or r.status_code in (401, 403, 408, 429):
                raise RuntimeError(f"feedback service answered {r.status_code}")
            # The feedback service refuses this one for good (400/409/413): keep it for an
            # operator rather than block the ones behind it.
            reason = f"{r.status_code}: {r.text[:500]}"
            log.error("feedback refused an interaction: %s", reason)
            await asyncio.to_thread(self.spool.dead_letter, op, reason)
            self.on_failure("refused")
            self.on_dead_letter(self.spool)

        # Sending a segment twice after a crash is harmless: the feedback service replays.
        await asyncio.gather(*(post(op) for op in ops))
