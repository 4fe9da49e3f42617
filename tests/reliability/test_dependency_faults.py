"""A dependency fails under load and nothing acknowledged is lost: the MLflow prompt registry
stopped while rag answers asks, the embeddings service SIGKILLed while retrieval ingests, an LLM
upstream failing half of its calls while the proxy serves chat completions (also streamed).

Real processes throughout; each fault happens while a :class:`SteadyLoad` runs, and each test
records its row of docs/reliability.md with what it measured.
"""

from __future__ import annotations

import random
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml

from tests.conftest import API_KEY_HASH, ServiceProcess, auth_headers, metric
from tests.feedback.conftest import TcpProxy
from tests.llm_proxy.conftest import MASTER_KEY, FakeUpstream, Proxy, deployment
from tests.rag.conftest import MlflowServer
from tests.rag.platform import Platform, start_proxy, start_retrieval
from tests.reliability.harness import (
    SteadyLoad,
    ThreadClients,
    record,
    recovery_s,
    scaled,
    wait_until,
)
from tests.retrieval.conftest import retrieval_env

# --------------------------------------------------------------------------- 1. MLflow down

PROMPT = "Context:\n{{ context }}\n\nQuestion: {{ question }}\nAnswer with [n] citations. "
ASK_THREADS = 4


