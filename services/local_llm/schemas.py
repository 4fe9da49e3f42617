"""OpenAI's chat-completions request schema; responses are built as dicts and dumped with orjson.

Unknown fields are accepted and ignored (``tools``, ``presence_penalty``, ``logprobs``, ...):
SDKs and frameworks send many of them by default, and refusing them would break those clients
for parameters this small model cannot honour anyway.
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


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str
    messages: list[ChatMessage]
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int | None = Field(None, ge=1)
    seed: int | None = None
    stop: str | list[str] | None = Field(None, description="Up to 16 strings.")
    stream: bool | None = False
    stream_options: StreamOptions | None = None
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
