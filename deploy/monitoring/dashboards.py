"""The platform's Grafana dashboards, as code (grafana-foundation-sdk).

``python deploy/monitoring/dashboards.py`` writes one JSON file per dashboard into
``deploy/helm/llmops/dashboards/``; the chart ships each as a ConfigMap labelled
``grafana_dashboard: "1"`` for Grafana's sidecar. tests/deploy/test_dashboards.py regenerates
them and fails on any diff, and tests/deploy/test_monitoring_live.py runs every panel's query
against a real Prometheus scraping the real services.

Every query selects ``namespace="$namespace"`` and the ``component`` label the chart's
ServiceMonitor sets, so a dashboard shows one release.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from grafana_foundation_sdk.builders import dashboard as gd
from grafana_foundation_sdk.builders import prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import (
    DataSourceRef,
    DynamicConfigValue,
    VariableRefresh,
)

OUT = Path(__file__).resolve().parents[2] / "deploy" / "helm" / "llmops" / "dashboards"
DS = DataSourceRef(type_val="prometheus", uid="${datasource}")
NS = 'namespace="$namespace"'
R = "$__rate_interval"


@dataclass
class P:
    """One panel: its queries (expr, legend), unit, and what it answers (the description)."""

    title: str
    description: str
    queries: list[tuple[str, str]]
    unit: str = "short"
    kind: str = "timeseries"
    width: int = 12
    # Series whose legend matches a regexp are drawn in that colour: bad outcomes stand out.
    highlight: dict[str, str] = field(default_factory=dict)


@dataclass
class Board:
    uid: str
    title: str
    description: str
    rows: list[tuple[str, list[P]]]
    variables: list[str] = field(default_factory=list)  # beyond datasource and namespace


def q(metric: str, extra: str = "") -> str:
    """A selector of this release's series (``extra``: more matchers)."""
    return f"{metric}{{{NS}{',' + extra if extra else ''}}}"


def p(quantile: float, metric: str, extra: str = "", by: str = "") -> str:
    labels = f"le{', ' + by if by else ''}"
    return (
        f"histogram_quantile({quantile}, sum by ({labels}) "
        f"(rate({q(metric + '_bucket', extra)}[{R}])))"
    )


def increase(metric: str, window: str, by: str, extra: str = "") -> str:
    return f"sum by ({by}) (increase({q(metric, extra)}[{window}]))"


def rate(metric: str, extra: str = "", by: str = "") -> str:
    grouping = f" by ({by})" if by else ""
    return f"sum{grouping} (rate({q(metric, extra)}[{R}]))"


SVC = 'component=~"$component"'
THUMBS = 'kind="thumbs"'
UP = 'kind="thumbs",value="up"'

OVERVIEW = Board(
    "llmops-overview",
    "llmops / Overview",
    "RED per service (rate, errors, latency), readiness, pods and saturation.",
    [
        (
            "Traffic and errors",
            [
                P(
                    "Requests per second",
                    "Every HTTP request a service answered, by service.",
                    [(rate("llmops_http_requests_total", SVC, "component"), "{{component}}")],
                    "reqps",
                ),
                P(
                    "Errors (5xx) per second",
                    "Server errors by service and status: the user-facing APIs' SLOs count these.",
                    [
                        (
                            rate(
                                "llmops_http_requests_total",
                                SVC + ',status=~"5.."',
                                "component, status",
                            ),
                            "{{component}} {{status}}",
                        )
                    ],
                    "reqps",
                ),
                P(
                    "Client errors (4xx) per second",
                    "Refused requests (bad input, auth, limits): "
                    "not the platform's fault, but a change here is often a client's broken "
                    "deploy.",
                    [
                        (
                            rate(
                                "llmops_http_requests_total",
                                SVC + ',status=~"4.."',
                                "component, status",
                            ),
                            "{{component}} {{status}}",
                        )
                    ],
                    "reqps",
                ),
            ],
        ),
        (
            "Latency",
            [
                P(
                    f"p{int(x * 100)} latency",
                    f"{int(x * 100)}th percentile of request duration, by "
                    "service (the health probes and /metrics excluded).",
                    [
                        (
                            p(
                                x,
                                "llmops_http_request_duration_seconds",
                                SVC + ',route!~"/healthz|/readyz|/metrics"',
                                "component",
                            ),
                            "{{component}}",
                        )
                    ],
                    "s",
                    width=8,
                )
                for x in (0.5, 0.95, 0.99)
            ],
        ),
        (
            "Readiness and saturation",
            [
                P(
                    "Ready pods",
                    "Pods whose /readyz last answered ready, by service; a dip with "
                    "pods still up is a dependency or a model not ready.",
                    [(f"sum by (component) ({q('llmops_ready', SVC)})", "{{component}}")],
                    width=8,
                ),
                P(
                    "Scraped pods up",
                    "Targets Prometheus can scrape, by service.",
                    [(f"sum by (component) ({q('up', SVC)})", "{{component}}")],
                    width=8,
                ),
                P(
                    "Requests in flight",
                    "Requests being served now, by service: the HPAs' Pods metric.",
                    [
                        (
                            f"sum by (component) ({q('llmops_http_requests_in_flight', SVC)})",
                            "{{component}}",
                        )
                    ],
                    width=8,
                ),
            ],
        ),
    ],
    ["component"],
)

