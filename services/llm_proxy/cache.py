"""Response cache for chat completions: exact matches, and an optional semantic index.

Every entry belongs to one tenant scope (the virtual key, or a ``cache_scope`` that keys share
on purpose). The scope is hashed into the key and names its prefix, and :func:`cache_key`
refuses an empty one, so two tenants sending the same prompt never read each other's answers:
a cache keyed by the request alone (LiteLLM's default) serves one tenant's answer, and whatever
it leaked from its context, to another. Only deterministic requests (temperature 0, or a seed)
are cached unless the caller opts in: replaying one sample of a temperature-1 answer would
change what the caller asked for.

The request path never fails because of the cache: a Redis error is a miss (counted through
``on_error``), after which Redis is skipped for a back-off, as the limiter does. Purging a scope
is an admin action and does raise, so a purge that did not happen is never reported as done.

Semantic caching (off by default) serves a cached answer to a *different* question whose
embedding is close, and so it serves wrong answers: with all-MiniLM-L6-v2, "How do I convert a
string to an integer in JavaScript?" and its reverse score 0.996, above every true paraphrase
of ``eval/cache-paraphrases.jsonl``. Two guards narrow it: everything but the last user message
(system prompt, earlier turns, parameters) must match exactly, and so must the numbers,
negations and names of that message (:func:`guard_tokens`). What remains is measured by
``eval/cache_false_hits.py``: enable it only where a wrong answer is cheap.
"""

from __future__ import annotations

import hashlib
import logging
import re
import struct
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

from services.llm_proxy.structured import chunks_from_completion, completion_from_chunks

log = logging.getLogger("llmops.llm_proxy.cache")

KEY_PREFIX = "llmops:cache:v1:"
# Request fields left out of the key because they do not change the answer: how it is
# delivered (stream, stream_options), who asked (user, safety_identifier: the tenant is the
# scope), bookkeeping (metadata, store, service_tier, prompt_cache_key) and `model`, which
# the caller's alias replaces (routes rewrite it to the deployment's model on each attempt).
# Everything else stays in, `n` and `max_tokens` included: they change the answer.
IGNORED_FIELDS = frozenset(
    {"model", "stream", "stream_options", "user", "safety_identifier", "metadata", "store"}
    | {"service_tier", "prompt_cache_key"}
)
# Sent as 0 or 0.0 alike by different SDKs: compared as floats.
_FLOAT_FIELDS = frozenset({"temperature", "top_p", "frequency_penalty", "presence_penalty"})
MAX_ENTRY_BYTES = 1 << 20


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _message(m: Any) -> Any:
    """Absent and null fields alike; one text part alike to a plain string (SDKs differ)."""
    if not isinstance(m, dict):
        return m
    out = {k: v for k, v in m.items() if v is not None}
    content = out.get("content")
    if (
        isinstance(content, list)
        and len(content) == 1
        and isinstance(content[0], dict)
        and content[0].keys() == {"type", "text"}
        and content[0]["type"] == "text"
        and isinstance(content[0]["text"], str)
    ):
        out["content"] = content[0]["text"]
    return out


def normalise(data: dict[str, Any]) -> dict[str, Any]:
    """The request as far as its answer depends on it (see :data:`IGNORED_FIELDS`).

    Also equated: a null field and an absent one, ``n: 1`` and no ``n``, 0 and 0.0 for the
    sampling floats, a one-part text content and a string. Keys are ordered when hashed."""
    out: dict[str, Any] = {}
    for name, value in data.items():
        if name in IGNORED_FIELDS or value is None or (name == "n" and value == 1):
            continue
        if name in _FLOAT_FIELDS and _number(value):
            value = float(value)
        out[name] = value
    if isinstance(out.get("messages"), list):
        out["messages"] = [_message(m) for m in out["messages"]]
    return out


def scope_id(scope: str) -> str:
    """The scope's part of key names: a hash, so key ids never appear in Redis."""
    if not isinstance(scope, str) or not scope:
        raise ValueError("a cache scope is required: entries are never shared across tenants")
    return hashlib.sha256(b"llmops-cache-scope\0" + scope.encode()).hexdigest()[:16]


def scope_prefix(scope: str) -> str:
    return f"{KEY_PREFIX}{scope_id(scope)}:"


def _digest(*parts: Any) -> str:
    return hashlib.sha256(orjson.dumps(parts, option=orjson.OPT_SORT_KEYS)).hexdigest()


def cache_key(scope: str, alias: str, data: dict[str, Any]) -> str:
    """``llmops:cache:v1:<scope hash>:<sha256 of scope, alias and normalised request>``.

    Compute it before the call: routes overwrite ``data["model"]`` per attempt (ignored here
    anyway) and ``stream_options`` for streams (ignored too)."""
    return scope_prefix(scope) + _digest("exact", scope, alias, normalise(data))


