"""What fuzzing the proxy from its OpenAPI document found (tests/security/test_fuzz.py), each
kept fixed here: token-id embeddings inputs, a bad max_tokens next to a good
max_completion_tokens, hand-parsed routes that documented no body, a number taken for an
expiry date."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import assert_error
from tests.llm_proxy.conftest import MASTER_KEY, FakeUpstream, Proxy


@pytest.fixture(scope="module")
def key(proxy: Proxy) -> str:
    """A key with a TPM small enough to show how many tokens an input was counted as."""
    k: str = proxy.create_key(name="fuzz-findings", tpm=3)["key"]
    return k


def test_embeddings_take_token_ids_and_refuse_other_inputs(
    proxy: Proxy, key: str, fakes: dict[str, FakeUpstream]
) -> None:
    """`[1, 2]` (OpenAI's token ids of one input) was a 500: each id was measured with len()."""
    for ids in ([1, 2], [[1], [2, 3]]):
        r = proxy.post("/v1/embeddings", MASTER_KEY, {"model": "embed", "input": ids})
        assert r.status_code == 200, r.text
        assert fakes["c"].requests()[-1]["body"]["input"] == ids  # passed on as sent
    # One token an id: three are within this key's 3 tokens a minute, four are refused unsent.
    r = proxy.post("/v1/embeddings", key, {"model": "embed", "input": [7, 8, 9]})
    assert r.status_code == 200, r.text
    r = proxy.post("/v1/embeddings", key, {"model": "embed", "input": [[1, 2], [3, 4]]})
    assert_error(r, 400, "tokens_exceed_limit")
    bad: list[Any] = [[True], [None], [1.5], ["a", 1], [[]], [[1], "a"], {"a": 1}, 5, []]
    for value in bad:
        r = proxy.post("/v1/embeddings", key, {"model": "embed", "input": value})
        assert assert_error(r, 400, "invalid_value")["param"] == "input", value
    r = proxy.post("/v1/embeddings", key, {"model": "embed"})
    assert assert_error(r, 400, "missing")["param"] == "input"


def test_a_bad_max_tokens_is_refused_next_to_a_good_max_completion_tokens(proxy: Proxy) -> None:
    """max_completion_tokens wins, but a max_tokens of 0 was passed on unchecked beside it (the
    master key: no limits, so nothing else can refuse the call)."""
    assert proxy.chat(MASTER_KEY, max_completion_tokens=1, max_tokens=1).status_code == 200
    for bad in (0, -1, "2", True, 1.5):
        r = proxy.chat(MASTER_KEY, max_completion_tokens=1, max_tokens=bad)
        err = assert_error(r, 400)
        assert err["param"] == "max_tokens" and "positive integer" in err["message"], bad


def test_the_hand_parsed_routes_document_their_bodies_and_answers(proxy: Proxy) -> None:
    """The fast routes read their bodies by hand, so FastAPI documented none: every generated
    case was a bodiless 400, and a stream's content type was undocumented."""
    paths = proxy.http.get(f"{proxy.url}/openapi.json").json()["paths"]
    chat = paths["/v1/chat/completions"]["post"]
    body = chat["requestBody"]["content"]["application/json"]["schema"]
    assert body["required"] == ["model", "messages"] and body["additionalProperties"] is True
    assert body["properties"]["messages"]["minItems"] == 1
    assert body["properties"]["stream"] == {**body["properties"]["stream"], "type": "boolean"}
    ok = chat["responses"]["200"]["content"]
    assert set(ok) == {"application/json", "text/event-stream"}
    event = ok["text/event-stream"]["schema"]
    assert event["required"] == ["data"]  # one event, its data JSON or [DONE]
    assert event["properties"]["data"]["else"]["contentMediaType"] == "application/json"
    emb = paths["/v1/embeddings"]["post"]
    assert emb["requestBody"]["content"]["application/json"]["schema"]["required"] == [
        "model",
        "input",
    ]
    for op in (chat, emb):
        for status in ("400", "401", "403", "404", "413", "429", "502", "503", "504", "4XX"):
            assert status in op["responses"], status


def test_a_key_expiry_date_is_iso_8601_only(proxy: Proxy) -> None:
    """`"expires_at": -384` made a key (seconds since the epoch: expired in 1969); a number is a
    mistake here (expires_in_s takes seconds), so it is a 400 naming the field."""
    for value in (-384, 1.5, "1700000000", True):
        r = proxy.admin("POST", "/keys", json={"expires_at": value})
        err = assert_error(r, 400)
        assert err["param"] == "expires_at" and "ISO 8601" in err["message"], value
    r = proxy.admin("POST", "/keys", json={"expires_at": "2099-01-01T00:00:00Z"})
    assert r.status_code == 201 and r.json()["expires_at"].startswith("2099-01-01T00:00:00")
