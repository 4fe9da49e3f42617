"""Rate limits (RPM, TPM) and budgets, enforced atomically across replicas.

With Redis, one Lua script checks every limit of a key and reserves in one round trip, so two
replicas can never both admit the request that crosses a limit. Without Redis (one instance, the
embedded default) the same arithmetic runs in memory. Windows are calendar minutes, as
providers count. Tokens are reserved from ``max_tokens`` (or the default) plus an estimate of
the prompt, and cost from the dearest deployment the request may reach; :meth:`settle` then
replaces the reservation with what the upstream reported.

Money is counted in integer nano-dollars, so sums are exact and Redis' INCRBY is atomic.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

log = logging.getLogger("llmops.llm_proxy.limits")

NANO = 1_000_000_000
WINDOW_S = 60
_TTL_S = 2 * WINDOW_S

# KEYS: requests counter, tokens counter, spend counter.
# ARGV: rpm, tpm, tokens, budget_nano (-1: none), cost_nano, ttl, spend seed (from the DB).
# Returns {code, seconds until the window ends}: 0 admitted, 1 rpm, 2 tpm, 3 budget.
_RESERVE = """
local rpm = tonumber(ARGV[1])
local tpm = tonumber(ARGV[2])
local tokens = tonumber(ARGV[3])
local budget = tonumber(ARGV[4])
local cost = tonumber(ARGV[5])
if rpm > 0 and tonumber(redis.call('GET', KEYS[1]) or '0') + 1 > rpm then return 1 end
if tpm > 0 and tonumber(redis.call('GET', KEYS[2]) or '0') + tokens > tpm then return 2 end
if budget >= 0 then
  redis.call('SET', KEYS[3], ARGV[7], 'NX')
  if tonumber(redis.call('GET', KEYS[3])) + cost > budget then return 3 end
  redis.call('INCRBY', KEYS[3], cost)
end
if rpm > 0 then
  redis.call('INCR', KEYS[1])
  redis.call('EXPIRE', KEYS[1], ARGV[6])
end
if tpm > 0 then
  redis.call('INCRBY', KEYS[2], tokens)
  redis.call('EXPIRE', KEYS[2], ARGV[6])
