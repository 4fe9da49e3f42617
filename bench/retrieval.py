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
  scale    how local (embedded) Qdrant grows (issue 18): for each size of ``--scale``, a local
           Qdrant directory is filled with that many chunks straight through the service's own
           ``QdrantStore.create`` layout (dense + BM25 vectors, payload indexes) and the payload
           ingest writes, random unit vectors and ``group`` = document % 5, ten chunks a
           document; the service is started on it (``open_s_<size>``: start to ready) and
           searched with random unit ``vector``s, one at a time, unfiltered and filtered
           (``{"group": {"in": [1, 3]}}``, 40 % of the points), alternating query by query
           (``search_ms_p50_<size>``, ``search_ms_p50_<size>_filtered`` and their p99s), and its
           memory read from /proc (``service_rss_mb_<size>`` after the searches,
           ``service_peak_rss_mb_<size>``: VmHWM). ``--scale ''`` or ``--no-scale`` skips it.

    .venv/bin/python bench/retrieval.py [--docs 60] [--queries 300]
                                        [--scale 1000,10000,100000] [--scale-queries 100]
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
import warnings
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


CHUNKS_PER_DOC = 10
SCALE_FILTER = {"group": {"in": [1, 3]}}


def label(n: int) -> str:
    """1000 -> 1k, 100000 -> 100k, 1500 -> 1500: the size in a JSON key."""
    if n % 1_000_000 == 0:
        return f"{n // 1_000_000}m"
    return f"{n // 1000}k" if n % 1000 == 0 else str(n)


def populate(path: str, n: int, seed: int) -> None:
    """``n`` chunks in a local Qdrant directory, as the service would hold them after ingest:
    the collection made by the service's own ``QdrantStore.create`` (named dense vector, BM25
    sparse vector with IDF, payload indexes on ``doc_id`` and ``metadata.group``), each point
    with ingest's id, payload fields and BM25 vector, and a random unit 384-d dense vector."""
    import asyncio
    from pathlib import Path

    import numpy as np
    from qdrant_client import models

    from services.common.metrics import Metrics
    from services.retrieval.config import RetrievalSettings
    from services.retrieval.ingest import new_version, point_id
    from services.retrieval.sparse import BM25
    from services.retrieval.store import DENSE, SPARSE, QdrantStore

    settings = RetrievalSettings(  # local mode whatever this shell's RETRIEVAL_ settings say
        env="dev", auth_disabled=True, qdrant_url=None, qdrant_path=Path(path), local_warn_points=0
    )
    rng = np.random.default_rng(seed)
    words = random.Random(seed)
    bm25 = BM25(settings.bm25_avg_len)
    first_version = new_version()  # a document's chunks share its version, as ingest writes

    async def fill() -> None:
        store = QdrantStore(settings, Metrics())
        try:
            await store.create("bench", 384, {"group": "integer"}, settings.default_search_mode)
            # Local mode commits (and syncs) its SQLite file once per point: ~1-9 ms each on
            # this disk, a quarter of an hour for 100k. Not syncing changes nothing read back.
            local = getattr(store.client, "_client", None)
            collection = getattr(local, "collections", {}).get("bench")
            db = getattr(getattr(collection, "storage", None), "storage", None)
            if db is not None:
                db.execute("PRAGMA synchronous=OFF")
                db.execute("PRAGMA journal_mode=MEMORY")
            for start_at in range(0, n, 500):
                size = min(500, n - start_at)
                dense = rng.standard_normal((size, 384)).astype(np.float32)
                dense /= np.linalg.norm(dense, axis=1, keepdims=True)
                points = []
                for j in range(size):
                    i = start_at + j
                    doc, chunk = divmod(i, CHUNKS_PER_DOC)
                    doc_id, version = f"doc-{doc}", first_version + doc
                    text = " ".join(words.choices(WORDS, k=words.randint(100, 160))) + "."
                    payload = {
                        "doc_id": doc_id,
                        "chunk_index": chunk,
                        "chunk_count": CHUNKS_PER_DOC,
                        "headings": [],
                        "text": text,
                        "tokens": len(text.split()) + 2,
                        "content_hash": hashlib.sha256(doc_id.encode()).hexdigest(),
                        "content_type": "text/plain",
                        "metadata": {"group": doc % 5},
                        "ingested_at": time.time(),
                        "version": version,
                    }
                    vector = {DENSE: dense[j].tolist(), SPARSE: bm25.document(text)}
                    points.append(
                        models.PointStruct(
                            id=point_id(doc_id, version, chunk), vector=vector, payload=payload
                        )
                    )
                await store.upsert("bench", points)
        finally:
            await store.close()

    with warnings.catch_warnings():  # qdrant-client's own "local mode past 20,000 points"
        warnings.simplefilter("ignore")
        asyncio.run(fill())


