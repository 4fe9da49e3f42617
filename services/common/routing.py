"""An application's routes as requests meet them: FastAPI keeps each included router as one
entry, so auth (a route's scope) and the 405 handler (every method a path allows) walk them.
Also the route class every service's router uses, so JSON bodies are parsed one way."""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import orjson
from fastapi import Request, Response
from fastapi.routing import APIRoute
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


class OrjsonRequest(Request):
    """A request whose JSON body is parsed by orjson, as the fast routes' bodies are.

    The standard library's parser takes lone surrogates ("\\ud800") and NaN/Infinity, which
    then fail deep inside a tokenizer, an encoder or the database as a 500, and it raises
    RecursionError on deep nesting. orjson refuses all of them (and invalid UTF-8, and nesting
    past 1024 levels) with a JSONDecodeError, which FastAPI answers as an invalid-JSON 400.
    """

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = orjson.loads(await self.body())
        return self._json


class JsonRoute(APIRoute):
    """``APIRouter(route_class=JsonRoute)``: its routes read JSON bodies with orjson."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def run(request: Request) -> Response:
            return await handler(OrjsonRequest(request.scope, request.receive))

        return run
