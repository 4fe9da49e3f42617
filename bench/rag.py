"""RAG service: the platform's overhead on ``POST /v1/ask``, beside the bare model calls.

    .venv/bin/python bench/rag.py      # about 3 minutes on a quiet 2-core machine
        [--asks 400] [--warmup 40] [--fake-latency-ms 50] [--vector-searches 100]
        [--embeddings-max-wait-ms MS]     # default: the embeddings service's own (0 ms)
        [--concurrency-duration 15] [--concurrency-warmup 2] [--no-concurrency]

What runs, all on this machine, every service as its own process (``llmops serve NAME``, one
worker, ENV=dev since they all share this machine, API-key auth, metrics and JSON access log on,
no trace exporter):

* the embeddings service (all-MiniLM-L6-v2, the default ONNX backend);
* retrieval on local Qdrant, with a collection ingested through it: the tests' three handbook
  pages plus this repository's README.md and docs/benchmarks.md, chunked at the defaults;
* the fake OpenAI-compatible upstream (``tests/fakes/openai_upstream.py --latency-ms 50``),
  scripted to answer a fixed text with a citation ``[1]``;
* the LLM proxy in front of it (SQLite key store, limits through the local Redis), the rag
  service calling it with a virtual key of its own;
* feedback on a fresh PostgreSQL database (created here, dropped at the end), which the rag
  service's outbox delivers every interaction to;
* rag, asked by this script.

**Overhead** of one ask = the client's wall time of ``POST /v1/ask`` minus the model compute in
it, as the services themselves timed it: the embedding forward pass (the embeddings service's
``llmops_embeddings_inference_seconds``) and the LLM call (the proxy's
``llmops_llm_upstream_seconds``: the upstream attempt as the proxy timed it, the fake's fixed
latency plus the proxy-to-fake hop). The asks go one at a time, and every service's
``/metrics`` is scraped just before and just after each ask, outside the timed window. So the
deltas of those histograms' sums are that one ask's own figures, and p50/p99 are percentiles of
real per-ask values. The scrape also checks that each ask made exactly one forward pass and one
upstream attempt. The same deltas give the rest of the chain (rag's ``llmops_rag_stage_seconds``,
retrieval's search time, each service's HTTP time, the proxy's own time), so the overhead is
broken down by where it goes. After the asks, ``--vector-searches`` searches with a ready vector
time retrieval's search handler without the embedding call (local Qdrant plus result building).

**Anchor, in the same run**: the bare model calls, each ask alternating with them (order flipped
every iteration): the same question embedded by ``POST /v1/embeddings`` on the embeddings service
(the body retrieval sends), then the same chat completion posted straight to the fake upstream
(the body the proxy sent it for that question, captured during the warm-up).

Each measured ask's ``Server-Timing`` header is read too: its ``total`` is rag's pipeline total,
the same measurement as ``llmops_rag_stage_seconds{stage="total"}``, so
``server_timing_ms_p50`` and ``rag_pipeline_total_ms_p50`` agree (each stage within the
header's 0.05 ms rounding: ``server_timing_vs_pipeline_ms_max``).

**Throughput**, after that (``--no-concurrency`` skips it): at concurrency 1, 4 and 16, as many
clients (threads of this script, each on its own keep-alive connection) ask in a loop, no pause,
for ``--concurrency-warmup`` then ``--concurrency-duration`` seconds; asks/s and the latency
percentiles are those of the asks completed in the measured window. Between two snapshots at
the window's ends: each service's CPU time (utime + stime in /proc of every process of its
session) as a fraction of one core, this client's own, the machine's busy share, and the
services' metrics (rag's stage means, the embeddings batch size and forward passes/s, the
proxy's and retrieval's times); sampled every 0.5 s in the window: the embeddings queue depth,
requests in flight per service, rag's outbox depth. ``saturates_first`` is the first service
at >= 90% of a core, lowest concurrency first; when none gets there (on 2 cores the machine
as a whole may fill up first: ``machine_busy``), the busiest one at concurrency 16, and
``saturates_first_why`` says which case it is.

Progress goes to stderr; the last line on stdout is one JSON object. Target: overhead <= 15 ms
at p50 (``met_target``). Other processes' CPU time during the measured asks is recorded
(``foreign_cpu_s``, per quarter of the run, and per concurrency level) to tell a disturbed run
from a slow one.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import yaml
from _services import ROOT, free_port, processes, stop_group
from feedback import ForeignCPU

PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}
REDIS_URL = "redis://127.0.0.1:6379/15"
KEY = "sk-bench-rag-" + secrets.token_urlsafe(16)
MASTER = "mk-bench-rag-" + secrets.token_urlsafe(24)
TARGET_MS_P50 = 15.0
EMBED_MODEL = "all-MiniLM-L6-v2"
COLLECTION = "bench"
REPLY = "Damaged items can be returned within 30 days for a full refund [1]."
FAKE = ROOT / "tests" / "fakes" / "openai_upstream.py"
QUESTIONS = [
    "Can I return a damaged item?",
    "Are digital goods refundable once downloaded?",
    "How long does standard shipping take?",
    "When does express shipping arrive?",
    "How quickly does the support desk answer email?",
    "When is phone support open?",
    "What does the LLM proxy add to latency?",
    "How many writes per second does the feedback service reach?",
    "Which embeddings backend meets its throughput target?",
    "How is the search overhead of the retrieval service measured?",
]
HANDBOOK = [
    {
        "id": "handbook/refunds.md",
        "text": "# Refunds\n\n## Damaged items\n\nDamaged items can be returned within 30 days "
        "for a full refund. Keep the original packaging.\n\n## Digital goods\n\nDigital goods "
        "are not refundable once downloaded.",
        "content_type": "text/markdown",
    },
    {
        "id": "handbook/shipping.md",
        "text": "# Shipping\n\nStandard shipping takes 3 to 5 business days. Express shipping "
        "arrives the next business day when ordered before noon.",
        "content_type": "text/markdown",
    },
    {
        "id": "handbook/support.md",
        "text": "# Support\n\nThe support desk answers email within one business day. Phone "
        "support is open from 9 to 17 on weekdays.",
        "content_type": "text/markdown",
    },
]

# Histogram sums (and counts) read from each service per ask: (service, name, label text).
SERIES: dict[str, tuple[str, str, str]] = {
    "emb_infer": ("embeddings", "llmops_embeddings_inference_seconds", ""),
    "emb_http": (
        "embeddings",
        "llmops_http_request_duration_seconds",
        '{method="POST",route="/v1/embeddings"}',
    ),
    "ret_search": ("retrieval", "llmops_retrieval_search_seconds", ""),
    "ret_http": (
        "retrieval",
        "llmops_http_request_duration_seconds",
        '{method="POST",route="/v1/collections/{name}/search"}',
    ),
    "proxy_upstream": ("proxy", "llmops_llm_upstream_seconds", '{deployment="fake"}'),
    "proxy_request": ("proxy", "llmops_llm_request_seconds", '{alias="smollm2"}'),
    "proxy_own": ("proxy", "llmops_llm_overhead_seconds", ""),
    "proxy_http": (
        "proxy",
        "llmops_http_request_duration_seconds",
        '{method="POST",route="/v1/chat/completions"}',
    ),
    "rag_retrieval": ("rag", "llmops_rag_stage_seconds", '{stage="retrieval"}'),
    "rag_prompt": ("rag", "llmops_rag_stage_seconds", '{stage="prompt"}'),
    "rag_llm": ("rag", "llmops_rag_stage_seconds", '{stage="llm"}'),
    "rag_total": ("rag", "llmops_rag_stage_seconds", '{stage="total"}'),
    "rag_http": ("rag", "llmops_http_request_duration_seconds", '{method="POST",route="/v1/ask"}'),
}
SCRAPED = ("embeddings", "retrieval", "proxy", "rag")
REPORTED = (
    "total", "rag_latency_ms", "model", "emb_infer", "proxy_upstream", "upstream_minus_fake",
    "overhead", "anchor", "anchor_embed", "anchor_embed_infer", "anchor_chat", "ask_minus_anchor",
    "rag_http", "rag_total", "rag_retrieval", "rag_llm", "ret_search", "emb_http", "proxy_request",
    "proxy_own",
)  # fmt: skip

# Where the overhead goes: consecutive slices of one ask that add up to its overhead exactly.
SLICES: dict[str, str] = {
    "rag_http_layer": "client wall time - rag's pipeline total (client, loopback, uvicorn, rag's "
    "middleware, auth, request validation, the outbox's fsync, response JSON)",
    "rag_pipeline_own": "rag pipeline total - its retrieval, prompt and llm stages (context "
    "numbering, rendering, citations, metrics)",
    "rag_prompt_stage": "rag's prompt stage (bundled prompt: no registry call)",
    "rag_to_retrieval_hop": "rag's retrieval stage - retrieval's search handler time (client, "
    "HTTP, retrieval's middleware and auth)",
    "retrieval_own": "retrieval's search handler - the embeddings service's HTTP time (Qdrant "
    "search, result building, the embeddings client hop)",
    "embeddings_non_inference": "embeddings HTTP time - forward pass time (tokenizing, the "
    "batcher's wait for a fuller batch, thread hand-off, base64 answer)",
    "rag_to_proxy_hop": "rag's llm stage - the proxy's request time (client, HTTP, proxy "
    "middleware and auth)",
    "proxy_own": "the proxy's own time, total minus upstream (its llm_overhead_seconds)",
}


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- processes


def base_env(**extra: str) -> dict[str, str]:
    drop = (
        "EMBEDDINGS_", "RETRIEVAL_", "LLM_PROXY_", "LOCAL_LLM_", "FEEDBACK_", "RAG_",
        "LANGFUSE_", "LLMOPS_", "PROMETHEUS_", "OTEL_", "MLFLOW_",
    )  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop) and k != "ENV"}
    # ENV=dev: all of the platform on one machine (loopback URLs, embedded Qdrant).
    env |= {"ENV": "dev", "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", **extra}
    return env


class Proc:
    """One process in its own session, its output in a log file; ready when ``ready`` is 200."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], workdir: Path) -> None:
        self.name = name
        self.log_path = workdir / f"{name}.log"
        with open(self.log_path, "wb") as fh:
            self.proc = subprocess.Popen(
                cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
            )

    def wait_ready(self, url: str, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url, timeout=2).status_code == 200:
                    log(f"{self.name} ready")
                    return
            time.sleep(0.2)
        raise SystemExit(f"{self.name} not ready after {timeout} s:\n{self.tail()}")

    def tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        stop_group(self.proc, timeout=30)


