"""``llmops eval``: a prompt version through the real pipeline on a dataset, logged to MLflow;
and the gate ``llmops prompts promote`` asks before it moves an alias."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import httpx
import orjson
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from services.cli.client import error_message, service_client
from services.cli.prompts import CLIError, current_version, parse_ref, resolve
from services.rag.evaluation import (
    EXPERIMENT,
    METRICS,
    TAG,
    Estimate,
    Question,
    gate_message,
    gate_passes,
    paired,
    score,
    summarize,
)
from services.rag.quality import degenerate

if TYPE_CHECKING:
    from mlflow import MlflowClient

out = Console()
err = Console(stderr=True)
DEFAULT_MARGIN = 0.05
Q = TypeVar("Q")


def margin_from_env() -> float:
    return float(os.environ.get("LLMOPS_GATE_MARGIN", DEFAULT_MARGIN))


def read_questions(path: Path, parse: Callable[[dict[str, Any], int], Q]) -> list[Q]:
    """A JSONL dataset, one question per line parsed by ``parse(obj, line)``; every mistake is
    one CLIError naming the file and line (exit code 2)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise CLIError(f"cannot read the dataset {path}: {exc.strerror}", 2) from None
    questions = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise CLIError(f"{path}:{n}: not JSON ({exc})", 2) from None
        try:
            questions.append(parse(obj, n))
        except ValueError as exc:
            raise CLIError(f"{path}: {exc}", 2) from None
    if not questions:
        raise CLIError(f"{path} holds no questions", 2)
    return questions


def load_dataset(path: Path) -> list[Question]:
    return read_questions(path, Question.parse)


def _ask(
    client: httpx.Client, q: Question, version: str, name: str, extra: dict[str, Any]
) -> dict[str, Any]:
    body = {"question": q.question, "prompt_version": version, **extra}
    for attempt in range(3):
        r = client.post("/v1/ask", json=body)
        if r.status_code == 200:
            data: dict[str, Any] = r.json()
            if data["prompt"]["name"] != name:
                raise CLIError(
                    f"the rag service serves prompt '{data['prompt']['name']}', not '{name}' "
                    "(RAG_PROMPT_NAME)"
                )
            return data
        if r.status_code in (429, 502, 503, 504) and attempt < 2:
            time.sleep(1 + attempt)
            continue
        raise CLIError(f"/v1/ask failed on {q.id} with {r.status_code}: {error_message(r)}")
    raise AssertionError("unreachable")


def _run_all(
    client: httpx.Client,
    questions: list[Question],
    versions: list[str],
    name: str,
    extra: dict[str, Any],
) -> dict[str, list[dict[str, Any]]]:
    rows: dict[str, list[dict[str, Any]]] = {v: [] for v in versions}
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
    ) as progress:
        task = progress.add_task("eval", total=len(questions) * len(versions))
        for q in questions:
            for v in versions:  # alternate, so drift over time hits both alike
                answer = _ask(client, q, v, name, extra)
                metrics = score(q, answer)
                # Why, for the per-question table; only the rare degenerate answer is looked at.
                reason = degenerate(answer["answer"]) if metrics["degenerate"] else None
                rows[v].append(
                    {
                        "id": q.id,
                        "source": q.source,
                        "question": q.question,
                        "answer": answer["answer"],
                        "version": v,
                        "interaction_id": answer["interaction_id"],
                        **metrics,
                        "degenerate_reason": reason or "",
                    }
                )
                progress.advance(task)
    return rows


def _table(title: str, estimates: dict[str, Estimate]) -> Table:
    t = Table(title=title)
    for col in ("metric", "mean", "95% CI", "SE (clustered)", "n"):
        t.add_column(col)
    for m in METRICS:
        e = estimates[m]
        if not e.n:  # defined for no question (no answer had a marker to check)
            t.add_row(m, "-", "-", "-", "0")
            continue
        t.add_row(
            m,
            f"{e.mean:+.3f}" if "diff" in title else f"{e.mean:.3f}",
            f"{e.ci_low:+.3f} .. {e.ci_high:+.3f}",
            f"{e.se:.3f}",
            str(e.n),
        )
    return t


