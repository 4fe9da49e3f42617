"""Requests /v1/ask must refuse itself, found by tests/security/test_hostile_input.py: the
collection went into retrieval's URL as given ('../', '?', '#' reached other routes: a 404 naming
retrieval's paths, a 503, a 500 for a NUL), a NUL in the question, user or session was answered
and then dropped by the feedback service, and Infinity in a filter was a 500. No dependency is
needed to see it: they are refused before any call (the ones here do not listen)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.conftest import API_KEY_HASH, ServiceProcess, assert_error, auth_headers, free_port


@pytest.fixture(scope="module")
def rag_alone(service_factory: Any, tmp_path_factory: pytest.TempPathFactory) -> ServiceProcess:
    nowhere = f"http://127.0.0.1:{free_port()}"
    svc: ServiceProcess = service_factory(
        "rag",
        ENV="dev",
        RAG_API_KEY_HASHES=API_KEY_HASH,
        RAG_RETRIEVAL_URL=nowhere,
        RAG_PROXY_URL=nowhere,
        RAG_OUTBOX_DIR=str(tmp_path_factory.mktemp("rag-hostile") / "outbox"),
    )
    return svc.wait_ready(60)


def ask(svc: ServiceProcess, **body: Any) -> httpx.Response:
    body.setdefault("question", "Can I return a damaged item?")
    return httpx.post(f"{svc.url}/v1/ask", json=body, headers=auth_headers(), timeout=30)


@pytest.mark.parametrize(
    "collection",
    ["../../etc/passwd", "x/../../collections", "handbook?x=1", "handbook#x", "/abs", "a\x00b",
     "a\r\nb", "..", "-lead", "x" * 65],
)  # fmt: skip
def test_a_collection_that_is_not_a_collection_name_is_a_400(
    rag_alone: ServiceProcess, collection: str
) -> None:
    assert assert_error(ask(rag_alone, collection=collection), 400)["param"] == "collection"


@pytest.mark.parametrize("field", ["question", "user_id", "session_id"])
def test_a_nul_in_what_is_recorded_is_a_400(rag_alone: ServiceProcess, field: str) -> None:
    err = assert_error(ask(rag_alone, **{field: "a\x00b"}), 400)
    assert err["param"] == field and "NUL" in err["message"]


def test_infinity_in_a_filter_is_a_400(rag_alone: ServiceProcess) -> None:
    r = httpx.post(
        f"{rag_alone.url}/v1/ask",
        content=b'{"question": "Refunds?", "filter": {"price": {"lt": Infinity}}}',
        headers={**auth_headers(), "content-type": "application/json"},
    )
    assert "not valid JSON" in assert_error(r, 400)["message"]
