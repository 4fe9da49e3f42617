"""Ingest and search through the real retrieval service, embeddings service and local Qdrant."""

from __future__ import annotations

import base64
import random

import httpx
import numpy as np
import pytest
from openai import OpenAI

from tests.conftest import API_KEY, ServiceProcess, assert_error
from tests.retrieval.conftest import ingest, make_collection, make_pdf

MARKDOWN = """# Operations guide

Intro paragraph about running the platform in production.

## Deployment

### Rollback

To roll back a release, revert the Argo CD application to the previous Git commit
and wait for the sync.

## Monitoring

Grafana shows request rate, errors and latency for each service.
"""

HTML = """<html><head><title>Proxy notes</title><script>var x = "ignored";</script></head>
<body><nav>menu</nav><h1>LLM proxy</h1><h2>Circuit breaker</h2>
<p>The circuit breaker opens after five consecutive upstream failures and probes again
after thirty seconds.</p>
<h2>Budgets</h2><p>Budgets are tracked per virtual key in Redis.</p></body></html>
"""


def search(api: httpx.Client, name: str, **body: object) -> list[dict[str, object]]:
    r = api.post(f"/v1/collections/{name}/search", json=body)
    assert r.status_code == 200, r.text
    results: list[dict[str, object]] = r.json()["results"]
    return results


def test_formats_are_loaded_and_found(api: httpx.Client) -> None:
    make_collection(api, "formats")
    pdf = make_pdf(["Quarterly report.", "The embedding cache is warmed every night at two."])
    docs = [
        {"id": "guide.md", "text": MARKDOWN, "content_type": "text/markdown"},
        {"id": "proxy.html", "text": HTML, "content_type": "text/html"},
        {
            "id": "report.pdf",
            "content_base64": base64.b64encode(pdf).decode(),
            "content_type": "application/pdf",
        },
        {"id": "notes.txt", "text": "Feedback is exported as DPO pairs.\n\nThe export is JSONL."},
    ]
    out = ingest(api, "formats", docs)
    assert out["summary"] == {"added": 4, "unchanged": 0, "replaced": 0, "failed": 0}, out

    top = search(api, "formats", query="how do I roll back a release?", top_k=1)[0]
    assert top["doc_id"] == "guide.md"
    assert "revert the Argo CD application" in str(top["text"])
    assert top["headings"] == ["Operations guide", "Deployment", "Rollback"]

    top = search(api, "formats", query="when does the circuit breaker open?", top_k=1)[0]
    assert top["doc_id"] == "proxy.html" and "five consecutive" in str(top["text"])
    assert top["headings"] == ["LLM proxy", "Circuit breaker"]
    assert "ignored" not in str(search(api, "formats", query="var x", top_k=10))

    top = search(api, "formats", query="when is the embedding cache warmed?", top_k=1)[0]
    assert top["doc_id"] == "report.pdf" and "every night" in str(top["text"])
    assert top["headings"] == ["page 1"]

    top = search(api, "formats", query="export format of DPO pairs", top_k=1)[0]
    assert top["doc_id"] == "notes.txt"


def test_reingest_is_idempotent_and_edits_replace_every_chunk(api: httpx.Client) -> None:
    make_collection(api, "idem")
    long_doc = "\n\n".join(
        f"Paragraph {i} says the marker word is zebra{i} today." for i in range(12)
    )
    docs = [
        {"id": "a", "text": long_doc},
        {"id": "b", "text": "Short document about kiwis."},
        {"text": "A document without an id gets one from its content."},
    ]
    first = ingest(api, "idem", docs)
    assert [r["status"] for r in first["results"]] == ["added"] * 3
    chunks_a = first["results"][0]["chunks"]
    assert chunks_a > 2
    total = api.get("/v1/collections/idem").json()["points_count"]
    assert total == sum(r["chunks"] for r in first["results"])

    again = ingest(api, "idem", docs)
    assert [r["status"] for r in again["results"]] == ["unchanged"] * 3
    assert again["results"][2]["id"] == first["results"][2]["id"]
    assert api.get("/v1/collections/idem").json()["points_count"] == total

    edited = ingest(
        api, "idem", [{"id": "a", "text": "Now a single short paragraph about ferrets."}]
    )
    assert edited["results"][0]["status"] == "replaced"
    assert edited["results"][0]["chunks"] == 1
    assert api.get("/v1/collections/idem").json()["points_count"] == total - chunks_a + 1
    hits = search(api, "idem", query="marker word zebra", top_k=50, filter={"doc_id": "a"})
    assert len(hits) == 1 and "ferrets" in str(hits[0]["text"])

    meta = ingest(
        api, "idem", [{"id": "b", "text": "Short document about kiwis.", "metadata": {"v": 2}}]
    )
    assert meta["results"][0]["status"] == "replaced"  # metadata is part of what is stored

    r = api.delete("/v1/collections/idem/documents/a")
    assert r.status_code == 200 and r.json()["deleted_chunks"] == 1
    assert search(api, "idem", query="ferrets", top_k=50, filter={"doc_id": "a"}) == []
    assert api.delete("/v1/collections/idem/documents/a").status_code == 404


