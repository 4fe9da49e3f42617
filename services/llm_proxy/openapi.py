"""What the OpenAPI document says of the hand-parsed routes (routes.py), which FastAPI cannot infer.

The bodies are read with orjson, not pydantic (speed, and every unknown field passes through to
the upstream), so their schemas are written here: exactly what the proxy itself checks, and no
more. A stricter schema would be dishonest (the proxy forwards what it does not check, and the
upstream judges it); a looser one would hide the 400s. Answers: the upstream's JSON relayed as
is, or a server-sent-events stream for ``stream: true``, and the errors of the gateway.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from services.common.errors import ErrorBody
from services.common.openapi import event_stream

_POSITIVE_OR_NULL = {"anyOf": [{"type": "integer", "minimum": 1}, {"type": "null"}]}
_MODEL = {
    "type": "string",
    "minLength": 1,
    "description": "An alias of the routing config (GET /v1/models lists those this key may use).",
}
_PASSED_ON = "Passed on to the upstream as is (the proxy does not check it)."

CHAT_REQUEST: dict[str, Any] = {
    "type": "object",
    "required": ["model", "messages"],
    "properties": {
        "model": _MODEL,
        "messages": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["role"],
                "properties": {
                    "role": {"type": "string"},
                    "content": {"description": f"Text or content parts. {_PASSED_ON}"},
                },
                "additionalProperties": True,
            },
        },
        "stream": {"type": "boolean", "description": "Answer as server-sent events."},
        "max_completion_tokens": _POSITIVE_OR_NULL,
        "max_tokens": _POSITIVE_OR_NULL,
        "n": _POSITIVE_OR_NULL,
        "stream_options": {"description": f"include_usage is always asked for. {_PASSED_ON}"},
        "tools": {"description": _PASSED_ON},
    },
    "additionalProperties": True,
    "description": f"OpenAI's chat-completions request. Other fields: {_PASSED_ON.lower()}",
}

_TOKENS = {"type": "array", "minItems": 1, "items": {"type": "integer"}}
EMBEDDINGS_REQUEST: dict[str, Any] = {
    "type": "object",
    "required": ["model", "input"],
    "properties": {
        "model": _MODEL,
        "input": {
            "description": "A text, texts, or token ids (of one input, or of several).",
            "anyOf": [
                {"type": "string"},
                {"type": "array", "minItems": 1, "items": {"type": "string"}},
                _TOKENS,
                {"type": "array", "minItems": 1, "items": _TOKENS},
            ],
        },
    },
    "additionalProperties": True,
    "description": f"OpenAI's embeddings request. Other fields: {_PASSED_ON.lower()}",
}


def json_body(schema: dict[str, Any]) -> dict[str, Any]:
    """``openapi_extra`` of a route whose JSON body is parsed by hand."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


class ChatCompletion(BaseModel):
    """The upstream's completion, relayed byte for byte (the proxy checks ``choices`` only)."""

    model_config = ConfigDict(extra="allow")

    choices: list[dict[str, Any]]


class EmbeddingList(BaseModel):
    """The upstream's embeddings, relayed byte for byte (the proxy checks ``data`` only)."""

    model_config = ConfigDict(extra="allow")

    data: list[dict[str, Any]]


class ModelCard(BaseModel):
    id: str = Field(description="The alias.")
    object: str = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: str = "list"
    data: list[ModelCard]


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorBody, "description": description}


SSE = event_stream(
    {"type": "object", "description": "The upstream's chat.completion.chunk, relayed as is."},
    "With stream: true: the upstream's chunks, then [DONE]; a failure after the first byte is an "
    "error event.",
)

GATEWAY_ERRORS: dict[int | str, dict[str, Any]] = {
    429: _error(
        "This key's RPM, TPM or budget is spent, or every deployment is rate limited or at "
        "capacity; retry after the Retry-After header."
    ),
    502: _error("The upstream failed after retries, or refused the proxy's credentials."),
    504: _error("The upstream timed out after retries."),
    "4XX": _error("The upstream refused the request itself: its status and message, relayed."),
}

CHAT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": ChatCompletion, "description": "The completion.", "content": SSE},
    **GATEWAY_ERRORS,
}
EMBEDDINGS_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": EmbeddingList, "description": "The embeddings."},
    **GATEWAY_ERRORS,
}
