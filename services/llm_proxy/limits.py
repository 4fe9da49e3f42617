"""Rate limits (RPM, TPM) and budgets, enforced atomically across replicas.

With Redis, one Lua script checks every limit of a key and takes a share of it in one round
trip, so two replicas can never both admit the request that crosses a limit; each replica then
admits from its share (a lease) until it runs short, so a busy key does not cost a Redis call
per request. Without Redis (one instance, the
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

# KEYS: requests, tokens and spend counters.
# ARGV: rpm, tpm, budget, need_r, want_r, need_t, want_t, need_b, want_b, ttl, spend seed.
# For each dimension asked for (want > 0), grants min(want, room) if room >= need; if any
# dimension lacks room, grants nothing. Returns {0, granted_r, granted_t, granted_b}, or {code}:
# 1 rpm, 2 tpm, 3 budget.
_TAKE = """
local g = {0, 0, 0}
local limits = {tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])}
for i = 1, 3 do
  local need, want = tonumber(ARGV[2 + 2 * i]), tonumber(ARGV[3 + 2 * i])
  if want > 0 then
    if i == 3 then redis.call('SET', KEYS[3], ARGV[11], 'NX') end
    local room = limits[i] - tonumber(redis.call('GET', KEYS[i]) or '0')
    if room < need then return {i} end
    g[i] = math.min(want, room)
  end
end
for i = 1, 3 do
  if g[i] > 0 then
    redis.call('INCRBY', KEYS[i], g[i])
    if i < 3 then redis.call('EXPIRE', KEYS[i], ARGV[10]) end
  end
end
return {0, g[1], g[2], g[3]}
"""
# A replica takes at most this share of a limit at a time (the whole need if larger).
LEASE_SHARE = 20
BUDGET_LEASE_SHARE = 100

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
    # False when nothing was reserved (no limits, or admitted while degraded), and once
    # settled: a reservation is settled at most once.
    tracked: bool
    has_tpm: bool = True
    has_budget: bool = True


@dataclass
class _Lease:
    """What this replica has taken from the shared counters and not used yet."""

    window: int = -1
    requests: int = 0
    tokens: int = 0
    budget: int = 0  # nano-USD; not tied to a window


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
        res.tracked = False
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
        self._take = redis.register_script(_TAKE)
        self._leases: dict[str, _Lease] = {}
        self._topups: dict[str, asyncio.Future[None]] = {}
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
        """Admit from this replica's lease; top the lease up from Redis when it runs short.

        Leases keep the guarantee (Redis never hands out more than a limit) while a busy key
        costs one Redis call per ~1/20 of its limit instead of one per request. A small limit
        gets leases of exactly what each request needs, so it is counted exactly. What a lease
        strands is at most 1/20 of a window's RPM/TPM (expiring with the window) and 1/100 of a
        budget (given back at shutdown): a replica may refuse a little early, never admit late.
        """
        window, retry_after = _window(time.time())
        lease = self._leases.get(limits.subject)
        if lease is None:
            lease = self._leases[limits.subject] = _Lease()
        need_r = 1 if limits.rpm is not None else 0
        need_t = tokens if limits.tpm is not None else 0
        need_b = cost_nano if limits.budget_nano is not None else 0
        for _ in range(20):
            if lease.window != window:
                lease.window, lease.requests, lease.tokens = window, 0, 0
            short_r = max(0, need_r - lease.requests)
            short_t = max(0, need_t - lease.tokens)
            short_b = max(0, need_b - lease.budget)
            if not (short_r or short_t or short_b):
                lease.requests -= need_r
                lease.tokens -= need_t
                lease.budget -= need_b
                return Reservation(
                    limits.subject, window, tokens, cost_nano, True,
                    has_tpm=limits.tpm is not None, has_budget=limits.budget_nano is not None,
                )  # fmt: skip
            pending = self._topups.get(limits.subject)
            if pending is not None:
                # One top-up per key at a time: wait for it, then look at the lease again.
                await asyncio.shield(pending)
                continue
            if time.monotonic() < self._down_until:
                return self._degraded(limits.subject, window, tokens, cost_nano)
            want_r = max(short_r, (limits.rpm or 0) // LEASE_SHARE) if short_r else 0
            want_t = max(short_t, (limits.tpm or 0) // LEASE_SHARE) if short_t else 0
            want_b = max(short_b, (limits.budget_nano or 0) // BUDGET_LEASE_SHARE) if short_b else 0
            args = [
                limits.rpm or 0, limits.tpm or 0, limits.budget_nano or 0,
                short_r, want_r, short_t, want_t, short_b, want_b, _TTL_S, limits.spent_nano,
            ]  # fmt: skip
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._topups[limits.subject] = done
            try:
                keys = list(self._keys(limits.subject, window))
                granted = await self._take(keys=keys, args=args)
            except (RedisError, OSError) as exc:
                self._failed(exc)
                return self._degraded(limits.subject, window, tokens, cost_nano)
            finally:
                del self._topups[limits.subject]
                done.set_result(None)
            code = int(granted[0])
            if code:
                raise RateLimited(REASONS[code], retry_after)
            if lease.window == window:  # a grant for a window that has just ended is void
                lease.requests += int(granted[1])
                lease.tokens += int(granted[2])
            lease.budget += int(granted[3])
        # Other requests kept using up what was taken for this one: treat it as the limit.
        raise RateLimited("rpm" if limits.rpm is not None else "tpm", retry_after)

    def settle(self, res: Reservation, tokens: int, cost_nano: int) -> None:
        """Replace the reservation by the actual use. Unused tokens and budget go back into
        this replica's lease; an overrun (the upstream used more than reserved) is added to
        the shared counters, summed per counter and sent every 20 ms in one pipeline."""
        if not res.tracked:
            return
        res.tracked = False
        lease = self._leases.get(res.subject)
        _, tok_key, spend_key = self._keys(res.subject, res.window)
        for limited, key, delta, field in (
            (res.has_tpm, tok_key, tokens - res.tokens, "tokens"),
            (res.has_budget, spend_key, cost_nano - res.cost_nano, "budget"),
        ):
            if not limited or not delta:
                continue
            if delta < 0:
                if lease is not None and (field == "budget" or lease.window == res.window):
                    setattr(lease, field, getattr(lease, field) - delta)
                continue
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

    async def ping(self) -> bool:
        try:
            return bool(await self.redis.ping())
        except (RedisError, OSError):
            return False

    async def close(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
        # Give back the budget this replica took but did not spend.
        for subject, lease in self._leases.items():
            if lease.budget > 0:
                key = self._keys(subject, 0)[2]
                self._deltas[key] = self._deltas.get(key, 0) - lease.budget
        self._leases.clear()
        await self.flush()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.redis.aclose()


Limiter = MemoryLimiter | RedisLimiter
