"""Everything the request path needs, built by the lifespan and kept on ``app.state.proxy``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import aiohttp
from fastapi import Depends, Request
from opentelemetry.trace import Tracer

from services.common.db import SchemaGate
from services.llm_proxy.cache import (
    MemorySemanticIndex,
    ResponseCache,
    SemanticIndex,
)
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
    tracer: Tracer
    started_at: int
    schema: SchemaGate
    cache: ResponseCache
    semantic: SemanticIndex | MemorySemanticIndex
    config_error: str | None = None


async def proxy_state(request: Request) -> ProxyState:
    """A dependency; ``async`` so FastAPI does not hop to a thread for it on every request."""
    state: ProxyState = request.app.state.proxy
    return state


State = Annotated[ProxyState, Depends(proxy_state)]
