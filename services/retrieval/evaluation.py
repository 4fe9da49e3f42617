"""Retrieval quality, BEIR-style: hit@1/5/10, MRR and nDCG@10 per question, and their means.

A question names its documents and, optionally, phrases a correct passage contains. A retrieved
chunk is relevant to a phrase when it comes from an expected document and its text (heading
path included) contains the phrase, compared lower-cased with whitespace collapsed; a question
without phrases counts any chunk of an expected document as relevant. Each phrase is a relevant
item once: a result's gain in nDCG@10 is the number of phrases it is the first to hold, and the
ideal puts one phrase per place at the top (capped at 1 when one chunk holds several), so a
multi-passage question scores 1 only when all its passages lead the ranking; ``recall@10`` is
the share of its phrases found at all. Hit and MRR look at the first relevant chunk.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from services.common.stats import Estimate, paired_rows, summarize_rows

METRICS = ("hit@1", "hit@5", "hit@10", "mrr", "ndcg@10", "recall@10")
DEPTH = 10  # results judged per question
TYPES = ("keyword", "conceptual", "multi")
EXPERIMENT = "llmops-retrieval-eval"
TAG = "llmops.retrieval_eval."


def normalize(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


@dataclass(frozen=True)
class Question:
    id: str
    question: str
    type: str
    expected_documents: tuple[str, ...]
    expected_passages: tuple[str, ...]
    source: str  # the cluster: the document the question was written from

    @classmethod
    def parse(cls, obj: dict[str, Any], line: int) -> Question:
        try:
            docs = tuple(str(d) for d in obj["expected_documents"])
            passages = tuple(normalize(str(p)) for p in obj.get("expected_passages", []))
            question = str(obj["question"]).strip()
        except (KeyError, TypeError) as exc:
            raise ValueError(
                f"line {line}: needs 'question' and 'expected_documents' (a list): {exc}"
            ) from None
        if not question:
            raise ValueError(f"line {line}: 'question' is empty")
        if not docs:
            raise ValueError(f"line {line}: 'expected_documents' is empty")
        if any(not p for p in passages):
            raise ValueError(f"line {line}: an expected passage is empty")
        kind = str(obj.get("type") or "untyped")
        source = str(obj.get("source") or docs[0])
        return cls(str(obj.get("id") or f"q{line}"), question, kind, docs, passages, source)


def _relevant_to(q: Question, result: dict[str, Any]) -> set[int]:
    """Which of the question's items (phrase indexes; 0 for a document-level question) this
    result satisfies."""
    if result.get("doc_id") not in q.expected_documents:
        return set()
    if not q.expected_passages:
        return {0}
    text = normalize(" > ".join(result.get("headings") or []) + " " + (result.get("text") or ""))
    return {i for i, p in enumerate(q.expected_passages) if p in text}


def score(q: Question, results: Sequence[dict[str, Any]]) -> dict[str, float]:
    """The metrics of one question, from its ranked results (best first)."""
    items = max(1, len(q.expected_passages))
    first: int | None = None
    found: set[int] = set()
    dcg = 0.0
    for rank, result in enumerate(results[:DEPTH], start=1):
        hits = _relevant_to(q, result)
        if hits and first is None:
            first = rank
        new = hits - found
        if new:
            dcg += len(new) / math.log2(rank + 1)
            found |= new
    ideal = sum(1 / math.log2(r + 1) for r in range(1, min(items, DEPTH) + 1))
    return {
        "hit@1": float(first is not None and first <= 1),
        "hit@5": float(first is not None and first <= 5),
        "hit@10": float(first is not None),
        "mrr": 1 / first if first else 0.0,
        "ndcg@10": min(1.0, dcg / ideal),
        "recall@10": len(found) / items,
    }


def summarize(rows: Sequence[dict[str, Any]]) -> dict[str, Estimate]:
    return summarize_rows(rows, METRICS)


def by_type(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, Estimate]]:
    order = {k: i for i, k in enumerate(TYPES)}
    kinds = sorted({r["type"] for r in rows}, key=lambda k: (order.get(k, len(TYPES)), k))
    return {k: summarize([r for r in rows if r["type"] == k]) for k in kinds}


def paired(
    candidate: Sequence[dict[str, Any]], baseline: Sequence[dict[str, Any]]
) -> dict[str, Estimate]:
    """Candidate minus baseline, question by question (same questions, same order)."""
    return paired_rows(candidate, baseline, METRICS)
