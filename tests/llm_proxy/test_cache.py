"""The response cache: keys, eligibility, Cache-Control, the stores (Redis real), replays,
and the semantic index with hand-made vectors."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from services.llm_proxy.cache import (
    IGNORED_FIELDS,
    MemoryCache,
    MemorySemanticIndex,
    RedisCache,
    SemanticIndex,
    cache_key,
    completed,
    decode_entry,
    directives,
    eligible,
    encode_entry,
    guard_tokens,
    scope_prefix,
    semantic_text,
    sse_replay,
)
from tests.conftest import free_port

BODY: dict[str, Any] = {
    "model": "chat",
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is the capital of Austria?"},
    ],
    "temperature": 0,
    "max_tokens": 50,
}


def _with(**changes: Any) -> dict[str, Any]:
    return {**BODY, **changes}


def _ask(text: str, system: str = "Be brief.", **params: Any) -> dict[str, Any]:
    messages = [{"role": "system", "content": system}, {"role": "user", "content": text}]
    return {"model": "chat", "messages": messages, "temperature": 0, **params}


def _run(redis_url: str, test: Callable[[Redis], Awaitable[None]]) -> None:
    """One event loop and client per test; whatever the test wrote under ``llmops:cache:`` in
    the test database is the test's own (unique scopes), and is removed by the purge."""

    async def main() -> None:
        redis = Redis.from_url(redis_url, socket_timeout=2)
        try:
            await test(redis)
        finally:
            await redis.aclose()

    asyncio.run(main())


def _dead_redis() -> Redis:
    """Nothing listens on the port; no retries (the proxy's client retries once, at once)."""
    return Redis(
        host="127.0.0.1", port=free_port(), socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0)
    )


# ------------------------------------------------------------------------------------ keys


def test_key_ignores_order_delivery_and_bookkeeping_fields() -> None:
    base = cache_key("key-1", "chat", BODY)
    assert re.fullmatch(r"llmops:cache:v1:[0-9a-f]{16}:[0-9a-f]{64}", base)
    reordered = dict(reversed(list(BODY.items())))
    reordered["messages"] = [dict(reversed(list(m.items()))) for m in BODY["messages"]]
    assert cache_key("key-1", "chat", reordered) == base
    delivery = _with(
        stream=True,
        stream_options={"include_usage": True},
        user="end-user-7",
        metadata={"tag": "x"},
        model="deployment-model-name",
    )
    assert cache_key("key-1", "chat", delivery) == base
    assert {"stream", "stream_options", "user", "metadata", "model"} <= IGNORED_FIELDS
    # Equal requests written differently by different SDKs.
    assert cache_key("key-1", "chat", _with(temperature=0.0, n=1, seed=None)) == base
    one_part = _with(
        messages=[
            BODY["messages"][0],
            {"role": "user", "content": [{"type": "text", "text": BODY["messages"][1]["content"]}]},
        ]
    )
    assert cache_key("key-1", "chat", one_part) == base


def test_key_separates_tenants_aliases_and_parameters() -> None:
    base = cache_key("key-1", "chat", BODY)
    other_tenant = cache_key("key-2", "chat", BODY)
    assert other_tenant != base
    assert other_tenant.startswith(scope_prefix("key-2"))
    assert not other_tenant.startswith(scope_prefix("key-1"))
    assert cache_key("key-1", "chat-large", BODY) != base
    changed = [
        _with(temperature=0.2),
        _with(max_tokens=51),
        _with(n=2),  # n changes the answer: two choices
        _with(seed=1),
        _with(tools=[{"type": "function", "function": {"name": "f"}}]),
        _with(response_format={"type": "json_object"}),
        _with(messages=[{"role": "system", "content": "Be long."}, BODY["messages"][1]]),
    ]
    keys = {cache_key("key-1", "chat", body) for body in changed}
    assert base not in keys and len(keys) == len(changed)
    # The scope is hashed in: no secret or key id appears in Redis key names.
    assert "key-1" not in base
    with pytest.raises(ValueError, match="scope is required"):
        cache_key("", "chat", BODY)