# MLflow's own SQLAlchemy store (used below while its server is down) warns about itself.
@pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning")
def test_mlflow_stopped_during_asks_no_ask_fails_and_the_alias_is_read_again(
    service_factory: Any, embeddings: ServiceProcess, tmp_path: Path
) -> None:
    """rag keeps answering every ask from its last-known-good prompt while the registry is
    down (longer than the cache TTL), and reads the alias again once it is back: the alias,
    moved while the server was down, is served from the registry after the restart."""
    from mlflow import MlflowClient

    fake = FakeUpstream("rel-mlflow", tmp_path)
    # The reply says which prompt version the LLM was given, so the answer proves it.
    httpx.post(
        f"{fake.url}/_script",
        json={"replies": [
            {"if_contains": "MARK-V1", "content": "Damaged items come back within 30 days [1]. V1"},
            {"if_contains": "MARK-V2", "content": "Damaged items come back within 30 days [1]. V2"},
        ]},
    ).raise_for_status()  # fmt: skip
    server = MlflowServer(tmp_path / "mlflow")
    with ThreadPoolExecutor(3) as pool:  # the three slow starts overlap
        started_server = pool.submit(server.start)
        retrieval = pool.submit(start_retrieval, service_factory, embeddings, tmp_path)
        proxy = pool.submit(start_proxy, service_factory, fake, tmp_path)
        started_server.result()
        platform = Platform(retrieval.result(), proxy.result(), fake, feedback_url="")
    clients = ThreadClients(headers=auth_headers(), timeout=60)
    try:
        client = MlflowClient(tracking_uri=server.url, registry_uri=server.url)
        name = "rag-answer"
        v1 = client.register_prompt(name=name, template=PROMPT + "MARK-V1")
        v2 = client.register_prompt(name=name, template=PROMPT + "MARK-V2")
        client.set_prompt_alias(name, alias="production", version=int(v1.version))
        for thread in threading.enumerate():  # MLflow links prompts from a thread of its own
            if thread.name.startswith("link_prompt_to_experiment"):
                thread.join()
        ttl = 0.5
        rag = service_factory(
            "rag",
            **platform.rag_env(
                tmp_path, RAG_MLFLOW_TRACKING_URI=server.url, RAG_PROMPT_TTL_S=str(ttl)
            ),
        ).wait_ready(60)

        def ask(n: int) -> tuple[int, bool, Any]:
            r = clients.get().post(f"{rag.url}/v1/ask", json={"question": f"Damaged item {n}?"})
            if r.status_code != 200:
                return r.status_code, False, r.text[:300]
            body = r.json()
            answer = body.get("answer") or ""
            detail = {**body["prompt"], "degraded": body["degraded"], "answer": answer}
            return 200, bool(answer.strip()), detail

        deadline = time.monotonic() + 60
        while not ((first := ask(0))[1] and first[2]["source"] == "registry"):
            assert time.monotonic() < deadline, first  # rag's first fetch may be slow
            time.sleep(0.2)

        with SteadyLoad(ask, threads=ASK_THREADS) as load:
            load.run_for(scaled(1.0, 10))
            down_at = time.monotonic()
            server.stop()
            # Moved while the server is down, in its own store (as an operator restoring a
            # backup would): only a registry read after the restart can see it.
            store = f"sqlite:///{server.root / 'mlflow.db'}"
            MlflowClient(tracking_uri=store, registry_uri=store).set_prompt_alias(
                name, alias="production", version=int(v2.version)
            )
            load.run_for(scaled(2.0, 30))  # several TTLs and registry back-offs
            restart_at = time.monotonic()
            server.start()
            back_at = time.monotonic()

            def moved() -> bool:
                return any(
                    o.acked and o.sent >= back_at and o.detail["version"] == "2"
                    and o.detail["source"] == "registry"
                    for o in load.outcomes
                )  # fmt: skip

            wait_until(moved, 60, "the moved alias served from the registry")
            load.run_for(scaled(0.5, 5))
        outcomes = load.stop()
    finally:
        clients.close()
        server.stop()
        fake.stop()

    failed = [o for o in outcomes if not o.acked]
    assert not failed, failed[:5]  # every ask answered 200 with an answer
    window = [o for o in outcomes if o.sent >= down_at and o.done <= back_at]
    while_down = [o for o in outcomes if o.sent >= down_at and o.done <= restart_at]
    assert len(while_down) >= 5, "the load did not run while the registry was down"
    stale = [o for o in while_down if o.detail["source"] == "last-known-good"]
    assert stale, "no ask went to the registry while it was down"
    for o in stale:
        assert o.detail["degraded"] == ["prompt_registry_stale"], o
    # Until the restart nothing could see the move: version 1, and the LLM was given it.
    for o in outcomes:
        if o.done <= restart_at:
            assert o.detail["version"] == "1" and o.detail["answer"].endswith("V1"), o
    first_v2 = min((o for o in outcomes if o.detail["version"] == "2"), key=lambda o: o.done)
    assert first_v2.sent >= down_at
    after = [o for o in outcomes if o.sent > first_v2.done]
    for o in after:  # once read, the new version is what is served (and what the LLM gets)
        assert o.detail["version"] == "2" and o.detail["answer"].endswith("V2"), o
    # From the registry again (a registry call slower than its timeout on a busy machine
    # would serve the same version flagged stale: counted, not failed).
    from_registry = sum(o.detail["source"] == "registry" for o in after)
    assert from_registry, "nothing read from the registry after its restart"
    record(
        fault="MLflow prompt registry stopped during asks",
        load=f"{ASK_THREADS} threads of POST /v1/ask",
        requests=len(window),
        acknowledged=sum(o.acked for o in window),
        lost=len(failed),
        recovery=first_v2.done - back_at,
        notes=(
            f"registry down {back_at - down_at:.1f} s (prompt TTL {ttl} s); {len(while_down)} "
            f"asks while down, {len(stale)} served the last-known-good version flagged "
            f"prompt_registry_stale; {len(outcomes)} asks in all, 0 failed (lost = failed asks); "
            f"the alias moved 1 -> 2 while down was served from the registry "
            f"{first_v2.done - back_at:.2f} s after the server was back (recovery), then "
            f"{from_registry}/{len(after)} asks from the registry, all version 2"
        ),
    )


# --------------------------------------------------------------------------- 2. embeddings killed

INGEST_THREADS = 4
OLD_DOCS = 6  # ingested before the load; every request also rewrites one of them
_WORDS = [
    "otter", "river", "canal", "harbour", "lantern", "meadow", "orchard", "glacier", "canyon",
    "quarry", "beacon", "ferry", "granary", "workshop", "archive", "compass", "ledger", "parcel",
    "invoice", "voucher", "refund", "courier", "warehouse", "pallet", "freight", "customs",
    "tariff", "ledger", "audit", "pension", "payroll", "mortgage", "cipher", "socket", "kernel",
    "compiler", "thread", "buffer", "cache", "router", "gateway", "tunnel", "bridge", "falcon",
    "heron", "badger", "beaver", "walnut", "chestnut", "saffron", "ginger", "basil", "thyme",
    "cedar", "maple", "willow", "birch"
]  # fmt: skip


