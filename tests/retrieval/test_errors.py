"""Every bad input gets its status and a JSON error; one bad document never fails the others."""

from __future__ import annotations

import base64
from typing import Any

import httpx
import pytest

from services.common.middleware import OPEN_PATHS
from services.retrieval.app import create_app
from services.retrieval.config import RetrievalSettings
from tests.conftest import API_KEY_HASH, ServiceProcess, assert_error, auth_headers
from tests.retrieval.conftest import ingest, make_collection


@pytest.fixture(scope="module")
def coll(api: httpx.Client) -> str:
    make_collection(api, "errors")
    return "errors"


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"),
    [
        ("POST", "/v1/collections/nope/search", {"query": "x"}, 404, "collection_not_found"),
        (
            "POST",
            "/v1/collections/nope/documents",
            {"documents": [{"text": "x"}]},
            404,
            "collection_not_found",
        ),
        ("DELETE", "/v1/collections/nope", None, 404, "collection_not_found"),
        ("GET", "/v1/collections/nope", None, 404, "collection_not_found"),
        ("DELETE", "/v1/collections/nope/documents/x", None, 404, "collection_not_found"),
        ("POST", "/v1/collections", {"name": "bad name!"}, 400, "invalid_value"),
        (
            "POST",
            "/v1/collections",
            {"name": "x", "metadata_fields": {"a": "blob"}},
            400,
            "invalid_value",
        ),
        ("POST", "/v1/collections/errors/search", {"query": "   "}, 400, "invalid_value"),
        ("POST", "/v1/collections/errors/search", {}, 400, "invalid_value"),
        (
            "POST",
            "/v1/collections/errors/search",
            {"query": "x", "vector": [0.1]},
            400,
            "invalid_value",
        ),
        ("POST", "/v1/collections/errors/search", {"vector": [0.1, 0.2]}, 400, "invalid_value"),
        ("POST", "/v1/collections/errors/search", {"query": "x", "top_k": 0}, 400, "invalid_value"),
        (
            "POST",
            "/v1/collections/errors/search",
            {"query": "x", "top_k": 9999},
            400,
            "invalid_value",
        ),
        ("POST", "/v1/collections/errors/documents", {"documents": []}, 400, "empty_input"),
        (
            "POST",
            "/v1/collections/errors/documents",
            {"documents": [{"text": "x"}] * 65},
            413,
            "too_many_documents",
        ),
        (
            "POST",
            "/v1/collections/errors/documents",
            {"documents": [{"text": "x" * 200001}]},
            413,
            "document_too_large",
        ),
        (
            "POST",
            "/v1/collections/errors/documents",
            {"documents": [{"text": "a", "content_base64": "YQ=="}]},
            400,
            "invalid_value",
        ),
        (
            "POST",
            "/v1/collections/errors/documents",
            {"documents": [{"content_base64": "YQ=="}]},
            400,
            "invalid_value",
        ),
    ],
)
def test_bad_requests(
    api: httpx.Client, coll: str, method: str, path: str, body: Any, status: int, code: str
) -> None:
    r = api.request(method, path, json=body)
    assert_error(r, status, code)


def test_duplicate_collection_is_409(api: httpx.Client, coll: str) -> None:
    assert_error(api.post("/v1/collections", json={"name": coll}), 409, "collection_exists")


def test_one_bad_document_never_fails_the_others(api: httpx.Client, coll: str) -> None:
    out = ingest(
        api,
        coll,
        [
            {"id": "good", "text": "A perfectly fine document."},
            {"id": "b64", "content_base64": "not base64 at all!", "content_type": "text/plain"},
            {"id": "type", "text": "x", "content_type": "application/msword"},
            {
                "id": "pdf",
                "content_base64": base64.b64encode(b"not a pdf").decode(),
                "content_type": "application/pdf",
            },
            {"id": "empty", "text": "   \n\n  "},
        ],
    )
    status = {r["id"]: (r["status"], r["reason"]) for r in out["results"]}
    assert status["good"] == ("added", None)
    for bad in ("b64", "type", "pdf", "empty"):
        assert status[bad][0] == "failed" and status[bad][1], status
    assert "base64" in status["b64"][1]
    assert "unsupported content_type" in status["type"][1]
    assert out["summary"] == {"added": 1, "unchanged": 0, "replaced": 0, "failed": 4}
    assert api.get(f"/v1/collections/{coll}").json()["points_count"] == 1


def test_collections_list_and_delete(api: httpx.Client) -> None:
    make_collection(api, "to-drop")
    ingest(api, "to-drop", [{"id": "x", "text": "Something to count."}])
    assert api.post("/v1/collections/to-drop/search", json={"query": "count"}).status_code == 200
    listed = {c["name"]: c for c in api.get("/v1/collections").json()["data"]}
    assert listed["to-drop"]["points_count"] == 1 and listed["to-drop"]["vector_size"] == 384
    assert api.delete("/v1/collections/to-drop").json() == {"deleted": "to-drop"}
    assert "to-drop" not in {c["name"] for c in api.get("/v1/collections").json()["data"]}
    r = api.post("/v1/collections/to-drop/search", json={"query": "count"})
    assert_error(r, 404, "collection_not_found")


def _routes() -> list[tuple[str, str]]:
    app = create_app(RetrievalSettings(env="dev", api_key_hashes=[API_KEY_HASH]))
    out = set()
    for path, ops in app.openapi()["paths"].items():
        for method in ops:
            out.add((method.upper(), path.replace("{name}", "errors").replace("{doc_id}", "d")))
    for route in app.routes:
        path = getattr(route, "path", None)
        for method in getattr(route, "methods", None) or ():
            if path and method != "HEAD":
                out.add((method, path))
    return sorted(r for r in out if r[1] not in OPEN_PATHS)


def test_a_405_lists_every_method_the_path_allows(retrieval: ServiceProcess) -> None:
    """Found by Schemathesis: Allow named only the first route of the path (GET)."""
    r = httpx.put(f"{retrieval.url}/v1/collections/errors", headers=auth_headers(), json={})
    err = assert_error(r, 405, "method_not_allowed")
    assert r.headers["allow"] == "DELETE, GET" and "use DELETE, GET" in err["message"]


def test_auth_on_every_route(retrieval: ServiceProcess) -> None:
    routes = _routes()
    assert ("POST", "/v1/collections/errors/search") in routes and len(routes) >= 9
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        for method, path in [*routes, ("GET", "/v1/nothing")]:
            r = httpx.request(method, f"{retrieval.url}{path}", headers=headers, json={})
            assert r.status_code == 401, (method, path)
            assert r.json()["error"]["type"] == "authentication_error"
    for path in OPEN_PATHS:
        assert httpx.get(f"{retrieval.url}{path}").status_code == 200
