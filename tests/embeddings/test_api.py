"""The embeddings service as a client sees it: a real process, the official openai SDK."""

from __future__ import annotations

import asyncio
import base64
import re
import time
from typing import Any

import httpx
import numpy as np
import openai
import orjson
import pytest
from openai import AsyncOpenAI, OpenAI

from tests.conftest import API_KEY, ServiceProcess, assert_error, auth_headers, metric, scrape
from tests.embeddings.conftest import MODEL

TEXTS = [
    "Qdrant stores vectors.",
    "The proxy retries on 429 and 5xx, then falls back to another deployment.",
    "naïve café — über straße, 東京, emoji 🚀",
    "short",
    " ".join(["retrieval augmented generation"] * 40),
]


def test_models_lists_dimension_and_limit(client: OpenAI) -> None:
    models = client.models.list().data
    assert [m.id for m in models] == [MODEL]
    extra = models[0].model_extra or {}
    assert extra["dimensions"] == 384
    assert extra["max_input_tokens"] == 256
    assert client.models.retrieve(MODEL).id == MODEL


def test_float_and_base64_round_trip_equal_direct_encode(client: OpenAI, st_model: Any) -> None:
    expected = st_model.encode(TEXTS)
    floats = client.embeddings.create(model=MODEL, input=TEXTS, encoding_format="float")
    as_float = np.array([d.embedding for d in floats.data])
    # The SDK asks for base64 by default and decodes it itself.
    default = client.embeddings.create(model=MODEL, input=TEXTS)
    as_b64 = np.array([d.embedding for d in default.data])
    assert [d.index for d in floats.data] == list(range(len(TEXTS)))
    assert as_float.shape == (len(TEXTS), 384)
    np.testing.assert_allclose(as_float, expected, atol=1e-5)
    np.testing.assert_allclose(as_b64, expected, atol=1e-5)
    np.testing.assert_allclose(as_b64, as_float, atol=1e-6)


def test_base64_is_little_endian_float32(embeddings: ServiceProcess, st_model: Any) -> None:
    r = httpx.post(
        f"{embeddings.url}/v1/embeddings",
        json={"model": MODEL, "input": "hello", "encoding_format": "base64"},
        headers=auth_headers(),
    )
    assert r.status_code == 200
    raw = base64.b64decode(r.json()["data"][0]["embedding"])
    vec = np.frombuffer(raw, dtype="<f4")
    np.testing.assert_allclose(vec, st_model.encode("hello"), atol=1e-5)


def test_single_string_and_usage_counted_with_model_tokenizer(
    client: OpenAI, st_model: Any
) -> None:
    res = client.embeddings.create(model=MODEL, input=TEXTS[1])
    assert len(res.data) == 1
    expected = len(st_model.tokenizer(TEXTS[1])["input_ids"])
    assert res.usage.prompt_tokens == expected
    assert res.usage.total_tokens == expected
    batch = client.embeddings.create(model=MODEL, input=TEXTS)
    assert batch.usage.prompt_tokens == sum(
        len(ids) for ids in st_model.tokenizer(TEXTS)["input_ids"]
    )
    assert batch.model == MODEL


def test_dimensions_native_accepted(client: OpenAI) -> None:
    res = client.embeddings.create(model=MODEL, input="x", dimensions=384, encoding_format="float")
    assert len(res.data[0].embedding) == 384


