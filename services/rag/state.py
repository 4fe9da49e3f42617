"""What the rag app keeps on ``app.state.rag``, and its metrics."""

from __future__ import annotations

from dataclasses import dataclass

from opentelemetry.trace import Tracer
from prometheus_client import Counter, Gauge, Histogram

from services.common.http import ServiceClient
from services.common.injection import HEURISTICS
from services.common.metrics import Metrics
from services.rag.config import RagSettings
from services.rag.outbox import InteractionOutbox
from services.rag.registry import PromptRegistry


@dataclass
class RagMetrics:
    asks: Counter
    degraded: Counter
    stage_seconds: Histogram
    citations: Counter
    context_injection: Counter
    outbox_depth: Gauge
    outbox_sent: Counter
    outbox_failures: Counter
    dead_letter_entries: Gauge
    dead_letter_dropped: Gauge

    @classmethod
    def create(cls, m: Metrics) -> RagMetrics:
        return cls(
            asks=m.counter("rag_asks_total", "Asks answered, by outcome.", ["outcome", "stream"]),
            degraded=m.counter(
                "rag_degraded_total",
                "Asks answered in a degraded mode, by reason (retrieval_unavailable, "
                "prompt_registry_stale, prompt_registry_unavailable).",
                ["reason"],
                initial=(
                    "retrieval_unavailable",
                    "prompt_registry_stale",
                    "prompt_registry_unavailable",
                ),
            ),
            stage_seconds=m.histogram(
                "rag_stage_seconds",
                "Time per stage of an ask: retrieval, prompt, llm, total.",
                ["stage"],
            ),
            citations=m.counter(
                "rag_citations_total",
                "Citation markers in answers: valid or invalid.",
                ["kind"],
                initial=("valid", "invalid"),
            ),
            context_injection=m.counter(
                "rag_context_injection_total",
                "Retrieved chunks shown to the model that match a prompt-injection heuristic, "
                "by heuristic (a chunk matching two counts in both).",
                ["heuristic"],
                initial=HEURISTICS,
            ),
            outbox_depth=m.gauge(
                "rag_outbox_depth", "Interactions not yet handed to the feedback service."
            ),
            outbox_sent=m.counter(
                "rag_outbox_sent_total", "Interactions recorded by the feedback service."
            ),
            outbox_failures=m.counter(
                "rag_outbox_failures_total",
                "Outbox problems: unavailable (feedback down, retried), refused (dead-lettered), "
                "spool (local write failed).",
                ["reason"],
                initial=("unavailable", "refused", "spool"),
            ),
            dead_letter_entries=m.gauge(
                "rag_outbox_dead_letter_entries",
                "Interactions the feedback service refused for good, kept in the outbox's "
                "dead-letter file (its path in the label).",
                ["path"],
                multiprocess_mode="livemax",
            ),
            dead_letter_dropped=m.gauge(
                "rag_outbox_dead_letter_dropped",
                "Refused interactions not kept since start: the dead-letter file was full.",
                multiprocess_mode="livesum",
            ),
        )


@dataclass
class RagState:
    settings: RagSettings
    retrieval: ServiceClient
    proxy: ServiceClient
    prompts: PromptRegistry
    outbox: InteractionOutbox
    metrics: RagMetrics
    tracer: Tracer
