"""The service under non-default settings: small queue, truncation, Matryoshka, OTLP, dev mode."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from tests.conftest import ServiceProcess, assert_error, metric
from tests.embeddings.conftest import MODEL
from tests.fakes.otlp import OtlpReceiver


@pytest.fixture(scope="module")
def otlp() -> Iterator[OtlpReceiver]:
    receiver = OtlpReceiver()
    yield receiver
    receiver.server.shutdown()


@pytest.fixture(scope="module")
def tuned(service_factory: Any, otlp: OtlpReceiver) -> ServiceProcess:
    return service_factory(
        "embeddings",
        ENV="dev",
        EMBEDDINGS_AUTH_DISABLED="true",
        EMBEDDINGS_TRUNCATE="true",
        EMBEDDINGS_MAX_QUEUE_TEXTS="16",
        EMBEDDINGS_MAX_INPUTS_PER_REQUEST="16",
        EMBEDDINGS_MAX_BATCH_SIZE="4",
        EMBEDDINGS_MATRYOSHKA_DIMS="[128, 256]",
        EMBEDDINGS_SERVED_MODEL_NAME="minilm",
        EMBEDDINGS_MODEL_ALIASES='["text-embedding-3-small"]',
        EMBEDDINGS_OTLP_ENDPOINT=f"http://127.0.0.1:{otlp.port}/api/public/otel",
        EMBEDDINGS_OTLP_HEADERS="Authorization=Basic cGs6c2s=",
        OTEL_BSP_SCHEDULE_DELAY="100",
    ).wait_ready()


def post(svc: ServiceProcess, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{svc.url}/v1/embeddings", json=body, timeout=60)


def test_auth_can_be_disabled_in_dev(tuned: ServiceProcess) -> None:
    assert post(tuned, {"model": "minilm", "input": "no key needed"}).status_code == 200


def test_served_name_and_aliases(tuned: ServiceProcess) -> None:
    ids = [m["id"] for m in httpx.get(f"{tuned.url}/v1/models").json()["data"]]
    assert ids == ["minilm", "text-embedding-3-small"]
    r = post(tuned, {"model": "text-embedding-3-small", "input": "x"})
    assert r.status_code == 200 and r.json()["model"] == "text-embedding-3-small"
    assert_error(post(tuned, {"model": MODEL, "input": "x"}), 404, "model_not_found")


def test_truncation_when_configured_is_reported(tuned: ServiceProcess, st_model: Any) -> None:
    long = "retrieval " * 400
    r = post(tuned, {"model": "minilm", "input": ["short one", long], "encoding_format": "float"})
    assert r.status_code == 200, r.text
    assert r.headers["x-truncated-inputs"] == "1"
    vec = np.array(r.json()["data"][1]["embedding"])
    # sentence-transformers itself cuts at max_seq_length: the vectors must agree.
    np.testing.assert_allclose(vec, st_model.encode(long), atol=1e-5)
    assert r.json()["usage"]["prompt_tokens"] == 256 + len(
        st_model.tokenizer("short one")["input_ids"]
    )
    assert "x-truncated-inputs" not in post(tuned, {"model": "minilm", "input": "a"}).headers


def test_matryoshka_dimensions(tuned: ServiceProcess, st_model: Any) -> None:
    r = post(
        tuned, {"model": "minilm", "input": "hello", "dimensions": 128, "encoding_format": "float"}
    )
    vec = np.array(r.json()["data"][0]["embedding"])
    full = st_model.encode("hello")[:128]
    assert vec.shape == (128,)
    np.testing.assert_allclose(vec, full / np.linalg.norm(full), atol=1e-5)
    assert_error(post(tuned, {"model": "minilm", "input": "x", "dimensions": 200}), 400)


def test_full_queue_answers_429_with_retry_after(tuned: ServiceProcess) -> None:
    body = {"model": "minilm", "input": [f"text {i} " * 30 for i in range(16)]}

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=120) as client:
            calls = [client.post(f"{tuned.url}/v1/embeddings", json=body) for _ in range(12)]
            return list(await asyncio.gather(*calls))

    responses = asyncio.run(burst())
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 429}, statuses
    assert 200 in statuses and 429 in statuses, statuses
    for r in responses:
        if r.status_code == 429:
            assert_error(r, 429, "queue_full")
            assert int(r.headers["retry-after"]) >= 1
    ready = httpx.get(f"{tuned.url}/readyz").json()
    assert ready["queue_depth"] == 0
    text = httpx.get(f"{tuned.url}/metrics").text
    # Every 429 was counted, once (the name alone is in the text from the start).
    assert metric(text, "llmops_embeddings_queue_rejections_total") == statuses.count(429)


def test_spans_exported_over_otlp(tuned: ServiceProcess, otlp: OtlpReceiver) -> None:
    trace_id = "0af7651916cd43dd8448eb211c80319c"
    r = httpx.post(
        f"{tuned.url}/v1/embeddings",
        json={"model": "minilm", "input": "traced"},
        headers={"traceparent": f"00-{trace_id}-b7ad6b7169203331-01"},
    )
    assert r.status_code == 200
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and trace_id not in otlp.trace_ids():
        time.sleep(0.2)
    assert trace_id in otlp.trace_ids()
    path, headers, _ = otlp.bodies[0]
    assert path == "/api/public/otel/v1/traces"
    assert {k.lower(): v for k, v in headers.items()}["authorization"] == "Basic cGs6c2s="
