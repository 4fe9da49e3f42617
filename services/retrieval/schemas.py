"""Request bodies of the retrieval API."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from services.common.validation import no_control_characters

MetaValue = str | int | float | bool | None | list[str | int | float | bool]


class CollectionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., pattern=r"^[A-Za-z0-9][A-Za-z0-9_\-]{0,63}$")
    metadata_fields: dict[
        str, Literal["keyword", "integer", "float", "bool", "datetime", "text"]
    ] = Field(
        default_factory=dict, description="Metadata fields to index for filtering, with types."
    )
    search_mode: Literal["dense", "sparse", "hybrid"] | None = Field(
        None,
        description="What a search without 'mode' does; default: RETRIEVAL_DEFAULT_SEARCH_MODE.",
    )


class Document(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(None, min_length=1, max_length=512)
    text: str | None = None
    content_base64: str | None = None
    content_type: str | None = Field(None, description="Default: text/plain for `text`.")
    metadata: dict[str, MetaValue] = Field(default_factory=dict)

    # An id is also a URL (DELETE .../documents/{id}), whose route cannot match a line break:
    # such a document could be written but never deleted.
    _no_control_characters = field_validator("id")(no_control_characters)

    @model_validator(mode="after")
    def _one_content(self) -> Document:
        if (self.text is None) == (self.content_base64 is None):
            raise ValueError("send exactly one of 'text' or 'content_base64'")
        if self.content_base64 is not None and not self.content_type:
            raise ValueError("'content_type' is required with 'content_base64'")
        return self

    def size_bytes(self) -> int:
        if self.text is not None:
            return len(self.text.encode("utf-8"))
        return len(self.content_base64 or "") * 3 // 4


class DocumentsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    documents: list[Document]


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: str | None = None
    vector: list[float] | None = None
    top_k: int = Field(5, ge=1)
    filter: dict[str, Any] | None = None
    score_threshold: float | None = None
    with_text: bool = True
    with_vectors: bool = False
    mode: Literal["dense", "sparse", "hybrid"] | None = Field(
        None,
        description="dense (embedding similarity), sparse (BM25) or hybrid (both, fused by "
        "reciprocal rank); default: the collection's search_mode, dense for a 'vector'.",
    )

    @model_validator(mode="after")
    def _one_query(self) -> SearchRequest:
        if (self.query is None) == (self.vector is None):
            raise ValueError("send exactly one of 'query' (text) or 'vector'")
        if self.query is not None and not self.query.strip():
            raise ValueError("'query' is empty")
        if self.vector is not None and self.mode not in (None, "dense"):
            raise ValueError(f"mode '{self.mode}' needs a text 'query'; a 'vector' is dense only")
        return self
