"""The chart's PrometheusRule under Debian's promtool: it loads, and every alert fires on the
series that should fire it and stays silent on the ones that should not (burn-rate tiers
included). The series are what the services export (names and labels as in their metrics
code); tests/deploy/test_monitoring_live.py checks the same expressions on a real Prometheus
scraping the real services.
"""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.chart import NAMESPACE, prometheus_rules, promtool

NS = NAMESPACE


def sel(name: str, component: str, **labels: str) -> str:
    parts = {"namespace": NS, "component": component, "pod": f"{component}-0", **labels}
    return name + "{" + ",".join(f'{k}="{v}"' for k, v in parts.items()) + "}"


def pod(component: str, **labels: str) -> dict[str, str]:
    return {"namespace": NS, "component": component, "pod": f"{component}-0", **labels}


# alert -> (firing series, eval time, expected label sets), (silent series, eval time).
Case = tuple[list[dict[str, str]], str, list[dict[str, str]]]
SYMPTOMS: dict[str, tuple[Case, Case]] = {
    "LlmopsTargetDown": (
        (
            [{"series": sel("up", "rag"), "values": "0x10"}],
            "6m",
            [{**pod("rag"), "severity": "critical"}],
        ),
        ([{"series": sel("up", "rag"), "values": "1x10"}], "6m", []),
    ),
    "LlmopsModelNotReady": (
        (
            [{"series": sel("llmops_ready", "embeddings"), "values": "0x15"}],
            "11m",
            [{**pod("embeddings"), "severity": "critical"}],
        ),
        # Loaded after five minutes; and a service without a model is not this alert's.
        (
            [
                {"series": sel("llmops_ready", "embeddings"), "values": "0x5 1x10"},
                {"series": sel("llmops_ready", "rag"), "values": "0x15"},
            ],
            "11m",
            [],
        ),
    ),
    "LlmProxyAliasCircuitsOpen": (
        (
            [
                {
                    "series": sel(
                        "llmops_llm_alias_deployment", "llm-proxy", alias="chat", deployment=d
                    ),
                    "values": "1x5",
                }
                for d in ("a", "b")
            ]
            + [
                {
                    "series": sel("llmops_llm_circuit_state", "llm-proxy", deployment=d),
                    "values": "1x5",
                }
                for d in ("a", "b")
            ],
            "4m",
            [
                {
                    "namespace": NS,
                    "pod": "llm-proxy-0",
                    "alias": "chat",
                    "severity": "critical",
                    "component": "llm-proxy",
                }
            ],
        ),
        # One of the two is only half-open (2): the alias still has a way out.
        (
            [
                {
                    "series": sel(
                        "llmops_llm_alias_deployment", "llm-proxy", alias="chat", deployment=d
                    ),
                    "values": "1x5",
                }
                for d in ("a", "b")
            ]
            + [
                {
                    "series": sel("llmops_llm_circuit_state", "llm-proxy", deployment="a"),
                    "values": "1x5",
                },
                {
                    "series": sel("llmops_llm_circuit_state", "llm-proxy", deployment="b"),
                    "values": "2x5",
                },
            ],
            "4m",
            [],
        ),
    ),
    "LlmProxyLimiterUnavailable": (
        (
            [
                {
                    "series": sel(
                        "llmops_llm_rate_limited_total", "llm-proxy", reason="limiter_unavailable"
                    ),
                    "values": "0+10x10",
                }
            ],
            "5m",
            [{"namespace": NS, "severity": "critical", "component": "llm-proxy"}],
        ),
        # Budget refusals are the limiter working, not failing.
        (
            [
                {
                    "series": sel(
                        "llmops_llm_rate_limited_total", "llm-proxy", reason="limiter_unavailable"
                    ),
                    "values": "0x10",
                },
                {
                    "series": sel("llmops_llm_rate_limited_total", "llm-proxy", reason="budget"),
                    "values": "0+10x10",
                },
            ],
            "5m",
            [],
        ),
    ),
    "FeedbackSpooling": (
        (
            [
                {
                    "series": sel("llmops_feedback_write_mode", "feedback", mode="spooling"),
                    "values": "1x15",
                }
            ],
            "11m",
            [
                {
                    "namespace": NS,
                    "pod": "feedback-0",
                    "severity": "warning",
                    "component": "feedback",
                }
            ],
        ),
        (
            [
                {
                    "series": sel("llmops_feedback_write_mode", "feedback", mode="spooling"),
                    "values": "1x5 0x10",
                }
            ],
            "11m",
            [],
        ),
    ),
    "FeedbackDeadLettersGrowing": (
        (
            [
                {
                    "series": sel(
                        "llmops_feedback_dead_letter_entries", "feedback", path="/spool/d"
                    ),
                    "values": "0 0 0 1 2 3",
                }
            ],
            "5m",
            [
                {
                    "namespace": NS,
                    "pod": "feedback-0",
                    "severity": "warning",
                    "component": "feedback",
                }
            ],
        ),
        (
            [
                {
                    "series": sel(
                        "llmops_feedback_dead_letter_entries", "feedback", path="/spool/d"
                    ),
                    "values": "3x10",
                }
            ],
            "5m",
            [],
        ),
    ),
    "RagOutboxDeadLettersGrowing": (
        (
            [
                {
                    "series": sel("llmops_rag_outbox_dead_letter_entries", "rag", path="/outbox/d"),
                    "values": "0 0 0 1 2 3",
                }
            ],
            "5m",
            [{"namespace": NS, "pod": "rag-0", "severity": "warning", "component": "rag"}],
        ),
        (
            [
                {
                    "series": sel("llmops_rag_outbox_dead_letter_entries", "rag", path="/outbox/d"),
                    "values": "3x10",
                }
            ],
            "5m",
            [],
        ),
    ),
    "RagOutboxGrowing": (
        (
            [{"series": sel("llmops_rag_outbox_depth", "rag"), "values": "1+1x20"}],
            "20m",
            [{"namespace": NS, "pod": "rag-0", "severity": "warning", "component": "rag"}],
        ),
        # A busy outbox that keeps emptying is healthy.
        (
            [
                {
                    "series": sel("llmops_rag_outbox_depth", "rag"),
                    "values": "5 0 5 0 5 0 5 0 5 0 5 0 5 0 5 0 5 0 5 0 9",
                }
            ],
            "20m",
            [],
        ),
    ),
    "EmbeddingsQueueRejecting": (
        (
            [
                {
                    "series": sel("llmops_embeddings_queue_rejections_total", "embeddings"),
                    "values": "0+5x10",
                }
            ],
            "7m",
            [{"namespace": NS, "severity": "warning", "component": "embeddings"}],
        ),
        (
            [
                {
                    "series": sel("llmops_embeddings_queue_rejections_total", "embeddings"),
                    "values": "0x10",
                }
            ],
            "7m",
            [],
        ),
    ),
    "RagPromptRegistryStale": (
        (
            [
                {
                    "series": sel(
                        "llmops_rag_degraded_total", "rag", reason="prompt_registry_stale"
                    ),
                    "values": "0 0 1 2 3",
                }
            ],
            "4m",
            [
                {
                    "namespace": NS,
                    "reason": "prompt_registry_stale",
                    "severity": "warning",
                    "component": "rag",
                }
            ],
        ),
        (
            [
                {
                    "series": sel(
                        "llmops_rag_degraded_total", "rag", reason="retrieval_unavailable"
                    ),
                    "values": "0 0 1 2 3",
                }
            ],
            "4m",
            [],
        ),
    ),
    "LlmProxyConfigReloadRejected": (
        (
            [
                {
                    "series": sel(
                        "llmops_llm_config_reloads_total", "llm-proxy", result="rejected"
                    ),
                    "values": "0 0 1 1 1",
                }
            ],
            "3m",
            [
                {
                    "namespace": NS,
                    "pod": "llm-proxy-0",
                    "severity": "warning",
                    "component": "llm-proxy",
                }
            ],
        ),
        (
            [
                {
                    "series": sel("llmops_llm_config_reloads_total", "llm-proxy", result="ok"),
                    "values": "0 0 1 2 3",
                }
            ],
            "3m",
            [],
        ),
    ),
    "LlmProxyKeyBudgetNearlySpent": (
        (
            [
                {
                    "series": sel("llmops_llm_key_budget_used_ratio", "llm-proxy", key="k1"),
                    "values": "0.95x3",
                }
            ],
            "2m",
            [{"namespace": NS, "key": "k1", "severity": "warning", "component": "llm-proxy"}],
        ),
        (
            [
                {
                    "series": sel("llmops_llm_key_budget_used_ratio", "llm-proxy", key="k1"),
                    "values": "0.5x3",
                }
            ],
            "2m",
            [],
        ),
    ),
}

