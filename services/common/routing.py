"""An application's routes as requests meet them: FastAPI keeps each included router as one
entry, so auth (a route's scope) and the 405 handler (every method a path allows) walk them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from starlette.routing import Match
from starlette.types import Scope


def api_routes(app: Any) -> Iterator[Any]:
    """Every route of an application, its included routers' routes flattened."""
    for route in getattr(app, "routes", ()):
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from api_routes(inner)
        else:
            yield route


def allowed_methods(app: Any, scope: Scope) -> list[str]:
    """The methods some route serves at the scope's path (for a 405's ``Allow``)."""
    methods: set[str] = set()
    for route in api_routes(app):
        if route.matches(scope)[0] != Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    return sorted(methods)
