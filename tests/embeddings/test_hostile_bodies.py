"""Bodies the standard library's JSON parser took and the tokenizer then choked on (found by
tests/security/test_hostile_input.py): every route now parses JSON with orjson."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import ServiceProcess, assert_error, auth_headers

JSON = {**auth_headers(), "content-type": "application/json"}


@pytest.mark.parametrize(
    ("body", "says"),
    [
        # A lone surrogate was a 500 (TypeError: TextInputSequence must be str).
        (b'{"model": "all-MiniLM-L6-v2", "input": "a \\ud800 b"}', "surrogate"),
        (b'{"model": "all-MiniLM-L6-v2", "input": ["\\udc00"]}', "surrogate"),
        # Deep nesting and invalid UTF-8 were "There was an error parsing the body" (no cause).
        (b"[" * 100_000 + b"]" * 100_000, "depth"),
        (b'{"model": "all-MiniLM-L6-v2", "input": "\xff\xfe"}', "UTF-8"),
        (b'{"model": "all-MiniLM-L6-v2", "input": "x", "dimensions": NaN}', "JSON"),
    ],
    ids=["lone-high", "lone-low", "deep", "invalid-utf8", "nan"],
)
def test_malformed_json_is_a_400_that_says_why(
    embeddings: ServiceProcess, body: bytes, says: str
) -> None:
    for path in ("/v1/embeddings", "/v1/tokenize"):
        r = httpx.post(f"{embeddings.url}{path}", content=body, headers=JSON)
        message = assert_error(r, 400)["message"]
        assert "not valid JSON" in message and says in message, message
