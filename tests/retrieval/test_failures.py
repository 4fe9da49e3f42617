"""Failures: the embeddings service going away mid-life, and a Qdrant server that errors.

A Qdrant server cannot run on our machines, so the server path is driven by a real HTTP server
with scripted faults that speaks the few REST calls involved (tests/fakes/qdrant.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import API_KEY_HASH, ServiceProcess, assert_error, auth_headers, metric
from tests.fakes.qdrant import FakeQdrant
from tests.retrieval.conftest import ingest, make_collection, retrieval_env


def test_embeddings_down_during_ingest_leaves_documents_whole(
    service_factory: Any, tmp_path: Path
) -> None:
    emb = service_factory("embeddings", EMBEDDINGS_API_KEY_HASHES=API_KEY_HASH).wait_ready()
    ret = service_factory("retrieval", **retrieval_env(emb.url, tmp_path / "q")).wait_ready()
    with httpx.Client(base_url=ret.url, headers=auth_headers(), timeout=120) as api:
        make_collection(api, "f")
        old = "\n\n".join(f"Original paragraph {i} about otters and rivers." for i in range(30))
        first = ingest(api, "f", [{"id": "kept", "text": old}])
        kept_chunks = first["results"][0]["chunks"]
        emb.stop()  # the embeddings service goes away

        out = ingest(
            api,
            "f",
            [{"id": "kept", "text": "A rewrite that cannot be embedded now."},
             {"id": "new", "text": "A new document that cannot be embedded now."}],
        )  # fmt: skip
        for r in out["results"]:
            assert r["status"] == "failed" and "embeddings" in r["reason"], r
        # Nothing half-written: the old version is whole, the new one absent.
        assert api.get("/v1/collections/f").json()["points_count"] == kept_chunks
        r = api.post("/v1/collections/f/search", json={"vector": [0.1] * 384, "top_k": 100})
        assert {h["doc_id"] for h in r.json()["results"]} == {"kept"}
        # A text query needs the embeddings service: a clear 503.
        r = api.post("/v1/collections/f/search", json={"query": "otters"})
        assert_error(r, 503, "embeddings_unavailable")
        assert "retry-after" in r.headers
        # Creating a collection needs the vector size from the embeddings service too.
        assert_error(api.post("/v1/collections", json={"name": "g"}), 503, "embeddings_unavailable")


@pytest.fixture(scope="module")
def fake_qdrant() -> Iterator[FakeQdrant]:
    fake = FakeQdrant()
    yield fake
    fake.server.shutdown()


@pytest.fixture(scope="module")
def server_mode(
    service_factory: Any, fake_qdrant: FakeQdrant, embeddings: ServiceProcess
) -> ServiceProcess:
    env = retrieval_env(
        embeddings.url,
        Path("/nonexistent"),
        RETRIEVAL_QDRANT_URL=f"http://127.0.0.1:{fake_qdrant.port}",
        RETRIEVAL_QDRANT_API_KEY="test-qdrant-key",
        RETRIEVAL_QDRANT_RETRIES="3",
    )
    return service_factory("retrieval", **env).wait_ready()


def test_transient_qdrant_errors_are_retried(
    server_mode: ServiceProcess, fake_qdrant: FakeQdrant
) -> None:
    fake_qdrant.script = [(503, {}), (502, {}), (429, {"retry-after": "1"})]
    fake_qdrant.calls = 0
    r = httpx.get(f"{server_mode.url}/v1/collections", headers=auth_headers())
    assert r.status_code == 200 and r.json()["data"] == []
    assert fake_qdrant.calls == 4
    text = httpx.get(f"{server_mode.url}/metrics").text
    assert metric(text, "llmops_retrieval_qdrant_retries_total", operation="get_collections") == 3


def test_persistent_qdrant_errors_become_503(
    server_mode: ServiceProcess, fake_qdrant: FakeQdrant
) -> None:
    fake_qdrant.script = [(500, {})] * 10
    r = httpx.get(f"{server_mode.url}/v1/collections", headers=auth_headers())
    err = assert_error(r, 503, "vector_store_unavailable")
    assert "retry" in err["message"].lower() and int(r.headers["retry-after"]) >= 1
    fake_qdrant.script = []


@pytest.mark.parametrize(
    ("qdrant_status", "body", "status", "code", "words"),
    [
        (400, {"status": {"error": "Wrong input: bad"}}, 400, "invalid_value", "Wrong input"),
        (422, {"status": {"error": "Format error"}}, 400, "invalid_value", "Format error"),
        (401, {"status": {"error": "Must provide an API key"}}, 502, "vector_store_auth",
         "RETRIEVAL_QDRANT_API_KEY"),
        (403, b"<html>Forbidden by the ingress</html>", 502, "vector_store_auth", "Forbidden"),
        (404, {"status": {"error": "Not found: nope"}}, 404, "not_found", "Not found"),
        (409, {"status": {"error": "already exists"}}, 409, "conflict", "already exists"),
        (413, b"Payload Too Large", 413, "request_too_large", "Payload Too Large"),
        (418, b"", 502, "vector_store_error", "418"),
    ],
)  # fmt: skip
def test_qdrant_client_errors_keep_their_meaning_and_message(
    server_mode: ServiceProcess,
    fake_qdrant: FakeQdrant,
    qdrant_status: int,
    body: Any,
    status: int,
    code: str,
    words: str,
) -> None:
    """A Qdrant 4xx is not retried and not a generic 500: the caller's mistake stays a 4xx,
    our credentials or a proxy in the way become a 502, each with what Qdrant said."""
    fake_qdrant.script = [(qdrant_status, {}, body)]
    fake_qdrant.calls = 0
    r = httpx.get(f"{server_mode.url}/v1/collections", headers=auth_headers())
    err = assert_error(r, status, code)
    assert words in err["message"], err
    assert fake_qdrant.calls == 1