def eligible(data: dict[str, Any], opt_in: bool) -> bool:
    """Deterministic requests only (temperature 0, or a seed), unless the caller opts in."""
    if opt_in:
        return True
    temperature = data.get("temperature")
    if _number(temperature) and temperature == 0:
        return True
    seed = data.get("seed")
    return isinstance(seed, int) and not isinstance(seed, bool)


def directives(cache_control_header: str | None) -> tuple[bool, bool]:
    """(may_read, may_write) from a request's ``Cache-Control``.

    ``no-cache``: answer from the upstream, and store that answer; ``no-store``: neither
    (it implies no-cache: a caller who forbids storing must not get a stored answer either);
    ``max-age=0`` reads like ``no-cache``. Unknown directives are ignored."""
    if not cache_control_header:
        return True, True
    read = write = True
    for part in cache_control_header.split(","):
        name, _, value = part.partition("=")
        name = name.strip().lower()
        if name == "no-store":
            read = write = False
        elif name == "no-cache" or (name == "max-age" and value.strip().strip('"') == "0"):
            read = False
    return read, write


# ---------------------------------------------------------------------------------- entries


@dataclass(frozen=True, slots=True)
class CachedResponse:
    body: bytes  # the upstream's chat completion, byte for byte
    deployment: str
    created: float  # unix time it was stored
    usage: tuple[int, int] | None  # (prompt, completion) tokens, for accounting a hit

    def completion(self) -> dict[str, Any]:
        obj = orjson.loads(self.body)
        if not isinstance(obj, dict):
            raise ValueError("the cached body is not a JSON object")
        return obj


def encode_entry(
    scope: str,
    body: bytes,
    deployment: str,
    usage: tuple[int, int] | None,
    created: float | None = None,
) -> bytes:
    """A one-line JSON header, a newline, then the upstream body untouched: a hit returns it
    without parsing or re-serialising it (orjson never writes a raw newline)."""
    header = {
        "v": 1,
        "scope": scope_id(scope),
        "created": time.time() if created is None else created,
        "deployment": deployment,
        "usage": list(usage) if usage is not None else None,
    }
    return orjson.dumps(header) + b"\n" + body


def decode_entry(raw: bytes, scope: str) -> CachedResponse | None:
    """The entry, or None if it is not one of this version or belongs to another scope."""
    head, sep, body = raw.partition(b"\n")
    if not sep:
        return None
    try:
        header = orjson.loads(head)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(header, dict) or header.get("v") != 1:
        return None
    if header.get("scope") != scope_id(scope):
        return None
    usage = header.get("usage")
    pair = (
        (usage[0], usage[1])
        if isinstance(usage, list) and len(usage) == 2 and all(isinstance(u, int) for u in usage)
        else None
    )
    created = header.get("created")
    return CachedResponse(
        body=body,
        deployment=str(header.get("deployment", "")),
        created=float(created) if isinstance(created, int | float) else 0.0,
        usage=pair,
    )


# ----------------------------------------------------------------------------------- stores


class ResponseCache(Protocol):
    async def get(self, key: str) -> bytes | None: ...

    async def set(self, key: str, value: bytes, ttl_s: float) -> None: ...

    async def purge_scope(self, scope: str) -> int: ...

    async def close(self) -> None: ...


class RedisCache:
    """Entries in Redis with their TTL. Fails open: an error is a miss, then a back-off."""

    def __init__(
        self,
        redis: Redis,
        *,
        backoff_s: float = 1.0,
        on_error: Callable[[], None] = lambda: None,
        max_entry_bytes: int = MAX_ENTRY_BYTES,
        owns_client: bool = True,
    ) -> None:
        self.redis = redis
        self.backoff_s = backoff_s
        self.on_error = on_error
        self.max_entry_bytes = max_entry_bytes
        self.owns_client = owns_client  # False when the limiter's client is shared
        self.errors = 0
        self._down_until = 0.0

    def _up(self) -> bool:
        return time.monotonic() >= self._down_until

    def _failed(self, exc: Exception) -> None:
        self.errors += 1
        self.on_error()
        self._down_until = time.monotonic() + self.backoff_s
        log.warning(
            "Redis cache call failed; serving without the cache for %.1fs: %s",
            self.backoff_s,
            type(exc).__name__,
        )

    async def get(self, key: str) -> bytes | None:
        if not self._up():
            return None
        try:
            value = await self.redis.get(key)
        except (RedisError, OSError) as exc:
            self._failed(exc)
            return None
        return value if isinstance(value, bytes) else None

    async def set(self, key: str, value: bytes, ttl_s: float) -> None:
        if ttl_s <= 0 or len(value) > self.max_entry_bytes or not self._up():
            return
        try:
            await self.redis.set(key, value, px=max(1, int(ttl_s * 1000)))
        except (RedisError, OSError) as exc:
            self._failed(exc)

    async def purge_scope(self, scope: str) -> int:
        """Delete the scope's entries and semantic index (SCAN, then UNLINK in batches).
        Raises on a Redis error: the caller must learn that the purge did not happen."""
        removed = 0
        batch: list[bytes | str] = []
        async for key in self.redis.scan_iter(match=scope_prefix(scope) + "*", count=1000):
            batch.append(key)
            if len(batch) >= 500:
                removed += int(await self.redis.unlink(*batch))
                batch = []
        if batch:
            removed += int(await self.redis.unlink(*batch))
        return removed

    async def close(self) -> None:
        if self.owns_client:
            await self.redis.aclose()


