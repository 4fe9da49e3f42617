"""Feedback service settings (env prefix ``FEEDBACK_``)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from services.common.settings import ServiceSettings, SettingsError
from services.feedback.schemas import ENV_PATTERN


class FeedbackSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="FEEDBACK_")
    default_port: ClassVar[int] = 8005

    service_name: str = "feedback"

    database_url: SecretStr = Field(
        SecretStr("sqlite:///feedback.db"),
        description="SQLAlchemy URL: SQLite under DATA_DIR by default (ENV=dev only), "
        "PostgreSQL in production (postgresql+psycopg://user:pass@host/db).",
    )
    auto_migrate: bool = Field(
        False,
        description="Run Alembic migrations at start (default: only with ENV=dev; elsewhere "
        "`llmops db upgrade` runs them as a Job).",
    )
    db_connect_timeout_s: float = Field(
        3.0, gt=0, description="How long a connection attempt may take before writes spool."
    )
    db_pool_size: int = Field(8, ge=1)
    spool_dir: Path = Field(
        Path("feedback-spool"),
        description="Where writes wait while the database is unreachable; a persistent volume "
        "in Kubernetes, so a restarted pod drains what its previous life accepted.",
    )
    probe_interval_s: float = Field(1.0, gt=0, description="Database probe while spooling.")
    orphan_window_s: float = Field(
        6 * 3600.0,
        ge=0,
        description="Spooled feedback whose interaction is not in the database yet (it may wait "
        "in another pod's spool or a rag outbox) is tried again for this long after it was "
        "accepted, then dead-lettered; 0: dead-lettered at once.",
    )
    orphan_retry_s: float = Field(10.0, gt=0, description="How often those are tried again.")
    dead_letter_max_bytes: int = Field(
        64 * 1024 * 1024,
        ge=1024,
        description="The dead-letter file stops growing here (refused ops past it are dropped, "
        "logged and counted), so it cannot fill the spool's volume.",
    )
    max_batch: int = Field(512, ge=1, description="Most ops written in one transaction.")
    default_environment: str = Field(
        "production", description="An interaction's environment when it names none."
    )
    export_redact_pii: bool = Field(
        False,
        description="Redact PII (emails, phone numbers, cards, IBANs, IP addresses, keys) in "
        "the text of dataset exports by default; an export's redact_pii=true|false overrides "
        "it. Off by default: an export is the training data its owner asked for, and a "
        "fine-tune on placeholders learns to write [EMAIL] where a user asked for the "
        "address; turn it on where exports leave the team that may see the raw interactions.",
    )

    langfuse_host: str | None = Field(
        None, validation_alias=AliasChoices("FEEDBACK_LANGFUSE_HOST", "LANGFUSE_HOST")
    )
    langfuse_public_key: str | None = Field(
        None, validation_alias=AliasChoices("FEEDBACK_LANGFUSE_PUBLIC_KEY", "LANGFUSE_PUBLIC_KEY")
    )
    langfuse_secret_key: SecretStr | None = Field(
        None, validation_alias=AliasChoices("FEEDBACK_LANGFUSE_SECRET_KEY", "LANGFUSE_SECRET_KEY")
    )
    langfuse_flush_s: float = Field(1.0, gt=0, description="How often pending scores are sent.")
    langfuse_redact_pii: bool = Field(
        True,
        description="Redact PII in the comments and corrections sent to Langfuse as score "
        "comments. On by default: a tracing backend (often hosted elsewhere) is no place for a "
        "user's email or card number, and the raw text stays in the feedback store.",
    )

    @model_validator(mode="after")
    def _langfuse_complete(self) -> FeedbackSettings:
        given = [self.langfuse_host, self.langfuse_public_key, self.langfuse_secret_key]
        if any(v is not None for v in given) and not all(v is not None for v in given):
            raise SettingsError(
                "Langfuse needs all three of FEEDBACK_LANGFUSE_HOST, FEEDBACK_LANGFUSE_PUBLIC_KEY "
                "and FEEDBACK_LANGFUSE_SECRET_KEY (or LANGFUSE_HOST, ...); unset all three to "
                "turn forwarding off"
            )
        if not ENV_PATTERN.match(self.default_environment):
            raise SettingsError(
                "FEEDBACK_DEFAULT_ENVIRONMENT must be 1-40 lowercase letters, digits, '-' or '_'"
            )
        return self

    @property
    def langfuse_enabled(self) -> bool:
        return self.langfuse_secret_key is not None

    def worker_limit(self) -> tuple[int, str] | None:
        if self.database_url.get_secret_value().startswith("sqlite"):
            return 1, "SQLite takes one writer; use PostgreSQL for several workers"
        return None

    def fill_defaults(self) -> None:
        super().fill_defaults()
        self.under_data_dir(spool_dir="feedback-spool")
        if "database_url" not in self.model_fields_set:
            self.database_url = SecretStr(f"sqlite:///{self.data_dir / 'feedback.db'}")
        if "auto_migrate" not in self.model_fields_set:
            self.auto_migrate = self.env == "dev"

    def replica_unsafe(self) -> list[str]:
        if self.database_url.get_secret_value().startswith("sqlite"):
            return [
                "FEEDBACK_DATABASE_URL is SQLite, a file in this one pod that no other replica "
                "shares and a lost volume takes with it; set a PostgreSQL URL "
                "(postgresql+psycopg://user:password@host/db)"
            ]
        return []
