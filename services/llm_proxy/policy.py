"""What an alias asks of each request beyond choosing a deployment: guardrails, the response
cache, structured-output checks, and (routing aliases) which alias answers at all.

Built once per routing catalog (a reload builds a new one), so the request path looks each
alias' policy up in a dict; an alias with none of them costs one lookup and one ``if``.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from services.common.errors import APIError
from services.llm_proxy.catalog import Alias, CacheOptions, Catalog, StructuredOptions
from services.llm_proxy.guardrails import GuardrailBlocked, Rails, resolve
from services.llm_proxy.keys import KeyRecord
from services.llm_proxy.query_routing import (
    ComplexityRouting,
    Decision,
    SemanticRouter,
    SemanticRouting,
    complexity_choice,
    examples_text,
    last_user_text,
)
from services.llm_proxy.upstream import UpstreamError, call

if TYPE_CHECKING:
    from services.llm_proxy.router import Candidate
    from services.llm_proxy.state import ProxyState

log = logging.getLogger("llmops.llm_proxy.policy")


@dataclass
class Policy:
    rails: Rails
    cache: CacheOptions | None
    structured: StructuredOptions
    stream_guardrails: str


@dataclass
class Policies:
    catalog: Catalog
    by_alias: dict[str, Policy] = field(default_factory=dict)
    rails_cache: dict[tuple[str, ...], Rails] = field(default_factory=dict)
    semantic: dict[str, SemanticRouter] = field(default_factory=dict)
    locks: dict[str, asyncio.Lock] = field(default_factory=dict)

    @classmethod
    def build(cls, catalog: Catalog) -> Policies:
        out = cls(catalog)
        for name, spec in catalog.aliases.items():
            out.by_alias[name] = Policy(
                rails=resolve(catalog.guardrails, spec.guardrails, out.rails_cache),
                cache=spec.cache,
                structured=spec.structured_output,
                stream_guardrails=spec.stream_guardrails,
            )
        return out

    def rails(self, alias: str, caller: KeyRecord) -> Rails:
        """The alias' rails, or the key's own list (``metadata.guardrails``) in their place."""
        names = caller.metadata.get("guardrails") if caller.metadata else None
        if names is None:
            return self.by_alias[alias].rails
        try:
            return resolve(self.catalog.guardrails, names, self.rails_cache)
        except (KeyError, TypeError) as exc:
            # Fail closed: a key meant to be checked is not served unchecked.
            raise APIError(
                500,
                f"This API key names guardrails the routing config does not define ({exc}); "
                f"an admin must fix the key's metadata.guardrails or the routing config.",
                code="guardrail_misconfigured",
            ) from None


def blocked(exc: GuardrailBlocked) -> APIError:
    return APIError(
        400,
        exc.message,
        param="messages" if exc.hit.stage == "pre_call" else None,
        code="guardrail_blocked",
        type="invalid_request_error",
    )


async def embed(state: ProxyState, alias: str, texts: list[str]) -> np.ndarray:
    """Embeddings through one of the proxy's own aliases (retries, breakers, fallbacks apply);
    the proxy's internal calls are not charged to any key."""
    tokens = sum(len(t) // 4 + 1 for t in texts)

    async def attempt(cand: Candidate) -> dict[str, Any]:
        _, obj = await call(
            state.session, cand.state.deployment, cand.state.api_key, "embeddings",
            {"input": texts}, state.settings.connect_timeout_s,
        )  # fmt: skip
        if len(obj["data"]) != len(texts):
            raise UpstreamError("retry", "the embeddings answer does not have one vector per input")
        return obj

    obj, _ = await state.gateway.call(alias, tokens, attempt)
    rows = sorted(obj["data"], key=lambda d: d.get("index", 0))
    try:
        return np.asarray([r["embedding"] for r in rows], dtype=np.float32)
    except (KeyError, TypeError, ValueError) as exc:
        raise APIError(
            502, f"The embeddings alias '{alias}' answered without float vectors.",
            code="upstream_error",
        ) from exc  # fmt: skip


async def _semantic_router(
    state: ProxyState, policies: Policies, alias: str, cfg: SemanticRouting
) -> SemanticRouter:
    """The alias' example utterances, embedded once per catalog (by one request at a time)."""
    router = policies.semantic.get(alias)
    if router is not None:
        return router
    lock = policies.locks.setdefault(alias, asyncio.Lock())
    async with lock:
        router = policies.semantic.get(alias)
        if router is None:
            vectors = await embed(state, cfg.embedding_alias, examples_text(cfg))
            router = SemanticRouter(cfg, vectors)
            policies.semantic[alias] = router
            log.info(
                "semantic routes embedded",
                extra={"alias": alias, "examples": int(vectors.shape[0])},
            )
    return router


async def choose_route(
    state: ProxyState, policies: Policies, alias: str, spec: Alias, messages: list[Any]
) -> Decision:
    """Which alias answers a request to a routing alias. A failed embedding call sends the
    request to the default route (and says so) rather than failing it."""
    cfg = spec.routing
    if isinstance(cfg, ComplexityRouting):
        return complexity_choice(cfg, messages)
    assert isinstance(cfg, SemanticRouting)
    text = last_user_text(messages)
    try:
        router = await _semantic_router(state, policies, alias, cfg)
        if not text.strip():
            return router.fallback("no user text")
        vector = await embed(state, cfg.embedding_alias, [text])
        return router.choose(vector[0])
    except APIError as exc:
        log.warning(
            "semantic routing fell back to the default route: %s", exc.message,
            extra={"alias": alias},
        )  # fmt: skip
        return Decision("default", cfg.default, 0.0, "embeddings unavailable")
