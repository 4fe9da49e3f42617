"""Failures: the embeddings service going away mid-life, and a Qdrant server that errors.

A Qdrant server cannot run on our machines, so the server path is driven by a real HTTP server
with scripted faults that speaks the few REST calls involved.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import (
    API_KEY_HASH,
    ServiceProcess,
    assert_error,
    auth_headers,
    free_port,
    metric,
)
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


class FakeQdrant:
    """Answers Qdrant's REST API for listing collections, failing as scripted."""

    def __init__(self) -> None:
        self.script: list[tuple[int, dict[str, str]]] = []
        self.calls = 0
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _send(self, status: int, body: dict[str, Any], headers: dict[str, str]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path in ("/", ""):
                    self._send(200, {"title": "qdrant", "version": "1.15.0"}, {})
                    return
                fake.calls += 1
                if fake.script:
                    status, headers = fake.script.pop(0)
                    self._send(status, {"status": {"error": "scripted"}, "time": 0}, headers)
                    return
                self._send(200, {"result": {"collections": []}, "status": "ok", "time": 0}, {})

            def log_message(self, *args: Any) -> None:
                pass

        self.port = free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


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
    # A client error is not retried.
    fake_qdrant.script = [(400, {})]
    fake_qdrant.calls = 0
    r = httpx.get(f"{server_mode.url}/v1/collections", headers=auth_headers())
    assert r.status_code == 500 and fake_qdrant.calls == 1
