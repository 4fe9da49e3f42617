"""``llmops ask``: one question through the rag service's ``POST /v1/ask``, the answer printed
as the model writes it, then where it comes from.

stdout holds the answer and its citations (or, with ``--json``, rag's whole answer object);
stderr the rest: degraded modes, removed markers, errors. Exit codes: 0 answered, 1 the
platform failed (unreachable, refused our key, 5xx, 429, a stream cut by an error event),
2 the request was refused as the caller's mistake (an unknown collection, a bad ``--top-k``).
"""

from __future__ import annotations

import sys
from typing import Any

import httpx
import orjson
from rich.console import Console
from rich.markup import escape

from services.cli.client import error_message, service_client

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

DEFAULT_URL = "http://127.0.0.1:8006"
# The local model writes ~10 tokens/s and may queue behind others: wait for it, but not forever.
TIMEOUT = httpx.Timeout(connect=10, read=300, write=30, pool=10)


class AskFailed(Exception):
    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def ask(
    question: str,
    collection: str | None,
    top_k: int | None,
    *,
    stream: bool,
    as_json: bool,
    url: str | None,
) -> int:
    body: dict[str, Any] = {"question": question}
    if collection:
        body["collection"] = collection
    if top_k:
        body["top_k"] = top_k
    client = service_client(url, "LLMOPS_RAG_URL", DEFAULT_URL, TIMEOUT)
    base = str(client.base_url).rstrip("/")
    try:
        with client:
            result = _streamed(client, body) if stream and not as_json else _whole(client, body)
    except AskFailed as exc:
        err.print(f"[red]error:[/] {escape(exc.message)}")
        return exc.code
    except httpx.TimeoutException as exc:
        err.print(f"[red]error:[/] the rag service at {base} did not answer in time ({exc!r})")
        return 1
    except httpx.HTTPError as exc:
        err.print(
            f"[red]error:[/] cannot reach the rag service at {base} ({type(exc).__name__}): "
            "is it running (`llmops up`)? Point --url or LLMOPS_RAG_URL at it."
        )
        return 1
    if as_json:
        sys.stdout.write(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    if not stream:
        out.print(escape(result.get("answer", "")))
    _sources(result)
    return 0


def _whole(client: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    r = client.post("/v1/ask", json=body)
    if r.status_code != 200:
        raise _refused(r)
    data: dict[str, Any] = r.json()
    return data


def _streamed(client: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    """Print each delta as it arrives; the final ``rag.ask`` object is returned."""
    final: dict[str, Any] | None = None
    written = False
    with client.stream("POST", "/v1/ask", json={**body, "stream": True}) as r:
        if r.status_code != 200:
            r.read()
            raise _refused(r)
        for line in r.iter_lines():
            if not line.startswith("data:"):
                continue
            payload = line[5:].strip()
            if payload == "[DONE]":
                break
            event = orjson.loads(payload)
            if "error" in event:
                if written:
                    sys.stdout.write("\n")
                error = event["error"]
                raise AskFailed(f"the answer failed midway: {error.get('message')}")
            if event.get("object") == "rag.ask.chunk":
                sys.stdout.write(event["delta"])
                sys.stdout.flush()
                written = True
            elif event.get("object") == "rag.ask":
                final = event
    if written:
        sys.stdout.write("\n")
        sys.stdout.flush()
    if final is None:
        raise AskFailed("the rag service ended the stream without its answer; retry")
    return final


def _refused(r: httpx.Response) -> AskFailed:
    message = error_message(r)
    if r.status_code in (401, 403):
        return AskFailed(
            f"the rag service refused the key ({message}); set LLMOPS_API_KEY or "
            "LLMOPS_API_KEY_FILE (`llmops up` keeps its key in .llmops/dev-api-key)"
        )
    if r.status_code in (400, 404, 413, 422):
        return AskFailed(message, 2)
    retry = r.headers.get("retry-after")
    return AskFailed(message + (f" (retry after {retry} s)" if retry else ""))


def _sources(result: dict[str, Any]) -> None:
    """Citations on stdout (part of the answer); degraded modes and dropped markers on stderr."""
    citations = result.get("citations") or []
    if citations:
        out.print()
    for c in citations:
        where = " > ".join(c.get("heading_path") or [])
        out.print(
            f"{escape(c['marker'])} {escape(str(c.get('document_id')))}"
            + (f" [dim]({escape(where)})[/]" if where else "")
        )
    invalid = result.get("invalid_citations") or []
    if invalid:
        markers = " ".join(f"[{n}]" for n in invalid)
        err.print(f"[dim]removed markers that name no retrieved passage: {escape(markers)}[/]")
    degraded = result.get("degraded") or []
    if degraded:
        err.print(f"[yellow]degraded:[/] {escape(', '.join(degraded))}")