ALIAS = 'alias=~"$alias"'
PROXY = Board(
    "llmops-llm-proxy",
    "llmops / LLM proxy",
    "The gateway: requests by alias, deployment and status, added latency, upstream latency and "
    "TTFT, tokens, cost, retries, fallbacks, circuits, limits, Redis, config reloads, and the "
    "gateway features: guardrails, response cache, structured outputs, query routing.",
    [
        (
            "Requests",
            [
                P(
                    "Requests by alias and status",
                    "Proxied requests per second.",
                    [
                        (
                            rate("llmops_llm_requests_total", ALIAS, "alias, status"),
                            "{{alias}} {{status}}",
                        )
                    ],
                    "reqps",
                ),
                P(
                    "Requests by deployment",
                    "Which deployment answered ('none': none could; 'cache': the response "
                    "cache, no upstream called).",
                    [(rate("llmops_llm_requests_total", ALIAS, "deployment"), "{{deployment}}")],
                    "reqps",
                ),
            ],
        ),
        (
            "Latency",
            [
                P(
                    "Added latency (p50, p99)",
                    "The proxy's own time per request: total minus "
                    "upstream. What the proxy costs you.",
                    [
                        (p(0.5, "llmops_llm_overhead_seconds"), "p50"),
                        (p(0.99, "llmops_llm_overhead_seconds"), "p99"),
                    ],
                    "s",
                    width=8,
                ),
                P(
                    "Upstream latency p95",
                    "Seconds per upstream attempt, by deployment.",
                    [(p(0.95, "llmops_llm_upstream_seconds", by="deployment"), "{{deployment}}")],
                    "s",
                    width=8,
                ),
                P(
                    "Time to first token p95",
                    "Streaming requests: seconds to the first chunk.",
                    [
                        (
                            p(0.95, "llmops_llm_time_to_first_token_seconds", ALIAS, "alias"),
                            "{{alias}}",
                        )
                    ],
                    "s",
                    width=8,
                ),
            ],
        ),
        (
            "Tokens and cost",
            [
                P(
                    "Tokens per second",
                    "Input and output tokens by alias.",
                    [(rate("llmops_llm_tokens_total", ALIAS, "alias, type"), "{{alias}} {{type}}")],
                    width=8,
                ),
                P(
                    "Cost per hour by alias",
                    "USD per hour at the configured prices.",
                    [(f"3600 * {rate('llmops_llm_cost_usd_total', ALIAS, 'alias')}", "{{alias}}")],
                    "currencyUSD",
                    width=8,
                ),
                P(
                    "Cost per hour by key",
                    "USD per hour by virtual key id.",
                    [(f"3600 * {rate('llmops_llm_key_spend_usd_total', by='key')}", "{{key}}")],
                    "currencyUSD",
                    width=8,
                ),
                P(
                    "Budget used by key",
                    "Share of max_budget_usd spent (keys with a budget); the "
                    "LlmProxyKeyBudgetNearlySpent alert is at 90 %.",
                    [(f"max by (key) ({q('llmops_llm_key_budget_used_ratio')})", "{{key}}")],
                    "percentunit",
                ),
            ],
        ),
        (
            "Resilience",
            [
                P(
                    "Retries by deployment and reason",
                    "Attempts repeated on the same deployment.",
                    [
                        (
                            rate("llmops_llm_retries_total", by="deployment, reason"),
                            "{{deployment}} {{reason}}",
                        )
                    ],
                    "reqps",
                    width=8,
                ),
                P(
                    "Fallbacks",
                    "Requests that moved on to another deployment.",
                    [
                        (
                            rate(
                                "llmops_llm_fallbacks_total",
                                ALIAS,
                                "from_deployment, to_deployment",
                            ),
                            "{{from_deployment}} → {{to_deployment}}",
                        )
                    ],
                    "reqps",
                    width=8,
                ),
                P(
                    "Circuit state",
                    "Per deployment: 0 closed, 1 open, 2 half-open.",
                    [(f"max by (deployment) ({q('llmops_llm_circuit_state')})", "{{deployment}}")],
                    width=8,
                ),
                P(
                    "Rate limited",
                    "Requests refused by a limit, by reason (limiter_unavailable: "
                    "Redis down and failing closed).",
                    [(rate("llmops_llm_rate_limited_total", by="reason"), "{{reason}}")],
                    "reqps",
                    width=8,
                ),
                P(
                    "Redis errors",
                    "Failed calls to Redis (limits and budgets).",
                    [(rate("llmops_llm_redis_errors_total"), "errors/s")],
                    "reqps",
                    width=8,
                ),
                P(
                    "Routing config reloads",
                    "Reloads of the routing file by result (rejected: the previous routing stays).",
                    [
                        (
                            increase("llmops_llm_config_reloads_total", "1h", "result"),
                            "{{result}}",
                        )
                    ],
                    width=8,
                ),
            ],
        ),
        (
            "Gateway features",
            [
                P(
                    "Guardrail actions by rail and action",
                    "Rails that acted per second (request and answer stages together). A "
                    "jump in block is a client sending what it should not, or a rail too "
                    "strict: check the 400 guardrail_blocked answers' messages before "
                    "loosening it; redact and flag only record.",
                    [
                        (
                            rate("llmops_llm_guardrail_actions_total", by="rail, action"),
                            "{{rail}} {{action}}",
                        )
                    ],
                    "reqps",
                    width=8,
                ),
                P(
                    "Cache hit ratio by alias",
                    "Exact and semantic hits over lookups (bypassed requests, not "
                    "deterministic or Cache-Control, left out). A drop after a deploy or "
                    "routing edit is expected (the rails in force are part of the key); "
                    "one that stays: check llmops_llm_redis_errors_total and that clients "
                    "still send temperature 0 or a seed.",
                    [
                        (
                            rate(
                                "llmops_llm_cache_requests_total",
                                ALIAS + ',result=~"hit|semantic_hit"',
                                "alias",
                            )
                            + " / "
                            + rate(
                                "llmops_llm_cache_requests_total",
                                ALIAS + ',result!="bypass"',
                                "alias",
                            ),
                            "{{alias}}",
                        )
                    ],
                    "percentunit",
                    width=8,
                ),
                P(
                    "Cache lookups by result",
                    "Lookups per second by alias and result. Mostly bypass: clients send "
                    "sampled requests the cache never serves. A semantic_hit share that grows "
                    "may be false hits: raise the alias' semantic threshold.",
                    [
                        (
                            rate("llmops_llm_cache_requests_total", ALIAS, "alias, result"),
                            "{{alias}} {{result}}",
                        )
                    ],
                    "reqps",
                    width=8,
                ),
                P(
                    "Structured outputs by result",
                    "Answers checked against response_format or tool schemas: valid, "
                    "violation (each invalid answer, sent back with the errors), repaired, "
                    "failed (the client got a 502). Violations and failures are highlighted: "
                    "when failures grow, move the alias to a deployment with constrained "
                    "decoding or raise structured_output.max_repairs.",
                    [
                        (
                            rate("llmops_llm_structured_output_total", ALIAS, "alias, result"),
                            "{{alias}} {{result}}",
                        )
                    ],
                    "reqps",
                    highlight={"violation$": "orange", "failed$": "red"},
                ),
                P(
                    "Route decisions by alias and route",
                    "Requests per second each routing alias handed to each route. One route "
                    "taking everything (or nothing) after a routing edit: check the "
                    "x-llmops-route-score header and the thresholds; semantic routes fall "
                    "back to default while their embeddings alias fails.",
                    [
                        (
                            rate("llmops_llm_route_decisions_total", ALIAS, "alias, route"),
                            "{{alias}} {{route}}",
                        )
                    ],
                    "reqps",
                ),
            ],
        ),
    ],
    ["alias"],
)

