"""HTTP routes. The two hot writes (interactions, feedback) are also served as fast routes
(see common/middleware.py); the FastAPI routes below document them and share their code."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

import orjson
from fastapi import APIRouter, Body, Depends, Query, Request
from pydantic import AfterValidator, BaseModel, BeforeValidator, TypeAdapter, ValidationError
from sqlalchemy import exc as sa_exc
from starlette.responses import Response, StreamingResponse

from services.common.errors import (
    APIError,
    check_json_content_type,
    error_response,
    validation_error,
)
from services.common.scopes import needs_scope
from services.common.validation import iso_8601_only
from services.feedback.committer import is_outage
from services.feedback.queries import (
    FORMATS,
    GROUPS,
    Filters,
    export_count,
    export_rows,
    get_interaction,
    list_feedback,
    list_interactions,
    list_preferences,
    stats,
)
from services.feedback.schemas import (
    KINDS,
    MAX_BATCH,
    FeedbackIn,
    InteractionIn,
    PreferenceIn,
    utc_representable,
)
from services.feedback.state import FeedbackState
from services.feedback.store import Outcome

router = APIRouter(prefix="/v1")
JSON = "application/json"
T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)
_FEEDBACK_LIST = TypeAdapter(list[FeedbackIn])


def _state(request: Request) -> FeedbackState:
    state: FeedbackState = request.app.state.feedback
    return state


def _respond(outcome: Outcome) -> Response:
    if outcome.status >= 400:
        return error_response(
            outcome.status, outcome.message or "Refused.", code=outcome.code, param=outcome.param
        )
    headers = {"Idempotent-Replayed": "true"} if outcome.status == 200 else None
    return Response(
        orjson.dumps(outcome.body), status_code=outcome.status, media_type=JSON, headers=headers
    )


def _load(request: Request, body: bytes) -> Any:
    check_json_content_type(request.headers.get("content-type"))
    if not body:
        raise APIError(400, "The request body is empty; send a JSON object.", code="invalid_json")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise APIError(
            400, f"The request body is not valid JSON: {exc}.", code="invalid_json"
        ) from None


def _model(cls: type[M], data: Any) -> M:
    if not isinstance(data, dict):
        raise APIError(400, "The request body must be a JSON object.", code="invalid_json")
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc) from None


# -- writes ------------------------------------------------------------------------------------


async def record_interaction(request: Request) -> Response:
    state = _state(request)
    item = _model(InteractionIn, _load(request, await request.body()))
    row = item.row(datetime.now(UTC), state.settings.default_environment)
    return _respond(await state.committer.submit({"op": "interaction", "rows": [row]}))


async def record_feedback(request: Request) -> Response:
    state = _state(request)
    data = _load(request, await request.body())
    now = datetime.now(UTC)
    if isinstance(data, list):
        if not data:
            raise APIError(
                400, "The batch is empty; send at least one feedback item.", code="invalid_value"
            )
        if len(data) > MAX_BATCH:
            raise APIError(
                413,
                f"A batch holds at most {MAX_BATCH} items; this one has {len(data)}. Split it.",
                code="batch_too_large",
            )
        try:
            items = _FEEDBACK_LIST.validate_python(data)
        except ValidationError as exc:
            raise validation_error(exc) from None
        rows = [it.row(now, f"[{n}].") for n, it in enumerate(items)]
        op = {"op": "feedback", "rows": rows, "batch": True}
    else:
        op = {"op": "feedback", "rows": [_model(FeedbackIn, data).row(now)]}
    outcome = await state.committer.submit(op)
    if outcome.status < 300:
        state.wake_forwarder()
    return _respond(outcome)


_WRITE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "A replay: the original result (header Idempotent-Replayed: true)."},
    201: {"description": "Committed to the database."},
    202: {
        "description": "The database is unreachable: kept in the local fsync'd spool, "
        "written once it is back."
    },
}


@router.post(
    "/interactions",
    openapi_extra=needs_scope("feedback:write"),
    status_code=201,
    responses=_WRITE_RESPONSES,
    summary="Record an interaction (idempotent on its id).",
)
async def post_interaction(request: Request, body: InteractionIn) -> Response:
    return await record_interaction(request)


@router.post(
    "/feedback",
    openapi_extra=needs_scope("feedback:write"),
    status_code=201,
    responses=_WRITE_RESPONSES,
    summary="Record feedback: one object, or an array of up to 1,000 (all or none).",
)
async def post_feedback(
    request: Request, body: Annotated[FeedbackIn | list[FeedbackIn], Body()]
) -> Response:
    return await record_feedback(request)


@router.post(
    "/preferences",
    openapi_extra=needs_scope("feedback:write"),
    status_code=201,
    responses=_WRITE_RESPONSES,
    summary="Record a preference: two interactions on one prompt, or a correction.",
)
async def post_preference(request: Request) -> Response:
    state = _state(request)
    item = _model(PreferenceIn, _load(request, await request.body()))
    op = {"op": "preference", "rows": [item.row(datetime.now(UTC))]}
    return _respond(await state.committer.submit(op))


# -- reads -------------------------------------------------------------------------------------


async def _read(fn: Callable[..., T], *args: Any) -> T:
    try:
        return await asyncio.to_thread(fn, *args)
    except sa_exc.DataError as exc:  # a filter or an id the database cannot take (a NUL)
        raise APIError(
            400,
            f"The database cannot use a value of this request: {str(exc.orig).splitlines()[0]}; "
            "check the filters and the id sent.",
            code="invalid_value",
        ) from None
    except sa_exc.SQLAlchemyError as exc:
        if is_outage(exc):
            raise APIError(
                503,
                "The feedback database is unreachable; writes are kept in the spool meanwhile, "
                "reads work again once it is back.",
                code="database_unavailable",
                headers={"Retry-After": "5"},
            ) from None
        raise


When = Annotated[datetime, BeforeValidator(iso_8601_only), AfterValidator(utc_representable)]


def scope(
    since: Annotated[When | None, Query(description="From (ISO 8601), inclusive.")] = None,
    until: Annotated[When | None, Query(description="Up to, exclusive.")] = None,
    prompt_name: str | None = None,
    prompt_version: str | None = None,
    model: Annotated[str | None, Query(description="The model alias.")] = None,
    environment: str | None = None,
) -> Filters:
    """The filters every read takes (a FastAPI dependency); routes add their own."""
    return Filters(
        since=since,
        until=until,
        prompt_name=prompt_name,
        prompt_version=prompt_version,
        model=model,
        environment=environment,
    )


Scope = Annotated[Filters, Depends(scope)]
Rating = Annotated[int | None, Query(ge=1, le=5, description="Has a rating of this value.")]
Label = Annotated[str | None, Query(description="Has this label.")]
Limit = Annotated[int, Query(ge=1, le=1000, description="Page size.")]
Cursor = Annotated[str | None, Query(description="The previous page's next_cursor.")]


def _dump(data: Any) -> Response:
    return Response(orjson.dumps(data), media_type=JSON)


@router.get(
    "/interactions",
    openapi_extra=needs_scope("feedback:read"),
    summary="List interactions, newest first.",
)
async def get_interactions(
    request: Request,
    f: Scope,
    session_id: str | None = None,
    user_id: str | None = None,
    rating: Rating = None,
    label: Label = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Response:
    f.session_id, f.user_id, f.rating, f.label = session_id, user_id, rating, label
    return _dump(await _read(list_interactions, _state(request).engine, f, limit, cursor))


@router.get(
    "/interactions/{interaction_id}",
    openapi_extra=needs_scope("feedback:read"),
    summary="One interaction with its feedback.",
)
async def get_one_interaction(request: Request, interaction_id: str) -> Response:
    found = await _read(get_interaction, _state(request).engine, interaction_id)
    if found is None:
        raise APIError(404, f"No interaction {interaction_id!r}.", code="interaction_not_found")
    return _dump(found)


@router.get(
    "/feedback", openapi_extra=needs_scope("feedback:read"), summary="List feedback, newest first."
)
async def get_feedback(
    request: Request,
    f: Scope,
    user_id: str | None = None,
    rating: Rating = None,
    label: Label = None,
    kind: str | None = None,
    interaction_id: str | None = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Response:
    if kind is not None and kind not in KINDS:
        raise APIError(
            400,
            f"Unknown feedback kind {kind!r}: use one of {', '.join(KINDS)}.",
            param="kind",
            code="unknown_kind",
        )
    f.user_id, f.rating, f.label = user_id, rating, label
    f.kind, f.interaction_id = kind, interaction_id
    return _dump(await _read(list_feedback, _state(request).engine, f, limit, cursor))


@router.get(
    "/preferences",
    openapi_extra=needs_scope("feedback:read"),
    summary="List preference pairs, newest first.",
)
async def get_preferences(
    request: Request, f: Scope, limit: Limit = 50, cursor: Cursor = None
) -> Response:
    return _dump(await _read(list_preferences, _state(request).engine, f, limit, cursor))


@router.get(
    "/feedback/stats",
    openapi_extra=needs_scope("feedback:read"),
    summary="Counts and positive rate (95% Wilson CI) per group.",
)
async def get_stats(
    request: Request,
    f: Scope,
    group_by: Annotated[
        str, Query(description="Comma-separated: prompt_name, prompt_version, model, day.")
    ] = "prompt_name,prompt_version,model,day",
) -> Response:
    groups = [g.strip() for g in group_by.split(",") if g.strip()]
    bad = [g for g in groups if g not in GROUPS]
    if bad or len(set(groups)) != len(groups):
        raise APIError(
            400,
            f"group_by takes distinct names among {', '.join(GROUPS)}; got {group_by!r}.",
            param="group_by",
            code="invalid_value",
        )
    return _dump(await _read(stats, _state(request).engine, f, groups))


@router.get(
    "/exports/{fmt}",
    openapi_extra=needs_scope("feedback:read"),
    summary="Stream a dataset as JSONL (TRL's conversational columns).",
    response_class=StreamingResponse,
)
async def export(
    request: Request,
    fmt: str,
    f: Scope,
    rating: Rating = None,
    label: Label = None,
    redact_pii: Annotated[
        bool | None,
        Query(
            description="Replace emails, phone numbers, cards, IBANs, IP addresses and keys in "
            "the exported text with placeholders ([EMAIL]...); default: "
            "FEEDBACK_EXPORT_REDACT_PII."
        ),
    ] = None,
) -> Response:
    if fmt not in FORMATS:
        raise APIError(
            404,
            f"Unknown export format {fmt!r}: use one of {', '.join(FORMATS)}.",
            param="format",
            code="unknown_format",
        )
    state = _state(request)
    engine = state.engine
    f.rating, f.label = rating, label
    redact = state.settings.export_redact_pii if redact_pii is None else redact_pii
    total = await _read(export_count, engine, fmt, f)  # also: a 503 now, not mid-stream

    async def stream() -> AsyncIterator[bytes]:
        chunks = export_rows(engine, fmt, f, redact_pii=redact)
        while True:
            lines = await asyncio.to_thread(next, chunks, None)
            if lines is None:
                return
            if lines:
                yield b"\n".join(lines) + b"\n"

    return StreamingResponse(
        stream(),
        media_type="application/x-ndjson",
        headers={
            "X-Candidate-Count": str(total),
            "Content-Disposition": f'attachment; filename="{fmt}-{int(time.time())}.jsonl"',
            "X-PII-Redacted": str(redact).lower(),
        },
    )