def serve(name: str, env: dict[str, str], workdir: Path) -> tuple[Proc, str]:
    port = free_port()
    exe = ROOT / ".venv" / "bin" / "llmops"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "services.cli.main"]
    cmd += ["serve", name, "--port", str(port), "--workers", "1"]
    proc = Proc(name, cmd, base_env(**env), workdir)
    url = f"http://127.0.0.1:{port}"
    proc.wait_ready(f"{url}/readyz")
    return proc, url


@contextlib.contextmanager
def fresh_database() -> Iterator[str]:
    name = f"llmops_bench_rag_{os.getpid()}_{secrets.token_hex(3)}"
    with psycopg.connect(dbname="postgres", autocommit=True, **PG) as conn:  # type: ignore[arg-type]
        conn.execute(f'CREATE DATABASE "{name}"')
    log(f"created database {name}")
    try:
        yield name
    finally:
        with psycopg.connect(dbname="postgres", autocommit=True, **PG) as conn:  # type: ignore[arg-type]
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        log(f"dropped database {name}")


class Platform:
    """The whole stack; :meth:`close` stops what was started, last first."""

    def __init__(
        self, workdir: Path, db: str, fake_latency_ms: float, embed_wait_ms: float | None
    ) -> None:
        self.workdir = workdir
        self.procs: list[Proc] = []
        self.urls: dict[str, str] = {}
        digest = hashlib.sha256(KEY.encode()).hexdigest()
        auth = {"Authorization": f"Bearer {KEY}"}

        emb_env = {"EMBEDDINGS_API_KEY_HASHES": digest}
        if embed_wait_ms is not None:
            emb_env["EMBEDDINGS_MAX_WAIT_MS"] = str(embed_wait_ms)
        self._serve("embeddings", emb_env)
        self._serve(
            "retrieval",
            {
                "RETRIEVAL_API_KEY_HASHES": digest,
                "RETRIEVAL_EMBEDDINGS_URL": self.urls["embeddings"],
                "RETRIEVAL_EMBEDDINGS_API_KEY": KEY,
                "RETRIEVAL_QDRANT_PATH": str(workdir / "qdrant"),
            },
        )
        docs = [*HANDBOOK, *(self._repo_doc(p) for p in ("README.md", "docs/benchmarks.md"))]
        with httpx.Client(base_url=self.urls["retrieval"], headers=auth, timeout=300) as api:
            r = api.post("/v1/collections", json={"name": COLLECTION})
            if r.status_code != 201:
                raise SystemExit(f"create collection -> {r.status_code}: {r.text[:300]}")
            r = api.post(f"/v1/collections/{COLLECTION}/documents", json={"documents": docs})
            if r.status_code != 200:
                raise SystemExit(f"ingest -> {r.status_code}: {r.text[:300]}")
            self.chunks = sum(int(x["chunks"]) for x in r.json()["results"])
        log(f"ingested {len(docs)} documents, {self.chunks} chunks")

        port = free_port()
        fake = Proc(
            "fake-upstream",
            [sys.executable, str(FAKE), "--port", str(port), "--name", "bench",
             "--latency-ms", str(fake_latency_ms)],
            base_env(),
            workdir,
        )  # fmt: skip
        self.procs.append(fake)
        self.urls["fake"] = f"http://127.0.0.1:{port}"
        fake.wait_ready(f"{self.urls['fake']}/readyz", 30)
        httpx.post(f"{self.urls['fake']}/_script", json={"content": REPLY}).raise_for_status()

        routing = {
            "deployments": [
                {
                    "name": "fake",
                    "provider": "openai",
                    "api_base": f"{self.urls['fake']}/v1",
                    "model": "fake-model",
                    "api_key_env": "FAKE_UPSTREAM_KEY",
                    "timeout_s": 30,
                }
            ],
            "aliases": {"smollm2": {"deployments": [{"deployment": "fake"}]}},
        }
        (workdir / "routing.yaml").write_text(yaml.safe_dump(routing))
        self._serve(
            "llm-proxy",
            {
                "LLM_PROXY_MASTER_KEY": MASTER,
                "LLM_PROXY_CONFIG_PATH": str(workdir / "routing.yaml"),
                "LLM_PROXY_DATABASE_URL": f"sqlite:///{workdir}/proxy.db",
                "LLM_PROXY_REDIS_URL": REDIS_URL,
                "FAKE_UPSTREAM_KEY": "fake",
            },
            key="proxy",
        )
        r = httpx.post(
            f"{self.urls['proxy']}/admin/keys",
            json={"name": "rag-bench", "aliases": ["smollm2"], "rpm": 10**8, "tpm": 2 * 10**9},
            headers={"Authorization": f"Bearer {MASTER}"},
            timeout=10,
        )
        if r.status_code != 201:
            raise SystemExit(f"POST /admin/keys -> {r.status_code}: {r.text[:300]}")
        virtual_key = str(r.json()["key"])

        self._serve(
            "feedback",
            {
                "FEEDBACK_API_KEY_HASHES": digest,
                "FEEDBACK_DATABASE_URL": f"postgresql+psycopg://postgres@127.0.0.1:5432/{db}",
                "FEEDBACK_SPOOL_DIR": str(workdir / "feedback-spool"),
            },
        )
        self._serve(
            "rag",
            {
                "RAG_API_KEY_HASHES": digest,
                "RAG_RETRIEVAL_URL": self.urls["retrieval"],
                "RAG_RETRIEVAL_API_KEY": KEY,
                "RAG_PROXY_URL": self.urls["proxy"],
                "RAG_PROXY_API_KEY": virtual_key,
                "RAG_FEEDBACK_URL": self.urls["feedback"],
                "RAG_FEEDBACK_API_KEY": KEY,
                "RAG_DEFAULT_COLLECTION": COLLECTION,
                "RAG_OUTBOX_DIR": str(workdir / "rag-outbox"),
            },
        )

    def _serve(self, name: str, env: dict[str, str], key: str | None = None) -> None:
        proc, url = serve(name, env, self.workdir)
        self.procs.append(proc)
        self.urls[key or name] = url

    @staticmethod
    def _repo_doc(path: str) -> dict[str, str]:
        text = (ROOT / path).read_text()
        return {"id": f"repo/{path}", "text": text, "content_type": "text/markdown"}

    def close(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()


# ----------------------------------------------------------------------------- measuring


class Conn:
    """One keep-alive HTTP/1.1 connection (``http.client``): little client cost per request."""

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.conn = http.client.HTTPConnection(host, int(port), timeout=60)
        self.headers = {"Content-Type": "application/json", **headers}
        self.server_timing: str | None = None  # the last answer's Server-Timing header

    def post(self, path: str, body: bytes) -> tuple[float, int, bytes]:
        """(wall milliseconds, status, body)."""
        start = time.perf_counter()
        self.conn.request("POST", path, body=body, headers=self.headers)
        resp = self.conn.getresponse()
        data = resp.read()
        ms = (time.perf_counter() - start) * 1000.0
        self.server_timing = resp.getheader("server-timing")
        return ms, resp.status, data


def parse_server_timing(header: str | None) -> dict[str, float]:
    """``retrieval;dur=12.3, prompt;dur=0.0, ...`` -> {name: ms} (W3C Server Timing, dur only)."""
    if not header:
        raise SystemExit("/v1/ask answered without a Server-Timing header")
    out: dict[str, float] = {}
    for entry in header.split(","):
        name, *params = (part.strip() for part in entry.split(";"))
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "dur":
                out[name] = float(value)
    return out


class Scraper:
    """Histogram sums and counts (and the outbox counter) from the services' ``/metrics``."""

    def __init__(self, urls: dict[str, str]) -> None:
        self.clients = {s: httpx.Client(base_url=urls[s], timeout=10) for s in SCRAPED}

    def scrape(self, services: tuple[str, ...] = SCRAPED) -> dict[str, float]:
        out: dict[str, float] = {}
        for service in services:
            text = self.clients[service].get("/metrics").text
            for line in text.splitlines():
                if not line.startswith("llmops_"):
                    continue
                key, _, value = line.rpartition(" ")
                name = key.split("{", 1)[0]
                if name.endswith(("_sum", "_count")) or name == "llmops_rag_outbox_sent_total":
                    out[f"{service}:{key}"] = float(value)
        return out

    def close(self) -> None:
        for c in self.clients.values():
            c.close()


def series(snap: dict[str, float], what: str, suffix: str) -> float:
    service, name, labels = SERIES[what]
    return snap.get(f"{service}:{name}_{suffix}{labels}", 0.0)


def deltas(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Milliseconds per series between two scrapes; ``n_<series>``: observations."""
    out: dict[str, float] = {}
    for what in SERIES:
        out[what] = (series(after, what, "sum") - series(before, what, "sum")) * 1000.0
        out[f"n_{what}"] = series(after, what, "count") - series(before, what, "count")
    return out


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def summary(values: list[float]) -> dict[str, float]:
    return {
        "min": round(min(values), 3),
        "p50": round(percentile(values, 0.50), 3),
        "p90": round(percentile(values, 0.90), 3),
        "p99": round(percentile(values, 0.99), 3),
        "mean": round(sum(values) / len(values), 3),
    }


def ask_once(rag: Conn, question: str) -> tuple[float, dict[str, Any]]:
    ms, status, raw = rag.post("/v1/ask", json.dumps({"question": question}).encode())
    if status != 200:
        raise SystemExit(f"/v1/ask -> {status}: {raw[:500]!r}")
    data: dict[str, Any] = json.loads(raw)
    if data["degraded"] or [c["marker"] for c in data["citations"]] != ["[1]"]:
        raise SystemExit(f"unexpected answer: {raw[:800]!r}")
    return ms, data


def run(args: argparse.Namespace, p: Platform) -> dict[str, Any]:
    auth = {"Authorization": f"Bearer {KEY}"}
    rag = Conn(p.urls["rag"], auth)
    emb = Conn(p.urls["embeddings"], auth)
    fake = Conn(p.urls["fake"], {})
    scraper = Scraper(p.urls)
    embed_bodies = {
        q: json.dumps({"model": EMBED_MODEL, "input": [q], "encoding_format": "base64"}).encode()
        for q in QUESTIONS
    }
    chat_bodies: dict[str, bytes] = {}

    log(f"warm-up: {args.warmup} asks and as many bare model calls")
    for i in range(max(args.warmup, len(QUESTIONS))):
        q = QUESTIONS[i % len(QUESTIONS)]
        ask_once(rag, q)
        if q not in chat_bodies:  # what the proxy sent the upstream for this question
            sent = httpx.get(f"{p.urls['fake']}/_requests").json()
            chat_bodies[q] = json.dumps(sent[-1]["body"]).encode()
        emb.post("/v1/embeddings", embed_bodies[q])
        fake.post("/v1/chat/completions", chat_bodies[q])

    rows: list[dict[str, float]] = []
    anomalies: list[str] = []
    quarters = [ForeignCPU() for _ in range(4)]
    per_quarter = -(-args.asks // 4)
    log(f"measuring: {args.asks} asks, each beside the bare model calls, order alternating")
    t_run = time.perf_counter()
    for i in range(args.asks):
        if i % per_quarter == 0:
            if i:
                quarters[i // per_quarter - 1].__exit__(None, None, None)
            quarters[i // per_quarter].__enter__()
        q = QUESTIONS[i % len(QUESTIONS)]
        row: dict[str, float] = {}

        def asked(row: dict[str, float] = row, q: str = q) -> None:
            before = scraper.scrape()
            row["total"], data = ask_once(rag, q)
            after = scraper.scrape()
            row |= deltas(before, after)
            row["rag_latency_ms"] = float(data["latency_ms"])
            # The answer's own Server-Timing (ms to 0.1): the same figures as the metric's.
            timing = parse_server_timing(rag.server_timing)
            row["st_total"] = timing["total"]
            row["st_check"] = max(
                abs(timing[stage] - row[f"rag_{stage}"])
                for stage in ("retrieval", "prompt", "llm", "total")
            )

        def bare(row: dict[str, float] = row, q: str = q) -> None:
            before = scraper.scrape(("embeddings",))
            row["anchor_embed"], s1, _ = emb.post("/v1/embeddings", embed_bodies[q])
            after = scraper.scrape(("embeddings",))
            row["anchor_embed_infer"] = deltas(before, after)["emb_infer"]
            row["anchor_chat"], s2, _ = fake.post("/v1/chat/completions", chat_bodies[q])
            if (s1, s2) != (200, 200):
                raise SystemExit(f"bare model calls answered {s1}, {s2}")

        if i % 2:
            bare()
            asked()
        else:
            asked()
            bare()
        for what in ("emb_infer", "proxy_upstream", "rag_total", "rag_http", "ret_search"):
            if row[f"n_{what}"] != 1:
                anomalies.append(f"ask {i}: {row[f'n_{what}']:g} observations of {what}")
        rows.append(row)
        if (i + 1) % 100 == 0:
            done = [r["total"] - r["emb_infer"] - r["proxy_upstream"] for r in rows]
            log(f"  {i + 1}/{args.asks} asks, overhead p50 so far {percentile(done, 0.5):.2f} ms")
    quarters[(args.asks - 1) // per_quarter].__exit__(None, None, None)
    run_s = time.perf_counter() - t_run

    # Side measure: retrieval's search handler given the vector (no embedding call): what the
    # search itself costs (local Qdrant, result building), to split ``retrieval_own``.
    ret = Conn(p.urls["retrieval"], auth)
    by_vector: list[float] = []
    for i in range(args.vector_searches):
        q = QUESTIONS[i % len(QUESTIONS)]
        _, _, raw = emb.post("/v1/embeddings", embed_bodies[q].replace(b"base64", b"float"))
        vector = json.loads(raw)["data"][0]["embedding"]
        body = json.dumps({"vector": vector, "top_k": 4}).encode()
        before = scraper.scrape(("retrieval",))
        _, status, raw = ret.post(f"/v1/collections/{COLLECTION}/search", body)
        if status != 200:
            raise SystemExit(f"search by vector -> {status}: {raw[:300]!r}")
        by_vector.append(deltas(before, scraper.scrape(("retrieval",)))["ret_search"])

    # The outbox delivers asynchronously: wait for every interaction to reach feedback.
    expected = len(rows) + max(args.warmup, len(QUESTIONS))
    sent = 0.0
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        sent = scraper.scrape(("rag",)).get("rag:llmops_rag_outbox_sent_total", 0.0)
        if sent >= expected:
            break
        time.sleep(0.2)
    scraper.close()

    for r in rows:
        r["model"] = r["emb_infer"] + r["proxy_upstream"]
        r["overhead"] = r["total"] - r["model"]
        r["anchor"] = r["anchor_embed"] + r["anchor_chat"]
        r["ask_minus_anchor"] = r["total"] - r["anchor"]
        r["upstream_minus_fake"] = r["proxy_upstream"] - args.fake_latency_ms
        r["rag_http_layer"] = r["total"] - r["rag_total"]
        r["rag_pipeline_own"] = r["rag_total"] - r["rag_retrieval"] - r["rag_prompt"] - r["rag_llm"]
        r["rag_prompt_stage"] = r["rag_prompt"]
        r["rag_to_retrieval_hop"] = r["rag_retrieval"] - r["ret_search"]
        r["retrieval_own"] = r["ret_search"] - r["emb_http"]
        r["embeddings_non_inference"] = r["emb_http"] - r["emb_infer"]
        r["rag_to_proxy_hop"] = r["rag_llm"] - r["proxy_request"]
        # proxy_own is the proxy's own series; the slices add up to the overhead exactly.
        r["slice_check"] = r["overhead"] - sum(r[s] for s in SLICES)

    col = {k: [r[k] for r in rows] for k in rows[0]}
    over = summary(col["overhead"])
    result: dict[str, Any] = {
        "overhead_ms_p50": over["p50"],
        "overhead_ms_p99": over["p99"],
        "total_ms_p50": summary(col["total"])["p50"],
        "total_ms_p99": summary(col["total"])["p99"],
        "model_ms_p50": summary(col["model"])["p50"],
        "embed_inference_ms_p50": summary(col["emb_infer"])["p50"],
        "llm_upstream_ms_p50": summary(col["proxy_upstream"])["p50"],
        "anchor_direct_ms_p50": summary(col["anchor"])["p50"],
        "anchor_direct_ms_p99": summary(col["anchor"])["p99"],
        "ask_minus_anchor_ms_p50": summary(col["ask_minus_anchor"])["p50"],
        "ask_minus_anchor_ms_p99": summary(col["ask_minus_anchor"])["p99"],
        "target_ms_p50": TARGET_MS_P50,
        "met_target": over["p50"] <= TARGET_MS_P50,
        "asks": len(rows),
        "errors": 0,  # any failed ask or model call stops the run with its answer
        "anomalies": len(anomalies),
        "outbox_delivered": int(sent),
        "outbox_expected": expected,
        "fake_latency_ms": args.fake_latency_ms,
        "embeddings_max_wait_ms": args.embeddings_max_wait_ms,
        "chunks": p.chunks,
        "foreign_cpu_s_quarters": [round(f.seconds, 1) for f in quarters],
        "overhead_ms_p50_quarters": [
            round(percentile(col["overhead"][k * per_quarter : (k + 1) * per_quarter], 0.5), 3)
            for k in range(4)
        ],
        "run_s": round(run_s, 1),
        "ms": {k: summary(col[k]) for k in REPORTED},
        "search_by_vector_handler_ms": summary(by_vector) if by_vector else None,
        "overhead_slices_ms": {s: summary(col[s]) for s in SLICES},
        "overhead_slices_ms_p50_quarters": {
            s: [
                round(percentile(col[s][k * per_quarter : (k + 1) * per_quarter], 0.5), 3)
                for k in range(4)
            ]
            for s in SLICES
        },
        "slice_check_ms_max": round(max(abs(x) for x in col["slice_check"]), 6),
        # The Server-Timing header's total beside rag's pipeline total (its stage metric):
        # the same measurement, so they agree up to the header's rounding (0.05 ms).
        "server_timing_ms_p50": summary(col["st_total"])["p50"],
        "rag_pipeline_total_ms_p50": summary(col["rag_total"])["p50"],
        "server_timing_vs_pipeline_ms_max": round(max(col["st_check"]), 3),
    }
    for a in anomalies[:10]:
        log(f"anomaly: {a}")
    return result


# ----------------------------------------------------------------------------- concurrency

LEVELS = (1, 4, 16)
CONCURRENCY_KEYS = (
    "asks_per_s_c1", "asks_per_s_c4", "asks_per_s_c16", "ask_ms_p50_c16", "ask_ms_p99_c16",
    "cpu_util_c16", "cpu_ms_per_ask_c16", "saturates_first",
)  # fmt: skip
SATURATED = 0.9  # a process at this fraction of one core (or more) is taken as saturated
SCRAPED_ALL = ("embeddings", "retrieval", "proxy", "feedback", "rag")  # those with /metrics
TICK = os.sysconf("SC_CLK_TCK")


def session_cpu(sessions: dict[int, str]) -> dict[str, float]:
    """CPU seconds (utime + stime, /proc/PID/stat) of every process in each service's session
    (each service was started in a session of its own: its workers and threads included)."""
    out = dict.fromkeys(sessions.values(), 0.0)
    for proc in processes():
        name = sessions.get(proc.session)
        if name is not None:
            out[name] += proc.cpu_ticks / TICK
    return out


def machine_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of all cores since boot, from /proc/stat."""
    with open("/proc/stat") as fh:
        values = [int(v) for v in fh.readline().split()[1:9]]
    return values[0] + values[1] + values[2] + sum(values[5:8]), sum(values)


def samples(text: str) -> dict[str, float]:
    """Every ``llmops_`` sample of a /metrics page: ``name{labels}`` -> value."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("llmops_"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


class Snapshot:
    """Clock, CPU seconds per service (and this client), the machine's jiffies and every
    service's metric samples, at one moment of a level."""

    def __init__(self, sessions: dict[int, str], clients: dict[str, httpx.Client]) -> None:
        self.t = time.perf_counter()
        self.cpu = session_cpu(sessions)
        own = os.times()
        self.cpu["client"] = own.user + own.system
        self.jiffies = machine_jiffies()
        self.metrics = {s: samples(c.get("/metrics").text) for s, c in clients.items()}


def level_run(
    p: Platform, n: int, warmup_s: float, duration_s: float, clients: dict[str, httpx.Client]
) -> dict[str, Any]:
    """``n`` clients, each on its own keep-alive connection, asking in a loop (the questions
    in turn, no pause) for ``warmup_s`` then ``duration_s``; the figures are those of the
    measured window alone (asks completed in it; CPU and metrics between its two snapshots)."""
    auth = {"Authorization": f"Bearer {KEY}"}
    bodies = [json.dumps({"question": q}).encode() for q in QUESTIONS]
    done: list[tuple[float, float, bool]] = []  # (completed at, wall ms, answered well)
    stop = threading.Event()

    def client(k: int) -> None:
        conn = Conn(p.urls["rag"], auth)
        i = k
        while not stop.is_set():
            body = bodies[i % len(bodies)]
            i += 1
            try:
                ms, status, raw = conn.post("/v1/ask", body)
                ok = status == 200 and not json.loads(raw)["degraded"]
            except (OSError, http.client.HTTPException, ValueError, KeyError):
                ms, ok = 0.0, False
                conn = Conn(p.urls["rag"], auth)
            done.append((time.perf_counter(), ms, ok))

    # Sampled gauges during the window: the embeddings queue, requests in flight (less the
    # scrape itself), rag's outbox depth.
    gauges: dict[str, list[float]] = {}
    window = threading.Event()

    def sampler() -> None:
        own = {s: httpx.Client(base_url=p.urls[s], timeout=10) for s in SCRAPED_ALL}
        while not stop.wait(0.5):
            if not window.is_set():
                continue
            for service, c in own.items():
                m = samples(c.get("/metrics").text)
                gauges.setdefault(f"in_flight:{service}", []).append(
                    m.get("llmops_http_requests_in_flight", 1.0) - 1
                )
                if service == "embeddings" and "llmops_embeddings_queue_depth" in m:
                    gauges.setdefault("emb_queue", []).append(m["llmops_embeddings_queue_depth"])
                if service == "rag":
                    gauges.setdefault("outbox", []).append(m.get("llmops_rag_outbox_depth", 0))
        for c in own.values():
            c.close()

    # CPU by the names SERIES and Platform.urls use ("proxy" for the llm-proxy service).
    sessions = {proc.proc.pid: {"llm-proxy": "proxy"}.get(proc.name, proc.name) for proc in p.procs}
    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(n)]
    threads.append(threading.Thread(target=sampler, daemon=True))
    with ForeignCPU() as foreign:
        for t in threads:
            t.start()
        time.sleep(warmup_s)
        a = Snapshot(sessions, clients)
        window.set()
        time.sleep(duration_s)
        b = Snapshot(sessions, clients)
        stop.set()
        for t in threads:
            t.join()
    seconds = b.t - a.t
    measured = [(ms, ok) for at, ms, ok in done if a.t <= at <= b.t]
    wall = [ms for ms, ok in measured if ok]
    asks = len(wall)

    def delta(service: str, key: str) -> float:
        return b.metrics[service].get(key, 0.0) - a.metrics[service].get(key, 0.0)

    def mean_ms(service: str, name: str, labels: str = "") -> float | None:
        count = delta(service, f"{name}_count{labels}")
        return round(delta(service, f"{name}_sum{labels}") / count * 1000, 3) if count else None

    cpu = {s: round((b.cpu[s] - a.cpu[s]) / seconds, 3) for s in a.cpu}
    busy = b.jiffies[0] - a.jiffies[0]
    total = b.jiffies[1] - a.jiffies[1]
    passes = delta("embeddings", "llmops_embeddings_batch_size_count")
    texts = delta("embeddings", "llmops_embeddings_batch_size_sum")

    def gauge(name: str) -> dict[str, float] | None:
        values = gauges.get(name)
        if not values:
            return None
        return {"mean": round(sum(values) / len(values), 2), "max": max(values)}

    stages = ("retrieval", "prompt", "llm", "total")
    return {
        "concurrency": n,
        "seconds": round(seconds, 2),
        "asks": asks,
        "errors": len(measured) - asks,
        "asks_per_s": round(asks / seconds, 2),
        "ask_ms": summary(wall) if wall else None,
        "cpu_util": cpu,  # fraction of one core, per service (and this client)
        "cpu_ms_per_ask": {
            s: round(u * 1000 / (asks / seconds), 3) if asks else None for s, u in cpu.items()
        },
        "machine_busy": round(busy / total, 3) if total else None,  # fraction of all cores
        "foreign_cpu_s": round(foreign.seconds, 1),
        "rag_stage_ms_mean": {
            s: mean_ms("rag", "llmops_rag_stage_seconds", f'{{stage="{s}"}}') for s in stages
        },
        "rag_http_ms_mean": mean_ms(*SERIES["rag_http"]),
        "retrieval_search_ms_mean": mean_ms(*SERIES["ret_search"]),
        "proxy_request_ms_mean": mean_ms(*SERIES["proxy_request"]),
        "proxy_upstream_ms_mean": mean_ms(*SERIES["proxy_upstream"]),
        "embeddings": {
            "forward_passes_per_s": round(passes / seconds, 2),
            "batch_size_mean": round(texts / passes, 2) if passes else None,
            "inference_ms_mean": mean_ms("embeddings", "llmops_embeddings_inference_seconds"),
            "queue_depth": gauge("emb_queue"),
            "rejected": delta("embeddings", "llmops_embeddings_queue_rejections_total"),
        },
        "in_flight": {s: gauge(f"in_flight:{s}") for s in clients},
        "rag_outbox_depth": gauge("outbox"),
        "ok_asks_all": sum(1 for _, _, ok in done if ok),  # warm-up and tail too: the outbox
    }


def saturation(levels: list[dict[str, Any]]) -> tuple[str, int | None, str]:
    """(service, concurrency, why): the first service at >= SATURATED of a core, the lowest
    level first (the busiest of several); when none gets there, the busiest at the top level.
    This client is left out (it is not the platform), but said when it is the one."""
    for lv in levels:
        hot = {s: u for s, u in lv["cpu_util"].items() if s != "client" and u >= SATURATED}
        if hot:
            name = max(hot, key=hot.__getitem__)
            return name, lv["concurrency"], f"{hot[name]:.2f} of a core at c{lv['concurrency']}"
    top = levels[-1]
    util = {s: u for s, u in top["cpu_util"].items() if s != "client"}
    name = max(util, key=util.__getitem__)
    why = (
        f"no process reached {SATURATED:.0%} of a core; the busiest at c{top['concurrency']} "
        f"({util[name]:.2f} of a core), the machine {top['machine_busy']:.0%} busy over "
        f"{os.cpu_count()} cores"
    )
    return name, None, why


def concurrency(args: argparse.Namespace, p: Platform, delivered_before: int) -> dict[str, Any]:
    clients = {s: httpx.Client(base_url=p.urls[s], timeout=10) for s in SCRAPED_ALL}
    levels: list[dict[str, Any]] = []
    ok_asks = 0
    try:
        for n in LEVELS:
            drained(clients["rag"])  # the last level's outbox backlog, not this level's load
            log(f"concurrency {n}: {args.concurrency_duration} s of asks (after "
                f"{args.concurrency_warmup} s of warm-up)")  # fmt: skip
            lv = level_run(p, n, args.concurrency_warmup, args.concurrency_duration, clients)
            ok_asks += lv.pop("ok_asks_all")
            levels.append(lv)
            busiest = sorted(lv["cpu_util"].items(), key=lambda kv: -kv[1])[:3]
            log(
                f"  {lv['asks_per_s']} asks/s, p50 {lv['ask_ms']['p50'] if lv['ask_ms'] else '-'}"
                f" ms, p99 {lv['ask_ms']['p99'] if lv['ask_ms'] else '-'} ms, errors "
                f"{lv['errors']}; CPU (of a core) "
                + ", ".join(f"{s} {u:.2f}" for s, u in busiest)
                + f"; machine {lv['machine_busy']:.0%} busy"
            )
        sent = drained(clients["rag"], expected=delivered_before + ok_asks)
    finally:
        for c in clients.values():
            c.close()
    name, at, why = saturation(levels)
    log(f"saturates first: {name} ({why})")
    by = {lv["concurrency"]: lv for lv in levels}
    c16 = by[16]
    return {
        "asks_per_s_c1": by[1]["asks_per_s"],
        "asks_per_s_c4": by[4]["asks_per_s"],
        "asks_per_s_c16": c16["asks_per_s"],
        "ask_ms_p50_c16": c16["ask_ms"]["p50"] if c16["ask_ms"] else None,
        "ask_ms_p99_c16": c16["ask_ms"]["p99"] if c16["ask_ms"] else None,
        "cpu_util_c16": c16["cpu_util"],
        "cpu_ms_per_ask_c16": c16["cpu_ms_per_ask"],  # what bench/sizing.py sizes from
        "saturates_first": name,
        "saturates_first_at": at,
        "saturates_first_why": why,
        "concurrency_errors": sum(lv["errors"] for lv in levels),
        "concurrency_outbox_delivered": int(sent - delivered_before),
        "concurrency_outbox_expected": ok_asks,
        "concurrency_duration_s": args.concurrency_duration,
        "concurrency_levels": levels,
    }


def drained(rag: httpx.Client, expected: float | None = None, timeout: float = 60) -> float:
    """Wait (at most ``timeout``) until rag's outbox is empty, and has sent ``expected``
    interactions in all when given; returns its sent count."""
    deadline = time.monotonic() + timeout
    while True:
        m = samples(rag.get("/metrics").text)
        sent = m.get("llmops_rag_outbox_sent_total", 0.0)
        if m.get("llmops_rag_outbox_depth", 0.0) == 0 and (expected is None or sent >= expected):
            return sent
        if time.monotonic() > deadline:
            log(f"outbox not drained after {timeout} s (depth {m.get('llmops_rag_outbox_depth')})")
            return sent
        time.sleep(0.2)


def _on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(f"terminated by signal {signum}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--asks", type=int, default=400, help="measured asks (sequential)")
    parser.add_argument("--warmup", type=int, default=40)
    parser.add_argument("--fake-latency-ms", type=float, default=50.0)
    parser.add_argument(
        "--vector-searches", type=int, default=100, help="searches by vector, after the asks"
    )
    parser.add_argument(
        "--embeddings-max-wait-ms",
        type=float,
        default=None,
        help="EMBEDDINGS_MAX_WAIT_MS for the embeddings service (default: its own, 0 ms)",
    )
    parser.add_argument(
        "--concurrency-duration",
        type=float,
        default=15.0,
        help="seconds measured at each concurrency (1, 4, 16), after the sequential asks",
    )
    parser.add_argument(
        "--concurrency-warmup", type=float, default=2.0, help="seconds before each measured one"
    )
    parser.add_argument(
        "--no-concurrency", action="store_true", help="only the sequential overhead measurement"
    )
    args = parser.parse_args()
    if args.asks < 4:
        parser.error("--asks: at least 4 (figures are also given per quarter of the run)")
    signal.signal(signal.SIGTERM, _on_sigterm)
    load_start = round(os.getloadavg()[0], 2)
    workdir = Path(tempfile.mkdtemp(prefix="llmops-bench-rag-"))
    platform: Platform | None = None
    try:
        with fresh_database() as db:
            try:
                platform = Platform(workdir, db, args.fake_latency_ms, args.embeddings_max_wait_ms)
                result = run(args, platform)
                if args.no_concurrency:
                    result |= dict.fromkeys(CONCURRENCY_KEYS)
                else:
                    result |= concurrency(args, platform, result["outbox_delivered"])
            finally:
                if platform is not None:
                    platform.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    result["cpus"] = os.cpu_count()
    result["loadavg_1m_start_end"] = [load_start, round(os.getloadavg()[0], 2)]
    over = result["overhead_slices_ms"]
    log(
        f"total p50 {result['total_ms_p50']} ms = model {result['model_ms_p50']} ms + overhead "
        f"{result['overhead_ms_p50']} ms (p99 {result['overhead_ms_p99']}); bare model calls "
        f"p50 {result['anchor_direct_ms_p50']} ms; target <= {TARGET_MS_P50} ms: "
        f"{'met' if result['met_target'] else 'NOT met'}"
    )
    for name, s in over.items():
        log(f"  {name:26s} p50 {s['p50']:7.3f}  mean {s['mean']:7.3f} ms  ({SLICES[name]})")
    if result["search_by_vector_handler_ms"]:
        s = result["search_by_vector_handler_ms"]
        log(f"  retrieval search handler given a vector: p50 {s['p50']} ms, mean {s['mean']} ms")
    log(
        f"Server-Timing total p50 {result['server_timing_ms_p50']} ms, rag pipeline total p50 "
        f"{result['rag_pipeline_total_ms_p50']} ms (largest difference in one ask "
        f"{result['server_timing_vs_pipeline_ms_max']} ms)"
    )
    if result["saturates_first"] is not None:
        log(
            f"asks/s at c1 / c4 / c16: {result['asks_per_s_c1']} / {result['asks_per_s_c4']} / "
            f"{result['asks_per_s_c16']}; saturates first: {result['saturates_first']} "
            f"({result['saturates_first_why']})"
        )
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