def assert_same_ranking(
    got: list[dict[str, object]], expected: list[str], ids: list[str], scores: np.ndarray
) -> None:
    """Same ids in the same order; a swap is allowed only between exact ties (float32 noise)."""
    by_id = dict(zip(ids, scores, strict=True))
    got_ids = [str(g["id"]) for g in got]
    assert len(got_ids) == len(expected)
    for a, b in zip(got_ids, expected, strict=True):
        assert a == b or abs(by_id[a] - by_id[b]) < 1e-6, (got_ids, expected)
    assert set(got_ids) == set(expected) or all(
        abs(by_id[a] - by_id[b]) < 1e-6 for a, b in zip(got_ids, expected, strict=True)
    )


def test_search_equals_brute_force_top_k(api: httpx.Client, embeddings: ServiceProcess) -> None:
    """On >2000 real chunks, ids and order equal a numpy top-k over the stored vectors."""
    rng = random.Random(11)
    vocabulary = (
        "vector index shard replica token prompt latency budget cache queue worker batch "
        "gateway retry fallback breaker trace metric alert dashboard dataset label rating"
    )
    words = vocabulary.split()
    docs = []
    for d in range(80):
        paras = [
            " ".join(rng.choice(words) for _ in range(rng.randint(12, 22))).capitalize() + "."
            for _ in range(50)
        ]
        docs.append({"id": f"doc-{d}", "text": "\n\n".join(paras), "metadata": {"group": d % 4}})
    make_collection(api, "exact", group="integer")
    for part in (docs[:40], docs[40:]):
        assert ingest(api, "exact", part)["summary"]["added"] == 40
    n = api.get("/v1/collections/exact").json()["points_count"]
    assert n >= 2000, n

    probe = [0.0] * 384
    probe[0] = 1.0
    everything = search(api, "exact", vector=probe, top_k=5000, with_vectors=True, with_text=False)
    assert len(everything) == n
    ids = [str(p["id"]) for p in everything]
    matrix = np.array([p["vector"] for p in everything], dtype=np.float64)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    groups = np.array([p["metadata"]["group"] for p in everything])  # type: ignore[index]

    client = OpenAI(base_url=f"{embeddings.url}/v1", api_key=API_KEY, max_retries=0)
    for q in ["retry fallback breaker", "shard replica index", "trace metric alert dashboard"]:
        qv = np.array(client.embeddings.create(model="all-MiniLM-L6-v2", input=q).data[0].embedding)
        scores = matrix @ (qv / np.linalg.norm(qv))
        expected = [ids[i] for i in np.argsort(-scores, kind="stable")[:10]]
        got = search(api, "exact", query=q, top_k=10, with_text=False, mode="dense")
        assert_same_ranking(got, expected, ids, scores)
        np.testing.assert_allclose([g["score"] for g in got], np.sort(scores)[::-1][:10], atol=1e-4)
        # The same with a filter: brute force over the matching subset.
        mask = groups == 2
        sub = np.where(mask, scores, -np.inf)
        expected = [ids[i] for i in np.argsort(-sub, kind="stable")[:10]]
        got = search(
            api, "exact", query=q, top_k=10, filter={"group": 2}, with_text=False, mode="dense"
        )
        assert_same_ranking(got, expected, ids, sub)


@pytest.fixture(scope="module")
def filtered(api: httpx.Client) -> str:
    make_collection(api, "filters", lang="keyword", year="integer", published="datetime")
    docs = [
        {"id": f"d{i}", "text": f"Release notes number {i} for the gateway.",
         "metadata": {"lang": lang, "year": year, "published": pub, "score": 0.5 + i / 10}}
        for i, (lang, year, pub) in enumerate([
            ("en", 2021, "2021-03-01T00:00:00Z"), ("de", 2022, "2022-06-15T00:00:00Z"),
            ("en", 2023, "2023-01-10T00:00:00Z"), ("fr", 2024, "2024-09-30T00:00:00Z"),
        ])
    ]  # fmt: skip
    assert ingest(api, "filters", docs)["summary"]["added"] == 4
    return "filters"


