"""A Qdrant server cannot run on our machines: a real HTTP server that answers the few REST
calls of a readiness check and a collection listing, failing as a test scripts it."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.conftest import free_port


class FakeQdrant:
    """Answers Qdrant's REST API for listing collections, failing as scripted."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        # (status, headers) or (status, headers, body): scripted answers, one per call.
        self.script: list[tuple[Any, ...]] = []
        self.calls = 0
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _send(
                self, status: int, body: dict[str, Any] | bytes, headers: dict[str, str]
            ) -> None:
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path in ("/", ""):
                    self._send(200, {"title": "qdrant", "version": "1.15.0"}, {})
                    return
                fake.calls += 1
                if fake.script:
                    status, headers, *body = fake.script.pop(0)
                    default = {"status": {"error": "scripted"}, "time": 0}
                    self._send(status, body[0] if body else default, headers)
                    return
                self._send(200, {"result": {"collections": []}, "status": "ok", "time": 0}, {})

            def log_message(self, *args: Any) -> None:
                pass

        self.port = free_port()
        self.server = ThreadingHTTPServer((host, self.port), Handler)
        self.url = f"http://{host}:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
