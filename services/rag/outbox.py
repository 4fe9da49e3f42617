"""Interactions on their way to the feedback service, off the response path and never lost.

A request only appends to a list in memory. One task writes what gathered to the local spool
(one fsync per ``flush_s``), another posts spooled interactions to the feedback service. The
feedback service is idempotent on the interaction id, so a post repeated after a crash or a
timeout is one row there. While it is down, the spool grows and the sender backs off; nothing
is dropped. Between a request and the next spool flush (``flush_s``, 0.2 s by default) an
interaction lives only in memory; a graceful stop flushes it, then sends what the spool holds
while the feedback service answers (within the drain budget), so a pod removed by a scale-down
leaves nothing behind on its volume; what is left is sent by the pod's next life.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import httpx

from services.common.spool import Segment, Spool

log = logging.getLogger("llmops.rag.outbox")


class InteractionOutbox:
    def __init__(
        self,
        spool: Spool,
        client: httpx.AsyncClient | None,
        *,
        flush_s: float,
        on_depth: Callable[[int], None],
        on_sent: Callable[[int], None],
        on_failure: Callable[[str], None],
        on_dead_letter: Callable[[Spool], None] = lambda _: None,
    ) -> None:
        self.spool = spool
        self.client = client
        self.flush_s = flush_s
        self.on_depth = on_depth
        self.on_sent = on_sent
        self.on_failure = on_failure
        self.on_dead_letter = on_dead_letter
        self._memory: list[dict[str, Any]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._spooled = asyncio.Event()
        self.last_error: str | None = None

    def put(self, interaction: dict[str, Any], headers: dict[str, str]) -> None:
        """Queue one interaction (with the trace headers of its request); never blocks. Without
        a feedback service configured, nothing is kept."""
        if self.client is None:
            return
        self._memory.append({"op": "interaction", "rows": [interaction], "headers": headers})

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
        """Write what is in memory to the spool (fsync'd)."""
        if not self._memory:
            return
        batch, self._memory = self._memory, []
        await asyncio.to_thread(self.spool.append, batch)
        self.on_depth(self.depth)
        self._spooled.set()

    async def _spool_loop(self) -> None:
        while True:
            await asyncio.sleep(self.flush_s)
            try:
                await self.flush()
            except OSError as exc:  # a full disk: keep them in memory and say so
                log.error("outbox spool write failed: %s", exc)
                self.on_failure("spool")

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

    async def _send_some(self) -> int:
        segment = await asyncio.to_thread(self.spool.claim)
        if segment is None:
            return 0
        try:
            ops = await asyncio.to_thread(lambda: list(Spool.read(segment)))
            await self._post_all(segment, ops)
        except BaseException:
            segment.release()
            raise
        await asyncio.to_thread(self.spool.finish, segment, len(ops))
        self.on_sent(len(ops))
        self.on_depth(self.depth)
        self.last_error = None
        return len(ops)

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
