"""RAG service settings (env prefix ``RAG_``)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from services.common.settings import ServiceSettings

BUNDLED_PROMPT = Path(__file__).resolve().parent / "prompts" / "rag-answer.txt"


class RagSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="RAG_")
    default_port: ClassVar[int] = 8006

    service_name: str = "rag"

    retrieval_url: str = "http://127.0.0.1:8002"
    retrieval_api_key: SecretStr | None = None
    retrieval_timeout_s: float = Field(10.0, gt=0)
    proxy_url: str = Field("http://127.0.0.1:8003", description="The LLM proxy (its base URL).")
    proxy_api_key: SecretStr | None = Field(None, description="A virtual key of the proxy.")
    llm_timeout_s: float = Field(120.0, gt=0)
    feedback_url: str | None = Field(
        "http://127.0.0.1:8005", description="Where interactions are recorded; unset: nowhere."
    )
    feedback_api_key: SecretStr | None = None
    feedback_timeout_s: float = Field(5.0, gt=0)

    model: str = Field("smollm2", description="The LLM alias asked through the proxy.")
    max_tokens: int = Field(256, ge=1)
    temperature: float = Field(0.0, ge=0, le=2)
    stop: list[str] = Field(
        ["\nQuestion:", "\nContext", "\nRules:", "\n\n\n"],
        max_length=4,
        description="Stop sequences sent with every completion (OpenAI takes at most 4): where "
        "a small model, its answer done, starts the prompt's next block. A JSON list; [] sends "
        "none.",
    )
    frequency_penalty: float | None = Field(
        None,
        ge=-2,
        le=2,
        description="OpenAI's frequency_penalty, sent when set (the local model's own default "
        "applies otherwise: LOCAL_LLM_FREQUENCY_PENALTY).",
    )
    presence_penalty: float | None = Field(
        None, ge=-2, le=2, description="OpenAI's presence_penalty, sent when set."
    )
    default_collection: str = "docs"
    top_k: int = Field(4, ge=1, description="Chunks retrieved when a request names no top_k.")
    max_top_k: int = Field(20, ge=1)
    max_context_chars: int = Field(
        6000, ge=200, description="Context text put into the prompt, at most (best chunks first)."
    )
    on_retrieval_failure: Literal["fail", "no_context"] = Field(
        "fail",
        description="Retrieval unreachable: answer 503 (fail), or answer without context, "
        "flagged degraded (no_context).",
    )

    mlflow_tracking_uri: str | None = Field(
        None, description="MLflow server with the prompt registry; unset: the bundled prompt."
    )
    prompt_name: str = "rag-answer"
    prompt_alias: str | None = Field(
        None, description="Alias to serve; default: ENV (staging/production; 'production' in dev)."
    )
    prompt_ttl_s: float = Field(30.0, gt=0, description="A prompt alias move is seen this fast.")
    bundled_prompt: Path = Field(
        BUNDLED_PROMPT, description="Served until the registry has been reached once."
    )
    outbox_dir: Path = Field(
        Path("rag-outbox"),
        description="Interactions on their way to the feedback service (survives its outages); "
        "default: DATA_DIR/rag-outbox, a persistent volume in Kubernetes.",
    )
    dead_letter_max_bytes: int = Field(
        64 * 1024 * 1024,
        ge=1024,
        description="The outbox's dead-letter file stops growing here (refusals past it are "
        "dropped, logged and counted), so it cannot fill the outbox volume.",
    )

    def fill_defaults(self) -> None:
        super().fill_defaults()
        self.under_data_dir(outbox_dir="rag-outbox")

    def replica_unsafe(self) -> list[str]:
        return self.loopback_urls(
            "retrieval_url", "proxy_url", "feedback_url", "mlflow_tracking_uri"
        )

    def effective_alias(self) -> str:
        if self.prompt_alias:
            return self.prompt_alias
        return self.env if self.env in ("staging", "production") else "production"