def _doc_text(doc_id: str, variant: int) -> str:
    """A document of a few 48-token chunks, different for every (id, variant); each paragraph
    names both, so any stored chunk says which text it came from."""
    rng = random.Random(f"{doc_id}/{variant}")
    paragraphs = []
    for p in range(rng.randint(3, 5)):
        words = " ".join(rng.choice(_WORDS) for _ in range(22))
        paragraphs.append(f"[{doc_id} v{variant} p{p}] {words.capitalize()}.")
    return f"# Notes {doc_id}\n\n" + "\n\n".join(paragraphs)


def _variants(text: str, doc_id: str) -> set[int]:
    """The variants named by the paragraph tags in a chunk's text."""
    return {int(v) for v in re.findall(rf"\[{re.escape(doc_id)} v(\d+) p\d+\]", text)}


def _chunks(api: httpx.Client, collection: str, doc_id: str, dim: int) -> list[tuple[int, str]]:
    """Every stored chunk of a document: a search filtered on its id (retrieval's way to list
    a document), any vector, top_k above any chunk count."""
    r = api.post(
        f"/v1/collections/{collection}/search",
        json={"vector": [0.1] * dim, "top_k": 500, "filter": {"doc_id": doc_id},
              "with_text": True},
    )  # fmt: skip
    assert r.status_code == 200, r.text
    return sorted((h["chunk_index"], h["text"]) for h in r.json()["results"])


