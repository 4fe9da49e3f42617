"""Forwarding feedback to Langfuse as scores on the interaction's trace, through the API client
of Langfuse's own SDK (``langfuse.api.AsyncLangfuseAPI``: its models, its endpoint, its auth).

The SDK's own batching queue lives in memory and would lose scores in a crash; so the feedback
table stays the outbox: a row is written ``pending`` with the feedback itself, and
this task sends pending rows in the background, so Langfuse being slow or down never delays or
fails a write, and nothing is lost across restarts. Each score's id is the feedback's id, so a
score sent twice (a retry, two replicas) is one score in Langfuse. Nothing runs when Langfuse is
not configured.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from langfuse.api import AsyncLangfuseAPI, CreateScoreBatchResults, CreateScoreRequest
from langfuse.api.core.api_error import ApiError
from sqlalchemy import select, update
from sqlalchemy.engine import Engine
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential

from services.common.pii import redact
from services.feedback.models import (
    LANGFUSE_PENDING,
    LANGFUSE_REJECTED,
    LANGFUSE_SENT,
    Feedback,
    Interaction,
)

log = logging.getLogger("llmops.feedback.langfuse")


def score_for(row: Any, redact_pii: bool = False) -> CreateScoreRequest:
    """A Langfuse score for one feedback row; its id is the feedback's, so a resend is a no-op.
    With ``redact_pii`` the comment's PII is replaced by placeholders before it leaves."""
    kind = row.kind
    value: float | str
    if kind == "thumbs":
        value, data_type = (1 if row.positive else 0), "BOOLEAN"
    elif kind == "rating":
        value, data_type = row.value_num, "NUMERIC"
    elif kind == "label":
        value, data_type = row.value_text, "CATEGORICAL"
    else:  # comment, correction: the text goes in the score's comment
        value, data_type = ("commented" if kind == "comment" else "corrected"), "CATEGORICAL"
    comment = row.value_text if kind in ("comment", "correction") else row.comment
    if comment and redact_pii:
        comment = redact(comment)[0]
    return CreateScoreRequest(
        id=row.id,
        trace_id=row.trace_id,
        name=kind,
        value=value,
        data_type=data_type,
        comment=comment[:4000] if comment else None,
        environment=row.environment or None,
        metadata={"interaction_id": row.interaction_id, "user_id": row.user_id},
    )


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
        redact_pii: bool = False,
    ) -> None:
        self.engine = engine
        self.redact_pii = redact_pii
        self.http = httpx.AsyncClient(
            timeout=timeout_s, limits=httpx.Limits(max_connections=8, max_keepalive_connections=8)
        )
        # The SDK's API client over our pooled connections: basic auth with the key pair, and
        # the public-key and SDK headers Langfuse's own clients send.
        self.api = AsyncLangfuseAPI(
            base_url=host.rstrip("/"),
            username=public_key,
            password=secret_key,
            x_langfuse_public_key=public_key,
            x_langfuse_sdk_name="llmops-feedback",
            x_langfuse_sdk_version="0.1.0",
            httpx_client=self.http,
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
        await self.http.aclose()

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
        """The row's new state: sent, rejected (4xx, or 207 with this score refused), or None
        for "try again later". One score per request, so a 207 names this score alone (its
        errors carry no ids) and a refused score never holds back the others."""
        score = score_for(row, self.redact_pii)
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(self.attempts),
                wait=wait_exponential(multiplier=0.2, max=2.0),
                retry=retry_if_exception(_transient),
                reraise=True,
            ):
                with attempt:
                    # Tenacity is the one retry policy (the SDK's own would multiply it).
                    got = await self.api.scores.create(
                        request=[score], request_options={"max_retries": 0}
                    )
        except (ApiError, httpx.HTTPError) as exc:
            if _transient(exc):
                self.on_failure("unavailable")
                log.warning("langfuse score not sent yet: %s", type(exc).__name__)
                return None
            self.on_failure("rejected")
            status, said = getattr(exc, "status_code", None), getattr(exc, "body", None)
            log.error("langfuse refused a score: HTTP %s %s", status, str(said)[:300])
            return LANGFUSE_REJECTED
        if isinstance(got, CreateScoreBatchResults) and got.rejected:
            self.on_failure("rejected")
            log.error("langfuse refused a score: %s", [e.message for e in got.errors][:3])
            return LANGFUSE_REJECTED
        self.on_sent()
        return LANGFUSE_SENT


def _transient(exc: BaseException) -> bool:
    """Worth retrying: the network, 429 and 5xx."""
    if isinstance(exc, ApiError):
        return exc.status_code is None or exc.status_code == 429 or exc.status_code >= 500
    return isinstance(exc, httpx.HTTPError)
