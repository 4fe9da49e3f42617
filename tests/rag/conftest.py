"""A real ``mlflow server`` (SQLite store, one uvicorn worker) for the prompt registry tests:
one for the session, and a separate one a test may stop and start again (an outage)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import (
    ServiceProcess,
    clean_env,
    free_port,
)
from tests.rag.platform import Platform, running_platform


def mlflow_env(**extra: str) -> dict[str, str]:
    """The test environment without the caller's MLflow settings, telemetry off (offline)."""
    env = {k: v for k, v in clean_env().items() if not k.startswith("MLFLOW_")}
    env.update({"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"})
    env.update(extra)
    return env


class MlflowServer:
    """``mlflow server`` on a fixed port with its own store: :meth:`stop` and :meth:`start` again
    on the same port and data, as when the registry goes away and comes back."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = root / "mlflow-server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 120) -> MlflowServer:
        assert self.proc is None, "already running"
        cmd = [
            sys.executable, "-m", "mlflow", "server",
            "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
            "--default-artifact-root", str(self.root / "artifacts"),
            "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
        ]  # fmt: skip
        with self.log_path.open("ab") as log:
            # Own session: `mlflow server` runs uvicorn as a child, killed with it if need be.
            self.proc = subprocess.Popen(
                cmd, cwd=self.root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                env=mlflow_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"),
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                self.proc = None
                raise RuntimeError(f"mlflow server exited with {code}:\n{self.logs()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"mlflow server at {self.url} not up in {timeout} s:\n{self.logs()}")

    def stop(self) -> None:
        """SIGTERM (MLflow forwards it to uvicorn), then kill what is left of its session."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            with suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=20)
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class _Shared:
    server: MlflowServer | None = None
    users = 0


@contextmanager
def shared_mlflow_server(factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """The session's one server, for session fixtures here and in other test folders (pytest
    would start one per place a fixture is defined); stopped when its last user is done."""
    if _Shared.server is None:
        _Shared.server = MlflowServer(factory.mktemp("mlflow")).start()
    _Shared.users += 1
    try:
        yield _Shared.server
    finally:
        _Shared.users -= 1
        if _Shared.users == 0:
            _Shared.server.stop()
            _Shared.server = None


@pytest.fixture(scope="session")
def mlflow_server_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """The session's ``mlflow server`` itself (its log shows every request it served)."""
    with shared_mlflow_server(tmp_path_factory) as server:
        yield server


@pytest.fixture(scope="session")
def mlflow_server(mlflow_server_process: MlflowServer) -> str:
    """URL of an ``mlflow server`` shared by the session: use unique prompt names per test."""
    return mlflow_server_process.url


@pytest.fixture
def restartable_mlflow(tmp_path: Path) -> Iterator[MlflowServer]:
    """A running ``mlflow server`` of the test's own, for tests that stop and restart it."""
    server = MlflowServer(tmp_path / "mlflow").start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def platform(
    service_factory: Any, embeddings: ServiceProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Platform]:
    with running_platform(service_factory, embeddings, tmp_path_factory.mktemp("rag")) as p:
        yield p
