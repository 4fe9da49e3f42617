"""Smoke test through the real local model: proxy -> local-llm (SmolLM2-135M-Instruct)."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest

from tests.conftest import API_KEY, ServiceProcess
from tests.llm_proxy.conftest import Proxy


@pytest.mark.slow
def test_chat_through_the_proxy_from_the_local_model(
    proxy_factory: Any, local_llm: ServiceProcess
) -> None:
    config = {
        "deployments": [
            {
                "name": "local-smollm2",
                "api_base": f"{local_llm.url}/v1",
                "model": "smollm2-135m-instruct",
                "api_key_env": "LLMOPS_TEST_LOCAL_KEY",
                "timeout_s": 300,
            }
        ],
        "aliases": {
            "smollm2": {"deployments": [{"deployment": "local-smollm2"}]},
            "smollm2-guarded": {
                "deployments": [{"deployment": "local-smollm2"}],
                "guardrails": ["pii"],
                "cache": {"ttl_s": 60},
            },
        },
        "guardrails": {"pii": {"type": "pii"}},
    }
    proxy: Proxy = proxy_factory(config, LLMOPS_TEST_LOCAL_KEY=API_KEY)
    key = proxy.create_key(name="smoke", aliases=["smollm2", "smollm2-guarded"], max_budget_usd=1)[
        "key"
    ]
    client = openai.OpenAI(base_url=f"{proxy.url}/v1", api_key=key, max_retries=0)
    out = client.chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=24,
        temperature=0,
    )
    assert "Paris" in (out.choices[0].message.content or "")
    assert out.usage is not None and out.usage.completion_tokens > 0
    stream = client.chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": "Say hello."}],
        max_tokens=8,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).strip()
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens <= 8
    assert 'llmops_llm_tokens_total{alias="smollm2",deployment="local-smollm2",type="output"}' in (
        proxy.metrics()
    )

    # Gateway features over the real model: a schema (constrained decoding in local-llm,
    # validated by the proxy), the cache, and PII never reaching the model.
    city = {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    }
    fmt = {"type": "json_schema", "json_schema": {"name": "city", "schema": city, "strict": True}}
    ask = {
        "model": "smollm2-guarded",
        "messages": [{"role": "user", "content": "Which city is the capital of France?"}],
        "max_tokens": 24,
        "temperature": 0,
        "response_format": fmt,
    }
    first = client.chat.completions.with_raw_response.create(**ask)
    answer = json.loads(first.parse().choices[0].message.content or "")
    assert set(answer) == {"city"} and isinstance(answer["city"], str)
    assert first.headers["x-llmops-cache"] == "miss"
    again = client.chat.completions.with_raw_response.create(**ask)
    assert again.headers["x-llmops-cache"] == "hit"
    assert json.loads(again.parse().choices[0].message.content or "") == answer
    mail = "Repeat this address: jane.doe@example.com"
    raw = client.chat.completions.with_raw_response.create(
        model="smollm2-guarded", messages=[{"role": "user", "content": mail}], max_tokens=16
    )
    assert raw.headers["x-llmops-guardrails"] == "pii:redact"
    assert "jane.doe@example.com" not in (raw.parse().choices[0].message.content or "")
