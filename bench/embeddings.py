"""Embeddings throughput: the service against the model's own in-process ``encode``.

In one run, on the same texts:
  (a) anchor: sentence-transformers ``model.encode(texts, batch_size=32)`` in this process;
  (b) the service under 32 concurrent clients sending one text per request;
  (c) the service under 4 concurrent clients sending 32 texts per request.
The service runs as its own process (``llmops serve embeddings``) with auth, metrics, tracing
and access logs on; the load comes from this process over loopback through a minimal asyncio
HTTP/1.1 client. (b) and (c) are measured for up to three services, all started before the
first round and all given their backend explicitly (``EMBEDDINGS_BACKEND``, and
``EMBEDDINGS_ONNX_QUANTIZATION`` for ONNX), so the figures do not depend on the defaults:
  - ``--backend`` with one uvicorn worker (the existing keys, ``ratio = b / a`` among them);
  - the same backend with two workers, one intra-op thread each (``EMBEDDINGS_TORCH_THREADS=1``,
    which the ONNX backend also uses) so the two workers share the 2 cores without
    oversubscribing them (``--workers-series``, on by default);
  - ONNX int8 with one worker (``--int8-series``, on by default).
Rounds interleave (a) and each service's (b) and (c), one at a time, so nothing shares the cores
with what is measured; the JSON object on the last line holds the medians over rounds. Every
service exports its ONNX graph into one cache directory for the whole run, so an export happens
once, at the first start of its backend (``first_start_s_<backend>``), never inside a round.

    .venv/bin/python bench/embeddings.py [--texts 1024] [--rounds 5]
        [--backend torch|onnx|onnx-int8] [--no-workers-series] [--no-int8-series]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _services import start, stop

from services.embeddings.config import EmbeddingsSettings

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


def service_default() -> tuple[str, str]:
    """The service's own default backend, as a ``--backend`` value, and its raw field value."""
    fields = EmbeddingsSettings.model_fields
    backend = str(fields["backend"].default)
    if backend == "onnx" and fields["onnx_quantization"].default == "int8":
        return "onnx-int8", backend
    return backend, backend


@dataclass
class Series:
    """One service configuration measured under (b) and (c) each round."""

    name: str  # "main", "workers_2", "int8": the suffix of its JSON keys
    backend: str  # a --backend value
    workers: int = 1
    threads: int | None = None  # EMBEDDINGS_TORCH_THREADS (also ONNX intra-op threads)
    proc: subprocess.Popen[bytes] | None = None
    url: str = ""
    rounds: list[dict[str, Any]] = field(default_factory=list)

    def label(self) -> str:
        threads = f", {self.threads} thread(s) each" if self.threads else ""
        return f"{self.backend}, {self.workers} worker(s){threads}"


def service_env(series: Series, key_hash: str, run_dir: Path) -> dict[str, str]:
    """Everything the service is told, explicitly: no default of the service decides."""
    env = {
        "EMBEDDINGS_API_KEY_HASHES": key_hash,
        "EMBEDDINGS_BACKEND": "torch" if series.backend == "torch" else "onnx",
        # One cache for every start of the run: the ONNX export happens once, at the first.
        "EMBEDDINGS_CACHE_DIR": str(run_dir / "cache"),
        # What `llmops serve embeddings --workers N` sets (services/common/server.py).
        "EMBEDDINGS_WORKERS": str(series.workers),
    }
    if series.backend != "torch":
        quantization = "int8" if series.backend == "onnx-int8" else "fp32"
        env["EMBEDDINGS_ONNX_QUANTIZATION"] = quantization
    if series.threads:
        env["EMBEDDINGS_TORCH_THREADS"] = str(series.threads)
    if series.workers > 1:
        # The workers' metric samples; under the run's directory so they go with it.
        prom = run_dir / f"prometheus-{series.name}"
        prom.mkdir()
        env["PROMETHEUS_MULTIPROC_DIR"] = str(prom)
    return env