EMBEDDINGS = Board(
    "llmops-embeddings",
    "llmops / Embeddings",
    "The embeddings service's dynamic batching: queue, batch sizes, padding, inference, "
    "throughput and rejections.",
    [
        (
            "Batching",
            [
                P(
                    "Queue depth",
                    "Texts waiting for or in inference (the HPA's Pods metric).",
                    [(f"sum by (pod) ({q('llmops_embeddings_queue_depth')})", "{{pod}}")],
                    width=8,
                ),
                P(
                    "Batch size p50 / p95",
                    "Texts per forward pass.",
                    [
                        (p(0.5, "llmops_embeddings_batch_size"), "p50"),
                        (p(0.95, "llmops_embeddings_batch_size"), "p95"),
                    ],
                    width=8,
                ),
                P(
                    "Padded tokens p95",
                    "Padded tokens per forward pass: long texts batched with "
                    "short ones waste compute.",
                    [(p(0.95, "llmops_embeddings_batch_padded_tokens"), "p95")],
                    width=8,
                ),
            ],
        ),
        (
            "Throughput",
            [
                P(
                    "Inference p95",
                    "Seconds per forward pass.",
                    [(p(0.95, "llmops_embeddings_inference_seconds"), "p95")],
                    "s",
                    width=8,
                ),
                P(
                    "Texts and tokens per second",
                    "What the service embeds.",
                    [
                        (rate("llmops_embeddings_texts_total"), "texts/s"),
                        (rate("llmops_embeddings_tokens_total"), "tokens/s"),
                    ],
                    width=8,
                ),
                P(
                    "Rejections (429)",
                    "Requests refused because the queue was full.",
                    [(rate("llmops_embeddings_queue_rejections_total"), "rejections/s")],
                    "reqps",
                    width=8,
                ),
            ],
        ),
    ],
)