def test_concurrent_calls_are_batched_and_keep_order(
    embeddings: ServiceProcess, st_model: Any
) -> None:
    before = scrape(embeddings)
    texts = [f"caller {i} asks about topic number {i * 7}" for i in range(32)]
    multi = [[f"multi {j} item {k}" for k in range(j % 4 + 2)] for j in range(8)]

    async def run() -> tuple[list[Any], list[Any]]:
        client = AsyncOpenAI(base_url=f"{embeddings.url}/v1", api_key=API_KEY, max_retries=0)
        singles = [client.embeddings.create(model=MODEL, input=t) for t in texts]
        multis = [client.embeddings.create(model=MODEL, input=m) for m in multi]
        out = await asyncio.gather(*singles, *multis)
        await client.close()
        return list(out[: len(texts)]), list(out[len(texts) :])

    singles, multis = asyncio.run(run())
    after = scrape(embeddings)
    expected = st_model.encode(texts)
    for i, res in enumerate(singles):
        np.testing.assert_allclose(res.data[0].embedding, expected[i], atol=1e-5)
    for items, res in zip(multi, multis, strict=True):
        assert [d.index for d in res.data] == list(range(len(items)))
        np.testing.assert_allclose(
            np.array([d.embedding for d in res.data]), st_model.encode(items), atol=1e-5
        )
    n_texts = len(texts) + sum(len(m) for m in multi)
    name = "llmops_embeddings_batch_size"
    batches = metric(after, f"{name}_count") - metric(before, f"{name}_count")
    batched = metric(after, f"{name}_sum") - metric(before, f"{name}_sum")
    assert batched == n_texts
    assert batches < len(texts) + len(multi), "requests were not merged into batches"
    assert (
        metric(after, "llmops_embeddings_texts_total")
        - metric(before, "llmops_embeddings_texts_total")
        == n_texts
    )


def _post(svc: ServiceProcess, body: Any, **kw: Any) -> httpx.Response:
    headers = {**auth_headers(), **kw.pop("headers", {})}
    if isinstance(body, (bytes, str)):
        return httpx.post(f"{svc.url}/v1/embeddings", content=body, headers=headers, **kw)
    return httpx.post(f"{svc.url}/v1/embeddings", json=body, headers=headers, **kw)


BAD_INPUTS = [
    ("empty list", {"model": MODEL, "input": []}, 400, "empty_input"),
    ("empty string", {"model": MODEL, "input": ""}, 400, "empty_string"),
    ("blank string in list", {"model": MODEL, "input": ["ok", "   "]}, 400, "empty_string"),
    ("non-string item", {"model": MODEL, "input": ["ok", 3]}, 400, "invalid_input"),
    ("token array", {"model": MODEL, "input": [101, 2023, 102]}, 400, "invalid_input"),
    ("token arrays", {"model": MODEL, "input": [[101, 102]]}, 400, "invalid_input"),
    ("too many inputs", {"model": MODEL, "input": ["a"] * 2049}, 413, "too_many_inputs"),
    ("too long", {"model": MODEL, "input": ["ok", "word " * 400]}, 400, "context_length_exceeded"),
    ("missing model", {"input": "x"}, 400, "invalid_value"),
    ("missing input", {"model": MODEL}, 400, "invalid_value"),
    ("unknown model", {"model": "text-embedding-3-large", "input": "x"}, 404, "model_not_found"),
    (
        "bad dimensions",
        {"model": MODEL, "input": "x", "dimensions": 128},
        400,
        "unsupported_dimensions",
    ),
    ("zero dimensions", {"model": MODEL, "input": "x", "dimensions": 0}, 400, "invalid_value"),
    (
        "bad encoding",
        {"model": MODEL, "input": "x", "encoding_format": "int8"},
        400,
        "invalid_value",
    ),
    ("unknown field", {"model": MODEL, "input": "x", "temperature": 1}, 400, "invalid_value"),
    ("not an object", [1, 2], 400, None),
]


@pytest.mark.parametrize(
    ("case", "body", "status", "code"), BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS]
)
def test_bad_input_gets_status_and_json_error(
    embeddings: ServiceProcess, case: str, body: Any, status: int, code: str | None
) -> None:
    assert_error(_post(embeddings, body), status, code)


def test_too_long_message_names_the_limit(embeddings: ServiceProcess) -> None:
    err = assert_error(_post(embeddings, {"model": MODEL, "input": "word " * 400}), 400)
    assert "256" in err["message"] and err["param"] == "input[0]"


def test_invalid_json_body(embeddings: ServiceProcess) -> None:
    r = _post(embeddings, b'{"model": ', headers={"content-type": "application/json"})
    assert "not valid JSON" in assert_error(r, 400)["message"]


