"""The proxy through the official openai SDK, and its errors in OpenAI's shape."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import openai
import pytest

from tests.llm_proxy.conftest import MASTER_KEY, FakeUpstream, Proxy


@pytest.fixture(scope="module")
def key(proxy: Proxy) -> str:
    k: str = proxy.create_key(name="api-tests", aliases=["fake", "embed", "slow"])["key"]
    return k


def client(proxy: Proxy, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{proxy.url}/v1", api_key=key, max_retries=0)


def test_sdk_chat_completion(proxy: Proxy, key: str, fakes: dict[str, FakeUpstream]) -> None:
    raw = client(proxy, key).chat.completions.with_raw_response.create(
        model="fake", messages=[{"role": "user", "content": "one two three"}], max_tokens=7
    )
    out = raw.parse()
    assert out.choices[0].message.content == "Hello from a."
    assert out.usage is not None
    assert (out.usage.prompt_tokens, out.usage.completion_tokens) == (3, 7)
    assert raw.headers["x-llmops-deployment"] == "a"
    assert float(raw.headers["x-llmops-overhead-ms"]) >= 0
    # (3 * 0.5 + 7 * 1.5) / 1000
    assert float(raw.headers["x-llmops-cost-usd"]) == pytest.approx(0.012)
    sent = fakes["a"].requests()[-1]
    assert sent["body"]["model"] == "a-model"  # the alias became the deployment's model
    assert "authorization" not in sent["headers"]  # no key configured: none sent


def test_sdk_streaming_with_and_without_usage(proxy: Proxy, key: str) -> None:
    c = client(proxy, key)
    chunks = list(
        c.chat.completions.create(
            model="fake",
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=4,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == "tok0 tok1 tok2 tok3 "
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4
    # Not asked for: the usage chunk the proxy requested for itself is not passed on.
    plain = list(
        c.chat.completions.create(
            model="fake", messages=[{"role": "user", "content": "hi"}], max_tokens=2, stream=True
        )
    )
    assert all(ch.choices for ch in plain)
    assert all(ch.usage is None for ch in plain)


def test_streaming_response_is_unbuffered_sse(proxy: Proxy, key: str) -> None:
    with httpx.stream(
        "POST",
        f"{proxy.url}/v1/chat/completions",
        json={"model": "fake", "messages": [{"role": "user", "content": "x"}], "stream": True},
        headers={"Authorization": f"Bearer {key}"},
    ) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["x-accel-buffering"] == "no"
        body = r.read().decode()
    assert body.rstrip().endswith("data: [DONE]")


def test_async_sdk_concurrent(proxy: Proxy, key: str) -> None:
    async def run() -> list[str]:
        c = openai.AsyncOpenAI(base_url=f"{proxy.url}/v1", api_key=key, max_retries=0)
        outs = await asyncio.gather(
            *[
                c.chat.completions.create(
                    model="fake", messages=[{"role": "user", "content": f"n{i}"}], max_tokens=1
                )
                for i in range(20)
            ]
        )
        await c.close()
        return [o.choices[0].message.content or "" for o in outs]

    assert asyncio.run(run()) == ["Hello from a."] * 20


def test_tools_and_response_format_pass_through(
    proxy: Proxy, key: str, fakes: dict[str, FakeUpstream]
) -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    schema = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}
    # The answer must meet the schema now that the proxy checks it (test_gateway_features).
    httpx.post(f"{fakes['a'].url}/_script", json={"content": '{"ok": true}'}).raise_for_status()
    r = proxy.chat(key, tools=tools, tool_choice="auto", response_format=schema, seed=7)
    assert r.status_code == 200, r.text
    sent = fakes["a"].requests()[-1]["body"]
    assert sent["tools"] == tools
    assert sent["response_format"] == schema
    assert sent["tool_choice"] == "auto" and sent["seed"] == 7


def test_embeddings_routed(proxy: Proxy, key: str, fakes: dict[str, FakeUpstream]) -> None:
    out = client(proxy, key).embeddings.create(model="embed", input=["a b", "c"])
    assert len(out.data) == 2 and len(out.data[0].embedding) == 8
    assert fakes["c"].requests()[-1]["body"]["model"] == "emb-model"


def test_models_lists_what_the_key_may_use(proxy: Proxy, key: str) -> None:
    ids = sorted(m.id for m in client(proxy, key).models.list())
    assert ids == ["embed", "fake", "slow"]
    all_ids = sorted(m.id for m in client(proxy, MASTER_KEY).models.list())
    assert all_ids == ["embed", "fake", "other", "slow"]
    assert client(proxy, key).models.retrieve("fake").id == "fake"
    with pytest.raises(openai.NotFoundError):
        client(proxy, key).models.retrieve("other")


def _error(r: httpx.Response) -> dict[str, Any]:
    assert r.headers["content-type"].startswith("application/json")
    err: dict[str, Any] = r.json()["error"]
    assert err["message"]
    return err


X = [{"role": "user", "content": "x"}]


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"messages": X}, 400, "missing"),
        ({"model": "nope", "messages": X}, 404, "model_not_found"),
        ({"model": "other", "messages": X}, 403, "model_not_allowed"),
        ({"model": "fake", "messages": []}, 400, "missing"),
        ({"model": "fake", "messages": ["hi"]}, 400, None),
        ({"model": "fake", "messages": [{"role": "user"}], "max_tokens": 0}, 400, None),
        ({"model": "fake", "messages": [{"role": "user"}], "stream": "yes"}, 400, None),
        ({"model": "embed", "messages": X}, 400, "wrong_endpoint"),
    ],
)  # fmt: skip
def test_bad_requests(
    proxy: Proxy, key: str, body: dict[str, Any], status: int, code: str | None
) -> None:
    r = proxy.post("/v1/chat/completions", key, body)
    assert r.status_code == status, r.text
    err = _error(r)
    if code:
        assert err["code"] == code


def test_body_limit_on_the_fast_route(proxy: Proxy, key: str) -> None:
    big = b'{"model": "fake", "messages": [{"role": "user", "content": "' + b"x" * (9 << 20)
    r = proxy.http.post(
        f"{proxy.url}/v1/chat/completions",
        content=iter([big[i : i + 65536] for i in range(0, len(big), 65536)]),  # chunked
        headers={"Authorization": f"Bearer {key}"},
    )
    assert r.status_code == 413 and _error(r)["code"] == "request_too_large"


def test_not_json(proxy: Proxy, key: str) -> None:
    r = httpx.post(
        f"{proxy.url}/v1/chat/completions",
        content=b"{nope",
        headers={"Authorization": f"Bearer {key}"},
    )
    assert r.status_code == 400 and _error(r)["code"] == "invalid_json"


def test_auth_errors(proxy: Proxy) -> None:
    r = httpx.post(f"{proxy.url}/v1/chat/completions", json={})
    assert r.status_code == 401 and _error(r)["code"] == "missing_api_key"
    r = proxy.chat("sk-llmops-not-a-key")
    assert r.status_code == 401 and _error(r)["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        client(proxy, "sk-wrong").models.list()


def test_admin_needs_master_key(proxy: Proxy, key: str) -> None:
    r = httpx.get(f"{proxy.url}/admin/keys", headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 403 and _error(r)["code"] == "admin_only"
    r = proxy.admin("POST", "/keys", json={"aliases": ["nope"]})
    assert r.status_code == 400 and "nope" in _error(r)["message"]
    r = proxy.admin("POST", "/keys", json={"rpm": -1})
    assert r.status_code == 400


def test_metrics_count_tokens_cost_and_overhead(proxy: Proxy, key: str) -> None:
    assert proxy.chat(key, max_tokens=3).status_code == 200
    text = proxy.metrics()
    for name in (
        'llmops_llm_requests_total{alias="fake",deployment="a",status="200"}',
        'llmops_llm_tokens_total{alias="fake",deployment="a",type="output"}',
        'llmops_llm_cost_usd_total{alias="fake",deployment="a"}',
        "llmops_llm_overhead_seconds_bucket",
        'llmops_llm_circuit_state{deployment="a"} 0.0',
        'llmops_http_requests_total{method="POST",route="/v1/chat/completions",status="200"}',
    ):
        assert name in text, name
