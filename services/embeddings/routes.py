"""HTTP routes of the embeddings service: OpenAI's ``/v1/embeddings`` and ``/v1/models``."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from services.common.errors import APIError
from services.common.loading import not_ready
from services.common.routing import JsonRoute
from services.common.scopes import needs_scope
from services.embeddings.batcher import Batcher, BatcherStopped, QueueFull
from services.embeddings.config import EmbeddingsSettings
from services.embeddings.encoder import Encoder, Vectors
from services.embeddings.schemas import EmbeddingRequest, ModelCard, TokenizeRequest

router = APIRouter(tags=["embeddings"], route_class=JsonRoute)

# Tokenize big requests off the event loop so one large batch does not stall everyone else.
_INLINE_TOKENIZE_CHARS = 16_384


def _ready(request: Request) -> tuple[Encoder, Batcher]:
    encoder: Encoder | None = getattr(request.app.state, "encoder", None)
    batcher: Batcher | None = getattr(request.app.state, "batcher", None)
    if encoder is None or batcher is None:
        raise not_ready(request.app, retry_after_s=2)
    return encoder, batcher


def _card(encoder: Encoder, created: int, name: str | None = None) -> ModelCard:
    info = encoder.info
    return ModelCard(
        id=name or info.name,
        created=created,
        dimensions=info.dimension,
        max_input_tokens=info.max_tokens,
        backend=info.backend,
        source=info.source,
    )


def _check_count(n: int, limit: int) -> None:
    if n > limit:
        raise APIError(
            413,
            f"'input' has {n} items; at most {limit} are accepted per request. "
            "Split it into several requests.",
            param="input",
            code="too_many_inputs",
        )


def _texts(raw: str | list[Any], limit: int) -> list[str]:
    texts = [raw] if isinstance(raw, str) else raw
    if not texts:
        raise APIError(
            400,
            "'input' must not be empty: send a string or a non-empty array of strings.",
            param="input",
            code="empty_input",
        )
    _check_count(len(texts), limit)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise APIError(
                400,
                f"'input[{i}]' is not a string. Send text: token arrays are not accepted because "
                "this model has its own tokenizer.",
                param=f"input[{i}]",
                code="invalid_input",
            )
        if not text.strip():
            raise APIError(
                400,
                f"'input[{i}]' is an empty string; every input must contain text.",
                param=f"input[{i}]",
                code="empty_string",
            )
    return texts


@router.get(
    "/v1/models",
    openapi_extra=needs_scope("embed"),
    summary="The served model, with its dimension and input limit.",
)
async def list_models(request: Request) -> dict[str, Any]:
    encoder, _ = _ready(request)
    settings: EmbeddingsSettings = request.app.state.settings
    created = request.app.state.loaded_at
    names = [encoder.info.name, *settings.model_aliases]
    return {"object": "list", "data": [_card(encoder, created, n).model_dump() for n in names]}


@router.get("/v1/models/{model}", openapi_extra=needs_scope("embed"), summary="One served model.")
async def get_model(model: str, request: Request) -> ModelCard:
    encoder, _ = _ready(request)
    _check_model(model, encoder, request.app.state.settings)
    return _card(encoder, request.app.state.loaded_at, model)


def _check_model(model: str, encoder: Encoder, settings: EmbeddingsSettings) -> None:
    if model != encoder.info.name and model not in settings.model_aliases:
        raise APIError(
            404,
            f"The model '{model}' does not exist here; this service serves "
            f"'{encoder.info.name}' (see GET /v1/models).",
            param="model",
            code="model_not_found",
        )


def _check_dimensions(wanted: int | None, native: int, settings: EmbeddingsSettings) -> None:
    if wanted is None or wanted == native or wanted in settings.matryoshka_dims:
        return
    allowed = sorted({native, *settings.matryoshka_dims})
    raise APIError(
        400,
        f"This model cannot produce {wanted}-dimensional embeddings: it supports "
        f"{', '.join(map(str, allowed))}. Omit 'dimensions' or use one of those.",
        param="dimensions",
        code="unsupported_dimensions",
    )


def _shorten(vectors: Vectors, wanted: int | None) -> Vectors:
    """Matryoshka truncation: keep the first dimensions and re-normalize."""
    if wanted is None or wanted >= vectors.shape[1]:
        return vectors
    cut = vectors[:, :wanted]
    norms = np.linalg.norm(cut, axis=1, keepdims=True)
    return np.ascontiguousarray(cut / np.clip(norms, 1e-12, None), dtype=np.float32)


@router.post(
    "/v1/embeddings",
    openapi_extra=needs_scope("embed"),
    summary="Create embeddings (OpenAI-compatible).",
)
async def create_embeddings(body: EmbeddingRequest, request: Request) -> Response:
    encoder, batcher = _ready(request)
    settings: EmbeddingsSettings = request.app.state.settings
    info = encoder.info
    _check_model(body.model, encoder, settings)
    texts = _texts(body.input, settings.max_inputs_per_request)
    _check_dimensions(body.dimensions, info.dimension, settings)

    if sum(map(len, texts)) > _INLINE_TOKENIZE_CHARS:
        ids = await asyncio.to_thread(encoder.tokenize, texts, False)
    else:
        ids = encoder.tokenize(texts, False)
    too_long = [i for i, seq in enumerate(ids) if len(seq) > info.max_tokens]
    headers: dict[str, str] = {}
    if too_long:
        if not settings.truncate:
            first = too_long[0]
            raise APIError(
                400,
                f"'input[{first}]' has {len(ids[first])} tokens; this model accepts at most "
                f"{info.max_tokens}. Shorten it, split it, or run the service with "
                f"EMBEDDINGS_TRUNCATE=true to cut long inputs."
                + (f" ({len(too_long)} inputs are too long.)" if len(too_long) > 1 else ""),
                param=f"input[{first}]",
                code="context_length_exceeded",
            )
        cut = encoder.tokenize([texts[i] for i in too_long], True)
        for i, seq in zip(too_long, cut, strict=True):
            ids[i] = seq
        headers["x-truncated-inputs"] = ",".join(map(str, too_long))

    try:
        vectors = await batcher.embed(ids)
    except QueueFull as exc:
        raise APIError(
            429,
            "The embedding queue is full; retry after the number of seconds in Retry-After.",
            code="queue_full",
            headers={"Retry-After": str(exc.retry_after)},
        ) from exc
    except BatcherStopped as exc:
        raise APIError(
            503,
            "The service is shutting down; retry on another replica.",
            code="shutting_down",
            headers={"Retry-After": "1"},
        ) from exc

    vectors = _shorten(vectors, body.dimensions)
    tokens = sum(map(len, ids))
    if body.encoding_format == "base64":
        data: list[dict[str, Any]] = [
            {
                "object": "embedding",
                "index": i,
                "embedding": base64.b64encode(row.astype("<f4").tobytes()).decode(),
            }
            for i, row in enumerate(vectors)
        ]
    else:
        data = [
            {"object": "embedding", "index": i, "embedding": row} for i, row in enumerate(vectors)
        ]
    payload = {
        "object": "list",
        "data": data,
        "model": body.model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
    return Response(
        orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY),
        media_type="application/json",
        headers=headers,
    )


@router.post(
    "/v1/tokenize",
    openapi_extra=needs_scope("embed"),
    summary="Token counts with the model's tokenizer (as in TEI).",
)
async def tokenize(body: TokenizeRequest, request: Request) -> dict[str, Any]:
    """Lets callers (the retrieval chunker) size text in this model's tokens without loading it."""
    encoder, _ = _ready(request)
    settings: EmbeddingsSettings = request.app.state.settings
    texts = [body.input] if isinstance(body.input, str) else body.input
    _check_count(len(texts), settings.max_inputs_per_request)
    ids = await asyncio.to_thread(encoder.tokenize, texts, False) if texts else []
    special = 0 if body.add_special_tokens else encoder.info.special_tokens
    return {
        "object": "list",
        "data": [{"index": i, "tokens": max(0, len(seq) - special)} for i, seq in enumerate(ids)],
        "max_input_tokens": encoder.info.max_tokens,
        "special_tokens": encoder.info.special_tokens,
    }