@pytest.mark.parametrize(
    ("flt", "expected"),
    [
        ({"lang": "en"}, {"d0", "d2"}),
        ({"lang": {"in": ["de", "fr"]}}, {"d1", "d3"}),
        ({"year": {"gte": 2022, "lt": 2024}}, {"d1", "d2"}),
        ({"score": {"gt": 0.65}}, {"d3", "d2"}),
        ({"published": {"gte": "2022-01-01", "lte": "2023-12-31"}}, {"d1", "d2"}),
        ({"lang": "en", "year": {"gt": 2021}}, {"d2"}),
        ({"doc_id": "d3"}, {"d3"}),
        ({"lang": "xx"}, set()),
    ],
)
def test_filters(
    api: httpx.Client, filtered: str, flt: dict[str, object], expected: set[str]
) -> None:
    hits = search(api, filtered, query="gateway release notes", top_k=10, filter=flt)
    assert {h["doc_id"] for h in hits} == expected


@pytest.mark.parametrize(
    "flt",
    [
        {"lang": ["en", "de"]},
        {"score": 0.7},
        {"year": {"between": [1, 2]}},
        {"year": {"gte": 2020, "lt": "2024-01-01"}},
        {"lang": {"in": ["en", 3]}},
        {"lang": {"in": []}},
        {"lang": None},
    ],
)
def test_bad_filter_is_400(api: httpx.Client, filtered: str, flt: dict[str, object]) -> None:
    r = api.post(f"/v1/collections/{filtered}/search", json={"query": "x", "filter": flt})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "invalid_filter"


def test_score_threshold(api: httpx.Client, filtered: str) -> None:
    q = "gateway release notes"
    hits = search(api, filtered, query=q, top_k=10, score_threshold=0.3, mode="dense")
    assert hits and all(float(h["score"]) >= 0.3 for h in hits)  # type: ignore[arg-type]
    assert search(api, filtered, query=q, score_threshold=0.999, mode="dense") == []
    # A fused score has no fixed scale: a threshold on a hybrid search is refused, clearly.
    r = api.post(f"/v1/collections/{filtered}/search", json={"query": q, "score_threshold": 0.3})
    assert '"mode": "dense"' in assert_error(r, 400, "invalid_value")["message"]


def test_metrics_count_documents_chunks_and_searches(api: httpx.Client, filtered: str) -> None:
    from tests.conftest import metric

    search(api, filtered, query="gateway", filter={"lang": "xx"})  # an empty result
    text = api.get("/metrics").text
    assert metric(text, "llmops_retrieval_documents_total", outcome="added") >= 4
    assert metric(text, "llmops_retrieval_chunks_total", outcome="added") >= 4
    assert metric(text, "llmops_retrieval_search_seconds_count") >= 1
    assert metric(text, "llmops_retrieval_search_empty_total") >= 1
    assert metric(text, "llmops_retrieval_ingest_seconds_count") >= 1
    assert metric(text, "llmops_http_requests_total", route="/v1/collections/{name}/search") >= 1


def test_concurrent_writes_of_one_document_leave_one_whole_version(
    api: httpx.Client, retrieval: ServiceProcess
) -> None:
    import asyncio

    make_collection(api, "race")
    long_v = "\n\n".join(f"Long version paragraph {i} about herons by the lake." for i in range(12))
    versions = [long_v, "Short version about owls."]

    async def burst() -> list[dict[str, object]]:
        async with httpx.AsyncClient(
            base_url=retrieval.url, headers=dict(api.headers), timeout=120
        ) as client:
            calls = [
                client.post(
                    "/v1/collections/race/documents",
                    json={"documents": [{"id": "doc", "text": versions[i % 2]}]},
                )
                for i in range(6)
            ]
            return [r.json()["results"][0] for r in await asyncio.gather(*calls)]

    results = asyncio.run(burst())
    assert all(r["status"] in ("added", "replaced", "unchanged") for r in results), results
    hits = search(api, "race", vector=[0.1] * 384, top_k=100, filter={"doc_id": "doc"})
    texts = [str(h["text"]) for h in hits]
    whole_long = all("herons" in t for t in texts)
    whole_short = all("owls" in t for t in texts)
    assert whole_long or whole_short, texts
    final = ingest(api, "race", [{"id": "doc", "text": versions[0 if whole_long else 1]}])
    assert final["results"][0]["status"] == "unchanged"
    assert final["results"][0]["chunks"] == len(hits)
