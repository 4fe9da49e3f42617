"""What a pod is started with: host, port and paths from the environment, and the defaults that
only work for one replica on one machine refused outside ENV=dev, each naming its setting."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from services.common.settings import is_loopback
from services.rag.config import RagSettings
from tests.conftest import API_KEY_HASH, ROOT, clean_env

KEYS = {f"{p}_API_KEY_HASHES": API_KEY_HASH for p in ("EMBEDDINGS", "RETRIEVAL", "FEEDBACK", "RAG")}


def start(module: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``python -m services.<module>`` (the images' command); it must exit by itself."""
    return subprocess.run(
        [sys.executable, "-m", f"services.{module}"],
        cwd=ROOT, env=clean_env(**KEYS, **env), capture_output=True, text=True, timeout=120,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("module", "env", "named"),
    [
        ("retrieval", {}, ["RETRIEVAL_QDRANT_URL is unset", "RETRIEVAL_EMBEDDINGS_URL is http://127.0.0.1:8001"]),
        ("retrieval", {"RETRIEVAL_QDRANT_URL": "http://localhost:6333",
                       "RETRIEVAL_EMBEDDINGS_URL": "http://embeddings:8001"},
         ["RETRIEVAL_QDRANT_URL is http://localhost:6333, a loopback address"]),
        ("feedback", {}, ["FEEDBACK_DATABASE_URL is SQLite"]),
        ("llm_proxy", {"LLM_PROXY_MASTER_KEY": "sk-master-0123456789abcdef",
                       "LLM_PROXY_CONFIG_PATH": str(ROOT / "deploy/llm-proxy.example.yaml")},
         ["LLM_PROXY_DATABASE_URL is SQLite", "LLM_PROXY_REDIS_URL is unset"]),
        ("rag", {"RAG_MLFLOW_TRACKING_URI": "http://[::1]:5000"},
         ["RAG_RETRIEVAL_URL is http://127.0.0.1:8002", "RAG_PROXY_URL is",
          "RAG_FEEDBACK_URL is", "RAG_MLFLOW_TRACKING_URI is http://[::1]:5000"]),
        ("embeddings", {"EMBEDDINGS_MODEL_URI": "models:/embedder@production",
                        "EMBEDDINGS_MLFLOW_TRACKING_URI": "http://127.0.0.1:5000"},
         ["EMBEDDINGS_MLFLOW_TRACKING_URI is http://127.0.0.1:5000"]),
    ],
)  # fmt: skip
def test_replica_unsafe_defaults_refuse_to_start_outside_dev(
    module: str, env: dict[str, str], named: list[str]
) -> None:
    for environment in ("production", "staging"):
        r = start(module, ENV=environment, **env)
        assert r.returncode == 2, r.stdout + r.stderr
        assert f"refusing to start with ENV={environment}" in r.stderr
        for words in named:
            assert words in r.stderr, r.stderr
        assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_the_proxy_refuses_workers_without_redis_in_every_environment(tmp_path: Path) -> None:
    routing = tmp_path / "routing.yaml"
    routing.write_text(
        "deployments: [{name: a, api_base: 'http://upstream:9/v1', model: m}]\n"
        "aliases: {m: {deployments: [{deployment: a}]}}\n"
    )
    env = {
        "LLM_PROXY_MASTER_KEY": "sk-master-0123456789abcdef",
        "LLM_PROXY_CONFIG_PATH": str(routing),
        "LLM_PROXY_WORKERS": "2",
        "LLMOPS_DATA_DIR": str(tmp_path),
    }
    r = start("llm_proxy", ENV="dev", **env)
    assert r.returncode == 2
    assert "cannot start llm-proxy with 2 workers" in r.stderr
    assert "N times its RPM, TPM and budget" in r.stderr


def test_python_m_takes_no_arguments_every_setting_is_environment() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "services.retrieval", "--port", "1"],
        cwd=ROOT, env=clean_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 2 and "RETRIEVAL_PORT" in r.stderr


def test_paths_default_under_one_data_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from services.embeddings.config import EmbeddingsSettings
    from services.feedback.config import FeedbackSettings
    from services.local_llm.config import LocalLLMSettings
    from services.retrieval.config import RetrievalSettings

    monkeypatch.setenv("LLMOPS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("LLMOPS_HOST", "0.0.0.0")
    dev = {"env": "dev", "auth_disabled": True}
    data = (tmp_path / "data").resolve()
    r = RetrievalSettings(**dev)  # type: ignore[arg-type]
    assert (r.qdrant_path, r.host, r.port) == (data / "qdrant", "0.0.0.0", 8002)
    f = FeedbackSettings(**dev)  # type: ignore[arg-type]
    assert f.spool_dir == data / "feedback-spool"
    assert f.database_url.get_secret_value() == f"sqlite:///{data / 'feedback.db'}"
    assert f.auto_migrate is True  # dev: migrations at start
    assert RagSettings(**dev).outbox_dir == data / "rag-outbox"  # type: ignore[arg-type]
    assert EmbeddingsSettings(**dev).cache_dir == data / "cache" / "embeddings"  # type: ignore[arg-type]
    assert LocalLLMSettings(**dev).cache_dir == data / "cache" / "local-llm"  # type: ignore[arg-type]
    # A service's own prefix wins over the shared LLMOPS_ one; outside dev no auto-migration
    # and a stop delay for the load balancers.
    monkeypatch.setenv("FEEDBACK_HOST", "127.0.0.2")
    monkeypatch.setenv("FEEDBACK_DATABASE_URL", "postgresql+psycopg://u@db/feedback")
    prod = FeedbackSettings(env="production", api_key_hashes=[API_KEY_HASH])
    assert prod.host == "127.0.0.2" and prod.auto_migrate is False
    assert prod.shutdown_delay_s == 5.0 and f.shutdown_delay_s == 0.0


def test_prompt_alias_follows_env() -> None:
    urls = {
        "retrieval_url": "http://retrieval:8002",
        "proxy_url": "http://llm-proxy:8003",
        "feedback_url": "http://feedback:8005",
        "api_key_hashes": [API_KEY_HASH],
    }
    assert RagSettings(env="staging", **urls).effective_alias() == "staging"  # type: ignore[arg-type]
    assert RagSettings(env="production", **urls).effective_alias() == "production"  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("url", "loopback"),
    [
        ("http://127.0.0.1:8001", True), ("http://127.9.9.9", True), ("http://localhost:1", True),
        ("http://api.localhost", True), ("http://[::1]:80", True), ("http://0.0.0.0:5", True),
        ("http://rag:8006", False), ("http://10.0.0.5:80", False), ("https://ml.example", False),
    ],
)  # fmt: skip
def test_loopback_detection(url: str, loopback: bool) -> None:
    assert is_loopback(url) is loopback
