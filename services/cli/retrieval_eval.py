"""``llmops eval retrieval``: a collection and search mode on a question set, scored BEIR-style
(services/retrieval/evaluation.py), printed with clustered 95% intervals per question type, and
logged to MLflow; with ``--against-*``, the paired difference between two configurations."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from services.cli.client import error_message, retrieval_client
from services.cli.evaluate import read_questions
from services.cli.prompts import CLIError
from services.common.stats import Estimate
from services.retrieval.evaluation import (
    DEPTH,
    EXPERIMENT,
    METRICS,
    TAG,
    Question,
    by_type,
    paired,
    score,
    summarize,
)

if TYPE_CHECKING:
    from mlflow import MlflowClient

out = Console()
err = Console(stderr=True)


@dataclass(frozen=True)
class Config:
    collection: str
    mode: str | None  # None: the collection's own search_mode

    def label(self) -> str:
        return f"{self.collection}/{self.mode or 'default'}"


def load_questions(path: Path) -> list[Question]:
    questions = read_questions(path, Question.parse)
    ids = [q.id for q in questions]
    if len(set(ids)) != len(ids):
        raise CLIError(f"{path}: question ids repeat", 2)
    return questions


def _search(client: httpx.Client, q: Question, config: Config) -> dict[str, Any]:
    body: dict[str, Any] = {"query": q.question, "top_k": DEPTH}
    if config.mode:
        body["mode"] = config.mode
    for attempt in range(3):
        r = client.post(f"/v1/collections/{config.collection}/search", json=body)
        if r.status_code == 200:
            data: dict[str, Any] = r.json()
            return data
        if r.status_code in (429, 502, 503, 504) and attempt < 2:
            time.sleep(1 + attempt)
            continue
        raise CLIError(
            f"search of {config.label()} failed on {q.id} with {r.status_code}: {error_message(r)}"
        )
    raise AssertionError("unreachable")


def _run(
    client: httpx.Client, questions: list[Question], configs: list[Config]
) -> tuple[list[list[dict[str, Any]]], list[str]]:
    rows: list[list[dict[str, Any]]] = [[] for _ in configs]
    modes = ["" for _ in configs]
    with Progress(
        TextColumn("[bold]retrieval eval"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
    ) as progress:
        task = progress.add_task("eval", total=len(questions) * len(configs))
        for q in questions:
            for i, config in enumerate(configs):  # alternate, so drift hits both alike
                data = _search(client, q, config)
                modes[i] = str(data.get("mode") or config.mode or "")
                results = data["results"]
                rows[i].append(
                    {
                        "id": q.id,
                        "type": q.type,
                        "source": q.source,
                        "question": q.question,
                        "config": config.label(),
                        "took_ms": float(data.get("took_ms") or 0.0),
                        "top": [r.get("doc_id") for r in results[:3]],
                        **score(q, results),
                    }
                )
                progress.advance(task)
    return rows, modes


def _table(title: str, estimates: dict[str, Estimate], signed: bool = False) -> Table:
    t = Table(title=title)
    for col in ("metric", "mean", "95% CI", "SE (clustered)"):
        t.add_column(col)
    for m in METRICS:
        e = estimates[m]
        mean = f"{e.mean:+.3f}" if signed else f"{e.mean:.3f}"
        t.add_row(m, mean, f"{e.ci_low:+.3f} .. {e.ci_high:+.3f}", f"{e.se:.3f}")
    return t


def _types_table(title: str, kinds: dict[str, dict[str, Estimate]]) -> Table:
    t = Table(title=title)
    t.add_column("type")
    t.add_column("n")
    for m in ("hit@5", "mrr", "ndcg@10"):
        t.add_column(m)
    for kind, est in kinds.items():
        cells = [
            f"{est[m].mean:.3f} ({est[m].ci_low:.2f}..{est[m].ci_high:.2f})"
            for m in ("hit@5", "mrr", "ndcg@10")
        ]
        t.add_row(kind, str(est["mrr"].n), *cells)
    return t


def metric_key(name: str) -> str:
    """MLflow metric names take no '@'."""
    return name.replace("@", "_at_")


def _estimates(prefix: str, est: dict[str, Estimate]) -> dict[str, float]:
    out: dict[str, float] = {}
    for m, e in est.items():
        k = prefix + metric_key(m)
        out.update({k: e.mean, f"{k}_ci_low": e.ci_low, f"{k}_ci_high": e.ci_high})
    return out


def run_retrieval_eval(
    client: MlflowClient,
    *,
    dataset: Path,
    collection: str,
    mode: str | None,
    against_collection: str | None,
    against_mode: str | None,
    url: str | None,
) -> dict[str, Any]:
    """Run, print, log to MLflow; returns what was logged (for the docs' figures and tests)."""
    import mlflow

    questions = load_questions(dataset)
    configs = [Config(collection, mode)]
    if against_collection or against_mode:
        configs.append(Config(against_collection or collection, against_mode or mode))
        if configs[1] == configs[0]:
            raise CLIError("the baseline is the candidate: change --against-collection/-mode", 2)
    with retrieval_client(url) as http:
        rows, modes = _run(http, questions, configs)
    summary = summarize(rows[0])
    kinds = by_type(rows[0])
    took = sorted(r["took_ms"] for r in rows[0])
    p50 = took[len(took) // 2]
    out.print(_table(f"{configs[0].label()} ({modes[0]}) on {dataset.name}", summary))
    out.print(_types_table("by question type: mean (95% CI)", kinds))
    out.print(f"search took_ms p50 {p50:.1f}")
    diff = None
    if len(configs) == 2:
        diff = paired(rows[0], rows[1])
        base = summarize(rows[1])
        out.print(_table(f"baseline {configs[1].label()} ({modes[1]})", base))
        out.print(
            _table(f"paired diff: {configs[0].label()} minus {configs[1].label()}", diff, True)
        )

    digest = hashlib.sha256(dataset.read_bytes()).hexdigest()[:16]
    mlflow.set_tracking_uri(client.tracking_uri)
    mlflow.set_experiment(EXPERIMENT)
    tags = {
        f"{TAG}collection": collection,
        f"{TAG}mode": modes[0],
        f"{TAG}dataset": dataset.name,
        f"{TAG}dataset_sha256": digest,
    }
    if len(configs) == 2:
        tags[f"{TAG}against"] = f"{configs[1].collection}/{modes[1]}"
    with mlflow.start_run(run_name=f"retrieval-{configs[0].label()}", tags=tags) as run:
        mlflow.log_params(
            {
                "collection": collection,
                "mode": modes[0],
                "questions": len(questions),
                "depth": DEPTH,
                "against": tags.get(f"{TAG}against", ""),
            }
        )
        metrics = _estimates("", summary)
        for kind, est in kinds.items():
            metrics.update(_estimates(f"{kind}.", est))
        metrics["search_ms_p50"] = p50
        if diff is not None:
            metrics.update(_estimates("diff.", diff))
        mlflow.log_metrics(metrics)
        flat = [r for config_rows in rows for r in config_rows]
        mlflow.log_table(
            {k: [str(r[k]) if k == "top" else r[k] for r in flat] for k in flat[0]},
            artifact_file="per_question.json",
        )
        run_id = run.info.run_id
    err.print(f"logged to MLflow: experiment '{EXPERIMENT}', run {run_id}")
    return {
        "run_id": run_id,
        "modes": modes,
        "summary": summary,
        "by_type": kinds,
        "diff": diff,
        "rows": rows,
        "search_ms_p50": p50,
    }
