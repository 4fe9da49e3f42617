"""A lone surrogate in a message was a 500 from the tokenizer (found by
tests/security/test_hostile_input.py); the body is now parsed by orjson, which refuses it."""

from __future__ import annotations

import httpx

from tests.conftest import ServiceProcess, assert_error, auth_headers


def test_lone_surrogate_in_a_message_is_a_400(local_llm: ServiceProcess) -> None:
    body = (
        b'{"model": "smollm2-135m-instruct", "max_tokens": 1,'
        b' "messages": [{"role": "user", "content": "hi \\ud800"}]}'
    )
    r = httpx.post(
        f"{local_llm.url}/v1/chat/completions",
        content=body,
        headers={**auth_headers(), "content-type": "application/json"},
        timeout=60,
    )
    assert "surrogate" in assert_error(r, 400)["message"]
    assert httpx.get(f"{local_llm.url}/readyz").status_code == 200
