"""LLM proxy settings (env prefix ``LLM_PROXY_``).

Routing (deployments, aliases, strategies) lives in a YAML file named by ``config_path`` so it
can be a ConfigMap that changes without a restart; this class holds what a pod is started with.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from services.common.settings import ServiceSettings, SettingsError


class ProxySettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="LLM_PROXY_")

    # Callers authenticate with virtual keys (and the master key), not static key digests.
    static_api_keys: ClassVar[bool] = False
    default_port: ClassVar[int] = 8003

    service_name: str = "llm-proxy"

    config_path: Path = Field(
        Path("/etc/llmops/llm-proxy.yaml"),
        description="The routing YAML (a mounted ConfigMap); reloaded when it changes.",
    )
    config_reload_s: float = Field(2.0, ge=0, description="How often to check the file; 0: never.")

    master_key: SecretStr | None = Field(
        None, description="Admin key: manages virtual keys and may call every alias."
    )
    database_url: SecretStr = Field(
        SecretStr("sqlite:///llm-proxy.db"),
        description="SQLAlchemy URL of the key store: SQLite under DATA_DIR by default (ENV=dev "
        "only), PostgreSQL in production (postgresql+psycopg://user:pass@host/db).",
    )
    auto_migrate: bool = Field(
        False,
        description="Run Alembic migrations at start (default: only with ENV=dev; elsewhere "
        "`llmops db upgrade` runs them as a Job).",
    )
    key_cache_ttl_s: float = Field(
        5.0, gt=0, description="How long a key's record is trusted; revocation takes this long."
    )

    redis_url: SecretStr | None = Field(
        None, description="Shared limits and budgets across replicas; unset: in memory."
    )
    redis_fail_mode: Literal["open", "closed"] = Field(
        "open", description="When Redis is unreachable: admit (open) or refuse with 503 (closed)."
    )
    redis_timeout_s: float = Field(0.25, gt=0)
    redis_retry_after_s: float = Field(
        1.0, gt=0, description="After a Redis failure, skip it for this long (no per-call stall)."
    )

    spend_flush_s: float = Field(2.0, gt=0, description="Spend is written in batches this often.")
    default_max_tokens: int = Field(
        1024, ge=1, description="Output tokens reserved when a request names no max_tokens."
    )
    connect_timeout_s: float = Field(5.0, gt=0)
    max_connections: int = Field(1000, ge=1, description="Pooled upstream connections in total.")
    log_payloads: bool = Field(
        False, description="Log prompts and completions (DEBUG, logger llmops.payloads)."
    )
    max_body_bytes: int = Field(8 * 1024 * 1024, gt=0)

    def fill_defaults(self) -> None:
        super().fill_defaults()
        if "database_url" not in self.model_fields_set:
            self.database_url = SecretStr(f"sqlite:///{self.data_dir / 'llm-proxy.db'}")
        if "auto_migrate" not in self.model_fields_set:
            self.auto_migrate = self.env == "dev"

    def worker_limit(self) -> tuple[int, str] | None:
        if self.redis_url is None:
            return 1, (
                "without LLM_PROXY_REDIS_URL every worker keeps its own limits and budgets, so "
                "each key would get N times its RPM, TPM and budget"
            )
        return None

    def replica_unsafe(self) -> list[str]:
        out = []
        if self.database_url.get_secret_value().startswith("sqlite"):
            out.append(
                "LLM_PROXY_DATABASE_URL is SQLite, a file in this one pod: keys made on one "
                "replica would be unknown to the others; set a PostgreSQL URL"
            )
        if self.redis_url is None:
            out.append(
                "LLM_PROXY_REDIS_URL is unset: limits and budgets would be kept per replica, "
                "multiplied by the replica count; set the Redis URL"
            )
        return out

    @model_validator(mode="after")
    def _need_master_key(self) -> ProxySettings:
        if self.master_key is None and not self.auth_disabled:
            raise SettingsError(
                "no master key: set LLM_PROXY_MASTER_KEY (or LLM_PROXY_MASTER_KEY_FILE); it "
                "creates the virtual keys that clients use"
            )
        if self.master_key is not None and len(self.master_key.get_secret_value()) < 16:
            raise SettingsError("LLM_PROXY_MASTER_KEY must be at least 16 characters")
        return self

    @model_validator(mode="after")
    def _routing_loads(self) -> ProxySettings:
        """Refuse to start on a missing or broken routing file: one clear line, no traceback."""
        from services.llm_proxy.catalog import CatalogError, load_catalog

        try:
            load_catalog(self.config_path)
        except CatalogError as exc:
            raise SettingsError(f"{exc} (set LLM_PROXY_CONFIG_PATH)") from exc
        return self
