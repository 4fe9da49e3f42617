"""Fixtures for the proxy: fake upstreams and proxies as real processes, Redis and PostgreSQL real.

Redis and PostgreSQL are never skipped: if they are not reachable the tests fail and say so.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml

from tests.conftest import ROOT, ServiceProcess, clean_env, free_port, fresh_pg_database

MASTER_KEY = "sk-master-test-0123456789abcdef"
REDIS_URL = os.environ.get("LLMOPS_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
FAKE = ROOT / "tests" / "fakes" / "openai_upstream.py"


class FakeUpstream:
    """tests/fakes/openai_upstream.py as its own process; scripted through its control API."""

    def __init__(self, name: str, log_dir: Path, chunk_delay_ms: float = 0) -> None:
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api_base = f"{self.url}/v1"
        self._log = (log_dir / f"fake-{name}-{self.port}.log").open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, str(FAKE), "--port", str(self.port), "--name", name,
             "--chunk-delay-ms", str(chunk_delay_ms)],
            stdout=self._log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError(f"fake upstream {name} did not start")

    def script(self, *faults: dict[str, Any]) -> None:
        httpx.post(f"{self.url}/_script", json={"faults": list(faults)}).raise_for_status()

    def always(self, fault: dict[str, Any] | None) -> None:
        httpx.post(f"{self.url}/_script", json={"always": fault}).raise_for_status()

    def reset(self) -> None:
        httpx.post(f"{self.url}/_reset").raise_for_status()

    def stats(self) -> dict[str, Any]:
        data: dict[str, Any] = httpx.get(f"{self.url}/_stats").json()
        return data

    def requests(self) -> list[dict[str, Any]]:
        data: list[dict[str, Any]] = httpx.get(f"{self.url}/_requests").json()
        return data

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)
        self._log.close()


class Proxy:
    """A running proxy plus what the tests need to drive it."""

    def __init__(self, proc: ServiceProcess, config_path: Path) -> None:
        self.proc = proc
        self.url = proc.url
        self.config_path = config_path
        self.http = httpx.Client(timeout=30)  # one pool: a new client per call costs ~50 ms

    def admin(self, method: str, path: str, **kw: Any) -> httpx.Response:
        return self.http.request(
            method,
            f"{self.url}/admin{path}",
            headers={"Authorization": f"Bearer {MASTER_KEY}"},
            **kw,
        )

    def create_key(self, **fields: Any) -> dict[str, Any]:
        r = self.admin("POST", "/keys", json=fields)
        assert r.status_code == 201, r.text
        data: dict[str, Any] = r.json()
        return data

    def post(self, path: str, key: str, body: Any, **kw: Any) -> httpx.Response:
        return self.http.post(
            f"{self.url}{path}", json=body, headers={"Authorization": f"Bearer {key}"}, **kw
        )

    def chat(self, key: str, model: str = "fake", **body: Any) -> httpx.Response:
        body.setdefault("messages", [{"role": "user", "content": "hello there"}])
        return self.post("/v1/chat/completions", key, {"model": model, **body})

    def metrics(self) -> str:
        return self.http.get(f"{self.url}/metrics").text

    def write_config(self, config: dict[str, Any]) -> None:
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(config))
        tmp.replace(self.config_path)


def deployment(name: str, fake: FakeUpstream, **extra: Any) -> dict[str, Any]:
    return {"name": name, "api_base": fake.api_base, "model": f"{name}-model", **extra}


@pytest.fixture(scope="session")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("proxy-logs")


@pytest.fixture(scope="session")
def fakes(log_dir: Path) -> Iterator[dict[str, FakeUpstream]]:
    started = {name: FakeUpstream(name, log_dir) for name in ("a", "b", "c")}
    started["slow"] = FakeUpstream("slow", log_dir, chunk_delay_ms=200)
    yield started
    for fake in started.values():
        fake.stop()


@pytest.fixture(autouse=True)
def _reset_fakes(request: pytest.FixtureRequest) -> None:
    if "fakes" in request.fixturenames:
        for fake in request.getfixturevalue("fakes").values():
            fake.reset()


@pytest.fixture(scope="session")
def proxy_factory(service_factory: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Start a proxy on a routing config (a dict written as YAML) and extra settings."""

    def start(config: dict[str, Any], workers: int = 1, **env: str) -> Proxy:
        d = tmp_path_factory.mktemp("proxy")
        path = d / "routing.yaml"
        path.write_text(yaml.safe_dump(config))
        settings = {
            "LLM_PROXY_CONFIG_PATH": str(path),
            "LLM_PROXY_MASTER_KEY": MASTER_KEY,
            "LLM_PROXY_DATABASE_URL": f"sqlite:///{d}/proxy.db",
            "LLM_PROXY_CONFIG_RELOAD_S": "0.2",
            **env,
        }
        proc = service_factory("llm-proxy", workers, **settings).wait_ready(60)
        return Proxy(proc, path)

    return start


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The real Redis; a failure here fails the tests that need it (CI never skips them)."""
    host, port = "127.0.0.1", int(REDIS_URL.split(":")[2].split("/")[0])
    try:
        socket.create_connection((host, port), timeout=2).close()
    except OSError as exc:
        pytest.fail(f"Redis is required at {REDIS_URL} for the shared-limit tests: {exc}")
    return REDIS_URL


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A fresh database on the real PostgreSQL, dropped afterwards."""
    with fresh_pg_database("llmops_proxy") as url:
        yield url


class PrivateRedis:
    """A redis-server of a test's own on a free port (never the machine's), without persistence:
    a test may kill it, and it comes back empty on the same port, as an unreplicated cache does."""

    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.tmp = tmp
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> float:
        """Start it; returns when it accepts connections (time.monotonic())."""
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.tmp)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return time.monotonic()
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("redis-server did not start")

    def kill(self) -> tuple[float, float]:
        """SIGKILL it; returns when the signal was sent (a request answered before then saw a
        live Redis) and when it was gone (one sent after that cannot have)."""
        assert self.proc is not None
        sent = time.monotonic()
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        return sent, time.monotonic()

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=5)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    r = PrivateRedis(tmp_path)
    yield r
    r.stop()


def base_config(fakes: dict[str, FakeUpstream]) -> dict[str, Any]:
    """Two chat aliases over the fakes, one embeddings alias, one priced alias."""
    return {
        "deployments": [
            deployment("a", fakes["a"], input_cost_per_1k=0.5, output_cost_per_1k=1.5),
            deployment("b", fakes["b"]),
            deployment("emb", fakes["c"], mode="embeddings", input_cost_per_1k=0.1),
            deployment("slow", fakes["slow"]),
        ],
        "aliases": {
            "fake": {"deployments": [{"deployment": "a"}]},
            "other": {"deployments": [{"deployment": "b"}]},
            "embed": {"deployments": [{"deployment": "emb"}]},
            "slow": {"deployments": [{"deployment": "slow"}]},
        },
    }


@pytest.fixture(scope="session")
def proxy(proxy_factory: Any, fakes: dict[str, FakeUpstream]) -> Proxy:
    """One proxy on the base config, in-memory limits, SQLite keys, production settings."""
    p: Proxy = proxy_factory(base_config(fakes))
    return p


__all__ = ["MASTER_KEY", "Proxy", "clean_env"]
