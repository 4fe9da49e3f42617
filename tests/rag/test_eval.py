"""``llmops eval`` through the real pipeline, its statistics, and the promotion gate: a worse
candidate is refused, an equal one passes. The fake provider answers according to the prompt
version's text, so the two versions really answer differently; the expected figures below are
worked out by hand from the constructed dataset."""

from __future__ import annotations

import math
import uuid
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from services.rag.evaluation import METRICS, Question, clustered_mean, paired, score, summarize
from tests.cli.test_cli import run
from tests.conftest import API_KEY, ServiceProcess, clean_env
from tests.rag.platform import Platform

GOOD = "Damaged items can be returned within 30 days [1]."
BAD = "I am not sure."
QUESTIONS = [
    ("q1", "Can I return a damaged item?", "refunds", ["30 days"]),
    ("q2", "How long do I have to return damaged goods?", "refunds", ["30 days"]),
    ("q3", "Are digital goods refundable?", "refunds", ["not refundable"]),
    ("q4", "How fast is standard shipping?", "shipping", ["3 to 5"]),
    ("q5", "When does express shipping arrive?", "shipping", ["next business day"]),
    ("q6", "When is phone support open?", "support", ["9 to 17"]),
]


def test_clustered_mean_by_hand() -> None:
    # Differences -2/3, -2/3, -1/3 (cluster a), -1/3, -1/3 (b), -1/3 (c): mean -4/9; cluster
    # residual sums -1/3, 2/9, 1/9; V = 3/2 * (1/9 + 4/81 + 1/81) / 36; t(0.975, 2) = 4.302653.
    d = [-2 / 3, -2 / 3, -1 / 3, -1 / 3, -1 / 3, -1 / 3]
    e = clustered_mean(d, ["a", "a", "a", "b", "b", "c"])
    se = math.sqrt(1.5 * (1 / 9 + 4 / 81 + 1 / 81) / 36)
    assert e.mean == pytest.approx(-4 / 9)
    assert e.se == pytest.approx(se)
    assert e.ci_low == pytest.approx(-4 / 9 - 4.302653 * se, abs=1e-5)
    assert (e.n, e.clusters) == (6, 3)
    one = clustered_mean([1.0, 0.0, 1.0], ["x", "x", "x"])  # one cluster: the plain SE
    assert one.se == pytest.approx(math.sqrt((1 / 9 + 4 / 9 + 1 / 9) / 2 / 3))
    same = paired(
        [
            {
                "id": "1",
                "source": "a",
                **dict.fromkeys(METRICS, 0.5),
            }
        ]
        * 2,
        [
            {
                "id": "1",
                "source": "a",
                **dict.fromkeys(METRICS, 0.5),
            }
        ]
        * 2,
    )
    assert same["score"].mean == 0 and same["score"].ci_low == 0


def test_score_counts_degenerate_answers_apart_from_the_score() -> None:
    q = Question("q", "How long?", ("handbook/refunds.md",), ("30 days",), "refunds")
    contexts = [{"document_id": "handbook/refunds.md"}]
    good = score(q, {"answer": GOOD, "contexts": contexts, "citations": [{"marker": "[1]"}]})
    assert good == {
        "hit": 1.0,
        "cited": 1.0,
        "citation_validity": 1.0,
        "fact_recall": 1.0,
        "score": 1.0,
        "degenerate": 0.0,
    }
    # Right fact, valid citations, but a run of markers: the score stays, the rate counts it.
    run_of_markers = "Within 30 days [1] [1] [1] [1]."
    bad = score(
        q, {"answer": run_of_markers, "contexts": contexts, "citations": [{"marker": "[1]"}] * 4}
    )
    assert bad["score"] == 1.0 and bad["degenerate"] == 1.0
    # No marker: nothing to check (left out of citation validity's mean), nothing cited
    # (validity 0 in the score); one wrong marker of two: validity 1/2, still cited.
    silent = score(q, {"answer": "30 days.", "contexts": contexts})
    assert silent["citation_validity"] is None and silent["cited"] == 0.0
    assert silent["score"] == pytest.approx(2 / 3)
    half = score(
        q, {"answer": GOOD, "contexts": contexts, "citations": [{}], "invalid_citations": [{}]}
    )
    assert half["citation_validity"] == 0.5 and half["cited"] == 1.0
    # The mean of citation validity is over the answers that have markers only.
    rows = [
        {"id": str(i), "source": s, **r}
        for i, (s, r) in enumerate([("a", good), ("a", silent), ("b", half)])
    ]
    summary = summarize(rows)
    assert summary["citation_validity"].mean == 0.75 and summary["citation_validity"].n == 2
    assert summary["cited"].mean == pytest.approx(2 / 3) and summary["cited"].n == 3
    assert paired(rows, rows)["citation_validity"].n == 2


@pytest.fixture
def rag_on_registry(
    platform: Platform, service_factory: Any, tmp_path: Path, mlflow_server: str
) -> tuple[ServiceProcess, str]:
    name = f"rag-eval-{uuid.uuid4().hex[:8]}"
    env = platform.rag_env(
        tmp_path,
        RAG_MLFLOW_TRACKING_URI=mlflow_server,
        RAG_PROMPT_NAME=name,
        RAG_PROMPT_TTL_S="0.5",
    )
    svc: ServiceProcess = service_factory("rag", **env).wait_ready(60)
    return svc, name


