"""Evaluation of a RAG configuration, and the promotion gate built on it.

Per question: did retrieval bring an expected document (hit@k), does the answer cite a
retrieved chunk at all (cited), what share of its citation markers point to retrieved chunks
(citation validity; None, left out of the mean, when it has no marker), and are the expected
facts in the answer (fact recall). The question's ``score`` is the mean of hit, fact recall and
the citation validity counted as 0 for an answer without markers: it cites nothing, so it
supports nothing. Apart from the score, ``degenerate`` is 1 when the shown answer has one of
the failure shapes of :func:`services.rag.quality.degenerate` (a marker run, a counting run,
copied markup...): a rate the gate does not use, reported because a wrong answer and a broken
one are different problems. Questions written about one document are not independent, so
standard errors are clustered by source document (the CR1 sandwich estimator for a mean), with
a t interval on (clusters - 1) degrees of freedom. A candidate is compared with the current
holder of an alias question by question: the mean paired difference, clustered the same way.
The gate passes when the lower bound of that difference's 95% interval is at least
``-margin``: "not worse by more than the margin".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from services.common.stats import Estimate as Estimate
from services.common.stats import clustered_mean as clustered_mean
from services.common.stats import paired_rows, summarize_rows
from services.rag.quality import degenerate

METRICS = ("hit", "cited", "citation_validity", "fact_recall", "score", "degenerate")
EXPERIMENT = "llmops-eval"
TAG = "llmops.eval."


@dataclass(frozen=True)
class Question:
    id: str
    question: str
    expected_documents: tuple[str, ...]
    expected_facts: tuple[str, ...]
    source: str  # the cluster: the document the question was written from

    @classmethod
    def parse(cls, obj: dict[str, Any], line: int) -> Question:
        try:
            docs = tuple(str(d) for d in obj.get("expected_documents", []))
            facts = tuple(str(f) for f in obj.get("expected_facts", []))
            question = str(obj["question"]).strip()
        except (KeyError, TypeError) as exc:
            raise ValueError(f"line {line}: needs 'question' and lists of strings: {exc}") from None
        if not question:
            raise ValueError(f"line {line}: 'question' is empty")
        source = str(obj.get("source") or (docs[0] if docs else f"q{line}"))
        return cls(str(obj.get("id") or f"q{line}"), question, docs, facts, source)


def score(q: Question, answer: dict[str, Any]) -> dict[str, float | None]:
    """The metrics of one answer of ``/v1/ask``."""
    retrieved = {c.get("document_id") for c in answer.get("contexts", [])}
    hit = float(bool(set(q.expected_documents) & retrieved)) if q.expected_documents else 1.0
    valid = len(answer.get("citations", []))
    invalid = len(answer.get("invalid_citations", []))
    citation_validity = valid / (valid + invalid) if valid + invalid else None
    text = str(answer.get("answer", "")).lower()
    if q.expected_facts:
        fact_recall = sum(f.lower() in text for f in q.expected_facts) / len(q.expected_facts)
    else:
        fact_recall = 1.0
    return {
        "hit": hit,
        "cited": float(valid > 0),
        "citation_validity": citation_validity,
        "fact_recall": fact_recall,
        "score": (hit + (citation_validity or 0.0) + fact_recall) / 3,
        "degenerate": float(degenerate(str(answer.get("answer", ""))) is not None),
    }


def summarize(rows: Sequence[dict[str, Any]]) -> dict[str, Estimate]:
    return summarize_rows(rows, METRICS)


def paired(
    candidate: Sequence[dict[str, Any]], baseline: Sequence[dict[str, Any]]
) -> dict[str, Estimate]:
    """Candidate minus baseline, question by question (same questions, same order)."""
    return paired_rows(candidate, baseline, METRICS)


def gate_passes(diff: Estimate, margin: float) -> bool:
    return diff.ci_low >= -margin


def gate_message(diff: Estimate, margin: float) -> str:
    verdict = "passes" if gate_passes(diff, margin) else "fails"
    return (
        f"score difference {diff.mean:+.3f} (95% CI {diff.ci_low:+.3f} to {diff.ci_high:+.3f}, "
        f"{diff.n} questions in {diff.clusters} documents) {verdict} the gate: lower bound >= "
        f"-{margin:g}"
    )