RETRIEVAL = Board(
    "llmops-retrieval",
    "llmops / Retrieval",
    "Ingest and search over Qdrant: latency, documents and chunks, empty searches, Qdrant "
    "errors and retries.",
    [
        (
            "Search",
            [
                P(
                    "Search latency p50 / p95",
                    "Seconds per search (embedding the query included).",
                    [
                        (p(0.5, "llmops_retrieval_search_seconds"), "p50"),
                        (p(0.95, "llmops_retrieval_search_seconds"), "p95"),
                    ],
                    "s",
                    width=8,
                ),
                P(
                    "Empty searches",
                    "Searches that found nothing: a missing collection or a "
                    "score threshold too high.",
                    [(rate("llmops_retrieval_search_empty_total"), "empty/s")],
                    "reqps",
                    width=8,
                ),
                P(
                    "Results per search p50",
                    "Chunks returned per search.",
                    [(p(0.5, "llmops_retrieval_search_results"), "p50")],
                    width=8,
                ),
            ],
        ),
        (
            "Ingest and Qdrant",
            [
                P(
                    "Ingest latency p95",
                    "Seconds per ingest request (load, chunk, embed, upsert).",
                    [(p(0.95, "llmops_retrieval_ingest_seconds"), "p95")],
                    "s",
                    width=8,
                ),
                P(
                    "Documents and chunks ingested",
                    "By the document's outcome.",
                    [
                        (
                            increase("llmops_retrieval_documents_total", "1h", "outcome"),
                            "documents {{outcome}}",
                        ),
                        (
                            increase("llmops_retrieval_chunks_total", "1h", "outcome"),
                            "chunks {{outcome}}",
                        ),
                    ],
                    width=8,
                ),
                P(
                    "Qdrant errors and retries",
                    "Qdrant calls that failed or were retried, by operation.",
                    [
                        (
                            rate("llmops_retrieval_qdrant_errors_total", by="operation"),
                            "errors {{operation}}",
                        ),
                        (
                            rate("llmops_retrieval_qdrant_retries_total", by="operation"),
                            "retries {{operation}}",
                        ),
                    ],
                    "reqps",
                    width=8,
                ),
            ],
        ),
    ],
)

