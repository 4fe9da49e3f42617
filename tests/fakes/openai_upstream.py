"""A fake OpenAI-compatible LLM provider: a real HTTP server with scripted faults.

Run it as its own process::

    python tests/fakes/openai_upstream.py --port 9000 [--name NAME] [--host 127.0.0.1]
        [--chunk-delay-ms 0] [--latency-ms 0]

It serves ``POST /v1/chat/completions`` (also streaming), ``POST /v1/embeddings``,
``GET /v1/models`` and the Azure-style ``/openai/deployments/{deployment}/...`` equivalents, plus
control endpoints (no auth) for tests:

* ``POST /_script`` ``{"faults": [F, ...]}`` queues faults (FIFO, one per /v1 request) and/or
  ``{"always": F | null}`` sets a fault applied to every /v1 request, and/or ``{"content": S}``
  sets the reply (streamed word by word; null: back to the default; a forced tool call's
  arguments when ``tool_choice`` forces one), and/or ``{"replies":
  [{"if_contains": S, "content": C}, ...]}`` picks the reply by what the prompt contains.
* ``GET /_stats``, ``GET /_requests`` (the last 100 /v1 requests), ``POST /_reset``.

A fault ``F`` is an object with any of: ``delay_ms`` (sleep first), ``status`` (+ ``retry_after``)
for an OpenAI-style JSON error, ``hang``, ``malformed``, ``cut_after_chunks``,
``hang_after_chunks`` (a stream stalls after N chunks), ``drop``. A fault with ``p`` applies to
a request with that probability, and ``one_of: [F, ...]`` picks one of those faults (uniformly)
when it applies: ``{"always": {"p": 0.5, "one_of": [{"status": 500}, {"hang": true}]}}`` fails
about half the requests. The draws come from a seeded RNG (``{"seed": N}`` in ``/_script``;
``/_reset`` goes back to seed 0), so a run can be repeated.

It is also the benchmarks' upstream, so the default path is kept short: orjson, no access log.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import contextlib
import hashlib
import random
import struct
import time
from typing import Any

import orjson
from aiohttp import web

_RECORDED_HEADERS = ("authorization", "api-key", "x-request-id", "traceparent")
# Every scripted error is "server_error" (as the tests were specified), except a 429, which
# looks like OpenAI's rate-limit error.
_ERROR_TYPES = {429: "requests"}


class FakeUpstream:
    def __init__(self, name: str, chunk_delay_ms: float = 0.0, latency_ms: float = 0.0) -> None:
        self.name = name
        self.chunk_delay = chunk_delay_ms / 1000.0
        self.latency = latency_ms / 1000.0
        self.default_content = f"Hello from {name}."
        self.content = self.default_content
        self.scripted_content = False  # a scripted reply streams word by word, not "tok{i}"
        self.rules: list[dict[str, str]] = []  # [{"if_contains": S, "content": C}]: first match
        self.faults: collections.deque[dict[str, Any]] = collections.deque()
        self.always: dict[str, Any] | None = None
        self.recorded: collections.deque[dict[str, Any]] = collections.deque(maxlen=100)
        self.seq = 0
        self.rng = random.Random(0)  # draws of probabilistic faults (``p``, ``one_of``)
        self.reset_stats()

    def reset_stats(self) -> None:
        self.stats = {
            "requests": 0,
            "chat": 0,
            "embeddings": 0,
            "streams_started": 0,
            "streams_completed": 0,
            "streams_cancelled": 0,
            "in_flight": 0,
        }

    # ---------------------------------------------------------------- helpers

    def _headers(self, content_type: str = "application/json") -> dict[str, str]:
        return {"Content-Type": content_type, "x-fake-upstream": self.name}

    def _json(self, obj: Any, status: int = 200) -> web.Response:
        return web.Response(body=orjson.dumps(obj), status=status, headers=self._headers())

    def _error(self, status: int, retry_after: Any = None) -> web.Response:
        err = {
            "message": f"fake {self.name} error {status}",
            "type": _ERROR_TYPES.get(status, "server_error"),
            "code": "rate_limit_exceeded" if status == 429 else None,
            "param": None,
        }
        resp = self._json({"error": err}, status=status)
        if retry_after is not None:
            resp.headers["Retry-After"] = str(retry_after)
        return resp

    async def _begin(self, request: web.Request) -> tuple[Any, dict[str, Any] | None]:
        """Count and record one /v1 request; returns its parsed body and the fault to apply."""
        self.stats["requests"] += 1
        raw = await request.read() if request.can_read_body else b""
        body: Any = None
        if raw:
            try:
                body = orjson.loads(raw)
            except orjson.JSONDecodeError:
                body = None
        hdrs = request.headers
        self.recorded.append(
            {
                "path": request.path,
                "query": dict(request.query),
                "headers": {h: hdrs[h] for h in _RECORDED_HEADERS if h in hdrs},
                "body": body,
            }
        )
        fault = self.faults.popleft() if self.faults else self.always
        if fault and ("p" in fault or "one_of" in fault):
            fault = self._draw(fault)
        return body, fault

    def _draw(self, fault: dict[str, Any]) -> dict[str, Any] | None:
        """A probabilistic fault for one request: None (no fault) with probability 1 - p,
        else one of ``one_of`` (or the fault itself without it)."""
        if self.rng.random() >= float(fault.get("p", 1.0)):
            return None
        choices = fault.get("one_of")
        if isinstance(choices, list) and choices:
            picked = self.rng.choice(choices)
            return picked if isinstance(picked, dict) else None
        return fault

    async def _pre(
        self, request: web.Request, fault: dict[str, Any] | None
    ) -> web.StreamResponse | None:
        """Latency and the non-streaming-specific parts of a fault; a response ends the request."""
        if self.latency:
            await asyncio.sleep(self.latency)
        if not fault:
            return None
        delay = fault.get("delay_ms")
        if delay:
            await asyncio.sleep(float(delay) / 1000.0)
        if fault.get("hang"):
            await _hang(request)
            return web.Response(status=499)
        if fault.get("drop"):
            _close(request)
            return web.Response(status=499)
        status = fault.get("status")
        if status:
            return self._error(int(status), fault.get("retry_after"))
        return None

    # ---------------------------------------------------------------- /v1 handlers

    async def chat(self, request: web.Request) -> web.StreamResponse:
        self.stats["in_flight"] += 1
        try:
            body, fault = await self._begin(request)
            self.stats["chat"] += 1
            resp = await self._pre(request, fault)
            if resp is not None:
                return resp
            if not isinstance(body, dict):
                return self._error(400)
            model = body.get("model") or request.match_info.get("deployment") or "fake-model"
            prompt_tokens = _count_words(body.get("messages"))
            max_tokens = body.get("max_tokens") or body.get("max_completion_tokens")
            completion_tokens = int(max_tokens) if max_tokens else 8
            usage = {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            }
            self.seq += 1
            cid = f"chatcmpl-fake-{self.seq}"
            created = int(time.time())
            if body.get("stream"):
                return await self._stream(request, body, fault, cid, created, model, usage)
            if fault and fault.get("malformed"):
                return web.Response(body=b'{"choices": [', headers=self._headers())
            message: dict[str, Any] = {"role": "assistant", "content": self._reply(body)}
            finish = "stop"
            call = _forced_tool_call(body)
            if call is not None and (self.scripted_content or self.rules):
                call["function"]["arguments"] = message["content"]  # scripted arguments
            if call is not None:
                message = {"role": "assistant", "content": None, "tool_calls": [call]}
                finish = "tool_calls"
            payload = orjson.dumps(
                {
                    "id": cid,
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "system_fingerprint": self.name,
                    "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                    "usage": usage,
                }
            )
            if fault and fault.get("cut_after_chunks") is not None:
                return await self._cut_body(request, payload)
            return web.Response(body=payload, headers=self._headers())
        finally:
            self.stats["in_flight"] -= 1

    def _reply(self, body: dict[str, Any]) -> str:
        """The scripted reply: the first rule whose text the prompt contains, else the content."""
        text = orjson.dumps(body.get("messages")).decode()
        for rule in self.rules:
            if str(rule.get("if_contains", "")) in text:
                return str(rule.get("content", ""))
        return self.content

    async def _cut_body(self, request: web.Request, payload: bytes) -> web.StreamResponse:
        """Headers with the full Content-Length, half the body, then the connection closes."""
        resp = web.StreamResponse(headers=self._headers())
        resp.content_length = len(payload)
        await resp.prepare(request)
        with contextlib.suppress(ConnectionError):
            await resp.write(payload[: len(payload) // 2])
        _close(request)
        return resp

    async def _stream(
        self,
        request: web.Request,
        body: dict[str, Any],
        fault: dict[str, Any] | None,
        cid: str,
        created: int,
        model: str,
        usage: dict[str, int],
    ) -> web.StreamResponse:
        resp = web.StreamResponse(headers=self._headers("text/event-stream"))
        resp.headers["Cache-Control"] = "no-cache"
        self.stats["streams_started"] += 1
        head = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model}

        def event(delta: dict[str, Any], finish: str | None = None) -> bytes:
            choice = {"index": 0, "delta": delta, "finish_reason": finish}
            return b"data: " + orjson.dumps({**head, "choices": [choice]}) + b"\n\n"

        try:
            await resp.prepare(request)
            if fault and fault.get("malformed"):
                await resp.write(b"data: {not json\n\n")
                _close(request)
                return resp
            cut = fault.get("cut_after_chunks") if fault else None
            stall = fault.get("hang_after_chunks") if fault else None
            await resp.write(event({"role": "assistant", "content": ""}))
            if self.scripted_content or self.rules:
                words = self._reply(body).split(" ")
                pieces = [w + (" " if n < len(words) - 1 else "") for n, w in enumerate(words)]
            else:
                pieces = [f"tok{i} " for i in range(min(usage["completion_tokens"], 8))]
            for i, piece in enumerate(pieces):
                if cut is not None and i >= int(cut):
                    _close(request)
                    return resp
                if stall is not None and i >= int(stall):
                    await _hang(request)
                    return resp
                if self.chunk_delay:
                    await asyncio.sleep(self.chunk_delay)
                await resp.write(event({"content": piece}))
            if cut is not None:
                _close(request)
                return resp
            await resp.write(event({}, "stop"))
            opts = body.get("stream_options")
            if isinstance(opts, dict) and opts.get("include_usage"):
                tail = {**head, "choices": [], "usage": usage}
                await resp.write(b"data: " + orjson.dumps(tail) + b"\n\n")
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
        except (ConnectionError, asyncio.CancelledError):
            self.stats["streams_cancelled"] += 1
            raise
        self.stats["streams_completed"] += 1
        return resp

    async def embeddings(self, request: web.Request) -> web.StreamResponse:
        self.stats["in_flight"] += 1
        try:
            body, fault = await self._begin(request)
            self.stats["embeddings"] += 1
            resp = await self._pre(request, fault)
            if resp is not None:
                return resp
            if fault and fault.get("malformed"):
                return web.Response(body=b'{"data": [', headers=self._headers())
            if not isinstance(body, dict) or "input" not in body:
                return self._error(400)
            inputs = body["input"]
            if isinstance(inputs, str) or (
                isinstance(inputs, list) and inputs and isinstance(inputs[0], int)
            ):
                inputs = [inputs]
            b64 = body.get("encoding_format") == "base64"
            data = []
            tokens = 0
            for i, item in enumerate(inputs):
                text = item if isinstance(item, str) else " ".join(map(str, item))
                tokens += len(text.split()) if isinstance(item, str) else len(item)
                vec = _vector(text)
                emb: Any = base64.b64encode(struct.pack("<8f", *vec)).decode() if b64 else vec
                data.append({"object": "embedding", "index": i, "embedding": emb})
            model = body.get("model") or request.match_info.get("deployment") or "fake-model"
            payload = orjson.dumps(
                {
                    "object": "list",
                    "data": data,
                    "model": model,
                    "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
                }
            )
            if fault and fault.get("cut_after_chunks") is not None:
                return await self._cut_body(request, payload)
            return web.Response(body=payload, headers=self._headers())
        finally:
            self.stats["in_flight"] -= 1

    async def models(self, request: web.Request) -> web.StreamResponse:
        self.stats["in_flight"] += 1
        try:
            _, fault = await self._begin(request)
            resp = await self._pre(request, fault)
            if resp is not None:
                return resp
            if fault and fault.get("malformed"):
                return web.Response(body=b'{"data": [', headers=self._headers())
            model = {"id": "fake-model", "object": "model", "created": 0, "owned_by": self.name}
            return self._json({"object": "list", "data": [model]})
        finally:
            self.stats["in_flight"] -= 1

    # ---------------------------------------------------------------- control endpoints

    async def script(self, request: web.Request) -> web.Response:
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return self._json({"error": "body must be JSON"}, status=400)
        if not isinstance(body, dict):
            return self._json({"error": "body must be an object"}, status=400)
        for fault in body.get("faults") or []:
            self.faults.append(fault if isinstance(fault, dict) else {})
        if "always" in body:
            self.always = body["always"] or None
        if "seed" in body:
            self.rng = random.Random(body["seed"])
        if "content" in body:
            self.content = str(body["content"] or self.default_content)
            self.scripted_content = bool(body["content"])
        if "replies" in body:
            self.rules = [r for r in body["replies"] or [] if isinstance(r, dict)]
        return self._json({"queued": len(self.faults), "always": self.always})

    async def get_stats(self, request: web.Request) -> web.Response:
        return self._json(self.stats)

    async def get_requests(self, request: web.Request) -> web.Response:
        return self._json(list(self.recorded))

    async def reset(self, request: web.Request) -> web.Response:
        self.faults.clear()
        self.always = None
        self.content, self.scripted_content = self.default_content, False
        self.rules = []
        self.rng = random.Random(0)
        self.recorded.clear()
        self.reset_stats()
        return self._json({"reset": True})

    async def health(self, request: web.Request) -> web.Response:
        return self._json({"status": "ok", "name": self.name})


def _close(request: web.Request) -> None:
    """Close the TCP connection (buffered bytes are still flushed) without finishing the reply."""
    transport = request.transport
    if transport is not None:
        transport.close()


async def _hang(request: web.Request) -> None:
    """Never answer: wait until the client goes away (or the handler is cancelled)."""
    while True:
        transport = request.transport
        if transport is None or transport.is_closing():
            return
        await asyncio.sleep(0.05)


def _count_words(messages: Any) -> int:
    if not isinstance(messages, list):
        return 0
    n = 0
    for m in messages:
        if not isinstance(m, dict):
            continue
        content = m.get("content")
        if isinstance(content, str):
            n += len(content.split())
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    n += len(part["text"].split())
    return n


def _forced_tool_call(body: dict[str, Any]) -> dict[str, Any] | None:
    """A tool call when tools are given and ``tool_choice`` forces one ("required" or named)."""
    tools = body.get("tools")
    choice = body.get("tool_choice")
    if not tools or not isinstance(tools, list):
        return None
    name = None
    if choice == "required":
        first = tools[0] if isinstance(tools[0], dict) else {}
        name = (first.get("function") or {}).get("name")
    elif isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
    if not name:
        return None
    return {
        "id": "call_fake_1",
        "type": "function",
        "function": {"name": name, "arguments": "{}"},
    }


def _vector(text: str) -> list[float]:
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    vec = [(b - 127.5) / 127.5 for b in digest]
    norm = sum(v * v for v in vec) ** 0.5 or 1.0
    return [round(v / norm, 6) for v in vec]


def build_app(name: str, chunk_delay_ms: float = 0.0, latency_ms: float = 0.0) -> web.Application:
    fake = FakeUpstream(name, chunk_delay_ms, latency_ms)
    app = web.Application()
    app["fake"] = fake
    app.router.add_post("/v1/chat/completions", fake.chat)
    app.router.add_post("/v1/embeddings", fake.embeddings)
    app.router.add_get("/v1/models", fake.models)
    azure = "/openai/deployments/{deployment}"
    app.router.add_post(f"{azure}/chat/completions", fake.chat)
    app.router.add_post(f"{azure}/embeddings", fake.embeddings)
    app.router.add_post("/_script", fake.script)
    app.router.add_get("/_stats", fake.get_stats)
    app.router.add_get("/_requests", fake.get_requests)
    app.router.add_post("/_reset", fake.reset)
    app.router.add_get("/healthz", fake.health)
    app.router.add_get("/readyz", fake.health)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--name", default="fake")
    parser.add_argument("--chunk-delay-ms", type=float, default=0.0)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    args = parser.parse_args(argv)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    web.run_app(
        build_app(args.name, args.chunk_delay_ms, args.latency_ms),
        host=args.host,
        port=args.port,
        access_log=None,
        print=None,
        handler_cancellation=True,
        shutdown_timeout=1.0,
    )


if __name__ == "__main__":
    main()
