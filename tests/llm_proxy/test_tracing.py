"""GenAI spans exported over OTLP (as to Langfuse): model, tokens, cost; never the prompt."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.fakes.otlp import OtlpReceiver
from tests.llm_proxy.conftest import MASTER_KEY, FakeUpstream, Proxy, base_config


@pytest.fixture(scope="module")
def otlp() -> Iterator[OtlpReceiver]:
    receiver = OtlpReceiver()
    yield receiver
    receiver.server.shutdown()


def _attrs(span: Any) -> dict[str, Any]:
    out = {}
    for kv in span.attributes:
        v = kv.value
        out[kv.key] = getattr(v, v.WhichOneof("value"))
    return out


def test_llm_calls_become_genai_spans(
    proxy_factory: Any, fakes: dict[str, FakeUpstream], otlp: OtlpReceiver
) -> None:
    p: Proxy = proxy_factory(
        base_config(fakes), LLM_PROXY_OTLP_ENDPOINT=f"http://127.0.0.1:{otlp.port}/api/public/otel"
    )
    secret_prompt = "my secret prompt words"
    r = p.chat(MASTER_KEY, messages=[{"role": "user", "content": secret_prompt}], max_tokens=5)
    assert r.status_code == 200
    r = p.chat(MASTER_KEY, messages=[{"role": "user", "content": "x"}], max_tokens=2, stream=True)
    assert r.status_code == 200
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        llm = [s for s in otlp.spans() if s.name == "chat fake"]
        if len(llm) >= 2:
            break
        time.sleep(0.2)
    assert len(llm) == 2
    plain = _attrs(llm[0])
    assert plain["gen_ai.request.model"] == "fake"
    assert plain["gen_ai.response.model"] == "a-model"
    assert plain["gen_ai.usage.input_tokens"] == 4 and plain["gen_ai.usage.output_tokens"] == 5
    assert plain["gen_ai.usage.cost"] == pytest.approx((4 * 0.5 + 5 * 1.5) / 1000)
    assert plain["gen_ai.request.max_tokens"] == 5
    assert _attrs(llm[1])["llmops.stream"] is True
    server = [s for s in otlp.spans() if s.name == "POST /v1/chat/completions"]
    assert {s.trace_id for s in server} == {s.trace_id for s in llm}
    everything = b"".join(body for _, _, body in otlp.bodies)
    assert secret_prompt.encode() not in everything
