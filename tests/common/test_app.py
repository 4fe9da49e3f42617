"""The shared app kit on a small app of its own, served by a real uvicorn on loopback."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from opentelemetry.sdk.trace import TracerProvider

from services.common.app import build_app
from services.common.errors import APIError
from services.common.http import create_client
from services.common.settings import ServiceSettings
from tests.conftest import API_KEY_HASH, auth_headers, free_port


class KitSettings(ServiceSettings):
    pass


def make_app() -> FastAPI:
    app = build_app(KitSettings(api_key_hashes=[API_KEY_HASH], max_body_bytes=1024), title="kit")

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("secret internals /etc/passwd")

    @app.get("/teapot")
    async def teapot() -> None:
        raise APIError(409, "Already exists; pick another name.", code="exists", param="name")

    @app.post("/echo")
    async def echo(payload: dict[str, Any]) -> dict[str, Any]:
        return payload

    return app


@pytest.fixture(scope="module")
def kit() -> Iterator[str]:
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(make_app(), host="127.0.0.1", port=port, log_config=None, lifespan="on")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            httpx.get(f"{url}/healthz")
            break
        except httpx.HTTPError:
            time.sleep(0.05)
    yield url
    server.should_exit = True
    thread.join(timeout=10)


def test_unhandled_error_is_json_500_with_request_id(kit: str) -> None:
    r = httpx.get(f"{kit}/boom", headers={**auth_headers(), "x-request-id": "rid-42"})
    assert r.status_code == 500
    err = r.json()["error"]
    assert err["type"] == "server_error" and err["code"] == "internal_error"
    assert "rid-42" in err["message"]
    assert "passwd" not in r.text and "Traceback" not in r.text
    assert r.headers["x-request-id"] == "rid-42"


def test_api_error_keeps_status_code_and_param(kit: str) -> None:
    r = httpx.get(f"{kit}/teapot", headers=auth_headers())
    assert r.status_code == 409
    assert r.json() == {
        "error": {
            "message": "Already exists; pick another name.",
            "type": "conflict_error",
            "param": "name",
            "code": "exists",
        }
    }


def test_body_limit_applies_to_every_route(kit: str) -> None:
    r = httpx.post(f"{kit}/echo", json={"x": "y" * 2000}, headers=auth_headers())
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    assert httpx.post(f"{kit}/echo", json={"x": 1}, headers=auth_headers()).json() == {"x": 1}


def test_bad_request_id_is_replaced(kit: str) -> None:
    r = httpx.get(f"{kit}/healthz", headers={"x-request-id": "bad id with spaces"})
    assert r.headers["x-request-id"] != "bad id with spaces"
    assert len(r.headers["x-request-id"]) == 32


def test_validation_error_names_the_parameter(kit: str) -> None:
    r = httpx.post(
        f"{kit}/echo",
        content=b"[1]",
        headers={**auth_headers(), "content-type": "application/json"},
    )
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"


def test_client_propagates_traceparent_out(kit: str) -> None:
    tracer = TracerProvider().get_tracer("test")

    async def call() -> tuple[str, httpx.Response]:
        with tracer.start_as_current_span("caller") as span:
            trace_id = format(span.get_span_context().trace_id, "032x")
            async with create_client(kit, api_key=None) as client:
                return trace_id, await client.get("/healthz")

    trace_id, r = asyncio.run(call())
    assert r.headers["traceresponse"].split("-")[1] == trace_id
