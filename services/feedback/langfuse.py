"""Forwarding feedback to Langfuse as scores on the interaction's trace.

The feedback table is the outbox: a row is written ``pending`` with the feedback itself, and
this task sends pending rows in the background, so Langfuse being slow or down never delays or
fails a write, and nothing is lost across restarts. Each score's id is the feedback's id, so a
score sent twice (a retry, two replicas) is one score in Langfuse. Nothing runs when Langfuse is
not configured.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import select, update
from sqlalchemy.engine import Engine
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential

from services.feedback.models import (
    LANGFUSE_PENDING,
    LANGFUSE_REJECTED,
    LANGFUSE_SENT,
    Feedback,
    Interaction,
)

log = logging.getLogger("llmops.feedback.langfuse")


class _Retryable(Exception):
    pass


def score_for(row: Any) -> dict[str, Any]:
    """A Langfuse score for one feedback row (ScoreBody of their public API)."""
    kind = row.kind
    body: dict[str, Any] = {"id": row.id, "traceId": row.trace_id, "name": kind}
    if kind == "thumbs":
        body.update(value=1 if row.positive else 0, dataType="BOOLEAN")
    elif kind == "rating":
        body.update(value=row.value_num, dataType="NUMERIC")
    elif kind == "label":
        body.update(value=row.value_text, dataType="CATEGORICAL")
    else:  # comment, correction: the text goes in the score's comment
        body.update(value="commented" if kind == "comment" else "corrected", dataType="CATEGORICAL")
    comment = row.value_text if kind in ("comment", "correction") else row.comment
    if comment:
        body["comment"] = comment[:4000]
    if row.environment:
        body["environment"] = row.environment
    body["metadata"] = {"interaction_id": row.interaction_id, "user_id": row.user_id}
    return body


class LangfuseForwarder:
    def __init__(
        self,
        engine: Engine,
        *,
        host: str,
        public_key: str,
        secret_key: str,
        on_sent: Callable[[], None],
        on_failure: Callable[[str], None],
        interval_s: float = 1.0,
        batch: int = 200,
        attempts: int = 3,
        timeout_s: float = 10.0,
    ) -> None:
        self.engine = engine
        self.url = host.rstrip("/") + "/api/public/scores"
        token = base64.b64encode(f"{public_key}:{secret_key}".encode()).decode()
        self.client = httpx.AsyncClient(
            headers={"Authorization": f"Basic {token}"},
            timeout=timeout_s,
            limits=httpx.Limits(max_connections=8, max_keepalive_connections=8),
        )
        self.on_sent = on_sent
        self.on_failure = on_failure
        self.interval_s = interval_s
        self.batch = batch
        self.attempts = attempts
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> asyncio.Task[None]:
        self._task = asyncio.create_task(self._run(), name="langfuse-forwarder")
        return self._task

    def wake(self) -> None:
        self._wake.set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.client.aclose()

    async def _run(self) -> None:
        while True:
            try:
                sent = await self.forward_pending()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database may be down: the spool has the writes
                log.warning("langfuse forwarding paused: %s", type(exc).__name__)
                sent = 0
            if sent < self.batch:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=self.interval_s)
                self._wake.clear()

    def _pending(self) -> list[Any]:
        now = datetime.now(UTC)
        q = (
            select(
                Feedback.id,
                Feedback.kind,
                Feedback.value_text,
                Feedback.value_num,
                Feedback.positive,
                Feedback.comment,
                Feedback.user_id,
                Feedback.interaction_id,
                Feedback.langfuse_attempts,
                Interaction.trace_id,
                Interaction.environment,
            )
            .join(Interaction, Interaction.id == Feedback.interaction_id)
            .where(Feedback.langfuse_state == LANGFUSE_PENDING)
            .where((Feedback.langfuse_next_at.is_(None)) | (Feedback.langfuse_next_at <= now))
            .order_by(Feedback.created_at)
            .limit(self.batch)
        )
        with self.engine.connect() as conn:
            return list(conn.execute(q))

    def _record(self, results: list[tuple[Any, int | None]]) -> None:
        now = datetime.now(UTC)
        with self.engine.begin() as conn:
            for row, state in results:
                if state is None:  # transient failure: back off (1 s, 2 s, ... up to 10 min)
                    delay = min(600.0, 2.0 ** min(row.langfuse_attempts, 10))
                    conn.execute(
                        update(Feedback)
                        .where(Feedback.id == row.id)
                        .values(
                            langfuse_attempts=row.langfuse_attempts + 1,
                            langfuse_next_at=now + timedelta(seconds=delay),
                        )
                    )
                else:
                    conn.execute(
                        update(Feedback).where(Feedback.id == row.id).values(langfuse_state=state)
                    )

    async def forward_pending(self) -> int:
        rows = await asyncio.to_thread(self._pending)
        if not rows:
            return 0
        results = await asyncio.gather(*(self._send(row) for row in rows))
        await asyncio.to_thread(self._record, list(zip(rows, results, strict=True)))
        return len(rows)

    async def _send(self, row: Any) -> int | None:
        """The row's new state: sent, rejected (4xx), or None for "try again later"."""
        body = score_for(row)
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(self.attempts),
                wait=wait_exponential(multiplier=0.2, max=2.0),
                retry=retry_if_exception(lambda e: isinstance(e, _Retryable | httpx.HTTPError)),
                reraise=True,
            ):
                with attempt:
                    r = await self.client.post(self.url, json=body)
                    if r.status_code == 429 or r.status_code >= 500:
                        raise _Retryable(f"HTTP {r.status_code}")
        except (_Retryable, httpx.HTTPError) as exc:
            self.on_failure("unavailable")
            log.warning("langfuse score not sent yet: %s", type(exc).__name__)
            return None
        if r.status_code >= 400:
            self.on_failure("rejected")
            log.error("langfuse refused a score: HTTP %s %s", r.status_code, r.text[:300])
            return LANGFUSE_REJECTED
        self.on_sent()
        return LANGFUSE_SENT
