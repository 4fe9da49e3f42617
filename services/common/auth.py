"""API-key auth shared by every service: keys are configured and compared as SHA-256 digests."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

from starlette.types import ASGIApp, Receive, Scope, Send

from services.common.errors import error_response
from services.common.middleware import OPEN_PATHS


def hash_key(key: str) -> str:
    """SHA-256 hex digest of an API key: the only form in which keys are configured or stored."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


class AuthMiddleware:
    """``Authorization: Bearer <key>`` on every path but health, readiness and metrics.

    Unknown paths need a key too, so an anonymous caller cannot map the API. The key's SHA-256
    is compared to every configured digest with ``hmac.compare_digest``.
    """

    def __init__(
        self, app: ASGIApp, *, key_hashes: Iterable[str], open_paths: frozenset[str] = OPEN_PATHS
    ) -> None:
        self.app = app
        self.digests = [bytes.fromhex(h) for h in key_hashes]
        self.open_paths = open_paths

    def _valid(self, key: str) -> bool:
        digest = hashlib.sha256(key.encode("utf-8")).digest()
        ok = False
        for candidate in self.digests:
            ok |= hmac.compare_digest(digest, candidate)
        return ok

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.open_paths:
            await self.app(scope, receive, send)
            return
        header = ""
        for key, value in scope["headers"]:
            if key == b"authorization":
                header = value.decode("latin-1")
                break
        scheme, _, token = header.partition(" ")
        if not header:
            message, code = (
                "Missing API key: send it as 'Authorization: Bearer <key>'.",
                "missing_api_key",
            )
        elif scheme.lower() != "bearer" or not token.strip():
            message, code = (
                "Malformed Authorization header: expected 'Bearer <key>'.",
                "invalid_authorization_header",
            )
        elif not self._valid(token.strip()):
            message, code = "Incorrect API key provided.", "invalid_api_key"
        else:
            await self.app(scope, receive, send)
            return
        response = error_response(
            401, message, code=code, headers={"WWW-Authenticate": 'Bearer realm="llmops"'}
        )
        await response(scope, receive, send)