def test_embeddings_killed_during_ingest_leaves_no_document_half_written(
    service_factory: Any, tmp_path: Path
) -> None:
    """SIGKILL the embeddings service while several threads ingest through it, restart it
    behind the same address: every document is absent (its ingest failed) or whole (every
    chunk of one version, as a clean ingest of that text gives), and every document answered
    as ingested is whole."""
    emb_env = {"ENV": "dev", "EMBEDDINGS_API_KEY_HASHES": API_KEY_HASH}
    emb = service_factory("embeddings", **emb_env)
    # The address retrieval is configured with, as a Kubernetes Service would be: the
    # restarted embeddings process gets a new port, the forwarder follows it.
    front = TcpProxy(("127.0.0.1", emb.port))
    ret = service_factory(
        "retrieval",
        **retrieval_env(
            f"http://127.0.0.1:{front.port}",
            tmp_path / "qdrant",
            RETRIEVAL_CHUNK_TOKENS="48",
            RETRIEVAL_CHUNK_OVERLAP_TOKENS="8",
            RETRIEVAL_MAX_TOP_K="500",
        ),
    )
    emb.wait_ready()  # the two start together: the model load is the long pole
    ret.wait_ready()
    api = httpx.Client(base_url=ret.url, headers=auth_headers(), timeout=120)
    clients = ThreadClients(base_url=ret.url, headers=auth_headers(), timeout=120)
    ok_status = {"added", "replaced", "unchanged"}
    try:
        for name in ("load", "ref"):
            assert api.post("/v1/collections", json={"name": name}).status_code == 201
        dim = api.get("/v1/collections/load").json()["vector_size"]
        olds = [{"id": f"old{k}", "text": _doc_text(f"old{k}", 0)} for k in range(OLD_DOCS)]
        r = api.post("/v1/collections/load/documents", json={"documents": olds})
        assert r.status_code == 200 and r.json()["summary"]["added"] == OLD_DOCS, r.text

        def ingest(n: int) -> tuple[int, bool, Any]:
            old = f"old{n % OLD_DOCS}"
            docs = [
                {"id": f"new{n}", "text": _doc_text(f"new{n}", 0)},
                {"id": old, "text": _doc_text(old, n)},  # a rewrite: variant n
            ]
            sent = [(d["id"], 0 if d["id"].startswith("new") else n) for d in docs]
            r = clients.get().post("/v1/collections/load/documents", json={"documents": docs})
            if r.status_code != 200:
                return r.status_code, False, {"sent": sent, "results": None, "error": r.text}
            results = r.json()["results"]
            acked = all(x["status"] in ok_status for x in results)
            return 200, acked, {"sent": sent, "results": results}

        with SteadyLoad(ingest, threads=INGEST_THREADS) as load:
            wait_until(lambda: len(load.acked) >= 2, 120, "ingests before the kill")
            load.run_for(scaled(0.5, 5))
            kill_at = time.monotonic()
            emb.proc.kill()  # SIGKILL: no drain, connections reset mid-request
            emb.proc.wait()
            # Down for longer than retrieval's retries (the ONNX model is back within a second
            # of a restart, which the retries would bridge): until an ingest has failed.
            wait_until(
                lambda: any(
                    x["status"] == "failed"
                    for o in list(load.outcomes) if o.sent >= kill_at and isinstance(o.detail, dict)
                    for x in o.detail["results"] or []
                ),
                120,
                "an ingest failed while the embeddings service was down",
            )  # fmt: skip
            emb = service_factory("embeddings", **emb_env)
            front.target = ("127.0.0.1", emb.port)
            emb.wait_ready()
            back_at = time.monotonic()
            wait_until(
                lambda: sum(o.sent >= back_at for o in load.acked) >= 2,
                120,
                "ingests after the restart",
            )
            load.run_for(scaled(0.5, 5))
        outcomes = load.stop()

        # Every document sent, and what each ingest answered for it.
        acked_variants: dict[str, set[int]] = {d["id"]: set() for d in olds}
        sent_variants: dict[str, set[int]] = {d["id"]: {0} for d in olds}
        unknown: set[str] = set()  # no answer at all: absent or whole, either is fine
        for o in outcomes:
            results = o.detail["results"] if isinstance(o.detail, dict) else None
            sent = o.detail["sent"] if isinstance(o.detail, dict) else []
            for i, (doc_id, variant) in enumerate(sent):
                sent_variants.setdefault(doc_id, set()).add(variant)
                acked_variants.setdefault(doc_id, set())
                if results is None:
                    if o.status == 0:
                        unknown.add(doc_id)
                elif results[i]["status"] in ok_status:
                    acked_variants[doc_id].add(variant)
        failed_docs = sum(
            1 for o in outcomes if isinstance(o.detail, dict) for x in o.detail["results"] or []
            if x["status"] == "failed"
        )  # fmt: skip

        stored = {d: _chunks(api, "load", d, dim) for d in sent_variants}
        present = {d: c for d, c in stored.items() if c}
        # Clean ingests of the text each present document holds: the chunks it must have.
        final: dict[str, int] = {}
        for doc_id, chunks in present.items():
            variants = set().union(*(_variants(text, doc_id) for _, text in chunks))
            assert len(variants) == 1, f"{doc_id} mixes versions {variants}"
            final[doc_id] = variants.pop()
        refs = [{"id": d, "text": _doc_text(d, v)} for d, v in final.items()]
        for i in range(0, len(refs), 64):
            r = api.post("/v1/collections/ref/documents", json={"documents": refs[i : i + 64]})
            assert r.status_code == 200 and r.json()["summary"]["failed"] == 0, r.text

        half_written = []
        lost = []
        for doc_id in sent_variants:
            acked = acked_variants[doc_id]
            chunks = stored[doc_id]
            if not chunks:
                if acked or doc_id.startswith("old"):
                    lost.append(doc_id)  # answered as ingested (or stored before), now gone
                continue
            if chunks != _chunks(api, "ref", doc_id, dim):
                half_written.append(doc_id)
                continue
            # The text it holds is one that was answered as written (the original, for an
            # old document no rewrite of which was acknowledged).
            expected = acked if acked else ({0} if doc_id.startswith("old") else set())
            if final[doc_id] not in expected and doc_id not in unknown:
                lost.append(doc_id)
        for doc_id, acked in acked_variants.items():  # absent only if its ingest failed
            if doc_id.startswith("new") and not acked and doc_id not in unknown:
                assert not stored[doc_id], f"{doc_id}: its ingest failed but it is stored"
        assert not half_written, half_written
        assert not lost, lost
        points = api.get("/v1/collections/load").json()["points_count"]
        assert points == sum(len(c) for c in present.values()), "orphan chunks are stored"
        # And a text search finds each whole document.
        for doc_id in present:
            r = api.post(
                "/v1/collections/load/search",
                json={"query": _doc_text(doc_id, final[doc_id]).split("\n\n")[1],
                      "filter": {"doc_id": doc_id}, "top_k": 1},
            )  # fmt: skip
            assert r.status_code == 200 and r.json()["results"], (doc_id, r.text)
    finally:
        clients.close()
        api.close()
        front.cut()

    # In flight at some time between the kill and the restarted service being ready: a
    # request sent before the kill may wait out the whole outage in retrieval's retries.
    window = [o for o in outcomes if o.sent <= back_at and o.done >= kill_at]
    assert len(window) >= INGEST_THREADS, "the load did not run while embeddings was down"
    assert failed_docs > 0, "no ingest failed: the kill did not hit the load"
    acked_docs = sum(len(v) for v in acked_variants.values())
    record(
        fault="embeddings SIGKILLed during ingest, restarted",
        load=f"{INGEST_THREADS} threads ingesting 2 documents per request (a new one, a rewrite)",
        requests=len(window),
        acknowledged=sum(o.acked for o in window),
        lost=len(lost),
        recovery=recovery_s(outcomes, back_at),
        notes=(
            f"requests/acknowledged: ingest calls in flight at some time from the kill to the "
            f"restarted service being ready, and those answered with every document written; "
            f"embeddings down {back_at - kill_at:.1f} s (kill to restarted and ready); "
            f"{len(outcomes)} ingest requests in all, {acked_docs} document writes acknowledged, "
            f"{failed_docs} answered failed; afterwards {len(present)} documents whole, "
            f"{len(sent_variants) - len(present)} absent, {len(half_written)} half-written "
            f"(chunks compared with a clean ingest of the same text)"
        ),
    )


