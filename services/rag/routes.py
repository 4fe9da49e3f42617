"""``POST /v1/ask``: the API client apps call."""

from __future__ import annotations

from typing import Any, Literal

import orjson
from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.responses import Response, StreamingResponse

from services.common.errors import APIError, ErrorBody
from services.common.openapi import event_stream
from services.common.routing import JsonRoute
from services.common.scopes import needs_scope
from services.rag import pipeline
from services.rag.state import RagState

router = APIRouter(prefix="/v1", route_class=JsonRoute)


class AskIn(BaseModel):
    # Strict: JSON types as documented, so "stream": 0 or "top_k": true (read as 1) and "2"
    # are refused, not coerced.
    model_config = ConfigDict(extra="forbid", strict=True)

    question: str = Field(min_length=1, max_length=4000)
    # Retrieval's own rule for collection names: the name goes into retrieval's URL, so a
    # '/', '..', '?' or a control character must not reach it (another route, a 5xx).
    collection: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_\-]{0,63}$",
        description="Default: RAG_DEFAULT_COLLECTION.",
    )
    filter: dict[str, Any] | None = Field(None, description="Metadata filter, as retrieval's.")
    top_k: int | None = Field(None, ge=1, description="Chunks to retrieve; default RAG_TOP_K.")
    stream: bool = False
    session_id: str | None = Field(None, max_length=200)
    user_id: str | None = Field(None, max_length=200)
    prompt_version: str | None = Field(
        None, max_length=20, pattern=r"^\d+$", description="Pin a prompt version (eval, A/B)."
    )

    @field_validator("question", "session_id", "user_id")
    @classmethod
    def _no_nul(cls, value: str | None) -> str | None:
        """The interaction is recorded in the feedback service, whose database cannot store a
        NUL: refused here, not answered and then dropped from the record."""
        if value is not None and "\x00" in value:
            raise ValueError("must not contain NUL characters (\\u0000)")
        return value


class Context(BaseModel):
    marker: str = Field(description="[n], as the prompt numbered it.")
    chunk_id: str | None
    document_id: str | None
    heading_path: list[str]
    score: float | None
    flags: list[str] = Field(
        default_factory=list,
        description="What the rag service noticed in this chunk's text: "
        "prompt_injection:<heuristic> when it reads like an attempt to instruct the model "
        "(the chunk was still shown, fenced as data). Empty: nothing.",
    )


class Citation(Context):
    chunk_index: int | None


class PromptUsed(BaseModel):
    name: str
    version: str | None = Field(description="null: the bundled prompt.")
    source: Literal["registry", "last-known-good", "bundled"]


class AskOut(BaseModel):
    """The answer (built as a dict in pipeline.finish; this model documents it)."""

    object: Literal["rag.ask"]
    interaction_id: str
    trace_id: str
    answer: str
    citations: list[Citation]
    invalid_citations: list[int] = Field(description="[n] markers no retrieved chunk has.")
    contexts: list[Context]
    prompt: PromptUsed
    model: str
    deployment: str | None
    usage: dict[str, Any] | None
    degraded: list[str]
    latency_ms: float
    timings_ms: dict[str, float] | None = Field(
        None,
        description="Streams only, in the final rag.ask event: the stage times in ms (retrieval, "
        "prompt, llm, total), which a non-streamed answer gives in its Server-Timing header.",
    )


ASK_CHUNK = {
    "type": "object",
    "required": ["object", "interaction_id", "delta"],
    "properties": {
        "object": {"const": "rag.ask.chunk"},
        "interaction_id": {"type": "string"},
        "delta": {"type": "string"},
    },
}


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorBody, "description": description}


SERVER_TIMING = {
    "description": "W3C Server Timing: the ask's stage times in ms, e.g. 'retrieval;dur=12.3, "
    "prompt;dur=0.0, llm;dur=55.1, total;dur=70.2'. A stream's names retrieval and prompt only "
    "(sent before the model answers); its final rag.ask event has them all in timings_ms.",
    "schema": {"type": "string"},
}

ASK_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "model": AskOut,
        "description": "The answer.",
        "headers": {"Server-Timing": SERVER_TIMING},
        "content": event_stream(
            {"anyOf": [ASK_CHUNK, {"$ref": "#/components/schemas/AskOut"}]},
            "With stream: true: rag.ask.chunk events (text deltas), then the whole rag.ask "
            "answer, then [DONE]; a failure after the first byte is an error event.",
        ),
    },
    429: _error("The model is rate limited; retry after the Retry-After header."),
    502: _error("The LLM proxy or retrieval failed, or refused this service's key."),
    504: _error("The model did not answer in time."),
}


def server_timing(stage_ms: dict[str, float]) -> dict[str, str]:
    """The ``Server-Timing`` header (W3C Server Timing) for the stage times known so far
    (:meth:`pipeline.Prepared.stage_ms`: ``llmops_rag_stage_seconds``'s own figures and stage
    names, ms to one decimal), e.g. ``retrieval;dur=12.3, prompt;dur=0.0, llm;dur=55.1,
    total;dur=70.2``; no header when none is known.

    ``total`` is the pipeline's, as the metric and ``latency_ms`` have it: from the validated
    request to the answer built, so neither the outbox's fsync that follows nor the HTTP layer
    around the handler is in it. A stream's headers leave before the model is asked:
    they name retrieval and prompt only, and the final ``rag.ask`` event gives them all
    (``timings_ms``; see :func:`pipeline.answer_stream`). The app sets no CORS middleware, so
    there is no ``expose_headers`` list to add it to."""
    if not stage_ms:
        return {}
    return {"Server-Timing": ", ".join(f"{name};dur={ms:.1f}" for name, ms in stage_ms.items())}


@router.post(
    "/ask",
    openapi_extra=needs_scope("ask"),
    summary="Answer a question from a collection, with citations.",
    responses=ASK_RESPONSES,
)
async def ask(body: AskIn, request: Request) -> Response:
    state: RagState = request.app.state.rag
    settings = state.settings
    top_k = body.top_k or settings.top_k
    if top_k > settings.max_top_k:
        raise APIError(
            400,
            f"'top_k' is {top_k}; at most {settings.max_top_k}.",
            param="top_k",
            code="invalid_value",
        )
    if not body.question.strip():
        raise APIError(400, "'question' is blank.", param="question", code="invalid_value")
    q = pipeline.Ask(
        question=body.question.strip(),
        collection=body.collection or settings.default_collection,
        filter=body.filter,
        top_k=top_k,
        session_id=body.session_id,
        user_id=body.user_id,
        prompt_version=body.prompt_version,
        stream=body.stream,
    )
    try:
        prepared = await pipeline.prepare(state, q)
        headers = {
            "x-llmops-interaction-id": prepared.interaction_id,
            "x-llmops-trace-id": prepared.trace_id,
        }
        if body.stream:  # counted when the stream ends (ok, or the error it carried)
            return StreamingResponse(
                pipeline.answer_stream(state, prepared),
                media_type="text/event-stream",
                headers={
                    **headers,
                    **server_timing(prepared.stage_ms()),  # retrieval and prompt, so far
                    "Cache-Control": "no-cache",
                    "X-Accel-Buffering": "no",
                },
            )
        result = await pipeline.answer(state, prepared)
    except APIError as exc:
        state.metrics.asks.labels(exc.code or "error", str(body.stream).lower()).inc()
        raise
    state.metrics.asks.labels("ok", "false").inc()
    headers |= server_timing(prepared.stage_ms())
    return Response(orjson.dumps(result), media_type="application/json", headers=headers)
