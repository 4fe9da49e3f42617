"""One error shape for every service, and every exception handler registered in one place.

Clients of an OpenAI-compatible API already parse ``{"error": {"message", "type", "param",
"code"}}``; using it everywhere (404s and validation errors included) means one parser for all
five services. No HTML, no stack traces: a 500 names the request id to look up in the logs.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from services.common.context import current_request_id
from services.common.routing import allowed_methods

log = logging.getLogger("llmops.errors")


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(BaseModel):
    """What every error answer is: ``{"error": {"message", "type", "param", "code"}}``."""

    error: ErrorDetail


def _documented(description: str) -> dict[str, Any]:
    return {"model": ErrorBody, "description": description}


# Documented on every operation (FastAPI(responses=...)), so the OpenAPI schema says what a
# client can meet, and fuzzers hold the services to it.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: _documented("Invalid request: the message names the field and what to change."),
    401: _documented("No API key, a malformed Authorization header, or an unknown key."),
    403: _documented("The key lacks the scope this operation needs."),
    404: _documented("No such resource (or route)."),
    405: _documented("Method not allowed here; the Allow header lists the ones that are."),
    409: _documented("Conflict: it exists already, or differs from what was recorded."),
    413: _documented("The request body is over the service's limit."),
    503: _documented("A dependency is unavailable; retry after the Retry-After header."),
}

_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    502: "upstream_error",
    503: "service_unavailable",
    504: "timeout_error",
}


class APIError(Exception):
    """An error meant for the client: raise it anywhere in a route or dependency."""

    def __init__(
        self,
        status_code: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        type: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.code = code
        self.param = param
        self.type = type or error_type(status_code)
        self.headers = dict(headers or {})


class PeerResponse(Protocol):
    """What :func:`peer_error` reads of an answer: httpx's or services/common/http.py's."""

    status_code: int

    @property
    def headers(self) -> Mapping[str, str]: ...

    @property
    def text(self) -> str: ...

    def json(self) -> Any: ...


def peer_error(r: PeerResponse) -> dict[str, Any]:
    """The error object of another service's answer, whatever its body (HTML from a proxy, plain
    text, truncated JSON): the message falls back to the start of the text."""
    try:
        err = r.json().get("error")
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return err
    except (ValueError, AttributeError):
        pass
    text = r.text.strip()[:300]
    return {"message": text or f"HTTP {r.status_code} with an empty body"}


def error_type(status_code: int) -> str:
    if status_code in _TYPE_BY_STATUS:
        return _TYPE_BY_STATUS[status_code]
    return "server_error" if status_code >= 500 else "invalid_request_error"


def error_body(
    message: str,
    *,
    type: str,
    code: str | None = None,
    param: str | None = None,
) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": type, "param": param, "code": code}})


def error_response(
    status_code: int,
    message: str,
    *,
    code: str | None = None,
    param: str | None = None,
    type: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response:
    body = error_body(message, type=type or error_type(status_code), code=code, param=param)
    return Response(body, status_code=status_code, media_type="application/json", headers=headers)


def _loc_to_param(loc: Sequence[Any]) -> str | None:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    if not parts:
        return None
    out = parts[0]
    for part in parts[1:]:
        out += f"[{part}]" if part.isdigit() else f".{part}"
    return out


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    if not errors:
        return "Invalid request.", None
    first = errors[0]
    if first.get("type") == "json_invalid":
        return (
            "The request body is not valid JSON: "
            f"{first.get('ctx', {}).get('error', 'parse error')}.",
            None,
        )
    loc = tuple(first.get("loc", ()))
    if loc == ("body",) and first.get("type") in ("model_attributes_type", "dict_type"):
        return (
            "The request body must be a JSON object; send it with "
            "'Content-Type: application/json'.",
            None,
        )
    param = _loc_to_param(loc)
    msg = str(first.get("msg", "invalid value"))
    if first.get("type") == "missing" and param:
        text = f"Missing required parameter: '{param}'."
    elif param:
        text = f"Invalid value for '{param}': {msg}."
    else:
        text = f"Invalid request body: {msg}."
    if len(errors) > 1:
        text += f" ({len(errors) - 1} more problem(s) in the request.)"
    return text, param


def check_json_content_type(content_type: str | None) -> None:
    """For routes that parse their own body (the fast routes): FastAPI's rule for the others,
    so a JSON body sent as text/plain, a form or multipart is a 400 on every route alike. No
    Content-Type at all is read as JSON, as those routes always did."""
    if content_type is None:
        return
    media = content_type.partition(";")[0].strip().lower()
    if media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    ):
        return
    raise APIError(
        400,
        f"The request body must be JSON, sent with 'Content-Type: application/json' (not "
        f"{media or 'an empty type'!r}).",
        code="invalid_content_type",
    )


def validation_error(exc: ValidationError) -> APIError:
    """A pydantic error on a body parsed by hand (the fast routes), as the 400 that FastAPI's
    own validation would give."""
    errors = [{**e, "loc": ("body", *e.get("loc", ()))} for e in exc.errors(include_url=False)]
    message, param = _validation_message(RequestValidationError(errors))
    return APIError(400, message, param=param, code="invalid_value")


async def _api_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, APIError)
    return error_response(
        exc.status_code,
        exc.message,
        code=exc.code,
        param=exc.param,
        type=exc.type,
        headers=exc.headers,
    )


async def _validation_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    message, param = _validation_message(exc)
    return error_response(400, message, param=param, code="invalid_value")


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    status = exc.status_code
    headers = dict(exc.headers or {})
    if status == 404 and exc.detail == "Not Found":
        message = f"No route {request.method} {request.url.path}; see /docs for the API."
    elif status == 405:
        # Starlette names only the first route that matched the path: list every method.
        methods = allowed_methods(request.app, request.scope)
        if methods:
            headers = {k: v for k, v in headers.items() if k.lower() != "allow"}
            headers["Allow"] = ", ".join(methods)
        allowed = headers.get("allow") or headers.get("Allow") or ""
        message = f"Method {request.method} is not allowed on {request.url.path}"
        message += f"; use {allowed}." if allowed else "."
    else:
        message = str(exc.detail)
    return error_response(status, message, code=_code_for(status), headers=headers)


def _code_for(status: int) -> str | None:
    return {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}.get(status)


def internal_error(request_id: str | None) -> Response:
    """The 500 every service answers: no details, only the id to find them in the logs."""
    return error_response(
        500,
        f"Internal server error. Quote request id {request_id} when reporting it.",
        code="internal_error",
    )


async def _unhandled(_: Request, exc: Exception) -> Response:
    log.exception("unhandled error", exc_info=exc)
    return internal_error(current_request_id())


async def render_error(request: Request, exc: Exception) -> Response:
    """The response the installed handlers would give, for code that runs outside FastAPI's
    exception middleware (the fast routes); anything else is re-raised."""
    if isinstance(exc, APIError):
        return await _api_error(request, exc)
    if isinstance(exc, StarletteHTTPException):
        return await _http_error(request, exc)
    raise exc


def install_exception_handlers(app: FastAPI) -> None:
    """Register every handler; services raise :class:`APIError` and never build errors by hand."""
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unhandled)