def test_eligibility_is_for_deterministic_requests_unless_opted_in() -> None:
    assert eligible(_with(temperature=0), False)
    assert eligible(_with(temperature=0.0), False)
    assert not eligible(_with(temperature=0.7), False)
    assert not eligible({k: v for k, v in BODY.items() if k != "temperature"}, False)
    assert eligible(_with(temperature=1, seed=42), False)
    assert not eligible(_with(temperature=1, seed=True), False)
    assert not eligible(_with(temperature=False), False)
    assert eligible(_with(temperature=1), True)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, (True, True)),
        ("", (True, True)),
        ("no-cache", (False, True)),
        ("No-Cache", (False, True)),
        ("  no-store ", (False, False)),
        ("no-cache, no-store", (False, False)),
        ("NO-STORE,no-cache", (False, False)),
        ("private, no-cache", (False, True)),
        ("max-age=0", (False, True)),
        ('max-age="0"', (False, True)),
        ("max-age=60", (True, True)),
        ("no-transform", (True, True)),
    ],
)
def test_cache_control(header: str | None, expected: tuple[bool, bool]) -> None:
    assert directives(header) == expected


def test_entry_round_trip_keeps_the_body_bytes_and_its_scope() -> None:
    body = b'{\n  "id": "c1", "choices": [],\n  "usage": {"prompt_tokens": 3}\n}'
    raw = encode_entry("key-1", body, "dep-a", (12, 7), created=1000.0)
    entry = decode_entry(raw, "key-1")
    assert entry is not None
    assert (entry.body, entry.deployment, entry.created, entry.usage) == (
        body, "dep-a", 1000.0, (12, 7),
    )  # fmt: skip
    assert entry.completion()["id"] == "c1"
    assert decode_entry(raw, "key-2") is None  # never served to another scope
    assert decode_entry(b"not an entry", "key-1") is None
    assert decode_entry(b"{}\n{}", "key-1") is None
    assert decode_entry(encode_entry("key-1", b"{}", "d", None), "key-1") is not None


# ---------------------------------------------------------------------------------- stores


def test_memory_cache_ttl_lru_and_purge() -> None:
    now = [0.0]
    cache = MemoryCache(max_entries=2, max_entry_bytes=10, clock=lambda: now[0])

    async def run() -> None:
        a, b, c = (cache_key("t", "chat", _ask(q)) for q in ("a", "b", "c"))
        await cache.set(a, b"A", 10)
        await cache.set(b, b"B", 10)
        assert await cache.get(a) == b"A"  # a is now the most recently used
        await cache.set(c, b"C", 10)  # evicts b, the least recently used
        assert await cache.get(b) is None
        assert await cache.get(a) == b"A" and await cache.get(c) == b"C"
        now[0] = 10.0
        assert await cache.get(a) is None  # expired
        await cache.set(a, b"x" * 11, 10)  # too big: not stored
        await cache.set(b, b"B", 0)  # no TTL: not stored
        assert await cache.get(a) is None and await cache.get(b) is None
        other = cache_key("u", "chat", _ask("a"))
        await cache.set(a, b"A", 10)
        await cache.set(other, b"U", 10)
        assert await cache.purge_scope("t") == 1
        assert await cache.get(a) is None and await cache.get(other) == b"U"

    asyncio.run(run())


def test_redis_cache_round_trip_ttl_and_purge_scope(redis_url: str) -> None:
    scope, other = f"test-{uuid.uuid4().hex}", f"test-{uuid.uuid4().hex}"

    async def test(redis: Redis) -> None:
        cache = RedisCache(redis, owns_client=False, max_entry_bytes=1000)
        try:
            keys = [cache_key(scope, "chat", _ask(f"q{i}")) for i in range(3)]
            kept = cache_key(other, "chat", _ask("q0"))
            entry = encode_entry(scope, b'{"choices": []}', "dep-a", (1, 2))
            for key in keys:
                await cache.set(key, entry, 30)
            await cache.set(kept, b"other tenant", 30)
            assert await cache.get(keys[0]) == entry
            assert await cache.get(cache_key(scope, "chat", _ask("never stored"))) is None
            assert 25_000 < await redis.pttl(keys[0]) <= 30_000
            await cache.set(keys[0], b"x" * 1001, 30)  # too big: the old entry stays
            assert await cache.get(keys[0]) == entry
            assert await cache.purge_scope(scope) == 3
            assert [await cache.get(k) for k in keys] == [None] * 3
            assert await cache.get(kept) == b"other tenant"
            assert cache.errors == 0
        finally:
            await cache.purge_scope(scope)
            await cache.purge_scope(other)

    _run(redis_url, test)


def test_redis_cache_fails_open_and_backs_off() -> None:
    errors: list[int] = []

    async def run() -> None:
        dead = _dead_redis()
        cache = RedisCache(dead, backoff_s=60, on_error=lambda: errors.append(1))
        key = cache_key("t", "chat", BODY)
        assert await cache.get(key) is None  # a miss, not an error for the request
        assert cache.errors == 1 and errors == [1]
        await cache.set(key, b"v", 10)  # skipped during the back-off: no second stall
        assert await cache.get(key) is None
        assert cache.errors == 1
        with pytest.raises(RedisError):
            await cache.purge_scope("t")  # an admin purge says that it did not happen
        await cache.close()

    asyncio.run(run())