def memory_mb(pid: int) -> tuple[float, float]:
    """VmRSS and VmHWM (peak) of a process, in MiB; it must be the server itself, not a parent
    of workers (``llmops serve`` with one worker runs uvicorn in its own process)."""
    with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as f:
        if f.read().strip():
            raise SystemExit(f"process {pid} has children: its RSS is not the server's")
    fields = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0]) / 1024
    return fields["VmRSS"], fields["VmHWM"]


def scale(sizes: list[int], n_queries: int, digest: str) -> dict[str, float]:
    """Search latency, open time and memory of the service on local Qdrant at each size."""
    import numpy as np

    rng = np.random.default_rng(17)
    warm = 10
    vectors = rng.standard_normal((n_queries + warm, 384)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    bodies = {
        kind: [
            json.dumps(
                {"vector": v, "top_k": 10, "with_text": False}
                | ({"filter": SCALE_FILTER} if kind == "filtered" else {})
            ).encode()
            for v in vectors.tolist()
        ]
        for kind in ("unfiltered", "filtered")
    }
    out: dict[str, float] = {}
    for n in sizes:
        key = label(n)
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            populate(f"{tmp}/qdrant", n, seed=n)
            populated = time.perf_counter() - t0
            print(f"scale {key}: {n} chunks written in {populated:.1f} s", file=sys.stderr)
            env = {
                "RETRIEVAL_API_KEY_HASHES": digest,
                "RETRIEVAL_QDRANT_PATH": f"{tmp}/qdrant",
                # Nothing here embeds; a closed port, so nothing is called by mistake.
                "RETRIEVAL_EMBEDDINGS_URL": "http://127.0.0.1:9",
            }
            t0 = time.perf_counter()
            proc, url = start("retrieval", env)
            opened = time.perf_counter() - t0
            try:
                card = httpx.get(
                    f"{url}/v1/collections/bench",
                    headers={"Authorization": f"Bearer {KEY}"},
                    timeout=60,
                ).json()
                assert card["points_count"] == n, card
                raw = RawClient(url)
                times: dict[str, list[float]] = {"unfiltered": [], "filtered": []}
                for i in range(n_queries + warm):
                    order = ("unfiltered", "filtered") if i % 2 else ("filtered", "unfiltered")
                    for kind in order:
                        t0 = time.perf_counter()
                        status, _ = raw.post("/v1/collections/bench/search", bodies[kind][i])
                        if i >= warm:
                            times[kind].append((time.perf_counter() - t0) * 1000)
                        assert status == 200
                raw.sock.close()
                rss, peak = memory_mb(proc.pid)
            finally:
                stop(proc)
        u, f = times["unfiltered"], times["filtered"]
        out |= {
            f"search_ms_p50_{key}": round(statistics.median(u), 3),
            f"search_ms_p99_{key}": round(pct(u, 0.99), 3),
            f"search_ms_p50_{key}_filtered": round(statistics.median(f), 3),
            f"search_ms_p99_{key}_filtered": round(pct(f, 0.99), 3),
            f"open_s_{key}": round(opened, 2),
            f"service_rss_mb_{key}": round(rss, 1),
            f"service_peak_rss_mb_{key}": round(peak, 1),
            f"populate_s_{key}": round(populated, 1),
        }
        print(
            f"scale {key}: open {opened:.1f} s, RSS {rss:.0f} MiB (peak {peak:.0f}); search p50 "
            f"{statistics.median(u):.1f} ms, filtered {statistics.median(f):.1f} ms",
            file=sys.stderr,
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=60)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument(
        "--scale",
        default="1000,10000,100000",
        help="chunk counts of the local-mode scale measurement, comma-separated; '' skips it",
    )
    parser.add_argument("--no-scale", action="store_true", help="skip the scale measurement")
    parser.add_argument(
        "--scale-queries", type=int, default=100, help="queries per size and kind (scale)"
    )
    args = parser.parse_args()
    sizes = [] if args.no_scale else [int(x) for x in args.scale.split(",") if x.strip()]

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

    scaled = scale(sizes, args.scale_queries, digest) if sizes else {}

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
                **scaled,
            }
        )
    )


if __name__ == "__main__":
    main()
