"""Who gets in, for every service that takes configured keys (embeddings, retrieval, feedback,
rag, local-llm): every route, enumerated from the apps themselves, declares a scope and
refuses a missing, malformed, unknown (or revoked: no longer configured) and wrong-scope key;
an unknown path tells an anonymous caller nothing. The apps run in-process over ASGI (no
lifespan: auth answers before any handler needs its clients)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from pydantic import ValidationError

from services.common.auth import hash_key
from services.common.middleware import OPEN_PATHS
from services.common.routing import api_routes
from services.common.scopes import SCOPE_KEY, SCOPES, parse_key_entry
from services.embeddings.app import create_app as embeddings_app
from services.embeddings.config import EmbeddingsSettings
from services.feedback.app import create_app as feedback_app
from services.feedback.config import FeedbackSettings
from services.local_llm.app import create_app as local_llm_app
from services.local_llm.config import LocalLLMSettings
from services.rag.app import create_app as rag_app
from services.rag.config import RagSettings
from services.retrieval.app import create_app as retrieval_app
from services.retrieval.config import RetrievalSettings

ALL_KEY, REVOKED = "sk-every-scope-key", "sk-revoked-key"
# One key per scope: a key holding only `s` may use the routes needing `s`, and no other.
SCOPED = {s: f"sk-only-{s.replace(':', '-')}" for s in SCOPES}
HASHES = [hash_key(ALL_KEY), *(f"{hash_key(k)}:{s}" for s, k in SCOPED.items())]

APPS: dict[str, Callable[[], FastAPI]] = {
    "embeddings": lambda: embeddings_app(EmbeddingsSettings(api_key_hashes=HASHES)),
    "retrieval": lambda: retrieval_app(RetrievalSettings(env="dev", api_key_hashes=HASHES)),
    "feedback": lambda: feedback_app(FeedbackSettings(env="dev", api_key_hashes=HASHES)),
    "rag": lambda: rag_app(RagSettings(env="dev", api_key_hashes=HASHES)),
    "local-llm": lambda: local_llm_app(LocalLLMSettings(env="dev", api_key_hashes=HASHES)),
}


def routes(app: FastAPI) -> list[tuple[str, str, str | None]]:
    """(method, concrete path, scope) of every route but the open ones, from the app."""
    out = []
    for route in api_routes(app):
        path = getattr(route, "path", "")
        if path in OPEN_PATHS or not path:
            continue
        concrete = path.replace("{doc_id:path}", "d").replace("{model}", "m")
        concrete = concrete.replace("{name}", "c").replace("{fmt}", "sft")
        concrete = concrete.replace("{interaction_id}", "i")
        scope = (route.openapi_extra or {}).get(SCOPE_KEY) if isinstance(route, APIRoute) else None
        for method in sorted(getattr(route, "methods", None) or ()):
            if method != "HEAD":
                out.append((method, concrete, scope))
    return out


@pytest.fixture(params=list(APPS))
def service(request: pytest.FixtureRequest) -> Iterator[tuple[str, FastAPI, httpx.Client]]:
    app = APPS[request.param]()
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)  # type: ignore[arg-type]
    client = httpx.AsyncClient(transport=transport, base_url="http://svc")
    yield request.param, app, client  # type: ignore[misc]


def call(client: Any, method: str, path: str, key: str | None, raw: str | None = None) -> Any:
    import asyncio

    headers = {"Authorization": raw if raw is not None else f"Bearer {key}"} if (key or raw) else {}
    return asyncio.run(client.request(method, path, headers=headers, json={}))


def test_every_route_declares_a_known_scope(service: tuple[str, FastAPI, Any]) -> None:
    name, app, _ = service
    found = routes(app)
    api = [(m, p, s) for m, p, s in found if p not in ("/docs", "/docs/oauth2-redirect", "/redoc",
                                                       "/openapi.json")]  # fmt: skip
    # Nothing the OpenAPI schema lists is missed by the enumeration (nor by the middleware).
    documented = {
        (m.upper(), p)
        for p, ops in app.openapi()["paths"].items()
        for m in ops
        if p not in OPEN_PATHS
    }
    raw = {
        (m, re.sub(r":\w+}", "}", getattr(r, "path", "")))  # {doc_id:path} is {doc_id} there
        for r in api_routes(app)
        for m in getattr(r, "methods", None) or ()
    }
    assert documented <= raw and len(api) >= len(documented) > 0, (name, documented - raw)
    missing = [(m, p) for m, p, s in api if s is None]
    assert missing == [], f"{name}: routes without a scope: {missing}"
    assert {s for _, _, s in api} <= set(SCOPES)


def test_every_route_refuses_a_key_that_does_not_belong(service: tuple[str, FastAPI, Any]) -> None:
    name, app, client = service
    for method, path, needed in routes(app):
        for key, raw in ((None, None), (None, "Basic dXNlcjpwYXNz"), (None, "Bearer"),
                         (REVOKED, None), (hash_key(ALL_KEY), None)):  # fmt: skip
            r = call(client, method, path, key, raw)
            assert r.status_code == 401, (name, method, path, raw, r.text)
            assert r.json()["error"]["type"] == "authentication_error"
            assert ALL_KEY not in r.text and (key is None or key not in r.text)
        if needed is None:  # the docs: any valid key
            assert call(client, method, path, SCOPED["ask"]).status_code == 200
            continue
        for scope, key in SCOPED.items():
            r = call(client, method, path, key)
            if scope == needed:
                assert r.status_code not in (401, 403), (name, method, path, scope, r.text)
            else:
                assert r.status_code == 403, (name, method, path, scope, r.text)
                err = r.json()["error"]
                assert err["type"] == "permission_error" and err["code"] == "insufficient_scope"
                assert f"needs the scope '{needed}'" in err["message"] and key not in r.text
        assert call(client, method, path, ALL_KEY).status_code not in (401, 403)


def test_unknown_paths_reveal_nothing_to_anonymous_callers(
    service: tuple[str, FastAPI, Any],
) -> None:
    name, _, client = service
    for path in ("/v1/nothing", "/admin", "/v1/collections/../../etc/passwd", "/.env"):
        anonymous = call(client, "GET", path, None)
        assert anonymous.status_code == 401, (name, path)
        assert call(client, "GET", path, ALL_KEY).status_code == 404, (name, path)
        # A scoped key on an unknown path: 404 as well, not a 403 that names a scope.
        assert call(client, "GET", path, SCOPED["ask"]).status_code == 404, (name, path)


def test_key_entries_name_known_scopes() -> None:
    digest = hash_key("k")
    assert parse_key_entry(digest) == (digest, None)
    assert parse_key_entry(f"{digest}:ask+feedback:write") == (
        digest, frozenset({"ask", "feedback:write"}),
    )  # fmt: skip
    settings = RagSettings(env="dev", api_key_hashes=f"sha256:{digest.upper()}:search+ask")
    assert settings.api_key_hashes == [f"{digest}:ask+search"]
    for bad, word in ((f"{digest}:delete-everything", "unknown scope(s) delete-everything"),
                      (f"{digest}:", "unknown scope(s) (none given)"),
                      ("sk-plain-key:ask", "never plain keys")):  # fmt: skip
        with pytest.raises(ValidationError, match=word.replace("(", r"\(").replace(")", r"\)")):
            RagSettings(env="dev", api_key_hashes=bad)
