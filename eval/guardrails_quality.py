"""PII and prompt-injection detectors against a labelled set: precision, recall, and cost.

eval/guardrails.jsonl holds one text per line with the entities present in it (``pii``, names
from services.common.pii.ENTITIES) and whether it is a prompt injection (``injection``):
positives and hard negatives for each (Luhn-failing cards, bad IBAN check digits, versions,
dates, ISBNs, type annotations, documentation that says "ignore"), a few positives that the
heuristics are known to miss (obfuscated addresses, a translated attack) kept on purpose.

Scored per text: an entity counts as found when find_pii reports at least one finding of it.
Timing: find_pii and find_injection on each text and on a 1 KB chat message (the proxy's hot
path), median microseconds over repeated calls.

    .venv/bin/python eval/guardrails_quality.py [--data eval/guardrails.jsonl] [--show-errors]

The JSON object on the last line holds the figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from services.common.injection import find_injection
from services.common.pii import ENTITIES, find_pii

HERE = Path(__file__).resolve().parent

# About 1 KB of an ordinary support chat message with one email in it.
MESSAGE_1KB = (
    "Hi team, I've been trying to get the retrieval pipeline working with our internal docs "
    "for a few days now. The ingestion step finishes, but when I ask questions through the "
    "rag endpoint the answers cite the wrong passages about half of the time. We are running "
    "version 2.3.1 of the chart on Kubernetes 1.29, with three replicas of the embeddings "
    "service and the default chunk size of 512 tokens. I tried lowering top_k from 8 to 4 and "
    "raising the max context to 6000 characters, which helped a little, but the latency went "
    "up to about 2.4 seconds per ask at the 95th percentile. Is there a recommended setting "
    "for documentation that has many short sections with similar headings? Also, should we "
    "enable the hybrid mode with BM25 for code-heavy pages, or does the dense model handle "
    "identifiers well enough? Our staging cluster logs are attached to the ticket from "
    "2024-05-14. You can reach me at dana.lee@example.com if you need more details, or we can "
    "set up a call next week. Thanks a lot for the help, and sorry for the long message!"
)


def load(path: Path) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    for n, row in enumerate(rows, 1):
        unknown = set(row["pii"]) - set(ENTITIES)
        if unknown or not isinstance(row["injection"], bool):
            raise SystemExit(f"{path}:{n}: bad labels {row}")
    return rows


def ratio(a: int, b: int) -> float:
    return round(a / b, 4) if b else 1.0


def score(rows: list[dict[str, Any]]) -> tuple[dict[str, dict[str, int]], list[str]]:
    """True/false positives and false negatives per entity and for injection, and the errors."""
    counts = {name: {"tp": 0, "fp": 0, "fn": 0, "support": 0} for name in (*ENTITIES, "injection")}
    errors: list[str] = []
    for row in rows:
        text = row["text"]
        found = {f.entity for f in find_pii(text)}
        if find_injection(text):
            found.add("injection")
        expected = set(row["pii"]) | ({"injection"} if row["injection"] else set())
        for name, c in counts.items():
            c["support"] += name in expected
            if name in found and name in expected:
                c["tp"] += 1
            elif name in found:
                c["fp"] += 1
                errors.append(f"FP {name:12} {text[:100]!r}")
            elif name in expected:
                c["fn"] += 1
                errors.append(f"FN {name:12} {text[:100]!r}")
    return counts, errors


def median_us(fn: Callable[[str], object], texts: list[str], repeat: int) -> float:
    """Median over the texts of each text's best-of-``repeat`` time, in microseconds."""
    per_text = []
    for text in texts:
        best = float("inf")
        for _ in range(repeat):
            t = time.perf_counter()
            fn(text)
            best = min(best, time.perf_counter() - t)
        per_text.append(best)
    return round(statistics.median(per_text) * 1e6, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=HERE / "guardrails.jsonl")
    parser.add_argument("--show-errors", action="store_true", help="Print each miss and FP.")
    parser.add_argument("--repeat", type=int, default=20, help="Timed calls per text.")
    args = parser.parse_args()

    rows = load(args.data)
    counts, errors = score(rows)
    out: dict[str, Any] = {"n": len(rows)}
    print(f"{'':12} {'support':>7} {'tp':>4} {'fp':>4} {'fn':>4} {'precision':>9} {'recall':>6}")
    for name, c in counts.items():
        precision = ratio(c["tp"], c["tp"] + c["fp"])
        recall = ratio(c["tp"], c["tp"] + c["fn"])
        out[f"{name}_precision"] = precision
        out[f"{name}_recall"] = recall
        out[f"{name}_support"] = c["support"]
        print(
            f"{name:12} {c['support']:>7} {c['tp']:>4} {c['fp']:>4} {c['fn']:>4} "
            f"{precision:>9.3f} {recall:>6.3f}"
        )
    if args.show_errors:
        print(*errors, sep="\n")
    else:
        print(f"{len(errors)} errors (--show-errors lists them)")

    texts = [row["text"] for row in rows]
    out["find_pii_us_median"] = median_us(find_pii, texts, args.repeat)
    out["find_injection_us_median"] = median_us(find_injection, texts, args.repeat)
    out["find_pii_us_1kb"] = median_us(find_pii, [MESSAGE_1KB], args.repeat * 10)
    out["find_injection_us_1kb"] = median_us(find_injection, [MESSAGE_1KB], args.repeat * 10)
    print(
        f"find_pii: {out['find_pii_us_median']} µs per text (median), "
        f"{out['find_pii_us_1kb']} µs on a {len(MESSAGE_1KB)}-character message; "
        f"find_injection: {out['find_injection_us_median']} µs, {out['find_injection_us_1kb']} µs"
    )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
