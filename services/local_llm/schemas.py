"""OpenAI's chat-completions request schema; responses are built as dicts and dumped with orjson
(the response models below only document them in the OpenAPI schema).

Unknown fields are accepted and ignored (``tools``, ``logit_bias``, ``logprobs``, ...): SDKs and
frameworks send many of them by default, and refusing them would break those clients for
parameters this small model cannot honour anyway.

``response_format`` is honoured: ``json_object`` and ``json_schema`` constrain decoding to JSON
(valid for the schema), see services/local_llm/constrained.py.

Repetition, per request (each unset field takes the server's ``LOCAL_LLM_<NAME>`` setting):

* ``frequency_penalty`` and ``presence_penalty`` mean what OpenAI defines: a token's logit is
  lowered by ``frequency_penalty * count + presence_penalty * (count > 0)``, ``count`` being how
  often the completion holds it so far (the prompt does not count, as with OpenAI).
* ``repetition_penalty`` (as in vLLM and TGI) and ``no_repeat_ngram_size`` (transformers' name)
  are extensions; unlike those servers, both look at the completion only: a RAG answer must be
  free to copy its context.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    # A string, or OpenAI's content parts ([{"type": "text", "text": ...}]); checked in routes.
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True, populate_by_name=True)

    name: str = Field(min_length=1, max_length=64)
    # "schema" shadows a BaseModel attribute: the field has another name and takes this alias.
    json_schema: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None
    description: str | None = None


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    # Strict: JSON types as documented, so "stream": 0 or "max_tokens": true (read as 1) and
    # "2" are refused, not coerced; an integer still serves where a number is documented.
    model_config = ConfigDict(extra="ignore", strict=True)

    model: str
    # Documented non-empty; an empty list is refused in routes (its own code, empty_messages).
    messages: list[ChatMessage] = Field(json_schema_extra={"minItems": 1})
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int | None = Field(None, ge=1)
    seed: int | None = None
    stop: str | list[str] | None = Field(None, description="Up to 16 strings.")
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    repetition_penalty: float | None = Field(
        None, ge=1, le=2, description="Extension: CTRL's penalty on generated tokens; 1: none."
    )
    no_repeat_ngram_size: int | None = Field(
        None, ge=0, description="Extension: no n tokens twice in order in the completion; 0: off."
    )
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    response_format: ResponseFormat | None = Field(
        None, description="json_object or json_schema: the completion is constrained to JSON."
    )
    user: str | None = None

    @property
    def requested_max_tokens(self) -> int | None:
        """``max_completion_tokens`` (the current name) wins over the deprecated ``max_tokens``."""
        if self.max_completion_tokens is not None:
            return self.max_completion_tokens
        return self.max_tokens

    @property
    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "llmops"
    context_length: int
    max_output_tokens: int


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class AssistantMessage(BaseModel):
    role: Literal["assistant"]
    content: str


class Choice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: None = None
    finish_reason: Literal["stop", "length", "cancelled"]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[Choice]
    usage: Usage


_COUNTS = ("prompt_tokens", "completion_tokens", "total_tokens")
_USAGE = {
    "type": "object",
    "required": list(_COUNTS),
    "properties": {k: {"type": "integer"} for k in _COUNTS},
}
# One event of a stream (built in routes._chunk), inline for the event-stream schema.
CHUNK: dict[str, Any] = {
    "type": "object",
    "required": ["id", "object", "created", "model", "choices"],
    "properties": {
        "id": {"type": "string"},
        "object": {"const": "chat.completion.chunk"},
        "created": {"type": "integer"},
        "model": {"type": "string"},
        "choices": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["index", "delta", "finish_reason"],
                "properties": {
                    "index": {"type": "integer"},
                    "delta": {
                        "type": "object",
                        "properties": {
                            "role": {"const": "assistant"},
                            "content": {"type": "string"},
                        },
                    },
                    "finish_reason": {"enum": ["stop", "length", "cancelled", None]},
                },
            },
        },
        "usage": {"anyOf": [_USAGE, {"type": "null"}]},
    },
}
