"""Who is calling: the master key, or a virtual key looked up through the cache.

Keys are compared as SHA-256 digests; the plain key is never stored or logged.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Annotated

from fastapi import Depends, Request

from services.common.errors import APIError
from services.llm_proxy.keys import KeyRecord
from services.llm_proxy.state import ProxyState

MASTER = KeyRecord(id="master", name="master", aliases=None, admin=True)
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="llmops"'}


def _unauthorized(message: str, code: str) -> APIError:
    return APIError(401, message, code=code, headers=_CHALLENGE)


def bearer(request: Request) -> str:
    header = request.headers.get("authorization")
    if not header:
        raise _unauthorized(
            "Missing API key: send it as 'Authorization: Bearer <key>'.", "missing_api_key"
        )
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise _unauthorized(
            "Malformed Authorization header: expected 'Bearer <key>'.",
            "invalid_authorization_header",
        )
    return token


async def caller(request: Request) -> KeyRecord:
    state: ProxyState = request.app.state.proxy
    if state.settings.auth_disabled:
        return MASTER
    digest = hashlib.sha256(bearer(request).encode("utf-8")).digest()
    if state.master_hash is not None and hmac.compare_digest(digest, state.master_hash):
        return MASTER
    try:
        record = await state.keys.get(digest.hex())
    except Exception as exc:
        raise APIError(
            503,
            "Cannot check the API key: the key store is unreachable; retry shortly.",
            code="key_store_unavailable",
            headers={"Retry-After": "2"},
        ) from exc
    if record is None:
        raise _unauthorized("Incorrect API key provided.", "invalid_api_key")
    if record.revoked:
        raise _unauthorized("This API key has been revoked.", "revoked_api_key")
    if record.expired(time.time()):
        raise _unauthorized("This API key has expired.", "expired_api_key")
    return record


async def admin(request: Request) -> KeyRecord:
    record = await caller(request)
    if not record.admin:
        raise APIError(403, "This endpoint needs the master key.", code="admin_only")
    return record


Caller = Annotated[KeyRecord, Depends(caller)]
Admin = Annotated[KeyRecord, Depends(admin)]
