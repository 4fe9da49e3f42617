"""Prometheus metrics: RED per route, plus a registry each service adds its own metrics to.

Metrics are created per app (no module-level globals) so several apps can live in one process
(tests) and nothing happens at import. With several uvicorn workers, ``PROMETHEUS_MULTIPROC_DIR``
is set by ``llmops serve`` before the workers start; every worker then writes its samples to that
directory and ``/metrics`` aggregates them, so a scrape sees the whole pod whichever worker answers.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})


def multiprocess_enabled() -> bool:
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


class Metrics:
    """Holds one app's collectors; services call :meth:`counter` & co. for their own."""

    def __init__(self, namespace: str = "llmops") -> None:
        self.namespace = namespace
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = self.counter(
            "http_requests_total",
            "HTTP requests by method, route template and status code.",
            ["method", "route", "status"],
        )
        self.latency = self.histogram(
            "http_request_duration_seconds",
            "HTTP request latency by method and route template.",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
        )
        self.in_flight = self.gauge(
            "http_requests_in_flight", "Requests being served now.", multiprocess_mode="livesum"
        )
        # Set by each /readyz answer (the kubelet asks every few seconds): alerts see a pod that
        # runs but cannot serve (a model that never loaded), which `up` alone does not show.
        self.ready = self.gauge(
            "ready", "1 when /readyz last answered ready, 0 when not.", multiprocess_mode="livemin"
        )

    def counter(
        self, name: str, doc: str, labels: Sequence[str] = (), initial: Sequence[str] = ()
    ) -> Counter:
        """``initial``: the values of a one-label counter known in advance; each starts at 0,
        so rates, panels and alerts over it read 0 before the first event, not "no data"."""
        counter = Counter(name, doc, labels, namespace=self.namespace, registry=self.registry)
        for value in initial:
            counter.labels(value)
        return counter

    def histogram(
        self,
        name: str,
        doc: str,
        labels: Sequence[str] = (),
        buckets: Sequence[float] = LATENCY_BUCKETS,
    ) -> Histogram:
        return Histogram(
            name, doc, labels, namespace=self.namespace, registry=self.registry, buckets=buckets
        )

    def gauge(
        self,
        name: str,
        doc: str,
        labels: Sequence[str] = (),
        multiprocess_mode: str = "livesum",
    ) -> Gauge:
        return Gauge(
            name,
            doc,
            labels,
            namespace=self.namespace,
            registry=self.registry,
            multiprocess_mode=multiprocess_mode,  # type: ignore[arg-type]
        )

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        method = method if method in _METHODS else "OTHER"
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)

    def render(self) -> tuple[bytes, str]:
        if multiprocess_enabled():
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def mark_worker_dead() -> None:
    """Drop this worker's live gauges from the shared directory when it exits."""
    if multiprocess_enabled():
        multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]