class MemoryCache:
    """LRU with TTLs in one process, for development without Redis."""

    def __init__(
        self,
        max_entries: int = 10_000,
        *,
        max_entry_bytes: int = MAX_ENTRY_BYTES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_entries = max_entries
        self.max_entry_bytes = max_entry_bytes
        self.clock = clock
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    async def get(self, key: str) -> bytes | None:
        found = self._entries.get(key)
        if found is None:
            return None
        if found[0] <= self.clock():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return found[1]

    async def set(self, key: str, value: bytes, ttl_s: float) -> None:
        if ttl_s <= 0 or len(value) > self.max_entry_bytes:
            return
        self._entries[key] = (self.clock() + ttl_s, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    async def purge_scope(self, scope: str) -> int:
        prefix = scope_prefix(scope)
        gone = [k for k in self._entries if k.startswith(prefix)]
        for k in gone:
            del self._entries[k]
        return len(gone)

    async def close(self) -> None:
        self._entries.clear()


# ------------------------------------------------------------------------- streamed replays


def sse_replay(completion: dict[str, Any], *, include_usage: bool, pieces: int = 8) -> list[bytes]:
    """A cached completion as the SSE events of a stream, ``data: [DONE]`` last. With
    ``include_usage`` every chunk carries ``usage: null`` and a last chunk without choices
    carries the usage, as OpenAI sends them; without it there is no usage at all."""
    chunks = chunks_from_completion(completion, pieces)
    if include_usage:
        for c in chunks:
            c.setdefault("usage", None)
    else:
        chunks = [c for c in chunks if c.get("choices") or "usage" not in c]
    return [b"data: " + orjson.dumps(c) + b"\n\n" for c in chunks] + [b"data: [DONE]\n\n"]


def completed(chunks: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The completion a stream carried, so a streamed miss fills the cache too; None unless
    every choice finished (a cut stream is not cached)."""
    completion = completion_from_chunks(chunks)
    choices = completion["choices"]
    if not choices or any(c.get("finish_reason") is None for c in choices):
        return None
    return completion


# --------------------------------------------------------------------------- semantic cache

Vector = Sequence[float] | npt.NDArray[np.floating[Any]]
_ROW_HEAD = struct.Struct("<dQ")  # expires at (unix s), guard()
_NUMBERS = re.compile(r"\d+")


def semantic_text(data: dict[str, Any]) -> str | None:
    """What is embedded: the last message's text if it is the user's (text only: a request
    with an image or ending on another role has no semantic key). Only that message is
    compared by meaning; the rest of the request must match exactly (:func:`_bucket`)."""
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        return None
    last = messages[-1]
    if not isinstance(last, dict) or last.get("role") != "user":
        return None
    content = last.get("content")
    if isinstance(content, list):
        texts: list[str] = []
        for part in content:
            if not isinstance(part, dict) or not isinstance(part.get("text"), str):
                return None  # an image, audio, a file: no meaning to compare
            texts.append(part["text"])
        content = "\n".join(texts)
    if not isinstance(content, str):
        return None
    text = " ".join(content.split())
    return text or None


_NEGATIONS = frozenset(
    {"not", "no", "never", "none", "nothing", "neither", "nor", "without", "cannot"}
)
_WORDS = re.compile(r"(?<!\w)'[^']+'(?!\w)|\"[^\"]+\"|[^\s\"]+")


def guard_tokens(text: str) -> tuple[tuple[str, ...], int, tuple[str, ...]]:
    """What must be equal, beyond a close embedding, for a semantic hit: the numbers in
    order ("5 from 10" is not "10 from 5"), the count of negations ("is it safe" is not "is
    it not safe"), and the names and quotes in order (capitalised words not starting a
    sentence, acronyms, quoted text: "Austria" is not "Australia", "USD to EUR" is not "EUR
    to USD"). MiniLM puts such pairs of short questions at cosine 0.95-0.99, above most true
    paraphrases. A paraphrase that writes a number, name or negation differently ("ten",
    "Second World War", "unsafe") or reorders names is a miss: the safe side. Word swaps
    without names ("string to int" / "int to string") still pass: see the module doc."""
    numbers: list[str] = []
    negations = 0
    names: list[str] = []
    start = True
    for word in _WORDS.findall(text):
        if word[0] in "'\"":
            names.append(word[1:-1].casefold())
            start = False
            continue
        core = word.strip(".,;:!?()[]{}'")
        lower = core.casefold()
        numbers.extend(_NUMBERS.findall(core))
        if lower in _NEGATIONS or lower.endswith("n't"):
            negations += 1
        elif core[:1].isupper() and not start and core != "I" and not _NUMBERS.search(core):
            names.append(lower.removesuffix("'s"))
        start = word[-1] in ".?!:"
    return tuple(numbers), negations, tuple(names)


def guard(text: str) -> int:
    """:func:`guard_tokens` as 64 bits, stored with each vector."""
    digest = hashlib.sha256(orjson.dumps(guard_tokens(text))).digest()
    return int.from_bytes(digest[:8], "little")


def _bucket(scope: str, alias: str, data: dict[str, Any], embedder: str) -> str:
    """The Redis key of the vectors a request is compared with: the scope, the alias, the
    embedding model and the whole normalised request but its last user message, so a
    different system prompt, earlier turn or parameter never shares a bucket."""
    context = normalise(data)
    messages = list(context.get("messages") or [])
    if messages:
        messages[-1] = {**messages[-1], "content": None}
    context["messages"] = messages
    # A hash tag keeps the two keys of a bucket in one Redis Cluster slot (for the script).
    return (
        scope_prefix(scope) + "sem:{" + _digest("sem", scope, alias, embedder, context)[:32] + "}"
    )


def _unit(vector: Vector) -> npt.NDArray[np.float32] | None:
    v = np.asarray(vector, dtype=np.float32).ravel()
    norm = float(np.linalg.norm(v))
    if v.size == 0 or not np.isfinite(norm) or norm == 0.0:
        return None
    return v / norm


@dataclass(frozen=True, slots=True)
class SemanticHit:
    key: str  # the exact cache key of the entry to serve
    score: float  # cosine similarity of the last user messages


# KEYS: the bucket's hash (key -> row) and sorted set (key by expiry).
# ARGV: key, row, expires at, now, max entries, ttl ms. Drops expired rows, then the rows that
# expire soonest (the oldest, with one TTL per alias) beyond the cap.
_ADD = """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[4])
for _, k in ipairs(gone) do redis.call('HDEL', KEYS[1], k) end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[4])
local extra = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[5])
if extra > 0 then
  local old = redis.call('ZPOPMIN', KEYS[2], extra)
  for i = 1, #old, 2 do redis.call('HDEL', KEYS[1], old[i]) end
end
redis.call('PEXPIRE', KEYS[1], ARGV[6])
redis.call('PEXPIRE', KEYS[2], ARGV[6])
return 0
"""


class SemanticIndex:
    """(vector, exact key) rows per bucket (:func:`_bucket`) in Redis, searched brute force.

    A lookup reads the bucket (HGETALL, ~1.5 KB a row for 384 dimensions) and scores it with
    numpy; at most ``max_entries`` rows are kept per bucket. The caller embeds
    :func:`semantic_text` through the proxy and passes the vector; vectors of different
    models never meet (``embedder`` is part of the bucket). Fails open like :class:`RedisCache`.
    """

    def __init__(
        self,
        redis: Redis,
        *,
        max_entries: int = 1000,
        backoff_s: float = 1.0,
        on_error: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.redis = redis
        self.max_entries = max_entries
        self.backoff_s = backoff_s
        self.on_error = on_error
        self.clock = clock
        self.errors = 0
        self._down_until = 0.0
        self._add = redis.register_script(_ADD)

    def _failed(self, exc: Exception) -> None:
        self.errors += 1
        self.on_error()
        self._down_until = time.monotonic() + self.backoff_s
        log.warning("Redis semantic index call failed: %s", type(exc).__name__)

    async def add(
        self,
        scope: str,
        alias: str,
        data: dict[str, Any],
        vector: Vector,
        key: str,
        *,
        ttl_s: float,
        embedder: str = "",
    ) -> None:
        now = self.clock()
        row = _row(scope, data, vector, key, now + ttl_s)
        if row is None or ttl_s <= 0 or time.monotonic() < self._down_until:
            return
        bucket = _bucket(scope, alias, data, embedder)
        args: list[bytes | str | int | float] = [
            key, row, now + ttl_s, now, self.max_entries, max(1, int(ttl_s * 1000))
        ]  # fmt: skip
        try:
            await self._add(keys=[bucket, bucket + ":z"], args=args)
        except (RedisError, OSError) as exc:
            self._failed(exc)

    async def lookup(
        self,
        scope: str,
        alias: str,
        data: dict[str, Any],
        vector: Vector,
        *,
        threshold: float,
        embedder: str = "",
    ) -> SemanticHit | None:
        """The closest live row with the same guard, if its cosine is >= ``threshold``."""
        text = semantic_text(data)
        query = _unit(vector)
        if text is None or query is None or time.monotonic() < self._down_until:
            return None
        try:
            rows = await self.redis.hgetall(_bucket(scope, alias, data, embedder))
        except (RedisError, OSError) as exc:
            self._failed(exc)
            return None
        return _search(scope, list(rows.items()), query, guard(text), self.clock(), threshold)


def _row(
    scope: str, data: dict[str, Any], vector: Vector, key: str, expires: float
) -> bytes | None:
    """A packed row (expiry, guard, unit vector) for an entry of ``scope``; None when the
    request has no text to compare or the vector is unusable."""
    text = semantic_text(data)
    unit = _unit(vector)
    if text is None or unit is None or not key.startswith(scope_prefix(scope)):
        return None
    return _ROW_HEAD.pack(expires, guard(text)) + unit.tobytes()


def _search(
    scope: str,
    rows: list[tuple[Any, Any]],
    query: npt.NDArray[np.float32],
    want: int,
    now: float,
    threshold: float,
) -> SemanticHit | None:
    """The best live row with the same guard, scored in one pass over the packed rows."""
    size = _ROW_HEAD.size + 4 * query.size
    # Another length: another dimension (an embedder changed under the same name).
    rows = [(k, r) for k, r in rows if isinstance(k, bytes) and isinstance(r, bytes)]
    rows = [(k, r) for k, r in rows if len(r) == size]
    if not rows:
        return None
    layout = np.dtype([("expires", "<f8"), ("guard", "<u8"), ("vector", "<f4", (query.size,))])
    table = np.frombuffer(b"".join(r for _, r in rows), dtype=layout)
    live = np.flatnonzero((table["expires"] > now) & (table["guard"] == np.uint64(want)))
    if live.size == 0:
        return None
    scores = table["vector"][live] @ query
    best = int(np.argmax(scores))
    score = float(scores[best])
    key = rows[int(live[best])][0].decode()
    if score < threshold or not key.startswith(scope_prefix(scope)):
        return None
    return SemanticHit(key, score)


class MemorySemanticIndex:
    """The same index in one process, for development without Redis."""

    def __init__(self, *, max_entries: int = 1000, clock: Callable[[], float] = time.time):
        self.max_entries = max_entries
        self.clock = clock
        self._buckets: dict[str, OrderedDict[bytes, bytes]] = {}

    async def add(
        self,
        scope: str,
        alias: str,
        data: dict[str, Any],
        vector: Vector,
        key: str,
        *,
        ttl_s: float,
        embedder: str = "",
    ) -> None:
        row = _row(scope, data, vector, key, self.clock() + ttl_s)
        if row is None or ttl_s <= 0:
            return
        bucket = self._buckets.setdefault(_bucket(scope, alias, data, embedder), OrderedDict())
        bucket.pop(key.encode(), None)
        bucket[key.encode()] = row
        while len(bucket) > self.max_entries:
            bucket.popitem(last=False)

    async def lookup(
        self,
        scope: str,
        alias: str,
        data: dict[str, Any],
        vector: Vector,
        *,
        threshold: float,
        embedder: str = "",
    ) -> SemanticHit | None:
        text = semantic_text(data)
        query = _unit(vector)
        if text is None or query is None:
            return None
        bucket: Mapping[bytes, bytes] = (
            self._buckets.get(_bucket(scope, alias, data, embedder)) or {}
        )
        return _search(scope, list(bucket.items()), query, guard(text), self.clock(), threshold)

    async def purge_scope(self, scope: str) -> int:
        prefix = scope_prefix(scope)
        gone = [b for b in self._buckets if b.startswith(prefix)]
        for b in gone:
            del self._buckets[b]
        return len(gone)
