"""What fuzzing rag from its OpenAPI document found (tests/security/test_fuzz.py), kept fixed:
an ask took "stream": 0 (and "top_k": true or "2") by coercing them, and its stream and its
429/502/504 answers were undocumented. The app runs in-process without its lifespan: a body is
refused before the handler needs its clients."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from services.rag.app import create_app
from services.rag.config import RagSettings
from services.rag.routes import AskIn
from tests.conftest import API_KEY_HASH, assert_error, auth_headers


@pytest.fixture(scope="module")
def client() -> TestClient:
    """Not entered as a context manager: no lifespan (no outbox, no clients)."""
    app = create_app(RagSettings(env="dev", api_key_hashes=[API_KEY_HASH]))
    return TestClient(app, headers=auth_headers())


@pytest.mark.parametrize(
    ("field", "value"),
    [("stream", 0), ("stream", 1), ("stream", "true"), ("stream", None), ("top_k", True),
     ("top_k", "2"), ("top_k", 2.5)],
)  # fmt: skip
def test_an_ask_takes_json_types_only(client: TestClient, field: str, value: Any) -> None:
    r = client.post("/v1/ask", json={"question": "Can I return it?", field: value})
    assert assert_error(r, 400, "invalid_value")["param"] == field
    ok = AskIn.model_validate({"question": "q", "stream": True, "top_k": 3})
    assert (ok.stream, ok.top_k) == (True, 3)


def test_an_ask_documents_its_stream_and_its_gateway_errors(client: TestClient) -> None:
    op = client.get("/openapi.json").json()["paths"]["/v1/ask"]["post"]
    answers = op["responses"]
    assert set(answers["200"]["content"]) == {"application/json", "text/event-stream"}
    assert answers["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/AskOut"
    }
    event = answers["200"]["content"]["text/event-stream"]["schema"]
    assert event["required"] == ["data"]
    assert event["properties"]["data"]["else"]["contentMediaType"] == "application/json"
    for status in ("400", "404", "429", "502", "503", "504"):
        assert status in answers, status