# --------------------------------------------------------------------------- 3. flaky LLM upstream

CHAT_THREADS = 16
STREAM_THREADS = 8
UPSTREAM_TIMEOUT_S = 0.5
# Every failure the proxy retries: 5xx, and a hang past the deployment's timeout.
BEFORE_ANSWER = [{"status": 500}, {"status": 502}, {"status": 503}, {"hang": True}]
# Streams also fail after their first event: cut, or stalled past the timeout.
MIDSTREAM = [{"cut_after_chunks": 2}, {"hang_after_chunks": 2}]


@dataclass
class FlakyUpstreams:
    proxy: Proxy
    chat: list[FakeUpstream]
    stream: list[FakeUpstream]


@pytest.fixture(scope="module")
def flaky(service_factory: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A proxy over four fakes that fail half their calls: two for chat completions (an
    alias and its fallback alias), two for streams. Retries of each deployment, then its
    fallback; a breaker that does not give up on an upstream that fails only half the time."""
    tmp = tmp_path_factory.mktemp("flaky")
    fakes = [FakeUpstream(n, tmp) for n in ("flaky-a", "flaky-b", "flaky-sa", "flaky-sb")]
    for seed, (fake, faults) in enumerate(
        zip(fakes, [BEFORE_ANSWER] * 2 + [BEFORE_ANSWER + MIDSTREAM] * 2, strict=True)
    ):
        r = httpx.post(
            f"{fake.url}/_script", json={"seed": seed, "always": {"p": 0.5, "one_of": faults}}
        )
        r.raise_for_status()
    names = ["a", "b", "sa", "sb"]
    config = {
        "deployments": [
            deployment(n, f, timeout_s=UPSTREAM_TIMEOUT_S, max_retries=6)
            for n, f in zip(names, fakes, strict=True)
        ],
        "aliases": {
            "flaky": {"deployments": [{"deployment": "a"}], "fallbacks": ["flaky-backup"]},
            "flaky-backup": {"deployments": [{"deployment": "b"}]},
            "flaky-stream": {
                "deployments": [{"deployment": "sa"}],
                "fallbacks": ["flaky-stream-backup"],
            },
            "flaky-stream-backup": {"deployments": [{"deployment": "sb"}]},
        },
        "router": {
            "backoff_initial_s": 0.01,
            "backoff_max_s": 0.05,
            # The default (open at 50% failures over 20 calls) would rightly take a deployment
            # that fails half the time out of rotation; this test is about retries.
            "breaker": {"failures": 20, "failure_ratio": 1.0, "window": 20, "min_calls": 20},
        },
    }
    path = tmp / "routing.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = service_factory(
        "llm-proxy",
        LLM_PROXY_CONFIG_PATH=str(path),
        LLM_PROXY_MASTER_KEY=MASTER_KEY,
        LLM_PROXY_DATABASE_URL=f"sqlite:///{tmp}/proxy.db",
    ).wait_ready(60)
    yield FlakyUpstreams(Proxy(proc, path), fakes[:2], fakes[2:])
    for fake in fakes:
        fake.stop()


def _run_until(load: SteadyLoad, requests: int, timeout: float) -> None:
    wait_until(lambda: load.count() >= requests, timeout, f"{requests} requests")


def test_llm_upstream_failing_half_the_calls_loses_no_request(flaky: FlakyUpstreams) -> None:
    """Half of the upstream calls fail (5xx, or a hang past the 0.5 s timeout): retries and
    the fallback alias answer at least 99.9% of the requests, each with a valid completion."""
    proxy = flaky.proxy
    target = int(scaled(1000, 10000))
    clients = ThreadClients(
        base_url=proxy.url, headers={"Authorization": f"Bearer {MASTER_KEY}"}, timeout=60
    )
    before = [f.stats()["chat"] for f in flaky.chat]

    def chat(n: int) -> tuple[int, bool, Any]:
        r = clients.get().post(
            "/v1/chat/completions",
            json={"model": "flaky", "messages": [{"role": "user", "content": f"hello {n}"}],
                  "max_tokens": 4},
        )  # fmt: skip
        if r.status_code != 200:
            return r.status_code, False, r.json()["error"]["code"]
        content = r.json()["choices"][0]["message"]["content"]
        valid = isinstance(content, str) and content.startswith("Hello from flaky-")
        return 200, True, {"valid": valid, "attempts": int(r.headers["x-llmops-attempts"]),
                           "deployment": r.headers["x-llmops-deployment"]}  # fmt: skip

    try:
        with SteadyLoad(chat, threads=CHAT_THREADS) as load:
            _run_until(load, target, scaled(600, 3600))
        outcomes = load.stop()
    finally:
        clients.close()

    ok = [o for o in outcomes if o.acked]
    lost = [o for o in ok if not o.detail["valid"]]
    refused = Counter(o.detail for o in outcomes if not o.acked)
    most_attempts = max(o.detail["attempts"] for o in ok)
    upstream_calls = sum(f.stats()["chat"] - b for f, b in zip(flaky.chat, before, strict=True))
    failed_calls = upstream_calls - len(ok)
    by_deployment = Counter(o.detail["deployment"] for o in ok)
    text = proxy.metrics()
    fallbacks = metric(text, "llmops_llm_fallbacks_total", alias="flaky")
    timeouts = metric(text, "llmops_llm_retries_total", reason="timeout")
    rate = len(ok) / len(outcomes)
    # The fault really was there: about half of the upstream calls failed, some by timing out.
    assert failed_calls / upstream_calls > 0.4, (failed_calls, upstream_calls)
    assert timeouts > 0 and fallbacks > 0 and by_deployment["b"] > 0
    record(
        fault="LLM upstream: 50% of calls fail (5xx, hang past the 0.5 s timeout)",
        load=f"{CHAT_THREADS} threads of non-streaming chat completions, alias + fallback alias",
        requests=len(outcomes),
        acknowledged=len(ok),
        lost=len(lost),
        recovery=None,
        notes=(
            f"success rate {rate:.3%} ({len(outcomes) - len(ok)} refused: {dict(refused)}); "
            f"{upstream_calls} upstream calls, {failed_calls} failed "
            f"({failed_calls / upstream_calls:.0%}), {timeouts:.0f} retries after a timeout, "
            f"{fallbacks:.0f} requests went to the fallback alias; up to {most_attempts} attempts "
            f"for one request (7 per deployment)"
        ),
    )
    assert not lost, lost[:5]
    assert rate >= 0.999, refused


def _read_stream(api: httpx.Client, n: int) -> tuple[int, bool, Any]:
    """One streamed completion read to its end: how it ended (done, error event, or neither:
    silently truncated) and the text it carried."""
    body = {"model": "flaky-stream", "messages": [{"role": "user", "content": f"hi {n}"}],
            "max_tokens": 4, "stream": True}  # fmt: skip
    with api.stream("POST", "/v1/chat/completions", json=body) as r:
        if r.status_code != 200:
            r.read()
            return r.status_code, False, {"end": "refused", "code": r.json()["error"]["code"]}
        text, end, code = "", "truncated", None
        try:
            for line in r.iter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if end != "truncated":
                    end = "data after the end"  # nothing may follow [DONE] or an error event
                    break
                if data == "[DONE]":
                    end = "done"
                    continue
                obj = orjson.loads(data)
                if "error" in obj:
                    end, code = "error", (obj["error"]["code"], obj["error"]["message"])
                    continue
                for choice in obj.get("choices") or []:
                    text += choice["delta"].get("content") or ""
        except httpx.HTTPError as exc:  # the connection broke: as truncated as it gets
            end = f"broken: {exc!r}"
    return 200, True, {"end": end, "code": code, "text": text}


def test_llm_upstream_failing_mid_stream_never_truncates_a_stream_silently(
    flaky: FlakyUpstreams,
) -> None:
    """Streams over upstreams that fail half their calls: a failure before the first event is
    retried like any call; after it, the stream ends with an error event. Every stream ends
    with [DONE] (and the whole text) or with an error event, never just stops."""
    proxy = flaky.proxy
    target = int(scaled(300, 3000))
    clients = ThreadClients(
        base_url=proxy.url, headers={"Authorization": f"Bearer {MASTER_KEY}"}, timeout=60
    )
    try:
        with SteadyLoad(lambda n: _read_stream(clients.get(), n), threads=STREAM_THREADS) as load:
            _run_until(load, target, scaled(600, 3600))
        outcomes = load.stop()
    finally:
        clients.close()

    ends = Counter(o.detail["end"] if isinstance(o.detail, dict) else "no answer"
                   for o in outcomes)  # fmt: skip
    done = [o for o in outcomes if o.acked and o.detail["end"] == "done"]
    errors = [o for o in outcomes if o.acked and o.detail["end"] == "error"]
    incomplete = [o for o in done if o.detail["text"] != "tok0 tok1 tok2 tok3 "]
    lost = [o for o in outcomes if o.acked and o.detail["end"] not in ("done", "error")]
    lost += incomplete
    # What the error events said: the upstream cut the stream, or stalled past the timeout.
    kinds = Counter("stalled" if "Timeout" in o.detail["code"][1] else "cut" for o in errors)
    codes = Counter(o.detail["code"][0] for o in errors)
    record(
        fault="LLM upstream: 50% of streamed calls fail (5xx, hangs, cut or stalled mid-stream)",
        load=f"{STREAM_THREADS} threads of streamed chat completions, alias + fallback alias",
        requests=len(outcomes),
        acknowledged=sum(o.acked for o in outcomes),
        lost=len(lost),
        recovery=None,
        notes=(
            f"{len(done)} completed with [DONE], {len(errors)} ended with an error event "
            f"({kinds['cut']} cut, {kinds['stalled']} stalled past the timeout; codes "
            f"{dict(codes)}), {ends['refused']} refused before streaming, "
            f"{len(lost)} silently truncated (lost = a 200 stream with neither [DONE] and the "
            f"whole text nor an error event); completed {len(done) / len(outcomes):.1%}"
        ),
    )
    assert not lost, [o.detail for o in lost[:5]]
    assert set(ends) <= {"done", "error"}, ends  # failures before the first event: retried
    # The fault really hit mid-stream, both ways.
    assert kinds["cut"] > 0 and kinds["stalled"] > 0, kinds
    assert set(codes) <= {"upstream_stream_cut", "upstream_stream_error"}, codes
    assert len(done) > len(errors)
