"""Everything the request path needs, built by the lifespan and kept on ``app.state.proxy``."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from services.llm_proxy.config import ProxySettings
from services.llm_proxy.gateway import Gateway, ProxyMetrics
from services.llm_proxy.keys import KeyCache, KeyStore
from services.llm_proxy.limits import Limiter
from services.llm_proxy.router import Router
from services.llm_proxy.spend import SpendLog


@dataclass
class ProxyState:
    settings: ProxySettings
    router: Router
    session: aiohttp.ClientSession
    limiter: Limiter
    store: KeyStore
    keys: KeyCache
    spend: SpendLog
    metrics: ProxyMetrics
    gateway: Gateway
    master_hash: bytes | None
    started_at: int
    config_error: str | None = None
    _tasks: set[asyncio.Task[Any]] = field(default_factory=set)

    def background(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run bookkeeping after the response without losing the task to the GC."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
