"""Retrieval: search overhead against a direct qdrant-client query, ingest against the model.

In one run:
  ingest   ``llmops serve retrieval`` (local Qdrant) ingests a synthetic corpus through the real
           embeddings service; chunks/s is compared with the anchor, sentence-transformers'
           in-process ``encode`` of the same chunk texts at batch 32 (``ingest_ratio``).
  search   the same query vectors and filter, one request at a time: through the service
           (``POST /v1/collections/{c}/search`` with ``vector``, so no embedding is involved) and
           straight through ``qdrant_client.QdrantClient(path=...)`` on a copy of the same data,
           alternating query by query. ``search_overhead_ms_p50`` is the difference of medians.
  hybrid   the same text queries through the service in mode ``dense`` and ``hybrid`` (dense +
           BM25, fused by reciprocal rank), alternating query by query; both embed the query,
           so ``hybrid_overhead_ms_p50`` is what the lexical half and the fusion add. Ingest
           above writes BM25 vectors too; ``bm25_chunks_per_s`` is their in-process cost.

    .venv/bin/python bench/retrieval.py [--docs 60] [--queries 300]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import socket
import statistics
import sys
import tempfile
import time
from typing import Any

import httpx
from _services import start, stop

os.environ.setdefault("HF_HUB_OFFLINE", "1")
KEY = "sk-bench-key"
VOCABULARY = (
    "vector index shard replica token prompt latency budget cache queue worker batch gateway "
    "retry fallback breaker trace metric alert dashboard dataset label rating deploy rollback"
)
WORDS = VOCABULARY.split()


class RawClient:
    """Blocking HTTP/1.1 keep-alive client on a socket: near-zero client cost per request."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.host = host
        self.sock = socket.create_connection((host, int(port)))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nAuthorization: Bearer {KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        self.sock.sendall(head + body)
        while b"\r\n\r\n" not in self.buf:
            self.buf += self.sock.recv(65536)
        header, _, rest = self.buf.partition(b"\r\n\r\n")
        status = int(header.split(b" ", 2)[1])
        length = next(
            int(line.split(b":", 1)[1])
            for line in header.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        while len(rest) < length:
            rest += self.sock.recv(65536)
        self.buf = rest[length:]
        return status, rest[:length]


def corpus(n_docs: int) -> list[dict[str, Any]]:
    rng = random.Random(5)
    docs = []
    for d in range(n_docs):
        paras = [
            " ".join(rng.choice(WORDS) for _ in range(rng.randint(25, 60))).capitalize() + "."
            for _ in range(30)
        ]
        docs.append({"id": f"doc-{d}", "text": "\n\n".join(paras), "metadata": {"group": d % 5}})
    return docs


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=60)
    parser.add_argument("--queries", type=int, default=300)
    args = parser.parse_args()

    from sentence_transformers import SentenceTransformer

    from services.embeddings.encoder import default_model_path

    model = SentenceTransformer(str(default_model_path()), device="cpu", local_files_only=True)
    digest = hashlib.sha256(KEY.encode()).hexdigest()
    docs = corpus(args.docs)
    flt = {"group": {"in": [1, 3]}}
    with tempfile.TemporaryDirectory() as tmp:
        emb, emb_url = start("embeddings", {"EMBEDDINGS_API_KEY_HASHES": digest})
        env = {
            "RETRIEVAL_API_KEY_HASHES": digest,
            "RETRIEVAL_EMBEDDINGS_URL": emb_url,
            "RETRIEVAL_EMBEDDINGS_API_KEY": KEY,
            "RETRIEVAL_QDRANT_PATH": f"{tmp}/qdrant",
            "RETRIEVAL_MAX_TOP_K": "10000",
        }
        ret, url = start("retrieval", env)
        try:
            api = httpx.Client(
                base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=900
            )
            api.post(
                "/v1/collections", json={"name": "bench", "metadata_fields": {"group": "integer"}}
            )
            started = time.perf_counter()
            chunks = 0
            for i in range(0, len(docs), 20):
                r = api.post(
                    "/v1/collections/bench/documents", json={"documents": docs[i : i + 20]}
                )
                r.raise_for_status()
                chunks += sum(x["chunks"] for x in r.json()["results"])
            ingest_rate = chunks / (time.perf_counter() - started)
            print(
                f"ingest through the service: {chunks} chunks, {ingest_rate:.1f} chunks/s",
                file=sys.stderr,
            )

            probe = api.post(
                "/v1/collections/bench/search",
                json={"vector": [1.0] + [0.0] * 383, "top_k": 10000, "with_text": True},
            ).json()["results"]
            texts = [p["text"] for p in probe]
            # The anchor: the model alone on the same chunk texts (best of 2).
            model.encode(texts[:64], batch_size=32)
            encode_rate = 0.0
            for _ in range(2):
                t0 = time.perf_counter()
                model.encode(texts, batch_size=32)
                encode_rate = max(encode_rate, len(texts) / (time.perf_counter() - t0))
            print(
                f"anchor, in-process encode at batch 32: {encode_rate:.1f} texts/s", file=sys.stderr
            )

            rng = random.Random(9)
            queries = [" ".join(rng.choice(WORDS) for _ in range(6)) for _ in range(args.queries)]
            vectors = model.encode(queries, batch_size=64).tolist()
            # Local Qdrant is single-process: give the direct client its own copy of the data,
            # then time the two side by side, query by query, in the same minutes.
            stop(ret)
            shutil.copytree(f"{tmp}/qdrant", f"{tmp}/direct")
            ret, url = start("retrieval", env)

            from qdrant_client import QdrantClient, models

            direct = QdrantClient(path=f"{tmp}/direct")
            qfilter = models.Filter(
                must=[
                    models.FieldCondition(key="metadata.group", match=models.MatchAny(any=[1, 3]))
                ]
            )
            raw = RawClient(url)
            bodies = [
                json.dumps({"vector": v, "top_k": 10, "filter": flt, "with_text": False}).encode()
                for v in vectors
            ]
            for v, b in zip(vectors[:20], bodies[:20], strict=True):  # warm-up
                raw.post("/v1/collections/bench/search", b)
                direct.query_points("bench", query=v, using="dense", query_filter=qfilter, limit=10)
            service_ms: list[float] = []
            direct_ms: list[float] = []
            for v, b in zip(vectors, bodies, strict=True):
                t0 = time.perf_counter()
                status, _ = raw.post("/v1/collections/bench/search", b)
                service_ms.append((time.perf_counter() - t0) * 1000)
                assert status == 200
                t0 = time.perf_counter()
                direct.query_points("bench", query=v, using="dense", query_filter=qfilter, limit=10)
                direct_ms.append((time.perf_counter() - t0) * 1000)
            # Hybrid against dense, text queries, alternating.
            modes: dict[str, list[float]] = {"dense": [], "hybrid": []}
            for i, query in enumerate(queries):
                order = ("dense", "hybrid") if i % 2 else ("hybrid", "dense")
                for mode in order:
                    body = {"query": query, "top_k": 10, "mode": mode, "with_text": False}
                    t0 = time.perf_counter()
                    status, _ = raw.post("/v1/collections/bench/search", json.dumps(body).encode())
                    if i >= 20:  # the first 20 are warm-up
                        modes[mode].append((time.perf_counter() - t0) * 1000)
                    assert status == 200
            raw.sock.close()
            direct.close()
        finally:
            stop(ret)
            stop(emb)

    from services.retrieval.sparse import BM25

    bm25 = BM25(100.0)
    t0 = time.perf_counter()
    for text in texts:
        bm25.document(text)
    bm25_rate = len(texts) / (time.perf_counter() - t0)
    h50, h99 = statistics.median(modes["hybrid"]), pct(modes["hybrid"], 0.99)
    e50, e99 = statistics.median(modes["dense"]), pct(modes["dense"], 0.99)
    print(f"text search, dense: p50 {e50:.2f} ms; hybrid: p50 {h50:.2f} ms", file=sys.stderr)
    s50, s99 = statistics.median(service_ms), pct(service_ms, 0.99)
    d50, d99 = statistics.median(direct_ms), pct(direct_ms, 0.99)
    print(f"search through the service: p50 {s50:.2f} ms, p99 {s99:.2f} ms", file=sys.stderr)
    print(
        f"search with qdrant-client directly: p50 {d50:.2f} ms, p99 {d99:.2f} ms", file=sys.stderr
    )
    print(
        json.dumps(
            {
                "chunks": chunks,
                "points_searched_over": len(texts),
                "search_service_ms_p50": round(s50, 3),
                "search_service_ms_p99": round(s99, 3),
                "search_direct_ms_p50": round(d50, 3),
                "search_direct_ms_p99": round(d99, 3),
                "search_overhead_ms_p50": round(s50 - d50, 3),
                "search_overhead_ms_p99": round(s99 - d99, 3),
                "text_search_dense_ms_p50": round(e50, 3),
                "text_search_hybrid_ms_p50": round(h50, 3),
                "hybrid_overhead_ms_p50": round(h50 - e50, 3),
                "hybrid_overhead_ms_p99": round(h99 - e99, 3),
                "bm25_chunks_per_s": round(bm25_rate, 1),
                "ingest_chunks_per_s": round(ingest_rate, 1),
                "encode_texts_per_s": round(encode_rate, 1),
                "ingest_ratio": round(ingest_rate / encode_rate, 3),
                "cores": os.cpu_count(),
            }
        )
    )


if __name__ == "__main__":
    main()
