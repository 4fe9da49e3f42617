"""OpenAI's embeddings request schema; responses are serialized by hand with orjson for speed."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool


class EmbeddingRequest(BaseModel):
    # Unknown fields are refused, as OpenAI does, so a typo is not silently ignored.
    model_config = ConfigDict(extra="forbid")

    input: str | list[Any] = Field(
        ..., description="A string or an array of strings (token arrays are not accepted)."
    )
    model: str
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, gt=0)
    user: str | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "llmops"
    dimensions: int
    max_input_tokens: int
    backend: str
    source: str  # package:..., path:..., or mlflow:models:/NAME/VERSION (the version served)


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input: str | list[str]
    add_special_tokens: StrictBool = True  # true or false, not "yes" or 1
