"""Feedback service: ``create_app(settings)``; the lifespan owns the engine, the spool, the
group-commit writer and the Langfuse forwarder."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from prometheus_client import Counter, Gauge, Histogram

from services.common.app import build_app
from services.common.db import SchemaBehind, make_engine
from services.common.metrics import Metrics
from services.common.spool import Spool
from services.feedback import routes
from services.feedback.committer import Committer, Mode, is_outage
from services.feedback.config import FeedbackSettings
from services.feedback.db import check_schema, migrate
from services.feedback.langfuse import LangfuseForwarder
from services.feedback.state import FeedbackState
from services.feedback.store import Written

log = logging.getLogger("llmops.feedback")
MODES: tuple[Mode, ...] = ("direct", "spooling", "draining")


@dataclass
class FeedbackMetrics:
    interactions: Counter
    feedback: Counter
    preferences: Counter
    batch_size: Histogram
    mode: Gauge
    spool_depth: Gauge
    drain_lag: Gauge
    spooled: Counter
    dead_letter: Counter
    dead_letter_entries: Gauge
    dead_letter_dropped: Gauge
    deferred_depth: Gauge
    langfuse_sent: Counter
    langfuse_failures: Counter

    @classmethod
    def create(cls, m: Metrics) -> FeedbackMetrics:
        return cls(
            interactions=m.counter(
                "feedback_interactions_total",
                "Interactions committed, by model alias, prompt version and environment.",
                ["model", "prompt_version", "environment"],
            ),
            feedback=m.counter(
                "feedback_total",
                "Feedback committed, by kind, value (thumbs up/down, rating 1-5, label), "
                "prompt version and model.",
                ["kind", "value", "prompt_version", "model"],
            ),
            preferences=m.counter("feedback_preferences_total", "Preference pairs committed."),
            batch_size=m.histogram(
                "feedback_commit_batch_size",
                "Ops written per transaction (group commit).",
                buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
            ),
            mode=m.gauge(
                "feedback_write_mode",
                "1 for the current write mode: direct, spooling (database unreachable) or "
                "draining (writing the spool back).",
                ["mode"],
                multiprocess_mode="livemax",
            ),
            spool_depth=m.gauge(
                "feedback_spool_depth", "Accepted writes waiting in the local spool."
            ),
            drain_lag=m.gauge(
                "feedback_drain_lag_seconds",
                "Age of the oldest write waiting in the spool (0: empty).",
                multiprocess_mode="livemax",
            ),
            spooled=m.counter("feedback_spooled_total", "Writes accepted into the spool (202)."),
            dead_letter=m.counter(
                "feedback_dead_letter_total",
                "Spooled writes the database refused at drain time (kept in dead-letter.jsonl).",
                ["code"],
            ),
            dead_letter_entries=m.gauge(
                "feedback_dead_letter_entries",
                "Entries in the dead-letter file (its path in the label), from every life of "
                "this spool volume; an operator's to read and clear.",
                ["path"],
                multiprocess_mode="livemax",
            ),
            dead_letter_dropped=m.gauge(
                "feedback_dead_letter_dropped",
                "Refused writes not kept since start: the dead-letter file was at "
                "FEEDBACK_DEAD_LETTER_MAX_BYTES.",
                multiprocess_mode="livesum",
            ),
            deferred_depth=m.gauge(
                "feedback_deferred_depth",
                "Spooled feedback waiting for its interaction to reach the database (tried "
                "again every FEEDBACK_ORPHAN_RETRY_S).",
            ),
            langfuse_sent=m.counter("feedback_langfuse_forwarded_total", "Scores sent."),
            langfuse_failures=m.counter(
                "feedback_langfuse_forward_failures_total",
                "Score sends that failed after retries (unavailable) or were refused (rejected).",
                ["reason"],
                initial=("unavailable", "rejected"),
            ),
        )

    def written(self, w: Written) -> None:
        for row in w.interactions:
            self.interactions.labels(
                row["model"] or "", row["prompt_version"] or "", row["environment"]
            ).inc()
        for row, inter in w.feedback:
            kind = row["kind"]
            if kind == "rating":
                value = str(int(row["value_num"]))
            elif kind in ("thumbs", "label"):
                value = (row["value_text"] or "")[:50]
            else:
                value = ""
            self.feedback.labels(
                kind, value, inter["prompt_version"] or "", inter["model"] or ""
            ).inc()
        if w.preferences:
            self.preferences.inc(w.preferences)
        n = len(w.interactions) + len(w.feedback)
        if n:
            self.batch_size.observe(n)


async def _publish_lag(spool: Spool, metrics: FeedbackMetrics) -> None:
    while True:
        oldest = spool.oldest_at
        metrics.drain_lag.set(0.0 if oldest is None else max(0.0, time.time() - oldest))
        metrics.spool_depth.set(spool.depth)
        await asyncio.sleep(1.0)


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: FeedbackSettings = app.state.settings
    metrics: FeedbackMetrics = app.state.feedback_metrics
    engine = make_engine(
        settings.database_url.get_secret_value(),
        pool_size=settings.db_pool_size,
        connect_timeout_s=settings.db_connect_timeout_s,
    )
    # Before anything is written: the migrations (dev), or the check that the migration Job
    # ran. Either may wait for the database; writes spool meanwhile, nothing crash-loops.
    prepare: Callable[[], None] = (
        (lambda: migrate(engine)) if settings.auto_migrate else (lambda: check_schema(engine))
    )
    first_error: Exception | None = None
    try:
        await asyncio.to_thread(prepare)
    except SchemaBehind as exc:
        log.error("not ready: %s", exc)
        first_error = exc
    except Exception as exc:
        if not is_outage(exc):
            raise
        log.error("database unreachable at start (%s): writes will spool", type(exc).__name__)
        first_error = exc
    spool = Spool(settings.spool_dir, dead_letter_max_bytes=settings.dead_letter_max_bytes)
    deferred = Spool(settings.spool_dir / "deferred")
    await asyncio.to_thread(spool.open)
    await asyncio.to_thread(deferred.open)
    metrics.dead_letter_entries.labels(str(spool.dead_letter_path)).set(spool.dead_letters)

    def on_mode(mode: Mode) -> None:
        for m in MODES:
            metrics.mode.labels(m).set(1 if m == mode else 0)

    def on_spool(s: Spool, added: int) -> None:
        metrics.spool_depth.set(s.depth)
        metrics.deferred_depth.set(deferred.depth)
        if added:
            metrics.spooled.inc(added)

    def on_rejected(code: str) -> None:
        metrics.dead_letter.labels(code).inc()
        metrics.dead_letter_entries.labels(str(spool.dead_letter_path)).set(spool.dead_letters)
        metrics.dead_letter_dropped.set(spool.dead_letters_dropped)

    state: FeedbackState

    def on_written(w: Written) -> None:
        metrics.written(w)
        if w.feedback:
            state.wake_forwarder()

    committer = Committer(
        engine,
        spool,
        on_written=on_written,
        on_mode=on_mode,
        on_spool=on_spool,
        on_rejected=on_rejected,
        max_batch=settings.max_batch,
        probe_interval_s=settings.probe_interval_s,
        prepare=prepare if first_error is not None else None,
        deferred=deferred,
        orphan_window_s=settings.orphan_window_s,
        orphan_retry_s=settings.orphan_retry_s,
    )
    committer.prepare_error = first_error
    forwarder = None
    if settings.langfuse_enabled:
        assert settings.langfuse_host and settings.langfuse_public_key
        assert settings.langfuse_secret_key is not None
        forwarder = LangfuseForwarder(
            engine,
            host=settings.langfuse_host,
            public_key=settings.langfuse_public_key,
            secret_key=settings.langfuse_secret_key.get_secret_value(),
            on_sent=metrics.langfuse_sent.inc,
            on_failure=lambda reason: metrics.langfuse_failures.labels(reason).inc(),
            interval_s=settings.langfuse_flush_s,
            redact_pii=settings.langfuse_redact_pii,
        )
    state = FeedbackState(
        settings=settings, engine=engine, committer=committer, forwarder=forwarder
    )
    app.state.feedback = state
    on_mode("direct")
    lifecycle = app.state.lifecycle
    lifecycle.watch("feedback committer", committer.start(database_up=first_error is None))
    if forwarder is not None:
        lifecycle.watch("Langfuse forwarder", forwarder.start())
    publisher = asyncio.create_task(_publish_lag(spool, metrics), name="spool-gauges")
    log.info(
        "feedback ready",
        extra={
            "database": engine.url.get_backend_name(),
            "langfuse": forwarder is not None,
            "spool_depth": spool.depth,
        },
    )
    try:
        yield
    finally:
        publisher.cancel()
        await committer.stop(lifecycle.drain_budget())
        if forwarder is not None:
            await forwarder.stop()
        engine.dispose()


async def readiness(app: FastAPI) -> tuple[bool, dict[str, Any]]:
    """Ready while writes are accepted, even with the database down (they spool): taking the
    pods out of the Service then would turn a database outage into lost feedback. The body
    says ``degraded`` and why."""
    state: FeedbackState | None = getattr(app.state, "feedback", None)
    if state is None:
        return False, {"reason": "starting"}
    c = state.committer
    if isinstance(c.prepare_error, SchemaBehind):  # a deploy-order problem: stay out of the pool
        return False, {"reason": str(c.prepare_error)}
    detail: dict[str, Any] = {
        "write_mode": c.mode,
        "database": "ok"
        if c.mode == "direct"
        else ("unreachable" if c.mode == "spooling" else "ok, draining the spool"),
        "spool_depth": c.spool.depth,
        "deferred_depth": c.deferred.depth if c.deferred is not None else 0,
        "dead_letters": c.spool.dead_letters,
        "langfuse": "on" if state.forwarder is not None else "off",
    }
    if c.mode != "direct":
        detail["status"] = "degraded"
        if c.last_error:
            detail["last_error"] = c.last_error
    return True, detail


def create_app(settings: FeedbackSettings | None = None) -> FastAPI:
    settings = settings or FeedbackSettings()
    app = build_app(
        settings,
        title="llmops feedback",
        lifespan=lifespan,
        readiness=readiness,
        fast_routes={
            ("POST", "/v1/interactions"): routes.record_interaction,
            ("POST", "/v1/feedback"): routes.record_feedback,
        },
    )
    app.state.feedback_metrics = FeedbackMetrics.create(app.state.metrics)
    app.include_router(routes.router)
    return app
