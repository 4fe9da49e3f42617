"""Settings base shared by every service.

Each service subclasses :class:`ServiceSettings` with its own ``env_prefix``. Two rules apply to
all of them:

* any field can also be read from a file named by ``<PREFIX><FIELD>_FILE`` (a mounted Kubernetes
  Secret or ConfigMap key), so secrets never need to sit in the environment or the repo;
* a secret field (``SecretStr``) holding a placeholder such as ``changeme`` refuses to start
  outside ``ENV=dev``, like the full-stack FastAPI template does.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

Environment = Literal["dev", "staging", "production"]

PLACEHOLDER_SECRETS = frozenset(
    {"", "changeme", "change-me", "changethis", "change_me", "secret", "password", "placeholder"}
)
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


class SettingsError(ValueError):
    """A configuration the service refuses to start with; the message says what to change."""


class FileEnvSource(EnvSettingsSource):
    """Reads ``<PREFIX><FIELD>_FILE`` for every field: the value is the file's content."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        for _key, env_name, is_complex in self._extract_field_info(field, field_name):
            file_var = f"{env_name}_file"
            path = self.env_vars.get(file_var)
            if path:
                try:
                    content = Path(path).read_text(encoding="utf-8")
                except OSError as exc:
                    raise SettingsError(
                        f"{file_var.upper()} points to {path!r}, which cannot be read: {exc}"
                    ) from exc
                return content.strip(), file_var, is_complex
        return None, field_name, False


class ServiceSettings(BaseSettings):
    """What every service is configured with; subclasses add their own fields and prefix."""

    model_config = SettingsConfigDict(
        env_prefix="LLMOPS_", extra="ignore", case_sensitive=False, populate_by_name=True
    )

    # False for a service that authenticates callers itself (the LLM proxy's virtual keys).
    static_api_keys: ClassVar[bool] = True

    env: Environment = Field(
        "production",
        validation_alias=AliasChoices("ENV", "LLMOPS_ENV"),
        description="Deployment environment; placeholder secrets and disabled auth need 'dev'.",
    )
    service_name: str = "llmops"
    log_level: str = "INFO"

    # Auth: accepted keys as SHA-256 hex digests, never plain keys.
    api_key_hashes: Annotated[list[str], NoDecode] = Field(default_factory=list)
    auth_disabled: bool = False

    max_body_bytes: int = Field(2 * 1024 * 1024, gt=0)

    # Tracing: nothing is exported unless an endpoint is configured (Langfuse's OTLP one works).
    otlp_endpoint: str | None = None
    otlp_headers: SecretStr | None = Field(
        None, description="Comma-separated key=value headers, e.g. 'Authorization=Basic ...'."
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        files = FileEnvSource(settings_cls, case_sensitive=False)
        return (init_settings, env_settings, files, dotenv_settings, file_secret_settings)

    @field_validator("api_key_hashes", mode="before")
    @classmethod
    def _split_hashes(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return value
            return [part.strip() for part in re.split(r"[,\s]+", text) if part.strip()]
        return value

    @field_validator("api_key_hashes")
    @classmethod
    def _check_hashes(cls, value: list[str]) -> list[str]:
        out = []
        for item in value:
            digest = item.lower().removeprefix("sha256:")
            if not _SHA256_HEX.match(digest):
                raise ValueError(
                    "api_key_hashes takes SHA-256 hex digests of keys (64 hex characters), "
                    "never plain keys: compute one with `llmops hash-key`"
                )
            out.append(digest)
        return out

    def worker_limit(self) -> tuple[int, str] | None:
        """At most how many worker processes this configuration supports, and why; None: any."""
        return None

    @model_validator(mode="after")
    def _standard_otel_env(self) -> ServiceSettings:
        """Fall back to the standard OTEL_EXPORTER_OTLP_* variables an operator may already set."""
        if self.otlp_endpoint is None and os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
            self.otlp_endpoint = os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"]
            if self.otlp_headers is None and os.environ.get("OTEL_EXPORTER_OTLP_HEADERS"):
                self.otlp_headers = SecretStr(os.environ["OTEL_EXPORTER_OTLP_HEADERS"])
        return self

    @model_validator(mode="after")
    def _refuse_unsafe(self) -> ServiceSettings:
        prefix = self.model_config.get("env_prefix", "")
        if self.env != "dev":
            for name in type(self).model_fields:
                value = getattr(self, name)
                if isinstance(value, SecretStr) and (
                    value.get_secret_value().strip().lower() in PLACEHOLDER_SECRETS
                ):
                    raise SettingsError(
                        f"{prefix}{name.upper()} holds a placeholder secret; set a real value "
                        f"(or {prefix}{name.upper()}_FILE) before running with ENV={self.env}"
                    )
            if self.auth_disabled:
                raise SettingsError(
                    f"{prefix}AUTH_DISABLED=true is only allowed with ENV=dev (ENV={self.env})"
                )
        if self.static_api_keys and not self.auth_disabled and not self.api_key_hashes:
            raise SettingsError(
                f"no API keys configured: set {prefix}API_KEY_HASHES "
                f"(or {prefix}API_KEY_HASHES_FILE) "
                f"to SHA-256 digests from `llmops hash-key`, or set ENV=dev and "
                f"{prefix}AUTH_DISABLED=true for local work"
            )
        return self


def settings_error_text(exc: BaseException) -> str:
    """The error with its causes: pydantic-settings wraps a source's error in a vaguer one.

    Never pydantic's own text for a validation error: it repeats the input values, secrets
    included.
    """
    if isinstance(exc, ValidationError):
        problems = []
        for err in exc.errors(include_url=False, include_input=False, include_context=False):
            where = ".".join(str(p) for p in err["loc"])
            msg = str(err["msg"]).removeprefix("Value error, ")
            problems.append(f"{where}: {msg}" if where else msg)
        parts = ["; ".join(problems)]
    else:
        parts = [str(exc)]
    cause = exc.__cause__
    while cause is not None:
        parts.append(str(cause))
        cause = cause.__cause__
    return ": ".join(parts)