end
return 0
"""

# KEYS: one counter. ARGV: delta. A counter whose window has expired is not recreated.
_SETTLE = """
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('INCRBY', KEYS[1], ARGV[1]) end
return 0
"""
SETTLE_DELAY_S = 0.02

REASONS = {1: "rpm", 2: "tpm", 3: "budget"}


def to_nano(usd: float) -> int:
    return math.ceil(usd * NANO - 1e-6)


@dataclass(frozen=True)
class Limits:
    """What one subject (a virtual key, or a deployment) may use."""

    subject: str
    rpm: int | None = None
    tpm: int | None = None
    budget_nano: int | None = None
    spent_nano: int = 0  # known spend, seeds the shared counter the first time

    @property
    def empty(self) -> bool:
        return self.rpm is None and self.tpm is None and self.budget_nano is None


@dataclass
class Reservation:
    subject: str
    window: int
    tokens: int
    cost_nano: int
    tracked: bool  # False when nothing was reserved (no limits, or admitted while degraded)


class RateLimited(Exception):
    def __init__(self, reason: str, retry_after: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class LimiterUnavailable(Exception):
    """Redis is down and the fail mode is ``closed``."""


def _window(now: float) -> tuple[int, int]:
    window = int(now // WINDOW_S)
    return window, max(1, math.ceil((window + 1) * WINDOW_S - now))


class MemoryLimiter:
    """The same rules in one process; used without Redis. No awaits inside: atomic in asyncio."""

    def __init__(self) -> None:
        self._counts: dict[tuple[str, int, str], int] = {}
        self._spend: dict[str, int] = {}

    async def reserve(self, limits: Limits, tokens: int, cost_nano: int) -> Reservation:
        window, retry_after = _window(time.time())
        req_key, tok_key = (limits.subject, window, "r"), (limits.subject, window, "t")
        if limits.rpm is not None and self._counts.get(req_key, 0) + 1 > limits.rpm:
            raise RateLimited("rpm", retry_after)
        if limits.tpm is not None and self._counts.get(tok_key, 0) + tokens > limits.tpm:
            raise RateLimited("tpm", retry_after)
        if limits.budget_nano is not None:
            spent = self._spend.setdefault(limits.subject, limits.spent_nano)
            if spent + cost_nano > limits.budget_nano:
                raise RateLimited("budget", retry_after)
            self._spend[limits.subject] = spent + cost_nano
        if limits.rpm is not None:
            self._counts[req_key] = self._counts.get(req_key, 0) + 1
        if limits.tpm is not None:
            self._counts[tok_key] = self._counts.get(tok_key, 0) + tokens
        if len(self._counts) > 100_000:
            self._counts = {k: v for k, v in self._counts.items() if k[1] >= window}
        return Reservation(limits.subject, window, tokens, cost_nano, True)

    def settle(self, res: Reservation, tokens: int, cost_nano: int) -> None:
        """Replace the reservation by the actual use (0, 0 for a failed call: a full refund)."""
        if not res.tracked:
            return
        tok_key = (res.subject, res.window, "t")
        if tok_key in self._counts:
            self._counts[tok_key] += tokens - res.tokens
        if res.subject in self._spend:
            self._spend[res.subject] += cost_nano - res.cost_nano

    async def spent_nano(self, subject: str) -> int | None:
        return self._spend.get(subject)

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        return None


class RedisLimiter:
    """Shared limits in Redis. On a Redis failure it follows the fail mode and backs off."""

    def __init__(
        self,
        redis: Redis,
        *,
        fail_open: bool,
        backoff_s: float,
        on_error: Callable[[], None] = lambda: None,
        prefix: str = "llmops:",
    ) -> None:
        self.redis = redis
        self.fail_open = fail_open
        self.backoff_s = backoff_s
        self.prefix = prefix
        self._reserve = redis.register_script(_RESERVE)
        self._down_until = 0.0
        self.on_error = on_error
        self._deltas: dict[str, int] = {}
        self._flusher: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def _keys(self, subject: str, window: int) -> tuple[str, str, str]:
        base = f"{self.prefix}{{{subject}}}"  # one hash slot per subject for Redis Cluster
        return f"{base}:{window}:r", f"{base}:{window}:t", f"{base}:spend"

    def _degraded(self, subject: str, window: int, tokens: int, cost: int) -> Reservation:
        if self.fail_open:
            return Reservation(subject, window, tokens, cost, False)
        raise LimiterUnavailable("the shared rate limiter (Redis) is unreachable")

    def _failed(self, exc: Exception) -> None:
        self.on_error()
        self._down_until = time.monotonic() + self.backoff_s
        log.warning(
            "Redis call failed; %s for %.1fs: %s",
            "admitting requests" if self.fail_open else "refusing requests",
            self.backoff_s,
            type(exc).__name__,
        )

    async def reserve(self, limits: Limits, tokens: int, cost_nano: int) -> Reservation:
        window, retry_after = _window(time.time())
        if time.monotonic() < self._down_until:
            return self._degraded(limits.subject, window, tokens, cost_nano)
        keys = self._keys(limits.subject, window)
        args = [
            limits.rpm or 0,
            limits.tpm or 0,
            tokens,
            -1 if limits.budget_nano is None else limits.budget_nano,
            cost_nano,
            _TTL_S,
            limits.spent_nano,
        ]
        try:
            code = int(await self._reserve(keys=list(keys), args=args))
        except (RedisError, OSError) as exc:
            self._failed(exc)
            return self._degraded(limits.subject, window, tokens, cost_nano)
        if code:
            raise RateLimited(REASONS[code], retry_after)
        return Reservation(limits.subject, window, tokens, cost_nano, True)

    def settle(self, res: Reservation, tokens: int, cost_nano: int) -> None:
        """Queue the correction; corrections are summed per counter and sent every 20 ms in one
        pipeline, so a busy replica makes one Redis round trip per request, not two."""
        if not res.tracked:
            return
        _, tok_key, spend_key = self._keys(res.subject, res.window)
        for key, delta in ((tok_key, tokens - res.tokens), (spend_key, cost_nano - res.cost_nano)):
            if delta:
                self._deltas[key] = self._deltas.get(key, 0) + delta
        if self._deltas and self._flusher is None:
            self._flusher = asyncio.get_running_loop().call_later(
                SETTLE_DELAY_S, lambda: self._spawn(self.flush())
            )

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def flush(self) -> None:
        self._flusher = None
        deltas, self._deltas = self._deltas, {}
        if not deltas:
            return
        try:
            pipe = self.redis.pipeline(transaction=False)
            for key, delta in deltas.items():
                # EVAL, not EVALSHA through Script: no SCRIPT EXISTS round trip per flush.
                pipe.eval(_SETTLE, 1, key, delta)
            await pipe.execute()
        except (RedisError, OSError) as exc:
            self._failed(exc)

    async def spent_nano(self, subject: str) -> int | None:
        try:
            value = await self.redis.get(self._keys(subject, 0)[2])
        except (RedisError, OSError):
            return None
        return None if value is None else int(value)

    async def ping(self) -> bool:
        try:
            return bool(await self.redis.ping())
        except (RedisError, OSError):
            return False

    async def close(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
        await self.flush()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.redis.aclose()


Limiter = MemoryLimiter | RedisLimiter