def test_body_over_limit_is_413(embeddings: ServiceProcess) -> None:
    big = {"model": MODEL, "input": ["x" * 1000] * 2100}  # > 2 MiB
    assert_error(_post(embeddings, big), 413, "request_too_large")

    def chunks() -> Any:  # no Content-Length: the limit applies while reading
        yield b'{"model": "all-MiniLM-L6-v2", "input": ["'
        for _ in range(3000):
            yield b"y" * 1024
        yield b'"]}'

    r = httpx.post(
        f"{embeddings.url}/v1/embeddings",
        content=chunks(),
        headers={**auth_headers(), "content-type": "application/json"},
    )
    assert_error(r, 413, "request_too_large")


def test_tokenize_takes_a_json_boolean_only(embeddings: ServiceProcess) -> None:
    """Found by Schemathesis: "yes" was taken for true (pydantic's lax bool)."""
    url = f"{embeddings.url}/v1/tokenize"
    for value in ("yes", "true", 1):
        body = {"input": "otters", "add_special_tokens": value}
        err = assert_error(httpx.post(url, json=body, headers=auth_headers()), 400)
        assert err["param"] == "add_special_tokens", err
    r = httpx.post(
        url, json={"input": "otters", "add_special_tokens": False}, headers=auth_headers()
    )
    assert r.status_code == 200 and r.json()["data"][0]["tokens"] >= 1


def test_unknown_route_and_wrong_method(embeddings: ServiceProcess) -> None:
    assert_error(httpx.get(f"{embeddings.url}/v1/nope", headers=auth_headers()), 404, "not_found")
    r = httpx.get(f"{embeddings.url}/v1/embeddings", headers=auth_headers())
    assert "POST" in assert_error(r, 405, "method_not_allowed")["message"]


def test_sdk_raises_typed_errors(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        client.embeddings.create(model=MODEL, input="")
    assert "empty" in bad.value.message
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="nope", input="x")


def test_request_id_and_traceparent_flow_through(embeddings: ServiceProcess) -> None:
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    r = _post(
        embeddings,
        {"model": MODEL, "input": "trace me"},
        headers={
            "x-request-id": "req-abc-123",
            "traceparent": f"00-{trace_id}-00f067aa0ba902b7-01",
        },
    )
    assert r.status_code == 200
    assert r.headers["x-request-id"] == "req-abc-123"
    assert r.headers["traceresponse"].split("-")[1] == trace_id
    generated = _post(embeddings, {"model": MODEL, "input": "x"}).headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated)
    hits: list[dict[str, Any]] = []
    for _ in range(50):
        lines = [orjson.loads(x) for x in embeddings.logs().splitlines() if x.startswith("{")]
        hits = [x for x in lines if x.get("request_id") == "req-abc-123"]
        if hits:
            break
        time.sleep(0.1)
    assert hits and hits[0]["trace_id"] == trace_id
    assert hits[0]["route"] == "/v1/embeddings" and hits[0]["status"] == 200
    assert API_KEY not in embeddings.logs()


def test_red_metrics_use_route_templates(embeddings: ServiceProcess) -> None:
    for i in range(3):
        httpx.get(f"{embeddings.url}/v1/no-such-{i}", headers=auth_headers())
    httpx.get(f"{embeddings.url}/v1/models/{MODEL}", headers=auth_headers())
    text = scrape(embeddings)
    assert metric(text, "llmops_http_requests_total", route="<unmatched>", status="404") >= 3
    assert "no-such" not in text
    assert metric(text, "llmops_http_requests_total", route="/v1/models/{model}") >= 1
    assert metric(text, "llmops_http_request_duration_seconds_count", route="/v1/embeddings") > 0
    for name in ("embeddings_queue_depth", "embeddings_inference_seconds_count",
                 "embeddings_tokens_total", "embeddings_texts_total"):  # fmt: skip
        assert f"llmops_{name}" in text


def test_health_and_readiness_are_open(embeddings: ServiceProcess) -> None:
    assert httpx.get(f"{embeddings.url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{embeddings.url}/readyz").json()
    assert ready["status"] == "ready" and ready["model"] == MODEL
