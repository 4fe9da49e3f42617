"""Running one client request against the router's plan: retries, breakers, fallbacks.

For each candidate deployment in the plan, the call is retried with exponential backoff and
jitter (tenacity, honouring ``Retry-After``) while the failure is transient and the
deployment's breaker stays closed; then the next candidate is tried, then the alias' fallbacks.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from prometheus_client import Counter, Gauge, Histogram
from tenacity import RetryCallState

from services.common.errors import APIError
from services.common.metrics import Metrics
from services.common.retry import first_delay, retrying
from services.llm_proxy.limits import Limiter, Limits, RateLimited
from services.llm_proxy.router import OPEN, Candidate, CircuitBreaker, Router
from services.llm_proxy.upstream import CLIENT, NEXT, RETRY, UpstreamError

T = TypeVar("T")

TOKEN_BUCKETS = (1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 50000)
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1)


@dataclass
class ProxyMetrics:
    requests: Counter
    request_seconds: Histogram
    upstream_seconds: Histogram
    overhead_seconds: Histogram
    ttft_seconds: Histogram
    tokens: Counter
    cost: Counter
    key_spend: Counter
    key_budget_used: Gauge
    retries: Counter
    fallbacks: Counter
    circuit_state: Gauge
    alias_deployment: Gauge
    rate_limited: Counter
    redis_errors: Counter
    config_reloads: Counter
    guardrails: Counter
    structured: Counter
    cache: Counter
    routes: Counter

    @classmethod
    def create(cls, m: Metrics) -> ProxyMetrics:
        return cls(
            requests=m.counter(
                "llm_requests_total",
                "Proxied requests by alias, deployment that answered ('none' if none) and status.",
                ["alias", "deployment", "status"],
            ),
            request_seconds=m.histogram(
                "llm_request_seconds", "Total seconds per proxied request.", ["alias"]
            ),
            upstream_seconds=m.histogram(
                "llm_upstream_seconds", "Seconds per upstream attempt.", ["deployment"]
            ),
            overhead_seconds=m.histogram(
                "llm_overhead_seconds",
                "The proxy's own seconds per request (total minus upstream).",
                buckets=OVERHEAD_BUCKETS,
            ),
            ttft_seconds=m.histogram(
                "llm_time_to_first_token_seconds",
                "Streaming: seconds to the first chunk.",
                ["alias"],
            ),
            tokens=m.counter(
                "llm_tokens_total",
                "Tokens by alias, deployment and type (input/output).",
                ["alias", "deployment", "type"],
            ),
            cost=m.counter(
                "llm_cost_usd_total",
                "Cost in USD by alias and deployment.",
                ["alias", "deployment"],
            ),
            # Per key id (never the key itself): what LiteLLM users ask of spend dashboards.
            key_spend=m.counter(
                "llm_key_spend_usd_total", "Cost in USD by virtual key id.", ["key"]
            ),
            key_budget_used=m.gauge(
                "llm_key_budget_used_ratio",
                "Share of its max_budget_usd a virtual key has spent (keys with a budget).",
                ["key"],
                multiprocess_mode="livemax",
            ),
            retries=m.counter(
                "llm_retries_total",
                "Retries of one deployment, by reason.",
                ["deployment", "reason"],
            ),
            fallbacks=m.counter(
                "llm_fallbacks_total",
                "Requests that moved on to another deployment.",
                ["alias", "from_deployment", "to_deployment"],
            ),
            circuit_state=m.gauge(
                "llm_circuit_state",
                "Circuit breaker per deployment: 0 closed, 1 open, 2 half-open.",
                ["deployment"],
                multiprocess_mode="liveall",
            ),
            alias_deployment=m.gauge(
                "llm_alias_deployment",
                "1 for each deployment that can answer an alias (its fallbacks included).",
                ["alias", "deployment"],
                multiprocess_mode="liveall",
            ),
            rate_limited=m.counter(
                "llm_rate_limited_total",
                "Requests refused by a limit, by reason.",
                ["reason"],
                initial=("rpm", "tpm", "budget", "limiter_unavailable"),
            ),
            redis_errors=m.counter("llm_redis_errors_total", "Failed calls to Redis."),
            config_reloads=m.counter(
                "llm_config_reloads_total",
                "Routing config reloads by result.",
                ["result"],
                initial=("ok", "rejected"),
            ),
            guardrails=m.counter(
                "llm_guardrail_actions_total",
                "Guardrails that acted, by rail, stage (pre_call/post_call) and action "
                "(block/redact/flag).",
                ["rail", "stage", "action"],
            ),
            structured=m.counter(
                "llm_structured_output_total",
                "Answers checked against response_format or tool schemas, by result: valid (first "
                "time), violation (each invalid answer), repaired (valid after a retry), failed.",
                ["alias", "result"],
            ),
            cache=m.counter(
                "llm_cache_requests_total",
                "Response-cache lookups by result: hit, semantic_hit, miss, bypass (not "
                "deterministic or Cache-Control), error (the cache store failed: a miss).",
                ["alias", "result"],
            ),
            routes=m.counter(
                "llm_route_decisions_total",
                "Requests to a routing alias by the route chosen and its target alias.",
                ["alias", "route", "target"],
            ),
        )


@dataclass
class Outcome:
    candidate: Candidate
    attempts: int
    upstream_s: float


def _reason(exc: BaseException) -> str:
    if isinstance(exc, UpstreamError):
        if exc.timeout:
            return "timeout"
        return str(exc.status) if exc.status else "connect"
    return type(exc).__name__


class Gateway:
    def __init__(
        self,
        router: Callable[[], Router],
        limiter: Limiter,
        metrics: ProxyMetrics,
    ) -> None:
        self.router = router
        self.limiter = limiter
        self.metrics = metrics

    async def call(
        self,
        alias: str,
        tokens: int,
        attempt: Callable[[Candidate], Awaitable[T]],
    ) -> tuple[T, Outcome]:
        """Try the plan until one deployment answers; raise an APIError saying why not."""
        router = self.router()
        opts = router.catalog.router
        last: UpstreamError | None = None
        skipped_open: list[float] = []
        limited = False
        previous: str | None = None
        upstream_s = 0.0
        attempts = 0

        def on_retry_exc(name: str, exc: BaseException | None) -> None:
            self.metrics.retries.labels(name, _reason(exc) if exc else "unknown").inc()

        for cand in router.plan(alias):
            st = cand.state
            dep = st.deployment
            breaker = st.breaker
            if not breaker.allow(time.monotonic()):
                skipped_open.append(breaker.retry_in(time.monotonic()))
                continue
            if dep.rpm is not None or dep.tpm is not None:
                try:
                    await self.limiter.reserve(
                        Limits(f"dep:{dep.name}", rpm=dep.rpm, tpm=dep.tpm), tokens, 0
                    )
                except RateLimited:
                    breaker.release()
                    limited = True
                    continue
            if previous is not None:
                self.metrics.fallbacks.labels(alias, previous, dep.name).inc()
            previous = dep.name

            def transient(exc: BaseException, breaker: CircuitBreaker = breaker) -> bool:
                return (
                    isinstance(exc, UpstreamError)
                    and exc.action == RETRY
                    and breaker.state != OPEN
                    and (exc.retry_after is None or exc.retry_after <= opts.max_retry_after_s)
                )

            def on_retry(state: RetryCallState, name: str = dep.name) -> None:
                exc = state.outcome.exception() if state.outcome else None
                on_retry_exc(name, exc)

            async def once(cand: Candidate = cand) -> T:
                nonlocal attempts, upstream_s
                st, breaker = cand.state, cand.state.breaker
                attempts += 1
                started = time.perf_counter()
                try:
                    result = await attempt(cand)
                except UpstreamError as exc:
                    elapsed = time.perf_counter() - started
                    upstream_s += elapsed
                    self.metrics.upstream_seconds.labels(st.deployment.name).observe(elapsed)
                    # A request the upstream rejects as invalid says nothing about its health.
                    breaker.record(exc.action == CLIENT, time.monotonic())
                    raise
                except asyncio.CancelledError:
                    breaker.release()
                    raise
                elapsed = time.perf_counter() - started
                upstream_s += elapsed
                self.metrics.upstream_seconds.labels(st.deployment.name).observe(elapsed)
                breaker.record(True, time.monotonic())
                st.observe_latency(elapsed, opts.ewma_alpha)
                return result

            try:
                try:
                    # The first attempt runs bare: tenacity's bookkeeping only when retrying.
                    return await once(), Outcome(cand, attempts, upstream_s)
                except UpstreamError as first:
                    if dep.max_retries == 0 or not transient(first):
                        raise
                    on_retry_exc(dep.name, first)
                    await asyncio.sleep(
                        first_delay(first, opts.backoff_initial_s, opts.backoff_max_s)
                    )
                async for retry in retrying(
                    dep.max_retries - 1,
                    transient,
                    on_retry,
                    initial_s=opts.backoff_initial_s * 2,  # the first wait is behind us
                    max_s=opts.backoff_max_s,
                ):
                    with retry:
                        return await once(), Outcome(cand, attempts, upstream_s)
            except UpstreamError as exc:
                if exc.action == CLIENT:
                    raise _client_error(exc) from exc
                last = exc
                continue
        raise _exhausted(alias, last, skipped_open, limited)


def _client_error(exc: UpstreamError) -> APIError:
    """The upstream's own 4xx, relayed with its message: the request itself needs fixing."""
    status = exc.status or 400
    return APIError(status, exc.message, code="upstream_rejected_request")


