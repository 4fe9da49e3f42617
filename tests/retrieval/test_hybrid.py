"""Hybrid search: BM25 sparse vectors beside the dense ones, fused by reciprocal rank, in local
mode (real Qdrant code) and on the server path (the REST calls a Qdrant server receives);
collections made before hybrid search keep working in dense mode and refuse the others
clearly."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from qdrant_client import QdrantClient, models

from services.retrieval.sparse import BM25, term_index, terms
from tests.conftest import ServiceProcess, assert_error, auth_headers
from tests.fakes.qdrant import RecordingQdrant
from tests.retrieval.conftest import ingest, make_collection, retrieval_env

# Five notes; the first holds a rare identifier that its words do not explain, the rest talk
# about the same topic in plain words. A dense model ranks by topic, BM25 by the identifier.
DOCS = [
    {"id": "flag.md", "text": "Run the migration with --skip-vacuum-zx7 to avoid the lock."},
    {"id": "a.md", "text": "Database migrations can lock tables while they run."},
    {"id": "b.md", "text": "Running a schema migration takes locks on the tables it changes."},
    {"id": "c.md", "text": "Vacuum reclaims space after a migration has finished."},
    {"id": "d.md", "text": "Long migrations should run at night when the tables are quiet."},
]


def search(api: httpx.Client, name: str, **body: Any) -> dict[str, Any]:
    r = api.post(f"/v1/collections/{name}/search", json=body)
    assert r.status_code == 200, r.text
    data: dict[str, Any] = r.json()
    return data


def test_terms_keep_identifiers_whole_and_in_parts() -> None:
    got = terms("Use os.path.join; FileNotFoundError with --no-deps. Sorting the lists")
    assert got == [
        "use", "os.path.join", "os", "path", "join", "filenotfounderror", "file", "found",
        "error", "no-deps", "dep", "sort", "list",
    ]  # fmt: skip
    assert terms("the of and") == []  # stop words only


def test_bm25_weights_saturate_and_normalise_length() -> None:
    bm25 = BM25(avg_len=4, k1=1.2, b=0.75)
    one = bm25.document("cache")  # 1 term: tf 1, len 1: 2.2 / (1 + 1.2 * (0.25 + 0.75 / 4))
    assert one.indices == [term_index(t) for t in terms("cache")]  # its stem
    assert one.values[0] == pytest.approx(2.2 / (1 + 1.2 * (0.25 + 0.75 * 1 / 4)))
    three = bm25.document("cache cache cache")  # tf 3, len 3
    assert three.values[0] == pytest.approx(3 * 2.2 / (3 + 1.2 * (0.25 + 0.75 * 3 / 4)))
    assert three.values[0] < 3 * one.values[0]  # saturates
    query = BM25.query("cache the cache hit")
    assert sorted(query.indices) == query.indices and query.values == [1.0, 1.0]


def test_hybrid_local_mode(api: httpx.Client) -> None:
    make_collection(api, "hyb")
    card = api.get("/v1/collections/hyb").json()
    assert card["sparse"] == "bm25" and card["search_mode"] == "hybrid"
    assert card["search_modes"] == ["dense", "sparse", "hybrid"]
    assert ingest(api, "hyb", DOCS)["summary"]["added"] == 5

    query = "what does skip-vacuum-zx7 do"
    sparse = search(api, "hyb", query=query, mode="sparse", top_k=5)
    assert sparse["mode"] == "sparse"
    assert sparse["results"][0]["doc_id"] == "flag.md"
    # Only chunks sharing a term: BM25 finds nothing for words absent from the collection.
    assert search(api, "hyb", query="kangaroo", mode="sparse")["results"] == []
    hybrid = search(api, "hyb", query=query, top_k=5)  # the collection's default
    assert hybrid["mode"] == "hybrid" and hybrid["results"][0]["doc_id"] == "flag.md"
    dense = search(api, "hyb", query=query, mode="dense", top_k=5)
    assert dense["mode"] == "dense" and len(dense["results"]) == 5
    # RRF as Qdrant computes it: each list adds 1/(k + rank - 1), rank from 1 (k = 60 here).
    ranks = [h["doc_id"] for h in dense["results"]]
    expected = 1 / 60 + 1 / (60 + ranks.index("flag.md"))
    assert hybrid["results"][0]["score"] == pytest.approx(expected, rel=1e-4)
    # A query of stop words has no lexical half: hybrid is its dense half.
    assert len(search(api, "hyb", query="what is it", top_k=3)["results"]) == 3
    # A raw vector is dense only; asking for more is a clear 400.
    r = api.post("/v1/collections/hyb/search", json={"vector": [0.1] * 384, "mode": "hybrid"})
    assert "needs a text 'query'" in assert_error(r, 400)["message"]
    assert search(api, "hyb", vector=[0.1] * 384, top_k=2)["mode"] == "dense"
    # Filters apply to both halves.
    make_collection(api, "hyb-f", team="keyword")
    docs = [{**d, "metadata": {"team": "a" if i % 2 else "b"}} for i, d in enumerate(DOCS)]
    ingest(api, "hyb-f", docs)
    got = search(api, "hyb-f", query=query, filter={"team": "a"}, top_k=5)["results"]
    assert got and {h["metadata"]["team"] for h in got} == {"a"}
    metrics = api.get("/metrics").text
    assert 'llmops_retrieval_searches_total{mode="hybrid"}' in metrics


def test_collection_default_mode_is_per_collection(api: httpx.Client) -> None:
    r = api.post("/v1/collections", json={"name": "dense-first", "search_mode": "dense"})
    assert r.status_code == 201 and r.json()["search_mode"] == "dense"
    ingest(api, "dense-first", DOCS[:2])
    assert search(api, "dense-first", query="migration")["mode"] == "dense"
    assert search(api, "dense-first", query="migration", mode="sparse")["mode"] == "sparse"
    r = api.post("/v1/collections", json={"name": "bad-mode", "search_mode": "fuzzy"})
    assert "search_mode" in assert_error(r, 400)["message"]


@pytest.fixture(scope="module")
def legacy(
    service_factory: Any, embeddings: ServiceProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[httpx.Client]:
    """A local store holding a collection written before hybrid search: one unnamed dense
    vector, no sparse vector, no metadata."""
    path = tmp_path_factory.mktemp("legacy-qdrant")
    client = QdrantClient(path=str(path))
    client.create_collection(
        "old", vectors_config=models.VectorParams(size=384, distance=models.Distance.COSINE)
    )
    client.upsert(
        "old",
        [
            models.PointStruct(
                id=1,
                vector=[0.1] * 384,
                payload={"doc_id": "old.md", "chunk_index": 0, "text": "an old chunk"},
            )
        ],
    )
    client.close()
    svc = service_factory("retrieval", **retrieval_env(embeddings.url, Path(path))).wait_ready()
    with httpx.Client(base_url=svc.url, headers=auth_headers(), timeout=60) as api:
        yield api


def test_collections_made_before_hybrid_keep_working(legacy: httpx.Client) -> None:
    card = legacy.get("/v1/collections/old").json()
    assert card["sparse"] is None and card["search_mode"] == "dense"
    assert card["search_modes"] == ["dense"] and card["vector_size"] == 384
    got = search(legacy, "old", query="old chunk")
    assert got["mode"] == "dense" and got["results"][0]["doc_id"] == "old.md"
    r = legacy.post("/v1/collections/old/search", json={"query": "old", "mode": "hybrid"})
    err = assert_error(r, 400, "mode_unavailable")
    assert '"mode": "dense"' in err["message"] and "create a new collection" in err["message"]
    # Ingest still writes the unnamed vector it holds.
    assert ingest(legacy, "old", [{"id": "new.md", "text": "a new chunk"}])["summary"]["added"]
    hits = search(legacy, "old", query="a new chunk", with_vectors=True)["results"]
    assert {h["doc_id"] for h in hits} == {"old.md", "new.md"}
    assert all(len(h["vector"]) == 384 for h in hits)


@pytest.fixture(scope="module")
def recorder() -> Iterator[RecordingQdrant]:
    fake = RecordingQdrant()
    yield fake
    fake.stop()


def test_hybrid_on_the_server_path(
    service_factory: Any, embeddings: ServiceProcess, recorder: RecordingQdrant
) -> None:
    """What a Qdrant server receives: the collection's named dense vector and its BM25 vector
    with the IDF modifier; points with both; a Query API call with two prefetches fused by
    RRF, the filter in each."""
    env = retrieval_env(embeddings.url, Path("/nonexistent"), RETRIEVAL_QDRANT_URL=recorder.url)
    svc = service_factory("retrieval", **env).wait_ready()
    with httpx.Client(base_url=svc.url, headers=auth_headers(), timeout=60) as api:
        make_collection(api, "srv", team="keyword")
        (created,) = recorder.bodies("PUT", "/collections/srv")
        assert created["vectors"] == {"dense": {"size": 384, "distance": "Cosine"}}
        assert created["sparse_vectors"] == {"bm25": {"modifier": "idf"}}
        assert created["metadata"] == {"llmops_search_mode": "hybrid"}
        assert api.get("/v1/collections/srv").json()["search_mode"] == "hybrid"

        ingest(api, "srv", [{**DOCS[0], "metadata": {"team": "a"}}])
        (upsert,) = recorder.bodies("PUT", "/collections/srv/points")
        vector = upsert["points"][0]["vector"]
        assert len(vector["dense"]) == 384
        assert set(vector["bm25"]) == {"indices", "values"}
        assert term_index("skip-vacuum-zx7") in vector["bm25"]["indices"]

        got = search(api, "srv", query="skip-vacuum-zx7", filter={"team": "a"}, top_k=3)
        assert got["mode"] == "hybrid" and got["results"][0]["doc_id"] == "flag.md"
        query = recorder.bodies("POST", "/collections/srv/points/query")[-1]
        assert query["query"] == {"rrf": {"k": 60}} and query["limit"] == 3
        dense, lexical = query["prefetch"]
        assert dense["using"] == "dense" and len(dense["query"]) == 384
        assert lexical["using"] == "bm25" and lexical["query"]["values"] == [1.0] * len(
            lexical["query"]["indices"]
        )
        team = {"key": "metadata.team", "match": {"value": "a"}}
        assert dense["filter"]["must"][0] == team and lexical["filter"]["must"][0] == team
        assert dense["limit"] == lexical["limit"] == 50

        search(api, "srv", query="skip-vacuum-zx7", mode="sparse")
        query = recorder.bodies("POST", "/collections/srv/points/query")[-1]
        assert query["using"] == "bm25" and "prefetch" not in query
        search(api, "srv", query="skip-vacuum-zx7", mode="dense")
        query = recorder.bodies("POST", "/collections/srv/points/query")[-1]
        assert query["using"] == "dense" and len(query["query"]["nearest"]) == 384


def test_weighted_fusion_local_and_on_the_server_path(
    service_factory: Any,
    embeddings: ServiceProcess,
    recorder: RecordingQdrant,
    tmp_path: Path,
) -> None:
    """RETRIEVAL_RRF_DENSE_WEIGHT: as Qdrant weighs RRF, rank r (from 1) of the dense list adds
    1/(r/weight + k - 1), of the lexical list 1/(r + k - 1); local Qdrant computes it, a server
    is sent `rrf.weights` in the order of the prefetches (dense first)."""
    weight = "3"
    local = service_factory(
        "retrieval",
        **retrieval_env(embeddings.url, tmp_path / "q", RETRIEVAL_RRF_DENSE_WEIGHT=weight),
    ).wait_ready()
    with httpx.Client(base_url=local.url, headers=auth_headers(), timeout=60) as api:
        make_collection(api, "w")
        ingest(api, "w", DOCS)
        query = "what does skip-vacuum-zx7 do"
        dense = [
            h["doc_id"] for h in search(api, "w", query=query, mode="dense", top_k=5)["results"]
        ]
        sparse = [
            h["doc_id"] for h in search(api, "w", query=query, mode="sparse", top_k=5)["results"]
        ]
        for hit in search(api, "w", query=query, top_k=5)["results"]:
            expected = sum(
                1 / ((ranks.index(hit["doc_id"]) + 1) / w + 60 - 1)
                for w, ranks in ((3.0, dense), (1.0, sparse))
                if hit["doc_id"] in ranks
            )
            assert hit["score"] == pytest.approx(expected, rel=1e-4), hit["doc_id"]

    server = service_factory(
        "retrieval",
        **retrieval_env(
            embeddings.url,
            Path("/nonexistent"),
            RETRIEVAL_QDRANT_URL=recorder.url,
            RETRIEVAL_RRF_DENSE_WEIGHT=weight,
        ),
    ).wait_ready()
    with httpx.Client(base_url=server.url, headers=auth_headers(), timeout=60) as api:
        make_collection(api, "srv-w")
        ingest(api, "srv-w", DOCS[:1])
        search(api, "srv-w", query="skip-vacuum-zx7")
        sent = recorder.bodies("POST", "/collections/srv-w/points/query")[-1]
        assert sent["query"] == {"rrf": {"k": 60, "weights": [3.0, 1.0]}}
