"""``llmops eval retrieval``: its metrics on constructed rankings worked out by hand, and the
command end to end against the real retrieval service and an ``mlflow server``."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from services.retrieval.evaluation import METRICS, Question, by_type, paired, score, summarize
from tests.cli.test_cli import run
from tests.conftest import API_KEY, clean_env
from tests.rag.conftest import shared_mlflow_server
from tests.retrieval.conftest import ingest, make_collection


def q(docs: list[str], passages: list[str], kind: str = "keyword", qid: str = "q") -> Question:
    obj = {"id": qid, "question": "?", "type": kind, "expected_documents": docs,
           "expected_passages": passages}  # fmt: skip
    return Question.parse(obj, 1)


def hit(doc: str, text: str, headings: list[str] | None = None) -> dict[str, Any]:
    return {"doc_id": doc, "text": text, "headings": headings or []}


def test_metrics_by_hand() -> None:
    question = q(["a.html", "b.html"], ["Alpha  BETA", "gamma delta"])
    ranked = [
        hit("z.html", "alpha beta"),  # the phrase, but not an expected document
        hit("a.html", "x alpha\nbeta y"),  # phrase 1, whitespace and case aside
        hit("a.html", "nothing here"),
        hit("b.html", "the gamma delta line"),  # phrase 2
    ]
    got = score(question, ranked)
    # First relevant at rank 2; DCG = 1/log2(3) + 1/log2(5); ideal = 1 + 1/log2(3).
    ideal = 1 + 1 / math.log2(3)
    assert got == {
        "hit@1": 0.0, "hit@5": 1.0, "hit@10": 1.0, "mrr": 0.5,
        "ndcg@10": pytest.approx((1 / math.log2(3) + 1 / math.log2(5)) / ideal),
        "recall@10": 1.0,
    }  # fmt: skip
    # One chunk holding both phrases first: as good as it gets.
    both = score(question, [hit("b.html", "alpha beta and gamma delta")])
    assert both["ndcg@10"] == 1.0 and both["mrr"] == 1.0
    # A phrase in the heading path counts; one of two phrases found: recall 1/2.
    half = score(question, [hit("a.html", "body", ["Guide", "Alpha beta"])])
    assert half["recall@10"] == 0.5 and half["ndcg@10"] == pytest.approx(1 / ideal)
    # Beyond rank 10 nothing counts; an empty ranking scores 0.
    late = score(question, [hit("z.html", "x")] * 10 + [hit("a.html", "alpha beta")])
    assert late["hit@10"] == 0.0 and late["mrr"] == 0.0 and late["ndcg@10"] == 0.0
    assert score(question, [])["recall@10"] == 0.0
    # No phrases: any chunk of an expected document is relevant.
    doc_level = score(q(["a.html"], []), [hit("z.html", ""), hit("z.html", ""), hit("a.html", "")])
    assert doc_level["mrr"] == pytest.approx(1 / 3) and doc_level["hit@1"] == 0.0
    assert doc_level["ndcg@10"] == pytest.approx(1 / math.log2(4))


def test_questions_refuse_bad_lines() -> None:
    with pytest.raises(ValueError, match="expected_documents"):
        Question.parse({"question": "x"}, 3)
    with pytest.raises(ValueError, match="empty"):
        Question.parse({"question": " ", "expected_documents": ["a"]}, 3)
    parsed = Question.parse({"question": "x", "expected_documents": ["a"]}, 7)
    assert (parsed.id, parsed.type, parsed.source) == ("q7", "untyped", "a")


def test_summary_types_and_pairing() -> None:
    rows = [
        {"id": "1", "type": "keyword", "source": "a", **dict.fromkeys(METRICS, 1.0)},
        {"id": "2", "type": "conceptual", "source": "b", **dict.fromkeys(METRICS, 0.0)},
        {"id": "3", "type": "keyword", "source": "b", **dict.fromkeys(METRICS, 0.5)},
    ]
    s = summarize(rows)
    assert s["mrr"].mean == pytest.approx(0.5) and s["mrr"].clusters == 2
    kinds = by_type(rows)
    assert list(kinds) == ["keyword", "conceptual"]
    assert kinds["keyword"]["hit@1"].mean == 0.75 and kinds["conceptual"]["hit@1"].n == 1
    d = paired(rows, [{**r, "mrr": 0.25} for r in rows])
    assert d["mrr"].mean == pytest.approx(0.25) and d["hit@1"].mean == 0.0
    with pytest.raises(ValueError):
        paired(rows, rows[::-1])


@pytest.fixture(scope="module")
def tracking(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with shared_mlflow_server(tmp_path_factory) as server:
        yield server.url


DOCS = [
    {"id": "flags.md", "text": "Pass --skip-vacuum-zx7 to migrate to keep locks short."},
    {"id": "locks.md", "text": "Schema migrations take locks on the tables they change."},
    {"id": "night.md", "text": "Run long migrations at night when the tables are quiet."},
]  # fmt: skip
QUESTIONS = [
    {"id": "flag", "type": "keyword", "question": "what is skip-vacuum-zx7 for",
     "expected_documents": ["flags.md"], "expected_passages": ["--skip-vacuum-zx7"]},
    {"id": "absent", "type": "conceptual", "question": "kangaroo",
     "expected_documents": ["night.md"], "expected_passages": ["at night"]},
]  # fmt: skip


def test_eval_retrieval_command(api: httpx.Client, tracking: str, tmp_path: Path) -> None:
    """Sparse mode against dense on the same collection: in sparse mode the identifier is
    found first and the word no chunk holds finds nothing, so hit@1 and MRR are 1/2 exactly;
    the paired difference is the per-question difference of what each mode scored."""
    from mlflow import MlflowClient

    make_collection(api, "evalc")
    ingest(api, "evalc", DOCS)
    dataset = tmp_path / "set.jsonl"
    dataset.write_bytes(b"\n".join(orjson.dumps(x) for x in QUESTIONS))
    args = ["eval", "retrieval", "-d", str(dataset), "-c", "evalc", "--mode", "sparse",
            "--against-mode", "dense", "--url", str(api.base_url),
            "--tracking-uri", tracking]  # fmt: skip
    r = run(*args, env=clean_env(LLMOPS_API_KEY=API_KEY))
    assert r.returncode == 0, r.stderr
    assert "evalc/sparse (sparse)" in r.stdout and "paired diff" in r.stdout
    assert "keyword" in r.stdout and "conceptual" in r.stdout

    client = MlflowClient(tracking)
    exp = client.get_experiment_by_name("llmops-retrieval-eval")
    assert exp is not None
    (logged,) = client.search_runs([exp.experiment_id], max_results=1)
    m = logged.data.metrics
    assert m["hit_at_1"] == 0.5 and m["mrr"] == 0.5 and m["recall_at_10"] == 0.5
    assert m["keyword.hit_at_1"] == 1.0 and m["conceptual.mrr"] == 0.0
    # Dense ranks every chunk: its reciprocal ranks, read off a dense search of each question.
    dense_rr = []
    for question in QUESTIONS:
        body = {"query": question["question"], "mode": "dense", "top_k": 10}
        ranked = [
            h["doc_id"]
            for h in api.post("/v1/collections/evalc/search", json=body).json()["results"]
        ]
        dense_rr.append(1 / (ranked.index(question["expected_documents"][0]) + 1))
    assert m["diff.mrr"] == pytest.approx(((1 - dense_rr[0]) + (0 - dense_rr[1])) / 2)
    assert "diff.hit_at_5_ci_low" in m
    assert logged.data.tags["llmops.retrieval_eval.mode"] == "sparse"
    assert logged.data.tags["llmops.retrieval_eval.against"] == "evalc/dense"
    assert logged.data.params["questions"] == "2"

    # Mistakes are one clear line and exit code 2.
    bad = run("eval", "retrieval", "-d", str(tmp_path / "none.jsonl"), "-c", "evalc",
              "--url", str(api.base_url), "--tracking-uri", tracking)  # fmt: skip
    assert bad.returncode == 2 and "cannot read the dataset" in bad.stderr
    bad = run("eval", "retrieval", "-d", str(dataset), "-c", "evalc", "--mode", "fuzzy",
              "--tracking-uri", tracking)  # fmt: skip
    assert bad.returncode == 2 and "use dense, sparse or hybrid" in bad.stderr
    missing = run(*args[:5], "nope", *args[6:], env=clean_env(LLMOPS_API_KEY=API_KEY))
    assert missing.returncode == 1 and "does not exist" in missing.stderr
