"""API-key auth shared by every service: keys are configured and compared as SHA-256 digests,
each with the scopes it may use (``<digest>`` alone: every scope; ``<digest>:ask+search``: only
those). A route declares its scope with ``needs_scope`` (scopes.py); a key outside it gets 403."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from typing import Any

from starlette.routing import Match
from starlette.types import ASGIApp, Receive, Scope, Send

from services.common.errors import error_response
from services.common.middleware import OPEN_PATHS
from services.common.routing import api_routes
from services.common.scopes import SCOPE_KEY, SCOPES, parse_key_entry


def hash_key(key: str) -> str:
    """SHA-256 hex digest of an API key: the only form in which keys are configured or stored."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


class AuthMiddleware:
    """``Authorization: Bearer <key>`` on every path but health, readiness and metrics.

    Unknown paths need a key too, so an anonymous caller cannot map the API. The key's SHA-256
    is compared to every configured digest with ``hmac.compare_digest``.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        key_hashes: Iterable[str],
        open_paths: frozenset[str] = OPEN_PATHS,
        routes: Any = None,
    ) -> None:
        self.app = app
        self.keys = [
            (bytes.fromhex(digest), scopes)
            for digest, scopes in (parse_key_entry(h) for h in key_hashes)
        ]
        self.open_paths = open_paths
        # The application whose routes declare their scopes (read at request time: routers are
        # included after the middleware is added).
        self.routes_of = routes
        self._routes: list[Any] | None = None

    def _match(self, key: str) -> tuple[bool, frozenset[str] | None]:
        """(valid, its scopes); every digest is compared, in constant time each."""
        digest = hashlib.sha256(key.encode("utf-8")).digest()
        found: tuple[bool, frozenset[str] | None] = (False, None)
        for candidate, scopes in self.keys:
            if hmac.compare_digest(digest, candidate):
                found = (True, scopes)
        return found

    def _required(self, scope: Scope) -> str | None:
        if self._routes is None:
            self._routes = list(api_routes(self.routes_of))
        for route in self._routes:
            if route.matches(scope)[0] == Match.FULL:
                extra = getattr(route, "openapi_extra", None) or {}
                required: str | None = extra.get(SCOPE_KEY)
                return required
        return None

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
        else:
            valid, scopes = self._match(token.strip())
            if not valid:
                message, code = "Incorrect API key provided.", "invalid_api_key"
            else:
                required = None if scopes is None else self._required(scope)
                if scopes is None or required is None or required in scopes:
                    await self.app(scope, receive, send)
                    return
                held = ", ".join(sorted(scopes)) or "none"
                denied = error_response(
                    403,
                    f"This API key may not do this: it needs the scope '{required}' "
                    f"({SCOPES[required]}) and has {held}.",
                    code="insufficient_scope",
                    type="permission_error",
                )
                await denied(scope, receive, send)
                return
        response = error_response(
            401, message, code=code, headers={"WWW-Authenticate": 'Bearer realm="llmops"'}
        )
        await response(scope, receive, send)
