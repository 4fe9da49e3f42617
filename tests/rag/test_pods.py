"""rag as a pod: a stop empties the outbox, and what stands between rag and retrieval (our own
key, an ingress answering HTML or plain text) gives the right status and a readable message."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import assert_error, free_port, metric, scrape
from tests.rag.platform import Platform
from tests.rag.test_ask import ask, recorded


def test_a_stop_sends_every_interaction_before_exit(
    platform: Platform, service_factory: Any, tmp_path: Path
) -> None:
    # The stop comes right after the answers: their interactions are in the outbox, perhaps
    # not yet sent; the stop must send them before the process exits.
    svc = service_factory("rag", **platform.rag_env(tmp_path)).wait_ready(60)
    ids = [ask(svc, question=f"Shipping times? ({n})").json()["interaction_id"] for n in range(3)]
    svc.proc.send_signal(signal.SIGTERM)
    assert svc.proc.wait(60) is not None
    for iid in ids:
        assert recorded(platform.feedback_url, iid, timeout=5)["id"] == iid
    assert not list((tmp_path / "outbox").glob("*.spool"))


def test_our_key_refused_by_retrieval_is_a_502_that_names_the_setting(
    platform: Platform, service_factory: Any, tmp_path: Path
) -> None:
    env = platform.rag_env(
        tmp_path, RAG_RETRIEVAL_API_KEY="sk-wrong-key-000000", RAG_ON_RETRIEVAL_FAILURE="no_context"
    )
    svc = service_factory("rag", **env).wait_ready(60)
    # Not an outage (no answer without context): an operator has a key to fix.
    err = assert_error(ask(svc), 502, "retrieval_auth")
    assert "RAG_RETRIEVAL_API_KEY" in err["message"] and "Incorrect API key" in err["message"]
    assert metric(scrape(svc), "llmops_rag_degraded_total", reason="retrieval_unavailable") == 0


class Ingress:
    """What may sit in front of retrieval: answers every request with a scripted status and a
    body that is not the platform's JSON (an nginx page, plain text, nothing)."""

    def __init__(self) -> None:
        self.status, self.body, self.type = 404, b"", "text/html"
        ingress = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length", 0)))
                self.send_response(ingress.status)
                self.send_header("content-type", ingress.type)
                self.send_header("content-length", str(len(ingress.body)))
                self.end_headers()
                self.wfile.write(ingress.body)

            def log_message(self, *args: Any) -> None:
                pass

        self.port = free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def ingress() -> Iterator[Ingress]:
    server = Ingress()
    yield server
    server.server.shutdown()


@pytest.fixture(scope="module")
def behind_ingress(
    platform: Platform,
    service_factory: Any,
    tmp_path_factory: pytest.TempPathFactory,
    ingress: Ingress,
) -> Any:
    """A rag whose retrieval URL is the ingress."""
    env = platform.rag_env(
        tmp_path_factory.mktemp("rag-ingress"), RAG_RETRIEVAL_URL=f"http://127.0.0.1:{ingress.port}"
    )
    return service_factory("rag", **env).wait_ready(60)


@pytest.mark.parametrize(
    ("status", "body", "ctype", "answer", "code", "words"),
    [
        (404, b"<html><body><h1>404 Not Found</h1>nginx</body></html>", "text/html", 404,
         "invalid_value", "404 Not Found"),
        (413, b"Request Entity Too Large", "text/plain", 413, "invalid_value", "Too Large"),
        (400, b"", "text/plain", 400, "invalid_value", "empty body"),
        (422, b'{"detail": "not ours"}', "application/json", 400, "invalid_value", "not ours"),
        (401, b"<html>401 Authorization Required</html>", "text/html", 502, "retrieval_auth",
         "RAG_RETRIEVAL_API_KEY"),
        (502, b"<html>502 Bad Gateway</html>", "text/html", 503, "retrieval_unavailable",
         "HTTP 502"),
    ],
)  # fmt: skip
def test_answers_that_are_not_the_platform_json_keep_their_meaning(
    behind_ingress: Any,
    ingress: Ingress,
    status: int,
    body: bytes,
    ctype: str,
    answer: int,
    code: str,
    words: str,
) -> None:
    ingress.status, ingress.body, ingress.type = status, body, ctype
    err = assert_error(ask(behind_ingress), answer, code)
    assert words in err["message"], err