RAG = Board(
    "llmops-rag",
    "llmops / RAG",
    "The client-facing ask API: stage timings, degraded answers, citations, the outbox to "
    "feedback, and the prompt version serving.",
    [
        (
            "Stages",
            [
                P(
                    "Stage p95",
                    "Seconds per stage of an ask: retrieval, prompt, llm, total.",
                    [(p(0.95, "llmops_rag_stage_seconds", by="stage"), "{{stage}}")],
                    "s",
                ),
                P(
                    "Asks by outcome",
                    "Asks answered, by outcome and streaming.",
                    [
                        (
                            rate("llmops_rag_asks_total", by="outcome, stream"),
                            "{{outcome}} stream={{stream}}",
                        )
                    ],
                    "reqps",
                ),
            ],
        ),
        (
            "Quality of answers",
            [
                P(
                    "Degraded answers by reason",
                    "Asks answered without the registry's prompt or without context.",
                    [(rate("llmops_rag_degraded_total", by="reason"), "{{reason}}")],
                    "reqps",
                    width=8,
                ),
                P(
                    "Citations valid / invalid",
                    "Citation markers in answers; invalid ones name no retrieved chunk.",
                    [(rate("llmops_rag_citations_total", by="kind"), "{{kind}}")],
                    width=8,
                ),
                P(
                    "Prompt version serving",
                    "Interactions recorded per prompt version and model alias.",
                    [
                        (
                            rate("llmops_feedback_interactions_total", by="prompt_version, model"),
                            "v{{prompt_version}} {{model}}",
                        )
                    ],
                    "reqps",
                    width=8,
                ),
            ],
        ),
        (
            "Outbox to feedback",
            [
                P(
                    "Outbox depth",
                    "Interactions not yet handed to the feedback service.",
                    [(f"sum by (pod) ({q('llmops_rag_outbox_depth')})", "{{pod}}")],
                    width=8,
                ),
                P(
                    "Outbox sent and failures",
                    "Recorded by feedback, and problems by reason.",
                    [
                        (rate("llmops_rag_outbox_sent_total"), "sent"),
                        (rate("llmops_rag_outbox_failures_total", by="reason"), "{{reason}}"),
                    ],
                    "reqps",
                    width=8,
                ),
                P(
                    "Outbox dead letters",
                    "Interactions refused for good, kept on the volume.",
                    [(f"max by (pod) ({q('llmops_rag_outbox_dead_letter_entries')})", "{{pod}}")],
                    width=8,
                ),
            ],
        ),
    ],
)

FEEDBACK = Board(
    "llmops-feedback",
    "llmops / Feedback and quality",
    "Interactions and feedback, the positive rate by prompt version and model (the product's "
    "own signal), and the durability path: write mode, spool, drain lag, dead letters.",
    [
        (
            "Signal",
            [
                P(
                    "Interactions per second",
                    "By model alias and prompt version.",
                    [
                        (
                            rate("llmops_feedback_interactions_total", by="model, prompt_version"),
                            "{{model}} v{{prompt_version}}",
                        )
                    ],
                    "reqps",
                    width=8,
                ),
                P(
                    "Feedback by kind",
                    "Feedback recorded per second, by kind.",
                    [(rate("llmops_feedback_total", by="kind"), "{{kind}}")],
                    "reqps",
                    width=8,
                ),
                P(
                    "Positive rate by prompt version and model",
                    "Thumbs up over all thumbs, over "
                    "the last day: compare prompt versions here before and after a promotion.",
                    [
                        (
                            increase("llmops_feedback_total", "1d", "prompt_version, model", UP)
                            + " / "
                            + increase(
                                "llmops_feedback_total", "1d", "prompt_version, model", THUMBS
                            ),
                            "v{{prompt_version}} {{model}}",
                        )
                    ],
                    "percentunit",
                    width=8,
                ),
            ],
        ),
        (
            "Durability",
            [
                P(
                    "Write mode",
                    "1 for the current mode: direct, spooling (database unreachable), draining.",
                    [(f"max by (mode) ({q('llmops_feedback_write_mode')})", "{{mode}}")],
                    width=8,
                ),
                P(
                    "Spool depth and drain lag",
                    "Writes waiting in the spool, and the age of the oldest.",
                    [
                        (f"sum({q('llmops_feedback_spool_depth')})", "depth"),
                        (f"max({q('llmops_feedback_drain_lag_seconds')})", "lag (s)"),
                    ],
                    width=8,
                ),
                P(
                    "Dead letters",
                    "Spooled writes the database refused at drain time (kept).",
                    [(f"max by (pod) ({q('llmops_feedback_dead_letter_entries')})", "{{pod}}")],
                    width=8,
                ),
                P(
                    "Langfuse scores",
                    "Scores forwarded to Langfuse, and failures by reason.",
                    [
                        (rate("llmops_feedback_langfuse_forwarded_total"), "sent"),
                        (
                            rate("llmops_feedback_langfuse_forward_failures_total", by="reason"),
                            "{{reason}}",
                        ),
                    ],
                    "reqps",
                ),
                P(
                    "Group commit size p95",
                    "Writes per database transaction.",
                    [(p(0.95, "llmops_feedback_commit_batch_size"), "p95")],
                ),
            ],
        ),
    ],
)

