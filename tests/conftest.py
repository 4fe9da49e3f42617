"""Shared fixtures: real service processes on free loopback ports, and the model in-process."""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.common import ports

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

ROOT = Path(__file__).resolve().parent.parent
PG_URL = os.environ.get("LLMOPS_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
API_KEY = "sk-test-0123456789abcdef"
API_KEY_HASH = hashlib.sha256(API_KEY.encode()).hexdigest()


def free_port() -> int:
    """A free loopback port outside the kernel's ephemeral range (see common/ports.py)."""
    return ports.free_port()


def clean_env(**extra: str) -> dict[str, str]:
    """The test environment without any service settings leaking in from the caller's shell.

    ``ENV=dev`` unless a test says otherwise: the services of a test run on loopback and on
    local stores, which production refuses (tests of those refusals set ``ENV``). No stop
    delay either, unless a test asks for one: every stop would wait for it.
    """
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(
            (
                "EMBEDDINGS_",
                "RETRIEVAL_",
                "LLM_PROXY_",
                "LOCAL_LLM_",
                "FEEDBACK_",
                "RAG_",
                "LANGFUSE_",
                "LLMOPS_",
                "PROMETHEUS_MULTIPROC",
                "OTEL_",
            )
        )
        and k != "ENV"
    }
    env.update({"PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"})
    env.update({"ENV": "dev", "LLMOPS_SHUTDOWN_DELAY_S": "0"})
    env.update(extra)
    return env


class ServiceProcess:
    """A service started with ``llmops serve`` as its own process, logs kept in a file."""

    def __init__(self, service: str, log_dir: Path, env: dict[str, str], workers: int = 1) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_dir / f"{service}-{self.port}.log"
        self._log = self.log_path.open("wb")
        self._terminated = False
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "services.cli.main", "serve", service,
             "--port", str(self.port), "--workers", str(workers)],
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip

    def wait_ready(self, timeout: float = 240) -> ServiceProcess:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"service exited with {self.proc.returncode}:\n{self.logs()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"{self.url} not ready:\n{self.logs()}")

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def terminate(self) -> None:
        """SIGTERM once (a second one would make uvicorn skip its graceful drain)."""
        if self.proc.poll() is None and not self._terminated:
            self._terminated = True
            self.proc.send_signal(signal.SIGTERM)

    def stop(self) -> int:
        self.terminate()
        if self.proc.poll() is None:
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


@pytest.fixture(scope="session")
def service_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    started: list[ServiceProcess] = []
    log_dir = tmp_path_factory.mktemp("service-logs")

    def start(service: str, workers: int = 1, **env: str) -> ServiceProcess:
        proc = ServiceProcess(service, log_dir, clean_env(**env), workers)
        started.append(proc)
        return proc

    yield start
    for proc in started:  # every drain at once: the session's end waits for the slowest only
        proc.terminate()
    for proc in started:
        proc.stop()
    no_keys_in_logs(log_dir)


def no_keys_in_logs(log_dir: Path) -> None:
    """The session-wide guard: no service log written by the whole suite holds the suite's own
    keys (tests/security/test_no_secrets_in_logs.py does the thorough search on one run)."""
    from tests.llm_proxy.conftest import MASTER_KEY

    keys = {"API_KEY": API_KEY, "MASTER_KEY": MASTER_KEY}
    leaks = [
        f"{path.name} holds {name}"
        for path in sorted(log_dir.glob("*.log"))
        for name, key in keys.items()
        if key.encode() in path.read_bytes()
    ]
    if leaks:
        pytest.fail(f"a key leaked into the service logs in {log_dir}: {'; '.join(leaks)}")


@contextmanager
def fresh_pg_database(prefix: str) -> Iterator[str]:
    """A new database on the real PostgreSQL (its SQLAlchemy URL), dropped afterwards. When the
    server is not there the test fails and says so: CI never skips it."""
    import psycopg

    admin_url = PG_URL.replace("postgresql+psycopg://", "postgresql://")
    name = f"{prefix}_{secrets.token_hex(4)}"
    try:
        conn = psycopg.connect(admin_url, autocommit=True, connect_timeout=5)
    except psycopg.Error as exc:
        pytest.fail(f"PostgreSQL is required at {PG_URL} for this test: {exc}")
    with conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{PG_URL.rsplit('/', 1)[0]}/{name}"
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def assert_error(r: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    """An error answer in the platform's one shape (OpenAI's), with an actionable message."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert isinstance(err["message"], str) and len(err["message"]) > 10
    assert "Traceback" not in err["message"]
    if code is not None:
        assert err["code"] == code, err
    return dict(err)


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        m = re.match(r"^([a-zA-Z_:][\w:]*)(\{.*\})?\s+(\S+)$", line)
        if not m or m.group(1) != name:
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        if all(got.get(k) == v for k, v in labels.items()):
            total += float(m.group(3))
    return total


def scrape(svc: ServiceProcess) -> str:
    return httpx.get(f"{svc.url}/metrics", timeout=10).text


def auth_headers(key: str = API_KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="session")
def embeddings(service_factory: Any) -> ServiceProcess:
    """The service on its defaults, with key auth, in the strict (production) environment."""
    return service_factory(
        "embeddings", ENV="production", EMBEDDINGS_API_KEY_HASHES=API_KEY_HASH
    ).wait_ready()


@pytest.fixture(scope="session")
def local_llm(service_factory: Any) -> ServiceProcess:
    """The real local model (SmolLM2-135M-Instruct), once per session: it takes a while to load."""
    return service_factory("local-llm", LOCAL_LLM_API_KEY_HASHES=API_KEY_HASH).wait_ready(600)
