"""Fixtures for the feedback service: real processes on real PostgreSQL (and SQLite), a TCP
proxy in front of PostgreSQL that a test can cut to make an outage, a Langfuse receiver."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import (
    API_KEY_HASH,
    ServiceProcess,
    auth_headers,
    free_port,
    fresh_pg_database,
)

Start = Callable[..., ServiceProcess]


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    with fresh_pg_database("llmops_feedback") as url:
        yield url


@pytest.fixture
def start_feedback(service_factory: Any, tmp_path: Path) -> Start:
    """``start_feedback(database_url, **env)``: a feedback service, ready, with auth on."""

    def start(database_url: str, ready: bool = True, **env: str) -> ServiceProcess:
        settings = {
            "ENV": "dev",
            "FEEDBACK_API_KEY_HASHES": API_KEY_HASH,
            "FEEDBACK_DATABASE_URL": database_url,
            "FEEDBACK_SPOOL_DIR": str(tmp_path / "spool"),
            "FEEDBACK_PROBE_INTERVAL_S": "0.2",
            "FEEDBACK_DB_CONNECT_TIMEOUT_S": "1",
            **env,
        }
        svc: ServiceProcess = service_factory("feedback", **settings)
        return svc.wait_ready(60) if ready else svc

    return start


def client(svc: ServiceProcess) -> httpx.Client:
    return httpx.Client(base_url=svc.url, headers=auth_headers(), timeout=30)


def interaction(n: int | str, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": str(n),
        "messages": [
            {"role": "system", "content": "Answer from the context."},
            {"role": "user", "content": f"Question {n}?"},
        ],
        "answer": f"Answer {n}.",
        "model": "smollm2",
        "prompt_name": "rag-qa",
        "prompt_version": "1",
        "context_ids": ["doc-1#0"],
        "usage": {"prompt_tokens": 10, "completion_tokens": 3},
    }
    body.update(extra)
    return body


class TcpProxy:
    """Forwards a loopback port to PostgreSQL until :meth:`cut`: then the port refuses
    connections and every open one is closed, as when the database host goes away."""

    def __init__(self, target: tuple[str, int] = ("127.0.0.1", 5432)) -> None:
        self.target = target
        self.port = free_port()  # outside the ephemeral range: it is bound again on restore
        self._lock = threading.Lock()
        self._socks: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self.restore()

    def restore(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(128)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            socks, self._socks = self._socks, set()
        if listener is not None:
            listener.close()
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def url(self, database_url: str) -> str:
        return database_url.replace("127.0.0.1:5432", f"127.0.0.1:{self.port}")

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                conn.close()
                continue
            with self._lock:
                if self._listener is not listener:
                    conn.close()
                    upstream.close()
                    return
                self._socks.update((conn, upstream))
            for a, b in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def pg_proxy() -> Iterator[TcpProxy]:
    proxy = TcpProxy()
    yield proxy
    proxy.cut()