# -------------------------------------------------------------------------- stream replays

COMPLETION: dict[str, Any] = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1700000000,
    "model": "m",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "Vienna is the capital of Austria. ü",
                "refusal": None,
            },
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 20, "completion_tokens": 9, "total_tokens": 29},
}


def _events(frames: list[bytes]) -> list[Any]:
    text = b"".join(frames).decode()
    assert text.endswith("data: [DONE]\n\n")
    events = [e.removeprefix("data: ") for e in text.split("\n\n") if e]
    assert all(not e.startswith("data:") for e in events) and events[-1] == "[DONE]"
    return [orjson.loads(e) for e in events[:-1]]


def test_sse_replay_parses_back_into_the_same_answer() -> None:
    chunks = _events(sse_replay(COMPLETION, include_usage=False, pieces=4))
    assert all(c["object"] == "chat.completion.chunk" and "usage" not in c for c in chunks)
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert deltas[0]["role"] == "assistant"
    assert "".join(d.get("content", "") for d in deltas) == "Vienna is the capital of Austria. ü"
    assert len([d for d in deltas if d.get("content")]) == 4
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"

    with_usage = _events(sse_replay(COMPLETION, include_usage=True))
    assert all(c["usage"] is None for c in with_usage[:-1])
    assert with_usage[-1]["choices"] == [] and with_usage[-1]["usage"] == COMPLETION["usage"]

    assert completed(with_usage) == COMPLETION


def test_tool_calls_and_several_choices_replay_and_rebuild() -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"x":1}'}}
    completion = {
        "id": "c",
        "created": 1,
        "model": "m",
        "object": "chat.completion",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": None,
                    "refusal": None,
                    "tool_calls": [call],
                },
                "logprobs": None,
                "finish_reason": "tool_calls",
            },
            {
                "index": 1,
                "message": {"role": "assistant", "content": "Second.", "refusal": None},
                "logprobs": None,
                "finish_reason": "length",
            },
        ],
    }
    assert completed(_events(sse_replay(completion, include_usage=False))) == completion


def test_a_cut_stream_is_not_rebuilt() -> None:
    chunks = _events(sse_replay(COMPLETION, include_usage=True))
    assert completed(chunks[:-2]) is None  # the finish chunk never came
    assert completed([]) is None


# -------------------------------------------------------------------------------- semantic


def test_semantic_text_and_guard() -> None:
    assert semantic_text(_ask("  What is\n the capital? ")) == "What is the capital?"
    parts = {
        "role": "user",
        "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
    }
    assert semantic_text({"messages": [parts]}) == "a b"
    image = {"type": "image_url", "image_url": {"url": "data:,"}}
    assert semantic_text({"messages": [{"role": "user", "content": [image]}]}) is None
    assert semantic_text({"messages": [{"role": "assistant", "content": "x"}]}) is None
    assert semantic_text({"messages": []}) is None
    assert guard_tokens("Convert 10 USD to EUR") == (("10",), 0, ("usd", "eur"))
    assert guard_tokens("Which city is the capital of Austria?") == ((), 0, ("austria",))
    assert guard_tokens("Is it not safe? It isn't.") == ((), 2, ())
    assert guard_tokens("Translate 'good morning' into French.")[2] == ("good morning", "french")


def _vec(*head: float, dim: int = 8) -> list[float]:
    return [*head, *([0.0] * (dim - len(head)))]


IndexFactory = Callable[[Redis, Callable[[], float]], Any]
FACTORIES: dict[str, IndexFactory] = {
    "redis": lambda redis, clock: SemanticIndex(redis, max_entries=3, clock=clock),
    "memory": lambda redis, clock: MemorySemanticIndex(max_entries=3, clock=clock),
}


