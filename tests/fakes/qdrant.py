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


class RecordingQdrant:
    """Answers the REST calls of create, ingest and search the way a Qdrant server does, from
    what was sent to it, and records every request body: the server path's own wire format is
    what a test checks (a real server cannot run here). Searches answer the stored points in
    the order they were written, scored 1.0, 0.9, ..."""

    def __init__(self) -> None:
        from qdrant_client import models

        self.requests: list[tuple[str, str, Any]] = []  # (method, path, JSON body)
        self.collections: dict[str, dict[str, Any]] = {}
        self.points: dict[str, dict[str, dict[str, Any]]] = {}
        fake = self

        def ok(result: Any) -> dict[str, Any]:
            return {"result": result, "status": "ok", "time": 0.0}

        def info(name: str) -> dict[str, Any]:
            body = fake.collections[name]
            raw = body.get("vectors") or {}
            vectors: Any = (
                models.VectorParams(**raw)
                if "size" in raw
                else {k: models.VectorParams(**v) for k, v in raw.items()}
            )
            config = models.CollectionConfig(
                params=models.CollectionParams(
                    vectors=vectors,
                    sparse_vectors={
                        k: models.SparseVectorParams(**v)
                        for k, v in (body.get("sparse_vectors") or {}).items()
                    }
                    or None,
                    shard_number=body.get("shard_number"),
                    replication_factor=body.get("replication_factor"),
                ),
                hnsw_config=models.HnswConfig(m=16, ef_construct=100, full_scan_threshold=10000),
                optimizer_config=models.OptimizersConfig(
                    deleted_threshold=0.2, vacuum_min_vector_number=1000,
                    default_segment_number=0, flush_interval_sec=5,
                ),
                wal_config=models.WalConfig(wal_capacity_mb=32, wal_segments_ahead=0),
                metadata=body.get("metadata"),
            )  # fmt: skip
            got = models.CollectionInfo(
                status=models.CollectionStatus.GREEN,
                optimizer_status=models.OptimizersStatusOneOf.OK,
                points_count=len(fake.points.get(name, {})),
                segments_count=1,
                config=config,
                payload_schema={},
            )
            return got.model_dump(mode="json", exclude_none=True)

        class Handler(BaseHTTPRequestHandler):
            def _body(self) -> Any:
                n = int(self.headers.get("content-length") or 0)
                return json.loads(self.rfile.read(n)) if n else None

            def _send(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self, method: str) -> None:
                body = self._body()
                path = self.path.split("?")[0]
                fake.requests.append((method, path, body))
                parts = path.strip("/").split("/")
                if parts == [""]:
                    self._send(200, {"title": "qdrant", "version": "1.16.0"})
                    return
                if parts == ["collections"]:
                    cols = [{"name": n} for n in fake.collections]
                    self._send(200, ok({"collections": cols}))
                    return
                name = parts[1]
                rest = parts[2:]
                known = name in fake.collections
                if rest == ["exists"]:
                    self._send(200, ok({"exists": known}))
                elif not rest and method == "PUT":
                    fake.collections[name] = body
                    fake.points[name] = {}
                    self._send(200, ok(True))
                elif not known:
                    self._send(404, {"status": {"error": f"Collection `{name}` doesn't exist!"}})
                elif not rest and method == "GET":
                    self._send(200, ok(info(name)))
                elif rest == ["index"]:
                    self._send(200, ok({"operation_id": 0, "status": "completed"}))
                elif rest == ["points"] and method == "PUT":
                    for p in body["points"]:
                        fake.points[name][str(p["id"])] = p
                    self._send(200, ok({"operation_id": 1, "status": "completed"}))
                elif rest == ["points", "scroll"]:
                    self._send(200, ok({"points": [], "next_page_offset": None}))
                elif rest == ["points", "count"]:
                    self._send(200, ok({"count": 0}))
                elif rest == ["points", "delete"]:
                    self._send(200, ok({"operation_id": 2, "status": "completed"}))
                elif rest == ["points", "query"]:
                    stored = list(fake.points[name].values())[: body.get("limit", 10)]
                    found = [
                        {"id": p["id"], "version": 1, "score": 1.0 - i / 10,
                         "payload": p.get("payload")}
                        for i, p in enumerate(stored)
                    ]  # fmt: skip
                    self._send(200, ok({"points": found}))
                else:
                    self._send(400, {"status": {"error": f"unexpected {method} {path}"}})

            def do_GET(self) -> None:
                self._handle("GET")

            def do_PUT(self) -> None:
                self._handle("PUT")

            def do_POST(self) -> None:
                self._handle("POST")

            def log_message(self, *args: Any) -> None:
                pass

        self.port = free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def bodies(self, method: str, suffix: str) -> list[Any]:
        return [b for m, p, b in self.requests if m == method and p.endswith(suffix)]

    def stop(self) -> None:
        self.server.shutdown()
