"""Admin API (master key only): virtual keys, spend, and the routing state."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from services.common.errors import APIError
from services.common.routing import JsonRoute
from services.common.validation import INT4_MAX, iso_8601_only, no_control_characters
from services.llm_proxy.auth import Admin
from services.llm_proxy.keys import key_view
from services.llm_proxy.router import STATE_NAMES
from services.llm_proxy.state import State

router = APIRouter(prefix="/admin", tags=["admin"], route_class=JsonRoute)
MAX_EXPIRES_IN_S = 100 * 365 * 86400  # past it, the date overflows (year 9999) soon enough


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, max_length=200)
    aliases: list[str] | None = Field(None, description="Models the key may use; null: all.")
    rpm: int | None = Field(None, ge=1, le=INT4_MAX)
    tpm: int | None = Field(None, ge=1, le=INT4_MAX)
    max_budget_usd: float | None = Field(None, ge=0)
    expires_at: datetime | None = None
    expires_in_s: float | None = Field(None, gt=0, le=MAX_EXPIRES_IN_S)
    metadata: dict[str, Any] | None = None

    # A name is shown in tables and logs; expires_at as a number was a mistake (expires_in_s
    # takes seconds; -384 made a key expired in 1969).
    _printable = field_validator("name")(no_control_characters)
    _iso_8601 = field_validator("expires_at", mode="before")(iso_8601_only)

    @model_validator(mode="after")
    def _one_expiry(self) -> KeyCreate:
        if self.expires_at is not None and self.expires_in_s is not None:
            raise ValueError("give expires_at or expires_in_s, not both")
        if self.expires_at is not None and self.expires_at.tzinfo is None:
            self.expires_at = self.expires_at.replace(tzinfo=UTC)
        return self


@router.post("/keys", status_code=201, summary="Create a virtual key; the key is shown once.")
async def create_key(body: KeyCreate, state: State, _: Admin) -> dict[str, Any]:
    if body.aliases is not None:
        unknown = sorted(set(body.aliases) - set(state.router.catalog.aliases))
        if unknown:
            raise APIError(
                400,
                f"Unknown model alias(es): {', '.join(unknown)}; "
                f"known: {', '.join(sorted(state.router.catalog.aliases))}.",
                param="aliases",
                code="unknown_alias",
            )
    _check_metadata(state, body.metadata)
    expires = body.expires_at
    if body.expires_in_s is not None:
        expires = datetime.now(UTC) + timedelta(seconds=body.expires_in_s)
    row, plain = await asyncio.to_thread(
        state.store.create,
        name=body.name,
        aliases=body.aliases,
        rpm=body.rpm,
        tpm=body.tpm,
        max_budget_usd=body.max_budget_usd,
        expires_at=expires,
        metadata=body.metadata,
    )
    return {**key_view(row), "key": plain}


def _check_metadata(state: Any, metadata: dict[str, Any] | None) -> None:
    """The two metadata fields the proxy acts on: ``guardrails`` (the key's own rails, in
    place of its aliases') and ``cache_scope`` (keys that share cached answers on purpose)."""
    if not metadata:
        return
    rails = metadata.get("guardrails")
    if rails is not None:
        if not isinstance(rails, list) or not all(isinstance(r, str) for r in rails):
            raise APIError(
                400, "Invalid value for 'metadata.guardrails': expected a list of guardrail names.",
                param="metadata.guardrails",
            )  # fmt: skip
        unknown = sorted(set(rails) - set(state.router.catalog.guardrails))
        if unknown:
            raise APIError(
                400,
                f"Unknown guardrail(s): {', '.join(unknown)}; the routing config defines: "
                f"{', '.join(sorted(state.router.catalog.guardrails)) or 'none'}.",
                param="metadata.guardrails",
                code="unknown_guardrail",
            )
    scope = metadata.get("cache_scope")
    if scope is not None and (not isinstance(scope, str) or not 0 < len(scope) <= 200):
        raise APIError(
            400, "Invalid value for 'metadata.cache_scope': expected a string of 1-200 characters.",
            param="metadata.cache_scope",
        )  # fmt: skip


class CachePurge(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key_id: str | None = Field(None, description="Purge what this key's requests cached.")
    cache_scope: str | None = Field(None, min_length=1, max_length=200)

    @model_validator(mode="after")
    def _one(self) -> CachePurge:
        if (self.key_id is None) == (self.cache_scope is None):
            raise ValueError("give key_id or cache_scope, not both")
        return self


@router.post("/cache/purge", summary="Delete one tenant's cached answers (exact and semantic).")
async def purge_cache(body: CachePurge, state: State, _: Admin) -> dict[str, Any]:
    scope = f"scope:{body.cache_scope}" if body.cache_scope else f"key:{_key_id(body.key_id or '')}"
    try:
        removed = await state.cache.purge_scope(scope)
        removed += await _purge_semantic(state, scope)
    except Exception as exc:
        raise APIError(
            503, f"The cache store did not answer ({type(exc).__name__}); nothing is known to be "
            f"purged: retry.", code="cache_unavailable", headers={"Retry-After": "2"},
        ) from exc  # fmt: skip
    return {"scope": scope, "removed": removed}


async def _purge_semantic(state: Any, scope: str) -> int:
    # In Redis the semantic rows live under the scope's prefix and went with purge_scope.
    purge = getattr(state.semantic, "purge_scope", None)
    return int(await purge(scope)) if purge is not None else 0


@router.get("/keys", summary="List keys (never the keys themselves).")
async def list_keys(
    state: State, _: Admin, include_revoked: Annotated[bool, Query()] = False
) -> dict[str, Any]:
    rows = await asyncio.to_thread(state.store.all, include_revoked)
    return {"object": "list", "data": [key_view(r) for r in rows]}


def _key_id(key_id: str) -> str:
    """Key ids are UUIDs: anything else is no key, and never reaches the database (which may
    refuse it: a NUL was a 500)."""
    try:
        uuid.UUID(key_id)
    except ValueError:
        raise APIError(404, f"No key with id {key_id!r}.", code="key_not_found") from None
    return key_id


@router.get("/keys/{key_id}", summary="One key, with its spend per alias and deployment.")
async def get_key(key_id: str, state: State, _: Admin) -> dict[str, Any]:
    row = await asyncio.to_thread(state.store.get, _key_id(key_id))
    if row is None:
        raise APIError(404, f"No key with id '{key_id}'.", code="key_not_found")
    spend = await asyncio.to_thread(state.store.spend, key_id)
    return {**key_view(row), "spend": spend}


@router.delete("/keys/{key_id}", summary="Revoke a key; every replica refuses it within the TTL.")
async def revoke_key(key_id: str, state: State, _: Admin) -> dict[str, Any]:
    row, key_hash = await asyncio.to_thread(state.store.revoke, _key_id(key_id))
    if row is None or key_hash is None:
        raise APIError(404, f"No key with id '{key_id}'.", code="key_not_found")
    state.keys.forget(key_hash)
    return key_view(row)


@router.get("/spend", summary="Spend per key, alias and deployment (written in batches).")
async def spend(state: State, _: Admin) -> dict[str, Any]:
    await state.spend.flush()
    return {"object": "list", "data": await asyncio.to_thread(state.store.spend, None)}


@router.get("/routing", summary="Aliases, deployments, breaker states and the config status.")
async def routing(state: State, _: Admin) -> dict[str, Any]:
    r = state.router
    breakers = r.breaker_states()
    return {
        "config_path": str(state.settings.config_path),
        "config_error": state.config_error,
        "aliases": {
            name: {
                "strategy": spec.strategy,
                "deployments": [t.model_dump() for t in spec.deployments],
                "fallbacks": spec.fallbacks,
            }
            for name, spec in r.catalog.aliases.items()
        },
        "deployments": {
            name: {
                "api_base": st.deployment.api_base,
                "model": st.deployment.model,
                "circuit": STATE_NAMES[breakers[name]],
                "latency_ewma_ms": None if st.ewma_s is None else round(st.ewma_s * 1000, 3),
            }
            for name, st in r.states.items()
        },
    }