@pytest.mark.parametrize("kind", sorted(FACTORIES))
def test_semantic_index_hits_misses_and_isolation(redis_url: str, kind: str) -> None:
    scope, other = f"test-{uuid.uuid4().hex}", f"test-{uuid.uuid4().hex}"
    now = [1000.0]

    async def test(redis: Redis) -> None:
        index = FACTORIES[kind](redis, lambda: now[0])
        stored = _ask("What is the capital of Austria?")
        key = cache_key(scope, "chat", stored)
        await index.add(scope, "chat", stored, _vec(1, 0), key, ttl_s=60, embedder="e")
        try:

            async def look(
                data: dict[str, Any], vector: list[float], threshold: float = 0.9, **kw: Any
            ) -> Any:
                kw.setdefault("scope", scope)
                kw.setdefault("alias", "chat")
                kw.setdefault("embedder", "e")
                return await index.lookup(data=data, vector=vector, threshold=threshold, **kw)

            para = _ask("Which city is Austria's capital?")
            hit = await look(para, _vec(0.95, 0.312))  # cosine 0.95
            assert hit is not None and hit.key == key and hit.score == pytest.approx(0.95, 1e-3)
            assert await look(para, _vec(0.95, 0.312), threshold=0.96) is None
            assert await look(para, _vec(0.5, 0.866)) is None  # cosine 0.5
            # Unnormalised vectors compare by angle.
            assert (await look(para, _vec(9.5, 3.12))) is not None
            # Another tenant, alias, embedder, system prompt or parameter: another bucket.
            assert await look(para, _vec(1, 0), scope=other) is None
            assert await look(para, _vec(1, 0), alias="chat-large") is None
            assert await look(para, _vec(1, 0), embedder="other-model") is None
            assert await look(_ask("Which city is Austria's capital?", "Be long."), _vec(1)) is None
            assert (
                await look(_ask("Which city is Austria's capital?", max_tokens=5), _vec(1)) is None
            )
            # Same bucket, same direction, but the guard differs: numbers, names, negations.
            assert await look(_ask("What is the capital of Australia?"), _vec(1)) is None
            assert await look(_ask("What is not the capital of Austria?"), _vec(1)) is None
            assert await look(_ask("What was the capital of Austria in 1900?"), _vec(1)) is None
            # A zero vector or one of another dimension never matches.
            assert await look(para, _vec(dim=8)) is None
            assert await look(para, _vec(1, dim=16)) is None
            # A key of another scope is never indexed for this one.
            foreign = cache_key(other, "chat", stored)
            await index.add(scope, "chat", stored, _vec(0, 1), foreign, ttl_s=60, embedder="e")
            hit = await look(para, _vec(0, 1), threshold=0.5)
            assert hit is None or hit.key == key
            # Expiry.
            now[0] += 61
            assert await look(para, _vec(1, 0)) is None
        finally:
            if kind == "redis":
                await RedisCache(redis, owns_client=False).purge_scope(scope)

    _run(redis_url, test)


@pytest.mark.parametrize("kind", sorted(FACTORIES))
def test_semantic_index_keeps_the_newest_entries(redis_url: str, kind: str) -> None:
    scope = f"test-{uuid.uuid4().hex}"

    async def test(redis: Redis) -> None:
        index = FACTORIES[kind](redis, lambda: 1000.0)
        keys = []
        try:
            for i in range(5):  # max_entries=3: the first two are evicted
                data = _ask(f"Question number {i}")
                keys.append(cache_key(scope, "chat", data))
                vector = _vec(*([0.0] * i), 1.0)
                await index.add(scope, "chat", data, vector, keys[-1], ttl_s=60 + i)
            found = []
            for i in range(5):
                vector = _vec(*([0.0] * i), 1.0)
                hit = await index.lookup(
                    scope, "chat", _ask(f"Question number {i}?"), vector, threshold=0.99
                )
                found.append(hit.key if hit else None)
            assert found == [None, None, *keys[2:]]
            if kind == "redis":
                removed = await RedisCache(redis, owns_client=False).purge_scope(scope)
                assert removed == 2  # the bucket's hash and sorted set
                assert await index.lookup(
                    scope, "chat", _ask("Question number 4"), _vec(0, 0, 0, 0, 1), threshold=0.5
                ) is None  # fmt: skip
            else:
                assert await index.purge_scope(scope) == 1
        finally:
            if kind == "redis":
                await RedisCache(redis, owns_client=False).purge_scope(scope)

    _run(redis_url, test)


def test_semantic_index_fails_open() -> None:
    errors: list[int] = []

    async def run() -> None:
        dead = _dead_redis()
        index = SemanticIndex(dead, backoff_s=60, on_error=lambda: errors.append(1))
        data = _ask("Anything?")
        assert await index.lookup("t", "chat", data, _vec(1), threshold=0.5) is None
        await index.add("t", "chat", data, _vec(1), cache_key("t", "chat", data), ttl_s=10)
        assert index.errors == 1 and errors == [1]  # the add was skipped in the back-off
        await dead.aclose()

    asyncio.run(run())
