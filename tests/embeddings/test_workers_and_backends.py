"""Several worker processes behind one port, and the ONNX backends."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from openai import OpenAI

from services.embeddings.config import EmbeddingsSettings
from services.embeddings.encoder import OnnxEncoder, load_encoder
from tests.conftest import API_KEY, API_KEY_HASH, auth_headers, metric
from tests.embeddings.conftest import MODEL
from tests.embeddings.test_api import TEXTS


def test_metrics_add_up_across_workers(service_factory: Any) -> None:
    svc = service_factory(
        "embeddings", workers=2, EMBEDDINGS_API_KEY_HASHES=API_KEY_HASH
    ).wait_ready()
    # Both workers must be up: 20 readiness answers in a row, each on a new connection.
    streak = 0
    deadline = time.monotonic() + 120
    while streak < 20 and time.monotonic() < deadline:
        streak = streak + 1 if httpx.get(f"{svc.url}/readyz").status_code == 200 else 0
        time.sleep(0.05)
    assert streak >= 20
    n = 40
    for i in range(n):  # a new connection each time, so the kernel spreads them over workers
        r = httpx.post(
            f"{svc.url}/v1/embeddings",
            json={"model": MODEL, "input": f"request {i}"},
            headers=auth_headers(),
        )
        assert r.status_code == 200
    seen = set()
    for _ in range(6):  # whichever worker answers the scrape, it reports the whole pod
        text = httpx.get(f"{svc.url}/metrics").text
        seen.add(metric(text, "llmops_http_requests_total", route="/v1/embeddings", status="200"))
        assert metric(text, "llmops_embeddings_texts_total") == n
    assert seen == {float(n)}


def test_onnx_fp32_service_matches_direct_encode(
    service_factory: Any, st_model: Any, tmp_path: Path
) -> None:
    svc = service_factory(
        "embeddings",
        EMBEDDINGS_API_KEY_HASHES=API_KEY_HASH,
        EMBEDDINGS_BACKEND="onnx",
        EMBEDDINGS_CACHE_DIR=str(tmp_path / "cache"),
    ).wait_ready()
    client = OpenAI(base_url=f"{svc.url}/v1", api_key=API_KEY, max_retries=0)
    model = client.models.list().data[0]
    assert (model.model_extra or {})["backend"] == "onnx-fp32"
    got = np.array([d.embedding for d in client.embeddings.create(model=MODEL, input=TEXTS).data])
    np.testing.assert_allclose(got, st_model.encode(TEXTS), atol=1e-5)
    assert list((tmp_path / "cache").rglob("model-fp32.onnx"))


def test_onnx_int8_export_is_close_and_cached(st_model: Any, tmp_path: Path) -> None:
    settings = EmbeddingsSettings(
        api_key_hashes=[API_KEY_HASH],
        backend="onnx",
        onnx_quantization="int8",
        cache_dir=tmp_path,
    )
    encoder = load_encoder(settings)
    assert isinstance(encoder, OnnxEncoder) and encoder.info.backend == "onnx-int8"
    got = encoder.encode_ids(encoder.tokenize(TEXTS, truncate=False))
    ref = st_model.encode(TEXTS)
    cosine = (got * ref).sum(axis=1)
    assert cosine.min() > 0.98, cosine
    files = list(tmp_path.rglob("*.onnx"))
    assert len(files) == 1 and files[0].name == "model-int8.onnx"
    mtime = files[0].stat().st_mtime
    load_encoder(settings)  # second load reuses the export
    assert files[0].stat().st_mtime == mtime
