"""Embeddings throughput: the service against the model's own in-process ``encode``.

In one run, on the same texts:
  (a) anchor: sentence-transformers ``model.encode(texts, batch_size=32)`` in this process;
  (b) the service under 32 concurrent clients sending one text per request;
  (c) the service under 4 concurrent clients sending 32 texts per request.
The service runs as its own process (``llmops serve embeddings``) with auth, metrics, tracing
and access logs on; the load comes from this process over loopback through a minimal asyncio
HTTP/1.1 client. Rounds interleave (a), (b) and (c); the JSON object on the last line holds
the medians over rounds, ``ratio = b / a`` among them.

    .venv/bin/python bench/embeddings.py [--texts 1024] [--rounds 5] [--backend torch|onnx]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import statistics
import sys
import tempfile
import time
from typing import Any

from _services import start, stop

os.environ.setdefault("HF_HUB_OFFLINE", "1")
WORDS = [
    "retrieval",
    "augmented",
    "generation",
    "vector",
    "database",
    "embedding",
    "model",
    "proxy",
    "gateway",
    "latency",
    "throughput",
    "kubernetes",
    "replica",
    "prompt",
    "registry",
    "evaluation",
    "feedback",
    "dataset",
    "chunk",
    "heading",
    "paragraph",
    "sentence",
    "token",
    "budget",
    "circuit",
    "breaker",
    "fallback",
    "streaming",
    "metrics",
    "dashboard",
    "alert",
    "trace",
    "span",
    "operator",
    "engineer",
    "production",
    "staging",
    "deploy",
    "rollback",
]


def make_texts(n: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    return [
        " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 24))).capitalize() + "."
        for _ in range(n)
    ]


def load_model() -> Any:
    from sentence_transformers import SentenceTransformer

    from services.embeddings.encoder import default_model_path

    return SentenceTransformer(str(default_model_path()), device="cpu", local_files_only=True)


def bench_inprocess(model: Any, texts: list[str]) -> float:
    start = time.perf_counter()
    model.encode(texts, batch_size=32)
    return len(texts) / (time.perf_counter() - start)


def start_service(backend: str, key_hash: str, cache: str) -> tuple[Any, str]:
    return start(
        "embeddings",
        {
            "EMBEDDINGS_API_KEY_HASHES": key_hash,
            "EMBEDDINGS_BACKEND": backend,
            "EMBEDDINGS_CACHE_DIR": cache,
        },
    )


async def load(
    url: str, key: str, texts: list[str], per_request: int, concurrency: int
) -> tuple[float, list[float]]:
    """Send every text once, ``per_request`` texts a request, ``concurrency`` connections.

    A minimal HTTP/1.1 keep-alive client on asyncio streams with pre-built requests: the load
    generator shares the 2 cores with the service, so it must cost as little CPU as possible.
    """
    host, port = url.removeprefix("http://").split(":")
    bodies = [
        json.dumps(
            {
                "model": "all-MiniLM-L6-v2",
                "input": texts[i : i + per_request],
                "encoding_format": "base64",
            }
        ).encode()
        for i in range(0, len(texts), per_request)
    ]
    requests = [
        (
            f"POST /v1/embeddings HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        + body
        for body in bodies
    ]
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for r in requests:
        queue.put_nowait(r)
    latencies: list[float] = []

    async def worker() -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            while not queue.empty():
                request = queue.get_nowait()
                t0 = time.perf_counter()
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head.split(b" ", 2)[1])
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                payload = await reader.readexactly(length)
                if status != 200:
                    raise RuntimeError(f"{status}: {payload[:300]!r}")
                latencies.append(time.perf_counter() - t0)
        finally:
            writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return len(texts) / (time.perf_counter() - start), latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--backend", choices=["torch", "onnx"], default="torch")
    args = parser.parse_args()

    texts = make_texts(args.texts)
    key = "sk-bench-key"
    model = load_model()
    model.encode(texts[:64], batch_size=32)  # warm-up
    rounds: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory() as cache:
        proc, url = start_service(args.backend, hashlib.sha256(key.encode()).hexdigest(), cache)
        try:
            asyncio.run(load(url, key, texts[:128], 1, 32))  # warm-up
            # Interleaved rounds: the anchor and the service see the same machine state, and
            # only one of them runs at a time, so they never compete for the cores.
            for i in range(args.rounds):
                a = bench_inprocess(model, texts)
                b, lat = asyncio.run(load(url, key, texts, 1, 32))
                c, _ = asyncio.run(load(url, key, texts, 32, 4))
                lat.sort()
                rounds.append(
                    {
                        "inprocess_texts_per_s": a,
                        "service_single_texts_per_s": b,
                        "service_batched_texts_per_s": c,
                        "single_p50_ms": statistics.median(lat) * 1000,
                        "single_p99_ms": lat[max(0, int(len(lat) * 0.99) - 1)] * 1000,
                        "ratio": b / a,
                        "ratio_batched": c / a,
                    }
                )
                print(
                    f"round {i + 1}: (a) in-process encode, batch 32 {a:7.1f} texts/s | "
                    f"(b) 32 clients x 1 text {b:7.1f} | (c) 4 clients x 32 texts {c:7.1f} | "
                    f"ratio b/a {b / a:.3f}",
                    file=sys.stderr,
                )
        finally:
            stop(proc)
    median = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
    result = {
        "backend": args.backend,
        "texts": args.texts,
        "rounds": args.rounds,
        **{k: round(v, 3 if k.startswith("ratio") else 1) for k, v in median.items()},
        "ratio_min": round(min(r["ratio"] for r in rounds), 3),
        "cores": os.cpu_count(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