TIERS = [("critical", "1h", "5m"), ("critical", "6h", "30m"), ("warning", "1d", "2h"),
         ("warning", "3d", "6h")]  # fmt: skip


def http(component: str, route: str, status: str, per_min: float) -> dict[str, str]:
    return {
        "series": sel("llmops_http_requests_total", component, method="POST", route=route,
                      status=status),
        "values": f"0+{per_min}x300",
    }  # fmt: skip


def latency(le: str, per_min: float) -> dict[str, str]:
    name = "llmops_http_request_duration_seconds"
    labels = {"method": "POST", "route": "/v1/ask"}
    return {
        "series": sel(f"{name}_bucket", "rag", le=le, **labels)
        if le
        else sel(f"{name}_count", "rag", **labels),
        "values": f"0+{per_min}x300",
    }


# SLO -> (alert, component, series at an error ratio of: 10 %, 2 %, well within budget).
BURN: dict[str, tuple[str, str, list[list[dict[str, str]]]]] = {
    "ask-availability": (
        "RagAskAvailabilityBudgetBurn",
        "rag",
        [
            [http("rag", "/v1/ask", "200", 90), http("rag", "/v1/ask", "503", 10)],
            [http("rag", "/v1/ask", "200", 98), http("rag", "/v1/ask", "503", 2)],
            [
                http("rag", "/v1/ask", "200", 99.7),
                http("rag", "/v1/ask", "503", 0.3),
                http("rag", "/v1/ask", "422", 30),
            ],
        ],
    ),
    "chat-availability": (
        "LlmProxyChatAvailabilityBudgetBurn",
        "llm-proxy",
        [
            [
                http("llm-proxy", "/v1/chat/completions", "200", 90),
                http("llm-proxy", "/v1/chat/completions", "502", 10),
            ],
            [
                http("llm-proxy", "/v1/chat/completions", "200", 99.99),
                http("llm-proxy", "/v1/chat/completions", "502", 0.01),
            ],
            [
                http("llm-proxy", "/v1/chat/completions", "200", 100),
                http("llm-proxy", "/v1/chat/completions", "429", 50),
            ],
        ],
    ),
    "ask-latency": (
        "RagAskLatencyBudgetBurn",
        "rag",
        [
            [latency("10.0", 20), latency("", 100)],
            [latency("10.0", 90), latency("", 100)],
            [latency("10.0", 97), latency("", 100)],
        ],
    ),
}