def family(pid: int) -> list[int]:
    """``pid`` and its children (uvicorn's worker processes when it runs more than one)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            children.append(int(stat.parent.name))
    return [pid, *children]


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def settle(pid: int, timeout: float = 300) -> None:
    """Wait until the service's processes are idle: ``/readyz`` answers as soon as one worker
    is ready, while another may still be loading its model (which would take the cores)."""
    deadline = time.monotonic() + timeout
    quiet = 0
    before = cpu_seconds(family(pid))
    while quiet < 2 and time.monotonic() < deadline:
        time.sleep(0.5)
        now = cpu_seconds(family(pid))
        quiet = quiet + 1 if now - before < 0.05 else 0
        before = now


def connections_per_worker(pids: list[int], port: int) -> list[int]:
    """How many established connections to ``port`` each of ``pids`` holds (from /proc): the
    kernel hands each new connection to whichever worker accepts first, and a keep-alive
    connection stays with it, so two workers need not get an even share of the load."""
    owner: dict[str, int] = {}
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").glob("*"):
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                owner[target[8:-1]] = pid
    counts: dict[int, int] = {}
    established: list[int] = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            holder = owner.get(cols[9])
            if holder is None or int(cols[1].rsplit(":", 1)[1], 16) != port:
                continue
            if cols[3] == "0A":  # LISTEN: a worker (not, say, multiprocessing's tracker)
                counts.setdefault(holder, 0)
            elif cols[3] == "01":  # ESTABLISHED
                established.append(holder)
    for holder in established:
        counts[holder] = counts.get(holder, 0) + 1
    return sorted(counts.values(), reverse=True)


async def load(
    url: str,
    key: str,
    texts: list[str],
    per_request: int,
    concurrency: int,
    pids: list[int] | None = None,
) -> tuple[float, list[float], list[int] | None]:
    """Send every text once, ``per_request`` texts a request, ``concurrency`` connections.

    A minimal HTTP/1.1 keep-alive client on asyncio streams with pre-built requests: the load
    generator shares the 2 cores with the service, so it must cost as little CPU as possible.
    With ``pids`` (a multi-worker service's workers), also how many of the connections each
    worker served, read once the load is done and before the connections close.
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
    writers: list[asyncio.StreamWriter] = []

    async def worker() -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        writers.append(writer)
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

    try:
        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        rate = len(texts) / (time.perf_counter() - start)
        split = connections_per_worker(pids, int(port)) if pids else None
    finally:
        for writer in writers:
            writer.close()
    return rate, latencies, split


def measure(series: Series, key: str, texts: list[str], anchor: float) -> dict[str, Any]:
    """One round of (b) then (c) on one service."""
    assert series.proc is not None
    pids = family(series.proc.pid)[1:] if series.workers > 1 else None
    b, lat, split_b = asyncio.run(load(series.url, key, texts, 1, 32, pids))
    c, _, split_c = asyncio.run(load(series.url, key, texts, 32, 4, pids))
    lat.sort()
    row: dict[str, Any] = {
        "single": b,
        "batched": c,
        "p50_ms": statistics.median(lat) * 1000,
        "p99_ms": lat[max(0, int(len(lat) * 0.99) - 1)] * 1000,
        "ratio": b / anchor,
        "ratio_batched": c / anchor,
    }
    if pids:
        row["conns_single"], row["conns_batched"] = split_b, split_c
    series.rounds.append(row)
    return row


def median_of(series: Series, key: str) -> float:
    return float(statistics.median(r[key] for r in series.rounds))


def main() -> None:
    default, backend_default = service_default()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--backend",
        choices=["torch", "onnx", "onnx-int8"],
        default=default,
        help=f"the service's backend (default: the service's own default, {default}); "
        "onnx-int8: EMBEDDINGS_BACKEND=onnx EMBEDDINGS_ONNX_QUANTIZATION=int8",
    )
    parser.add_argument(
        "--workers-series",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also measure the backend with 2 uvicorn workers, 1 intra-op thread each",
    )
    parser.add_argument(
        "--int8-series",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also measure ONNX int8 with 1 worker",
    )
    args = parser.parse_args()

    texts = make_texts(args.texts)
    key = "sk-bench-key"
    key_hash = hashlib.sha256(key.encode()).hexdigest()
    main_series = Series("main", args.backend)
    services = [main_series]
    workers_2 = Series("workers_2", args.backend, workers=2, threads=1)
    if args.workers_series:
        services.append(workers_2)
    int8 = main_series if args.backend == "onnx-int8" else Series("int8", "onnx-int8")
    if args.int8_series and int8 is not main_series:
        services.append(int8)

    model = load_model()
    model.encode(texts[:64], batch_size=32)  # warm-up
    anchors: list[float] = []
    first_start: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-embeddings-") as tmp:
        run_dir = Path(tmp)
        try:
            # Every service starts before the first round: the first start of each backend
            # exports its ONNX graph into the shared cache; later starts find it there.
            for s in services:
                t0 = time.perf_counter()
                s.proc, s.url = start("embeddings", service_env(s, key_hash, run_dir))
                elapsed = time.perf_counter() - t0
                first_start.setdefault(s.backend, elapsed)
                settle(s.proc.pid)
                print(f"started {s.label()} in {elapsed:.1f} s", file=sys.stderr)
                asyncio.run(load(s.url, key, texts[:128], 1, 32))  # warm-up
                asyncio.run(load(s.url, key, texts[:128], 32, 4))
            exports = sorted(p.name for p in (run_dir / "cache").rglob("*.onnx"))
            print(f"ONNX exports in the run's cache: {exports or 'none'}", file=sys.stderr)
            # Interleaved rounds: the anchor and the services see the same machine state, and
            # only one of them runs at a time, so they never compete for the cores.
            for i in range(args.rounds):
                a = bench_inprocess(model, texts)
                anchors.append(a)
                parts = [f"round {i + 1}: (a) in-process encode, batch 32 {a:7.1f} texts/s"]
                for s in services:
                    row = measure(s, key, texts, a)
                    conns = ""
                    if "conns_single" in row:
                        conns = (
                            f" conns/worker {'/'.join(map(str, row['conns_single']))}, "
                            f"{'/'.join(map(str, row['conns_batched']))}"
                        )
                    parts.append(
                        f"  {s.label()}: (b) 32 clients x 1 text {row['single']:7.1f} | "
                        f"(c) 4 clients x 32 texts {row['batched']:7.1f} | "
                        f"b/a {row['ratio']:.3f}{conns}"
                    )
                print("\n".join(parts), file=sys.stderr)
        finally:
            for s in services:
                if s.proc is not None:
                    stop(s.proc)

    def med(series: Series, k: str) -> float | None:
        return median_of(series, k) if series.rounds else None

    def per_round(num: Series, den: Series, k: str) -> float | None:
        if not num.rounds or not den.rounds:
            return None
        pairs = zip(num.rounds, den.rounds, strict=True)
        return float(statistics.median(n[k] / d[k] for n, d in pairs))

    result: dict[str, Any] = {
        "backend": args.backend,
        "backend_default": backend_default,
        "texts": args.texts,
        "rounds": args.rounds,
        "inprocess_texts_per_s": statistics.median(anchors),
        "service_single_texts_per_s": med(main_series, "single"),
        "service_batched_texts_per_s": med(main_series, "batched"),
        "single_p50_ms": med(main_series, "p50_ms"),
        "single_p99_ms": med(main_series, "p99_ms"),
        "ratio": med(main_series, "ratio"),
        "ratio_batched": med(main_series, "ratio_batched"),
        "ratio_min": min(r["ratio"] for r in main_series.rounds),
        "texts_per_s_workers_1": med(main_series, "single"),
        "texts_per_s_workers_1_batched": med(main_series, "batched"),
        "texts_per_s_workers_2": med(workers_2, "single"),
        "texts_per_s_workers_2_batched": med(workers_2, "batched"),
        "workers_2_over_1": per_round(workers_2, main_series, "single"),
        "workers_2_over_1_batched": per_round(workers_2, main_series, "batched"),
        "workers_2_torch_threads": workers_2.threads if workers_2.rounds else None,
        "workers_2_p50_ms": med(workers_2, "p50_ms"),
        "workers_2_p99_ms": med(workers_2, "p99_ms"),
        "workers_2_conns_single": [r["conns_single"] for r in workers_2.rounds] or None,
        "workers_2_conns_batched": [r["conns_batched"] for r in workers_2.rounds] or None,
        "texts_per_s_int8": med(int8, "single") if args.int8_series else None,
        "texts_per_s_int8_batched": med(int8, "batched") if args.int8_series else None,
        "ratio_int8": med(int8, "ratio") if args.int8_series else None,
        "ratio_int8_batched": med(int8, "ratio_batched") if args.int8_series else None,
        "int8_p50_ms": med(int8, "p50_ms") if args.int8_series else None,
        "int8_p99_ms": med(int8, "p99_ms") if args.int8_series else None,
        **{f"first_start_s_{b.replace('-', '_')}": t for b, t in first_start.items()},
        "max_wait_ms": EmbeddingsSettings.model_fields["max_wait_ms"].default,
        "cores": os.cpu_count(),
    }
    for k, v in result.items():
        if isinstance(v, float):
            three = k.startswith(("ratio", "workers_2_over"))
            result[k] = round(v, 3 if three else 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