def _exhausted(
    alias: str, last: UpstreamError | None, skipped_open: list[float], limited: bool
) -> APIError:
    if last is None:
        if skipped_open:
            wait = max(1, int(min(skipped_open) + 0.999))
            return APIError(
                503,
                f"Every deployment of '{alias}' is failing (circuit open); "
                f"retry in {wait} s or configure a fallback.",
                code="upstream_unavailable",
                headers={"Retry-After": str(wait)},
            )
        if limited:
            return APIError(
                429,
                f"Every deployment of '{alias}' is at its RPM/TPM limit; retry shortly.",
                code="upstream_capacity",
                headers={"Retry-After": "1"},
            )
        return APIError(503, f"No deployment can serve '{alias}'.", code="upstream_unavailable")
    detail = last.message
    if last.status == 429:
        hint = str(max(1, int((last.retry_after or 1) + 0.999)))
        return APIError(
            429,
            f"Every deployment of '{alias}' is rate limited upstream ({detail}); retry later.",
            code="upstream_rate_limited",
            headers={"Retry-After": hint},
        )
    if last.timeout:
        return APIError(
            504, f"The upstream for '{alias}' timed out after retries.", code="upstream_timeout"
        )
    if last.action == NEXT:
        return APIError(
            502,
            f"The upstream for '{alias}' refused the proxy's credentials or model ({detail}); "
            f"an operator must fix the deployment.",
            code="upstream_misconfigured",
        )
    return APIError(
        502, f"The upstream for '{alias}' failed after retries: {detail}", code="upstream_error"
    )


def usage_of(obj: Any) -> tuple[int, int] | None:
    usage = obj.get("usage") if isinstance(obj, dict) else None
    if not isinstance(usage, dict):
        return None
    tin = usage.get("prompt_tokens")
    tout = usage.get("completion_tokens", 0)
    if not isinstance(tin, int) or not isinstance(tout, int):
        return None
    return tin, tout
