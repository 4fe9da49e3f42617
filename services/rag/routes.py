"""``POST /v1/ask``: the API client apps call."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response, StreamingResponse

from services.common.errors import APIError
from services.common.scopes import needs_scope
from services.rag import pipeline
from services.rag.state import RagState

router = APIRouter(prefix="/v1")


class AskIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    question: str = Field(min_length=1, max_length=4000)
    collection: str | None = Field(
        None, min_length=1, max_length=200, description="Default: RAG_DEFAULT_COLLECTION."
    )
    filter: dict[str, Any] | None = Field(None, description="Metadata filter, as retrieval's.")
    top_k: int | None = Field(None, ge=1, description="Chunks to retrieve; default RAG_TOP_K.")
    stream: bool = False
    session_id: str | None = Field(None, max_length=200)
    user_id: str | None = Field(None, max_length=200)
    prompt_version: str | None = Field(
        None, max_length=20, pattern=r"^\d+$", description="Pin a prompt version (eval, A/B)."
    )


@router.post(
    "/ask",
    openapi_extra=needs_scope("ask"),
    summary="Answer a question from a collection, with citations.",
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
                headers={**headers, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        result = await pipeline.answer(state, prepared)
    except APIError as exc:
        state.metrics.asks.labels(exc.code or "error", str(body.stream).lower()).inc()
        raise
    state.metrics.asks.labels("ok", "false").inc()
    return Response(orjson.dumps(result), media_type="application/json", headers=headers)
