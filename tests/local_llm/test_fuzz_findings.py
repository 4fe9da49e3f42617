"""What fuzzing local-llm from its OpenAPI document found (tests/security/test_fuzz.py), kept
fixed: a chat request took "stream_options": {"include_usage": 0} and, alike, "stream": 0,
"max_tokens": true (read as 1) or "2" by coercing them; its stream and its 429 were
undocumented. The app runs in-process without its lifespan (no model): a body is refused
before the handler, and a well-typed one reaches it (503, the model is not loaded)."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from services.local_llm.app import create_app
from services.local_llm.config import LocalLLMSettings
from tests.conftest import API_KEY_HASH, assert_error, auth_headers

MODEL = "smollm2-135m-instruct"
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def client() -> TestClient:
    """Not entered as a context manager: no lifespan, so no model is loaded."""
    app = create_app(LocalLLMSettings(env="dev", api_key_hashes=[API_KEY_HASH]))
    return TestClient(app, headers=auth_headers())


@pytest.mark.parametrize(
    ("field", "value", "param"),
    [("stream_options", {"include_usage": 0}, "stream_options.include_usage"),
     ("stream_options", {"include_usage": "yes"}, "stream_options.include_usage"),
     ("stream", 0, "stream"), ("stream", "true", "stream"),
     ("max_tokens", True, "max_tokens"), ("max_tokens", "2", "max_tokens"),
     ("max_completion_tokens", 2.0, "max_completion_tokens"), ("n", True, "n"),
     ("seed", "7", "seed"), ("temperature", "0.5", "temperature"), ("top_p", True, "top_p")],
)  # fmt: skip
def test_a_chat_request_takes_json_types_only(
    client: TestClient, field: str, value: Any, param: str
) -> None:
    r = client.post("/v1/chat/completions", json={**BODY, field: value})
    assert assert_error(r, 400, "invalid_value")["param"] == param


def test_a_well_typed_request_still_reaches_the_handler(client: TestClient) -> None:
    """Integers where numbers are documented, booleans, nulls: past validation, to the model."""
    body = {**BODY, "stream": True, "stream_options": {"include_usage": True}, "max_tokens": 2,
            "temperature": 0, "top_p": 1, "seed": 7, "n": None}  # fmt: skip
    assert_error(client.post("/v1/chat/completions", json=body), 503, "model_loading")


def test_chat_documents_its_stream_and_its_queue_limit(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    op = paths["/v1/chat/completions"]["post"]
    ok = op["responses"]["200"]["content"]
    assert set(ok) == {"application/json", "text/event-stream"}
    assert ok["application/json"]["schema"] == {"$ref": "#/components/schemas/ChatCompletion"}
    data = ok["text/event-stream"]["schema"]["properties"]["data"]
    chunk = data["else"]["contentSchema"]["anyOf"][0]
    assert chunk["properties"]["object"] == {"const": "chat.completion.chunk"}
    assert "429" in op["responses"]
    listed = paths["/v1/models"]["get"]["responses"]["200"]["content"]["application/json"]
    assert listed["schema"] == {"$ref": "#/components/schemas/ModelList"}
