"""Every route but health, readiness and metrics refuses a missing or wrong key."""

from __future__ import annotations

import httpx
import pytest

from services.common.middleware import OPEN_PATHS
from services.embeddings.app import create_app
from services.embeddings.config import EmbeddingsSettings
from tests.conftest import API_KEY_HASH, ServiceProcess, auth_headers


def all_routes() -> list[tuple[str, str]]:
    """(method, path) for every route the app declares: its OpenAPI paths and the docs routes."""
    app = create_app(EmbeddingsSettings(api_key_hashes=[API_KEY_HASH]))
    out = set()
    for path, ops in app.openapi()["paths"].items():
        for method in ops:
            out.add((method.upper(), path.replace("{model}", "all-MiniLM-L6-v2")))
    for route in app.routes:  # routes outside the schema (/docs, /openapi.json, ...)
        path = getattr(route, "path", None)
        for method in getattr(route, "methods", None) or ():
            if path and method != "HEAD":
                out.add((method, path))
    return sorted(out)


ROUTES = all_routes()
PROTECTED = [r for r in ROUTES if r[1] not in OPEN_PATHS]


def test_route_enumeration_covers_the_api() -> None:
    paths = {p for _, p in PROTECTED}
    assert {"/v1/embeddings", "/v1/models", "/docs", "/openapi.json"} <= paths
    assert {p for _, p in ROUTES} >= OPEN_PATHS


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-key"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "Bearer"},
        {"Authorization": f"Bearer {API_KEY_HASH}"},  # the digest itself is not a key
    ],
    ids=["missing", "wrong", "basic-scheme", "empty-bearer", "digest-as-key"],
)
def test_every_protected_route_rejects(embeddings: ServiceProcess, headers: dict[str, str]) -> None:
    for method, path in [*PROTECTED, ("GET", "/v1/unknown"), ("DELETE", "/v1/embeddings")]:
        r = httpx.request(method, f"{embeddings.url}{path}", headers=headers, json={})
        assert r.status_code == 401, (method, path, r.text)
        err = r.json()["error"]
        assert err["type"] == "authentication_error" and err["message"]
        assert r.headers["www-authenticate"].startswith("Bearer")


def test_open_routes_need_no_key(embeddings: ServiceProcess) -> None:
    for path in OPEN_PATHS:
        assert httpx.get(f"{embeddings.url}{path}").status_code == 200


def test_valid_key_passes_on_every_route(embeddings: ServiceProcess) -> None:
    for method, path in PROTECTED:
        if method == "GET":
            r = httpx.get(f"{embeddings.url}{path}", headers=auth_headers())
            assert r.status_code == 200, (path, r.text)