def test_eval_logs_to_mlflow_and_the_gate_refuses_worse_accepts_equal(
    rag_on_registry: tuple[ServiceProcess, str],
    platform: Platform,
    mlflow_server: str,
    tmp_path: Path,
) -> None:
    svc, name = rag_on_registry
    httpx.post(
        f"{platform.fake.url}/_script",
        json={
            "replies": [
                {"if_contains": "MARK-GOOD", "content": GOOD},
                {"if_contains": "MARK-BAD", "content": BAD},
            ]
        },
    ).raise_for_status()
    env = clean_env(
        MLFLOW_TRACKING_URI=mlflow_server,
        LLMOPS_API_KEY=API_KEY,
        LLMOPS_RAG_URL=svc.url,
        COLUMNS="200",
    )
    base = "Context:\n{{ context }}\n\nQuestion: {{ question }}\n"
    for n, mark in enumerate(("MARK-GOOD", "MARK-BAD", "MARK-GOOD again"), start=1):
        f = tmp_path / f"v{n}.txt"
        f.write_text(base + mark)
        pushed = run("prompts", "push", str(f), "--name", name, env=env)
        assert pushed.returncode == 0 and pushed.stdout.strip() == str(n), pushed.stderr
    first = run("prompts", "promote", name, "--version", "1", "--to", "production", env=env)
    assert first.returncode == 0, first.stderr  # nothing holds the alias yet: nothing to beat

    data = tmp_path / "dataset.jsonl"
    data.write_text(
        "".join(
            orjson.dumps(
                {
                    "id": qid,
                    "question": q,
                    "source": src,
                    "expected_documents": [f"handbook/{src}.md"],
                    "expected_facts": facts,
                }
            ).decode()
            + "\n"
            for qid, q, src, facts in QUESTIONS
        )
    )

    refused = run("prompts", "promote", name, "--version", "2", "--to", "production", env=env)
    assert refused.returncode == 1 and "no eval of version 2" in refused.stderr

    worse = run(
        "eval",
        "--dataset",
        str(data),
        "--prompt",
        f"{name}/2",
        "--against",
        f"{name}@production",
        "--fail-on-gate",
        env=env,
    )
    assert worse.returncode == 1, worse.stdout + worse.stderr
    assert "fails the gate" in worse.stdout
    # By hand: every question retrieves every chunk (hit 1 for both). Version 1 cites [1]
    # (validity 1) and states "30 days" (facts of q1, q2); version 2 does neither. Scores:
    # v1 = 1, 1, 2/3, 2/3, 2/3, 2/3; v2 = 1/3 each; differences -2/3, -2/3, -1/3 x 4.
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server)
    exp = client.get_experiment_by_name("llmops-eval")
    assert exp is not None
    (logged,) = client.search_runs(
        [exp.experiment_id],
        filter_string=(
            f"tags.`llmops.eval.prompt` = '{name}' and tags.`llmops.eval.candidate_version` = '2'"
        ),
    )
    m = logged.data.metrics
    se = math.sqrt(1.5 * (1 / 9 + 4 / 81 + 1 / 81) / 36)
    assert m["score"] == pytest.approx(1 / 3) and m["hit"] == 1.0
    assert m["degenerate"] == 0.0 and m["degenerate_ci_high"] == 0.0
    # Version 2 never cites: nothing to check, so citation validity is not logged; cited is 0.
    assert m["cited"] == 0.0 and "citation_validity" not in m
    assert m["score_diff"] == pytest.approx(-4 / 9)
    assert m["score_diff_ci_low"] == pytest.approx(-4 / 9 - 4.302653 * se, abs=1e-5)
    assert m["gate_passed"] == 0.0 and logged.data.tags["llmops.eval.gate"] == "failed"
    assert logged.data.tags["llmops.eval.against_version"] == "1"

    refused = run("prompts", "promote", name, "--version", "2", "--to", "production", env=env)
    assert refused.returncode == 1 and "refused" in refused.stderr
    assert "lower bound" in refused.stderr and "Traceback" not in refused.stderr

    equal = run(
        "eval",
        "--dataset",
        str(data),
        "--prompt",
        f"{name}/3",
        "--against",
        f"{name}@production",
        "--fail-on-gate",
        env=env,
    )
    assert equal.returncode == 0, equal.stdout + equal.stderr
    promoted = run("prompts", "promote", name, "--version", "3", "--to", "production", env=env)
    assert promoted.returncode == 0, promoted.stderr
    assert client.get_prompt_version_by_alias(name, "production").version == 3
    forced = run(
        "prompts",
        "promote",
        name,
        "--version",
        "2",
        "--to",
        "production",
        "--force",
        "--reason",
        "demo of an override",
        env=env,
    )
    assert forced.returncode == 0 and "overridden" in forced.stderr
    assert client.get_prompt_version(name, 2).tags["llmops.promote_reason"] == (
        "demo of an override"
    )