def burn_labels(slo: str, component: str, tiers: list[tuple[str, str, str]]) -> list[Any]:
    return [
        {"namespace": NS, "slo": slo, "component": component, "severity": sev, "long": lw,
         "short": sw}
        for sev, lw, sw in tiers
    ]  # fmt: skip


def without_annotations(rules: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(rules)
    for group in out["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    return out


def run_promtool(tmp: Path, rules: dict[str, Any], tests: list[dict[str, Any]]) -> str:
    (tmp / "rules.yaml").write_text(yaml.safe_dump(rules, sort_keys=False))
    (tmp / "test.yaml").write_text(
        yaml.safe_dump(
            {"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": tests},
            sort_keys=False,
        )
    )
    r = subprocess.run(
        [promtool(), "test", "rules", "test.yaml"], cwd=tmp, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


@pytest.fixture(scope="module")
def rules() -> dict[str, Any]:
    return prometheus_rules()


def alert_names(rules: dict[str, Any]) -> set[str]:
    return {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}


def test_promtool_check_rules(rules: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(rules, sort_keys=False))
    r = subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    count = sum(len(g["rules"]) for g in rules["groups"])
    assert f"SUCCESS: {count} rules found" in r.stdout, r.stdout


def test_every_alert_has_labels_annotations_and_runbook(rules: dict[str, Any]) -> None:
    from tests.conftest import ROOT

    for group in rules["groups"]:
        for rule in group["rules"]:
            if "alert" not in rule:
                continue
            name = rule["alert"]
            assert rule["labels"]["severity"] in {"critical", "warning"}, name
            notes = rule["annotations"]
            assert notes["summary"] and notes["description"], name
            assert notes["runbook_url"].endswith(f"/docs/runbooks/{name}.md"), name
            runbook = ROOT / "docs" / "runbooks" / f"{name}.md"
            assert runbook.is_file(), f"{name}: no runbook at {runbook}"
            text = runbook.read_text(encoding="utf-8")
            for part in ("## Meaning", "## Confirm", "## Mitigate", "## Roll back"):
                assert part in text, f"{runbook.name} has no '{part}' section"


def test_every_alert_is_tested(rules: dict[str, Any]) -> None:
    tested = set(SYMPTOMS) | {alert for alert, _, _ in BURN.values()}
    assert alert_names(rules) == tested


def test_symptom_alerts_fire_and_stay_silent(rules: dict[str, Any], tmp_path: Path) -> None:
    tests = []
    for alert, cases in SYMPTOMS.items():
        for series, at, expected in cases:
            tests.append({
                "name": f"{alert} {'fires' if expected else 'silent'}",
                "interval": "1m",
                "input_series": series,
                "alert_rule_test": [{"eval_time": at, "alertname": alert,
                                     "exp_alerts": [{"exp_labels": e} for e in expected]}],
            })  # fmt: skip
    out = run_promtool(tmp_path, without_annotations(rules), tests)
    assert "SUCCESS" in out


def test_burn_rate_tiers(rules: dict[str, Any], tmp_path: Path) -> None:
    """10 % bad: all four tiers; 2 % (ask) or 0.01 % (chat): only what that burn rate crosses;
    within budget (client errors included): none. At 4 h every tier's `for` has passed."""
    crossed = {  # which tiers the middle case crosses, by SLO
        "ask-availability": TIERS[2:],  # 2 % > 3 x 0.5 % and > 1 x 0.5 %, < 6 x 0.5 %
        "chat-availability": [],  # 0.01 % < 1 x 0.1 %
        "ask-latency": TIERS[3:],  # 10 % slow > 1 x 5 %, < 3 x 5 %
    }
    tests = []
    for slo, (alert, component, cases) in BURN.items():
        for series, expected in zip(cases, [TIERS, crossed[slo], []], strict=True):
            tests.append({
                "name": f"{alert}: {len(expected)} tiers",
                "interval": "1m",
                "input_series": series,
                "alert_rule_test": [{
                    "eval_time": "4h", "alertname": alert,
                    "exp_alerts": [{"exp_labels": e}
                                   for e in burn_labels(slo, component, expected)],
                }],
            })  # fmt: skip
        # The fast page goes out within minutes of an outage, before the slower tiers.
        tests.append({
            "name": f"{alert}: the 1h/5m page first",
            "interval": "1m",
            "input_series": cases[0],
            "alert_rule_test": [{"eval_time": "10m", "alertname": alert,
                                 "exp_alerts": [{"exp_labels": e}
                                                for e in burn_labels(slo, component,
                                                                     TIERS[:1])]}],
        })  # fmt: skip
    out = run_promtool(tmp_path, without_annotations(rules), tests)
    assert "SUCCESS" in out


def test_annotations_render(rules: dict[str, Any], tmp_path: Path) -> None:
    """What a pager shows: the templates render with the alert's values."""
    base = "https://github.com/llmops-platform/llmops-platform/blob/main/docs/runbooks"
    tests = [
        {
            "interval": "1m",
            "input_series": SYMPTOMS["LlmProxyKeyBudgetNearlySpent"][0][0],
            "alert_rule_test": [{
                "eval_time": "2m", "alertname": "LlmProxyKeyBudgetNearlySpent",
                "exp_alerts": [{
                    "exp_labels": SYMPTOMS["LlmProxyKeyBudgetNearlySpent"][0][2][0],
                    "exp_annotations": {
                        "summary": "virtual key k1 has spent 95% of its budget",
                        "description": "At its budget the proxy answers 429 budget_exceeded for "
                        "this key; give its owner a new key with a larger budget "
                        "(llmops keys create), "
                        "then revoke this one.",
                        "runbook_url": f"{base}/LlmProxyKeyBudgetNearlySpent.md",
                    },
                }],
            }],
        },
    ]  # fmt: skip
    run_promtool(tmp_path, rules, tests)


def test_standalone_rule_file_is_the_charts(tmp_path: Path) -> None:
    """deploy/monitoring/rules.yaml (for `llmops up --monitoring`) is the chart's, regenerated."""
    from tests.conftest import ROOT

    committed = ROOT / "deploy" / "monitoring" / "rules.yaml"
    fresh = tmp_path / "rules.yaml"
    r = subprocess.run(
        [sys.executable,
         str(ROOT / "deploy" / "monitoring" / "rules.py"), str(fresh)],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert fresh.read_text() == committed.read_text(), (
        "run `python deploy/monitoring/rules.py` and commit deploy/monitoring/rules.yaml"
    )
