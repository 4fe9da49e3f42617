"""Settings base shared by every service.

Each service subclasses :class:`ServiceSettings` with its own ``env_prefix``. Two rules apply to
all of them:

* any field can also be read from a file named by ``<PREFIX><FIELD>_FILE`` (a mounted Kubernetes
  Secret or ConfigMap key), so secrets never need to sit in the environment or the repo;
* a secret field (``SecretStr``) holding a placeholder such as ``changeme`` refuses to start
  outside ``ENV=dev``, like the full-stack FastAPI template does.
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal
from urllib.parse import urlsplit

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

from services.common.scopes import parse_key_entry

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
    # The port a service listens on when PORT is not set (see common/server.py).
    default_port: ClassVar[int] = 8000

    env: Environment = Field(
        "production",
        validation_alias=AliasChoices("ENV", "LLMOPS_ENV"),
        description="Deployment environment; placeholder secrets and disabled auth need 'dev'.",
    )
    service_name: str = "llmops"
    log_level: str = "INFO"
    log_redact_pii: bool = Field(
        True,
        description="Redact emails, phone numbers, cards, IBANs, IP addresses and keys in log "
        "lines (message, extras, exception text) before they are written.",
    )

    # Auth: accepted keys as SHA-256 hex digests, never plain keys.
    api_key_hashes: Annotated[list[str], NoDecode] = Field(default_factory=list)
    auth_disabled: bool = False

    max_body_bytes: int = Field(2 * 1024 * 1024, gt=0)

    # Tracing: nothing is exported unless an endpoint is configured (Langfuse's OTLP one works).
    otlp_endpoint: str | None = None
    otlp_headers: SecretStr | None = Field(
        None, description="Comma-separated key=value headers, e.g. 'Authorization=Basic ...'."
    )

    # Serving. Each of these also falls back to LLMOPS_<NAME> (one setting for every service
    # of an image or a pod), then to the default.
    host: str = Field("127.0.0.1", description="Address to bind; the images set 0.0.0.0.")
    port: int = Field(0, ge=0, le=65535, description="0: the service's own port.")
    workers: int = Field(1, ge=1, description="uvicorn worker processes.")
    data_dir: Path = Field(
        Path(".llmops"),
        description="Every path a service writes by default lies under it (stores of dev mode, "
        "spools, caches); made absolute at start. The images set /data.",
    )
    shutdown_delay_s: float = Field(
        5.0,
        ge=0,
        description="After SIGTERM, readiness answers 503 and requests are still served this "
        "long, so the endpoint is gone from every load balancer before the listener closes "
        "(0 by default with ENV=dev).",
    )
    graceful_shutdown_s: float = Field(
        30.0,
        gt=0,
        description="Then in-flight requests (streams included) get this long to finish; the "
        "drains (spend, spool, outbox) get what is left of it, and at least 5 s.",
    )

    _SHARED: ClassVar[tuple[str, ...]] = (
        "host",
        "workers",
        "data_dir",
        "shutdown_delay_s",
        "graceful_shutdown_s",
        "log_level",
        "log_redact_pii",
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

    @model_validator(mode="before")
    @classmethod
    def _shared_env(cls, data: Any) -> Any:
        """``LLMOPS_HOST`` and friends, for what the service's own prefix does not set."""
        if not isinstance(data, dict):
            return data
        for name in cls._SHARED:
            if name not in data and f"LLMOPS_{name.upper()}" in os.environ:
                data[name] = os.environ[f"LLMOPS_{name.upper()}"]
        return data

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
            digest, scopes = parse_key_entry(item.strip().removeprefix("sha256:"))
            digest = digest.lower()
            if not _SHA256_HEX.match(digest):
                raise ValueError(
                    "api_key_hashes takes SHA-256 hex digests of keys (64 hex characters), "
                    "each optionally followed by :scope+scope, never plain keys: compute one "
                    "with `llmops hash-key [--scopes ask,search]`"
                )
            out.append(digest if scopes is None else f"{digest}:{'+'.join(sorted(scopes))}")
        return out

    def worker_limit(self) -> tuple[int, str] | None:
        """At most how many worker processes this configuration supports, and why; None: any."""
        return None

    def fill_defaults(self) -> None:
        """Defaults that depend on other settings (paths under ``data_dir``, what ``ENV=dev``
        turns on); subclasses extend it. Runs before the checks below."""
        self.data_dir = self.data_dir.expanduser().resolve()
        if self.port == 0:
            self.port = self.default_port
        if "shutdown_delay_s" not in self.model_fields_set and self.env == "dev":
            self.shutdown_delay_s = 0.0

    def under_data_dir(self, **paths: str) -> None:
        """Each named path field that was not configured becomes ``data_dir / <relative>``."""
        for name, relative in paths.items():
            if name not in self.model_fields_set:
                setattr(self, name, self.data_dir / relative)

    def replica_unsafe(self) -> list[str]:
        """What in this configuration only works for one replica on one machine, each as a
        sentence naming the setting to change; refused outside ``ENV=dev``."""
        return []

    def env_name(self, field: str) -> str:
        """The environment variable of a field, e.g. ``RETRIEVAL_QDRANT_URL``."""
        return f"{self.model_config.get('env_prefix', '')}{field}".upper()

    def loopback_urls(self, *fields: str) -> list[str]:
        """A ``replica_unsafe`` sentence for each URL field that points at this machine: in a
        pod, loopback is the pod itself, not the service it names."""
        out = []
        for field in fields:
            url = getattr(self, field)
            if url and is_loopback(str(url)):
                out.append(
                    f"{self.env_name(field)} is {url}, a loopback address: in a pod that is the "
                    "pod itself; set the other service's address (its Kubernetes Service name)"
                )
        return out

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
        self.fill_defaults()
        if self.env != "dev":
            problems = self.replica_unsafe()
            if problems:
                raise SettingsError(
                    f"refusing to start with ENV={self.env}: "
                    + "; ".join(problems)
                    + " (ENV=dev allows all of this on one machine)"
                )
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


def is_loopback(url: str) -> bool:
    """Whether a URL names this machine (localhost, 127.0.0.0/8, ::1, 0.0.0.0)."""
    host = (urlsplit(url if "://" in url else f"//{url}").hostname or "").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or address.is_unspecified


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
