"""The whole platform under a mixed load for a while (``LLMOPS_SOAK_S`` seconds; 10 in `make
test`, 600 with ``LLMOPS_RELIABILITY_LONG=1``): asks (plain and streamed), searches, ingests,
embeddings, chat through the proxy with a virtual key, feedback writes and reads, one thread
each. Every answer must be a 2xx (so no 5xx), every acknowledged write must be in PostgreSQL
afterwards, and no service may grow its memory like a leak would.

The memory bound: after a warm-up (first-use allocations, caches, pools), each service's RSS
(with its children) may grow by at most ``RSS_SLACK_MIB`` plus ``RSS_MIB_PER_10K`` per 10,000
requests it handled (counted by its own ``llmops_http_requests_total``). A service that kept
~4 KiB per request would grow 40 MiB per 10k: caught in the long run, where the allocator's
noise is small next to it; the short run only catches gross leaks.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import psycopg
import pytest

from tests.conftest import metric, scrape
from tests.reliability.conftest import WholePlatform, whole_platform
from tests.reliability.harness import SteadyLoad, long_mode, record, record_row, rss_kb, scaled

SOAK_S = float(os.environ.get("LLMOPS_SOAK_S") or scaled(10, 600))
WARMUP_S = scaled(3, 60)
RSS_SLACK_MIB = 48.0
RSS_MIB_PER_10K = 40.0
REPLY = "Damaged items can be returned within 30 days [1]."
TIMEOUT = 120.0
# The proxy and feedback answer in a few ms: unpaced, their threads would take the CPU the
# asks (embedding, search, generation) need, and the mix would be mostly proxy calls.
PAUSE_S = {"proxy-chat": 0.02, "feedback": 0.02}


@pytest.fixture(scope="module")
def whole(
    service_factory: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WholePlatform]:
    with whole_platform(service_factory, tmp_path_factory.mktemp("soak"), reply=REPLY) as p:
        yield p


def _sse_events(r: httpx.Response) -> list[Any]:
    events: list[Any] = []
    for line in r.iter_lines():
        if line.startswith("data: ") and line != "data: [DONE]":
            events.append(orjson.loads(line[6:]))
        elif line == "data: [DONE]":
            events.append("[DONE]")
    return events


class Loads:
    """One call per kind of request; each returns (status, acknowledged, detail)."""

    def __init__(self, p: WholePlatform) -> None:
        auth = {"Authorization": f"Bearer {p.keys.service}"}
        self.rag = httpx.Client(base_url=p.rag.url, headers=auth, timeout=TIMEOUT)
        self.retrieval = httpx.Client(base_url=p.retrieval.url, headers=auth, timeout=TIMEOUT)
        self.embeddings = httpx.Client(base_url=p.embeddings.url, headers=auth, timeout=TIMEOUT)
        self.feedback = httpx.Client(base_url=p.feedback.url, headers=auth, timeout=TIMEOUT)
        self.proxy = httpx.Client(
            base_url=p.proxy.url,
            headers={"Authorization": f"Bearer {p.virtual_key}"},
            timeout=TIMEOUT,
        )

    def close(self) -> None:
        for c in (self.rag, self.retrieval, self.embeddings, self.feedback, self.proxy):
            c.close()

    def ask(self, n: int) -> tuple[int, bool, Any]:
        r = self.rag.post("/v1/ask", json={"question": f"Can I return a damaged item? ({n})"})
        ok = r.status_code == 200
        return r.status_code, ok, r.json()["interaction_id"] if ok else r.text[:300]

    def ask_stream(self, n: int) -> tuple[int, bool, Any]:
        body = {"question": f"How fast is express shipping? ({n})", "stream": True}
        with self.rag.stream("POST", "/v1/ask", json=body) as r:
            if r.status_code != 200:
                r.read()
                return r.status_code, False, r.text[:300]
            events = _sse_events(r)
        final = [e for e in events if isinstance(e, dict) and "interaction_id" in e]
        errors = [e for e in events if isinstance(e, dict) and "error" in e]
        if errors or not final or events[-1] != "[DONE]":
            return 599, False, repr(events[-3:])  # a stream that failed after its 200
        return 200, True, final[-1]["interaction_id"]

    def search(self, n: int) -> tuple[int, bool, Any]:
        r = self.retrieval.post(
            "/v1/collections/handbook/search", json={"query": f"refund policy {n}", "top_k": 3}
        )
        return r.status_code, r.status_code == 200, None if r.is_success else r.text[:300]

    def ingest(self, n: int) -> tuple[int, bool, Any]:
        # A fixed set of ids, re-ingested: the data stays the same size, so growth is not data.
        doc = {
            "id": f"soak/doc-{n % 16}",
            "text": f"# Note {n}\n\nParcels are checked at the depot on weekday {n % 5}.",
        }
        r = self.retrieval.post("/v1/collections/soak/documents", json={"documents": [doc]})
        return r.status_code, r.status_code == 200, None if r.is_success else r.text[:300]

    def embed(self, n: int) -> tuple[int, bool, Any]:
        body = {"model": "all-MiniLM-L6-v2", "input": [f"soak text {n}", f"another {n}"]}
        r = self.embeddings.post("/v1/embeddings", json=body)
        return r.status_code, r.status_code == 200, None if r.is_success else r.text[:300]

    def chat(self, n: int) -> tuple[int, bool, Any]:
        body = {
            "model": "smollm2",
            "messages": [{"role": "user", "content": f"hello {n}"}],
            "max_tokens": 16,
        }
        if n % 2:
            r = self.proxy.post("/v1/chat/completions", json=body)
            return r.status_code, r.status_code == 200, None if r.is_success else r.text[:300]
        with self.proxy.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
            lines = list(r.iter_lines())
        done = r.status_code == 200 and "data: [DONE]" in lines
        if r.status_code == 200 and not done:
            return 599, False, lines[-3:]
        return r.status_code, done, None

    def feedback_write_read(self, n: int) -> tuple[int, bool, Any]:
        """An interaction, a rating on it, then both read back: acknowledged when both writes
        were (their ids are the detail, checked in PostgreSQL afterwards)."""
        iid = f"soak-{n}-{os.getpid()}"
        r = self.feedback.post(
            "/v1/interactions", json={"id": iid, "question": f"q {n}", "answer": f"a {n}"}
        )
        if r.status_code not in (201, 202):
            return r.status_code, False, r.text[:300]
        f = self.feedback.post(
            "/v1/feedback",
            json={"interaction_id": iid, "kind": "rating", "value": 1 + n % 5,
                  "idempotency_key": f"soak-fb-{iid}"},
        )  # fmt: skip
        if f.status_code not in (201, 202):
            return f.status_code, False, f.text[:300]
        fid = f.json()["id"]
        one = self.feedback.get(f"/v1/interactions/{iid}")
        listed = self.feedback.get("/v1/feedback", params={"interaction_id": iid})
        for read in (one, listed):
            if read.status_code != 200:
                return read.status_code, True, (iid, fid, read.text[:300])
        return 200, True, (iid, fid)


def _snapshot(p: WholePlatform) -> dict[str, tuple[int, float]]:
    """Per service: (RSS in KiB with its children, requests it has handled)."""
    return {
        name: (rss_kb(svc.proc.pid), metric(scrape(svc), "llmops_http_requests_total"))
        for name, svc in p.services().items()
    }


def _missing(pg_url: str, table: str, ids: list[str]) -> list[str]:
    with psycopg.connect(pg_url.replace("postgresql+psycopg://", "postgresql://")) as conn:
        rows = conn.execute(f"SELECT id::text FROM {table} WHERE id::text = ANY(%s)", (ids,))
        found = {r[0] for r in rows}
    return sorted(set(ids) - found)


def test_soak_mixed_load_no_5xx_no_loss_no_leak(whole: WholePlatform) -> None:
    auth = {"Authorization": f"Bearer {whole.keys.service}"}
    r = httpx.post(
        f"{whole.retrieval.url}/v1/collections", json={"name": "soak"}, headers=auth, timeout=60
    )
    assert r.status_code == 201, r.text
    calls = Loads(whole)
    kinds = {
        "ask": calls.ask,
        "ask-stream": calls.ask_stream,
        "search": calls.search,
        "ingest": calls.ingest,
        "embeddings": calls.embed,
        "proxy-chat": calls.chat,
        "feedback": calls.feedback_write_read,
    }
    loads = {
        k: SteadyLoad(call, threads=1, pause_s=PAUSE_S.get(k, 0.0)) for k, call in kinds.items()
    }
    try:
        for load in loads.values():
            load.__enter__()
        time.sleep(WARMUP_S)
        before = _snapshot(whole)
        time.sleep(SOAK_S)
        after = _snapshot(whole)
    finally:
        for load in loads.values():
            load.stop()
        calls.close()

    outcomes = {kind: load.outcomes for kind, load in loads.items()}
    total = sum(len(o) for o in outcomes.values())
    acked = sum(1 for o in outcomes.values() for x in o if x.acked)
    bad = {
        kind: [(x.status, x.detail) for x in o if not 200 <= x.status < 300][:5]
        for kind, o in outcomes.items()
    }
    bad = {k: v for k, v in bad.items() if v}
    per_kind = {kind: len(o) for kind, o in outcomes.items()}
    assert all(per_kind.values()), per_kind  # every kind ran

    # Every acknowledged write is in PostgreSQL: the asks' interactions (through rag's outbox)
    # and the feedback service's own writes.
    asked = [x.detail for k in ("ask", "ask-stream") for x in outcomes[k] if x.acked]
    written = [x.detail for x in outcomes["feedback"] if x.acked]
    deadline = time.monotonic() + 60
    while httpx.get(f"{whole.rag.url}/readyz", timeout=10).json().get("outbox_depth"):
        assert time.monotonic() < deadline, "rag's outbox never drained"
        time.sleep(0.2)
    deadline = time.monotonic() + 60
    while True:  # the outbox's last batch may still be in flight to feedback
        lost_interactions = _missing(
            whole.pg_url, "interactions", asked + [iid for iid, *_ in written]
        )
        lost_feedback = _missing(whole.pg_url, "feedback", [fid for _, fid, *_ in written])
        if not (lost_interactions or lost_feedback) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    lost = len(lost_interactions) + len(lost_feedback)

    growth: dict[str, dict[str, float]] = {}
    for name in before:
        (rss0, req0), (rss1, req1) = before[name], after[name]
        handled = int(req1 - req0)
        grew = (rss1 - rss0) / 1024
        growth[name] = {
            "requests": handled,
            "rss_before_mib": round(rss0 / 1024, 1),
            "rss_after_mib": round(rss1 / 1024, 1),
            "growth_mib": round(grew, 1),
            "growth_mib_per_10k": round(grew / handled * 10_000, 1) if handled else 0.0,
            "allowed_mib": round(RSS_SLACK_MIB + RSS_MIB_PER_10K * handled / 10_000, 1),
        }
    mode = "long" if long_mode() else "short"
    record(
        fault=f"none (soak {SOAK_S:g} s)",
        load=f"7 kinds, 1 thread each ({', '.join(f'{k} {v}' for k, v in per_kind.items())})",
        requests=total,
        acknowledged=acked,
        lost=lost,
        recovery=None,
        notes=f"{mode} mode, {WARMUP_S:g} s warm-up first; non-2xx: {sum(map(len, bad.values()))}; "
        f"checked in PostgreSQL: {len(asked)} ask interactions, {len(written)} interaction+"
        "feedback pairs",
    )
    for name, g in growth.items():
        record_row(
            "soak",
            service=name,
            requests=g["requests"],
            rss_before_mib=g["rss_before_mib"],
            rss_after_mib=g["rss_after_mib"],
            growth_mib_per_10k=g["growth_mib_per_10k"],
        )

    assert not bad, f"non-2xx answers (5xx, unanswered or failed streams): {bad}"
    assert lost == 0, {"interactions": lost_interactions[:5], "feedback": lost_feedback[:5]}
    leaking = {n: g for n, g in growth.items() if g["growth_mib"] > g["allowed_mib"]}
    assert not leaking, f"RSS grew past the bound (a leak?): {leaking}"
