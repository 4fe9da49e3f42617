"""Calls to OpenAI-compatible providers over one pooled aiohttp session.

Every failure becomes an :class:`UpstreamError` that says what the router should do with it:
retry the same deployment (connect errors, timeouts, 429, 5xx, garbage), move on to the next one
(401/403/404: that deployment is misconfigured), or hand the upstream's answer to the client
(other 4xx: the request itself is wrong, and no other deployment would take it either).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from services.common.http import context_headers
from services.common.retry import retry_after_seconds
from services.llm_proxy.catalog import Deployment

RETRY, NEXT, CLIENT = "retry", "next", "client"


class UpstreamError(Exception):
    def __init__(
        self,
        action: str,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        body: bytes | None = None,
        timeout: bool = False,
    ) -> None:
        super().__init__(message)
        self.action = action
        self.message = message
        self.status = status
        self.retry_after = retry_after
        self.body = body
        self.timeout = timeout


def classify(status: int, body: bytes, headers: Any) -> UpstreamError:
    message = _upstream_message(body) or f"HTTP {status}"
    if status == 429:
        return UpstreamError(
            RETRY,
            f"rate limited by the upstream: {message}",
            status=status,
            retry_after=retry_after_seconds(headers.get("Retry-After")),
        )
    if status >= 500:
        return UpstreamError(RETRY, f"upstream error {status}: {message}", status=status)
    if status in (401, 403, 404):
        return UpstreamError(NEXT, f"upstream refused ({status}): {message}", status=status)
    return UpstreamError(CLIENT, message, status=status, body=body)


def _upstream_message(body: bytes) -> str | None:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        text = body[:200].decode("utf-8", "replace").strip()
        return text or None
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return str(err["message"])
        if isinstance(err, str):
            return err
        if isinstance(data.get("detail"), str):
            return str(data["detail"])
    return None


def transport_error(exc: BaseException) -> UpstreamError:
    if isinstance(exc, asyncio.TimeoutError):
        return UpstreamError(RETRY, "the upstream did not answer in time", timeout=True)
    return UpstreamError(RETRY, f"cannot reach the upstream: {type(exc).__name__}: {exc}")


@dataclass(frozen=True)
class Target:
    url: str
    headers: dict[str, str]


def target(dep: Deployment, api_key: str | None, endpoint: str) -> Target:
    """URL and headers for ``endpoint`` ("chat/completions" or "embeddings") on a deployment."""
    headers = {"Content-Type": "application/json", **dep.headers}
    if dep.api_version:
        url = (
            f"{dep.api_base}/openai/deployments/{dep.model}/{endpoint}"
            f"?api-version={dep.api_version}"
        )
        if api_key:
            headers["api-key"] = api_key
    else:
        url = f"{dep.api_base}/{endpoint}"
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
    return Target(url, headers)


def _outgoing(headers: dict[str, str]) -> dict[str, str]:
    return {**headers, **context_headers()}


def create_session(max_connections: int, connect_timeout_s: float) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(
        limit=max_connections, limit_per_host=0, ttl_dns_cache=60, keepalive_timeout=30
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout_s),
        auto_decompress=True,
        skip_auto_headers=("User-Agent",),
        # LLM APIs are stateless: no cookie is stored, matched or sent (a cookie jar costs a
        # lookup and an update per request, and would carry one caller's cookies to the next).
        cookie_jar=aiohttp.DummyCookieJar(),
    )


async def post_json(
    session: aiohttp.ClientSession, t: Target, body: bytes, timeout_s: float, connect_s: float
) -> tuple[bytes, dict[str, Any]]:
    """One non-streaming call; the body comes back as bytes (relayed as-is) and parsed."""
    try:
        async with session.post(
            t.url,
            data=body,
            headers=_outgoing(t.headers),
            timeout=aiohttp.ClientTimeout(total=timeout_s, sock_connect=connect_s),
        ) as resp:
            data = await resp.read()
            status = resp.status
            headers = resp.headers
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        raise transport_error(exc) from exc
    if status != 200:
        raise classify(status, data, headers)
    try:
        parsed = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise UpstreamError(RETRY, "the upstream answered with invalid JSON") from exc
    if not isinstance(parsed, dict):
        raise UpstreamError(RETRY, "the upstream answered with JSON that is not an object")
    return data, parsed


_PAYLOAD = {"chat/completions": "choices", "embeddings": "data"}


async def call(
    session: aiohttp.ClientSession,
    dep: Deployment,
    api_key: str | None,
    endpoint: str,
    body: dict[str, Any],
    connect_s: float,
) -> tuple[bytes, dict[str, Any]]:
    """One non-streaming call of ``body`` (its ``model`` set to the deployment's) to a
    deployment; an answer without its payload list (``choices``, ``data``) is retried."""
    body["model"] = dep.model
    raw, obj = await post_json(
        session, target(dep, api_key, endpoint), orjson.dumps(body), dep.timeout_s, connect_s
    )
    if not isinstance(obj.get(_PAYLOAD[endpoint]), list):
        raise UpstreamError(RETRY, f"the upstream answer has no '{_PAYLOAD[endpoint]}'")
    return raw, obj


class Stream:
    """An open SSE response whose first event has been read and checked."""

    def __init__(self, resp: aiohttp.ClientResponse, first: bytes, first_obj: Any) -> None:
        self.resp = resp
        self.first = first
        self.first_obj = first_obj

    async def events(self) -> AsyncIterator[bytes]:
        """The ``data:`` payloads after the first one, as raw bytes."""
        content = self.resp.content
        while True:
            line = await content.readline()
            if not line:
                return
            if line.startswith(b"data:"):
                yield line[5:].strip()

    def close(self) -> None:
        self.resp.close()


async def open_stream(
    session: aiohttp.ClientSession, t: Target, body: bytes, timeout_s: float, connect_s: float
) -> Stream:
    """Start a streaming call and read up to its first event, so a failure here is retryable."""
    try:
        resp = await session.post(
            t.url,
            data=body,
            headers=_outgoing(t.headers),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=connect_s, sock_read=timeout_s),
        )
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        raise transport_error(exc) from exc
    try:
        if resp.status != 200:
            data = await resp.read()
            raise classify(resp.status, data, resp.headers)
        while True:
            line = await resp.content.readline()
            if not line:
                raise UpstreamError(RETRY, "the upstream closed the stream before any data")
            if line.startswith(b"data:"):
                first = line[5:].strip()
                break
        if first == b"[DONE]":
            raise UpstreamError(RETRY, "the upstream ended the stream without any data")
        try:
            obj = orjson.loads(first)
        except orjson.JSONDecodeError as exc:
            raise UpstreamError(RETRY, "the upstream sent an invalid stream event") from exc
        if isinstance(obj, dict) and obj.get("error"):
            raise UpstreamError(
                RETRY, f"upstream error in stream: {_upstream_message(first) or 'unknown'}"
            )
        return Stream(resp, first, obj)
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        resp.close()
        raise transport_error(exc) from exc
    except BaseException:
        resp.close()
        raise
