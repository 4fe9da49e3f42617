"""Retries with backoff and jitter (tenacity), honouring a server's Retry-After hint."""

from __future__ import annotations

import random
from collections.abc import Callable

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt
from tenacity.wait import wait_exponential_jitter

MAX_RETRY_AFTER_S = 10.0


class Transient(Exception):
    """A failure worth retrying; ``retry_after`` is the server's hint in seconds, if any."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def retrying(
    attempts: int,
    is_transient: Callable[[BaseException], bool],
    on_retry: Callable[[RetryCallState], None] | None = None,
    retry_after: Callable[[BaseException], float | None] | None = None,
    initial_s: float = 0.1,
    max_s: float = 2.0,
) -> AsyncRetrying:
    """``async for attempt in retrying(...): with attempt: ...`` around one call.

    ``retry_after`` reads a server's delay hint from an exception; by default its
    ``retry_after`` attribute (as :class:`Transient` carries).
    """
    # Jitter proportional to the first wait (tenacity's default is a flat 1 s).
    backoff = wait_exponential_jitter(initial=initial_s, max=max_s, jitter=initial_s)

    def wait(state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if exc is None:
            hint = None
        elif retry_after is not None:
            hint = retry_after(exc)
        else:
            hint = getattr(exc, "retry_after", None)
        capped = _capped(hint)
        return capped if capped is not None else float(backoff(state))

    return AsyncRetrying(
        stop=stop_after_attempt(attempts + 1),
        wait=wait,
        retry=retry_if_exception(is_transient),
        before_sleep=on_retry,
        reraise=True,
    )


def first_delay(exc: BaseException, initial_s: float, max_s: float) -> float:
    """The wait before the first retry, for a caller that made its first attempt without
    tenacity (a hot path): the server's hint if any, else the same jittered backoff."""
    capped = _capped(getattr(exc, "retry_after", None))
    return capped if capped is not None else min(max_s, initial_s + random.uniform(0, initial_s))


def _capped(hint: object) -> float | None:
    """A server's positive delay hint, capped at ``MAX_RETRY_AFTER_S``; None without one."""
    if isinstance(hint, (int, float)) and hint > 0:
        return float(min(hint, MAX_RETRY_AFTER_S))
    return None


def retry_after_seconds(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