def run_eval(
    client: MlflowClient,
    *,
    dataset: Path,
    prompt: str,
    against: str | None,
    url: str | None,
    collection: str | None,
    top_k: int | None,
    margin: float,
) -> dict[str, Any]:
    """Run, log to MLflow, print; returns what was logged (for the demo and the tests)."""
    import mlflow

    questions = load_dataset(dataset)
    name, ref = parse_ref(prompt)
    cand = str(resolve(client, name, ref).version)
    base = None
    base_ref = None
    if against is not None:
        base_name, base_ref = parse_ref(against)
        if base_name != name:
            raise CLIError(f"compare versions of one prompt: {name} vs {base_name}", 2)
        base = str(resolve(client, name, base_ref).version)
    versions = [cand] if base is None or base == cand else [cand, base]
    extra: dict[str, Any] = {"session_id": f"eval-{int(time.time())}"}
    if collection:
        extra["collection"] = collection
    if top_k:
        extra["top_k"] = top_k
    with service_client(url, "LLMOPS_RAG_URL", "http://127.0.0.1:8006", 300) as http:
        rag_url = str(http.base_url).rstrip("/")
        rows = _run_all(http, questions, versions, name, extra)
    cand_rows = rows[cand]
    summary = summarize(cand_rows)
    diff = paired(cand_rows, rows[base]) if base is not None else None  # same rows if base == cand
    out.print(_table(f"{name} version {cand} on {dataset.name}", summary))
    if base is not None and diff is not None:
        out.print(_table(f"paired diff: version {cand} minus version {base}", diff))
        out.print(gate_message(diff["score"], margin))

    digest = hashlib.sha256(dataset.read_bytes()).hexdigest()[:16]
    mlflow.set_tracking_uri(client.tracking_uri)
    mlflow.set_experiment(EXPERIMENT)
    tags = {
        f"{TAG}prompt": name,
        f"{TAG}candidate_version": cand,
        f"{TAG}dataset": dataset.name,
        f"{TAG}dataset_sha256": digest,
    }
    if base is not None:
        tags[f"{TAG}against_version"] = base
        if base_ref and base_ref.startswith("@"):
            tags[f"{TAG}against_alias"] = base_ref[1:]
    with mlflow.start_run(
        run_name=f"{name}-v{cand}" + (f"-vs-v{base}" if base else ""), tags=tags
    ) as run:
        config = {
            "prompt_name": name,
            "prompt_version": cand,
            "rag_url": rag_url,
            "top_k": str(top_k or "service default"),
            "collection": collection or "service default",
        }
        model = mlflow.create_external_model(
            name="rag-app",
            source_run_id=run.info.run_id,
            params=config,
            model_type="rag-application",
        )
        mlflow.log_params(
            {**config, "questions": len(questions), "margin": margin, "against_version": base or ""}
        )
        metrics = {}
        for m, e in summary.items():
            if not e.n:  # a metric no question defines is not logged as NaN
                continue
            metrics.update(
                {m: e.mean, f"{m}_ci_low": e.ci_low, f"{m}_ci_high": e.ci_high, f"{m}_se": e.se}
            )
            if e.n < len(questions):  # citation validity: over the answers with a marker
                metrics[f"{m}_n"] = e.n
        mlflow.log_metrics(metrics, model_id=model.model_id)
        if diff is not None:
            dm = {}
            for m, e in diff.items():
                if not e.n:
                    continue
                dm.update(
                    {
                        f"{m}_diff": e.mean,
                        f"{m}_diff_ci_low": e.ci_low,
                        f"{m}_diff_ci_high": e.ci_high,
                    }
                )
            passed = gate_passes(diff["score"], margin)
            dm["gate_passed"] = float(passed)
            mlflow.log_metrics(dm)
            mlflow.set_tag(f"{TAG}gate", "passed" if passed else "failed")
        all_rows = [r for v in versions for r in rows[v]]
        mlflow.log_table(
            {k: [r[k] for r in all_rows] for k in cand_rows[0]}, artifact_file="per_question.json"
        )
        run_id = run.info.run_id
    err.print(f"logged to MLflow: experiment '{EXPERIMENT}', run {run_id}, model {model.model_id}")
    return {"run_id": run_id, "candidate": cand, "against": base, "summary": summary, "diff": diff}


def eval_gate(client: MlflowClient, name: str, version: str, alias: str) -> tuple[bool, str]:
    """Allowed when the latest eval of ``version`` against the alias's current holder passed:
    the lower bound of the paired 95% CI of the score difference >= -margin."""
    holder = current_version(client, name, alias)
    if holder is None or holder == version:
        return True, f"'{alias}' has no other version to compare with"
    exp = client.get_experiment_by_name(EXPERIMENT)
    runs: list[Any] = []
    if exp is not None:
        runs = client.search_runs(
            [exp.experiment_id],
            filter_string=(
                f"tags.`{TAG}prompt` = '{name}' and "
                f"tags.`{TAG}candidate_version` = '{version}' and "
                f"tags.`{TAG}against_version` = '{holder}'"
            ),
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
    if not runs:
        return False, (
            f"no eval of version {version} against version {holder} (now '{alias}'); run "
            f"`llmops eval --dataset FILE --prompt {name}/{version} --against {name}@{alias}`"
        )
    run = runs[0]
    low = run.data.metrics.get("score_diff_ci_low")
    mean = run.data.metrics.get("score_diff")
    if low is None or mean is None:
        return False, f"eval run {run.info.run_id} has no paired score difference"
    margin = margin_from_env()
    ok = low >= -margin
    return ok, (
        f"eval run {run.info.run_id}: score difference {mean:+.3f}, 95% CI lower bound "
        f"{low:+.3f} {'>=' if ok else '<'} -{margin:g}"
    )