SLO_NAMES = {"ask-availability": "Ask availability", "chat-availability": "Chat availability",
             "ask-latency": "Ask latency"}  # fmt: skip
SLOS = Board(
    "llmops-slos",
    "llmops / SLOs",
    "The user-facing APIs' SLIs (from the chart's recording rules) and the error budget left "
    "over the SLO period.",
    [
        (
            title,
            [
                P(
                    "Error budget left",
                    f"{title}: share of the period's error budget not spent "
                    "(below 0: the SLO is missed).",
                    [(f'llmops:slo_error_budget_remaining:ratio{{{NS},slo="{slo}"}}', "left")],
                    "percentunit",
                    "stat",
                    6,
                ),
                P(
                    "Objective",
                    "The SLO target from the chart's values.",
                    [(f'llmops:slo_objective:ratio{{{NS},slo="{slo}"}}', "target")],
                    "percentunit",
                    "stat",
                    6,
                ),
                P(
                    "Bad events ratio, 5m and 1h",
                    "What the burn-rate alerts read; the page fires "
                    "when both exceed 14.4 x the budget.",
                    [
                        (f'llmops:slo_errors_per_request:ratio_rate5m{{{NS},slo="{slo}"}}', "5m"),
                        (f'llmops:slo_errors_per_request:ratio_rate1h{{{NS},slo="{slo}"}}', "1h"),
                    ],
                    "percentunit",
                ),
            ],
        )
        for slo, title in SLO_NAMES.items()
    ],
)

BOARDS = [OVERVIEW, PROXY, EMBEDDINGS, RETRIEVAL, RAG, FEEDBACK, SLOS]


def _variable(name: str) -> gd.QueryVariable:
    source = {
        "namespace": "label_values(llmops_http_requests_total, namespace)",
        "component": 'label_values(llmops_http_requests_total{namespace="$namespace"}, component)',
        # Routing aliases answer no request themselves: only their decisions name them.
        "alias": 'label_values({__name__=~"llmops_llm_requests_total|'
        'llmops_llm_route_decisions_total",namespace="$namespace"}, alias)',
    }[name]
    v = (
        gd.QueryVariable(name)
        .label(name)
        .datasource(DS)
        .query({"query": source, "refId": name})
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(1)  # type: ignore[arg-type]
    )
    if name != "namespace":
        v = v.multi(True).include_all(True).all_value(".*")
    return v


def _panel(spec: P) -> timeseries.Panel | stat.Panel:
    panel = timeseries.Panel() if spec.kind == "timeseries" else stat.Panel()
    panel = panel.title(spec.title).description(spec.description).unit(spec.unit)
    panel = panel.datasource(DS).height(8).span(spec.width)
    for i, (expr, legend) in enumerate(spec.queries):
        target = prometheus.Dataquery().expr(expr).legend_format(legend).ref_id("ABCDEFGH"[i])
        panel = panel.with_target(target)
    for pattern, colour in spec.highlight.items():
        fixed = {"mode": "fixed", "fixedColor": colour}
        panel = panel.override_by_regexp(pattern, [DynamicConfigValue(id_val="color", value=fixed)])
    return panel


def build(board: Board) -> dict[str, object]:
    d = (
        gd.Dashboard(board.title)
        .uid(board.uid)
        .description(board.description)
        .tags(["llmops"])
        .refresh("30s")
        .time("now-6h", "now")
        .timezone("browser")
        .editable()
        .with_variable(gd.DatasourceVariable("datasource").label("Prometheus").type("prometheus"))
        .with_variable(_variable("namespace"))
    )
    for name in board.variables:
        d = d.with_variable(_variable(name))
    for title, panels in board.rows:
        d = d.with_row(gd.Row(title))
        for spec in panels:
            d = d.with_panel(_panel(spec))
    out: dict[str, object] = json.loads(json.dumps(d.build(), cls=JSONEncoder))
    return out


def render(board: Board) -> str:
    return json.dumps(build(board), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main(out: Path = OUT) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.json"):
        old.unlink()
    for board in BOARDS:
        (out / f"{board.uid}.json").write_text(render(board), encoding="utf-8")
    print(f"wrote {len(BOARDS)} dashboards to {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT)
