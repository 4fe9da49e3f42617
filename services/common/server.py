"""Running a service: one place that knows how uvicorn is started for every service."""

from __future__ import annotations

import importlib
import os
import sys
import tempfile
from dataclasses import dataclass

import uvicorn

from services.common.logging import setup_logging
from services.common.settings import ServiceSettings, settings_error_text


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    factory: str  # "module:function", called with no argument by each worker
    settings: str  # "module:Class"
    port: int

    def settings_cls(self) -> type[ServiceSettings]:
        module, _, attr = self.settings.partition(":")
        cls: type[ServiceSettings] = getattr(importlib.import_module(module), attr)
        return cls

    def env_prefix(self) -> str:
        return str(self.settings_cls().model_config.get("env_prefix", ""))


# Every service of the platform, with its default port (also its settings' ``default_port``).
SERVICES: dict[str, ServiceSpec] = {
    "embeddings": ServiceSpec(
        "embeddings",
        "services.embeddings.app:create_app",
        "services.embeddings.config:EmbeddingsSettings",
        8001,
    ),
    "retrieval": ServiceSpec(
        "retrieval",
        "services.retrieval.app:create_app",
        "services.retrieval.config:RetrievalSettings",
        8002,
    ),
    "llm-proxy": ServiceSpec(
        "llm-proxy",
        "services.llm_proxy.app:create_app",
        "services.llm_proxy.config:ProxySettings",
        8003,
    ),
    "local-llm": ServiceSpec(
        "local-llm",
        "services.local_llm.app:create_app",
        "services.local_llm.config:LocalLLMSettings",
        8004,
    ),
    "feedback": ServiceSpec(
        "feedback",
        "services.feedback.app:create_app",
        "services.feedback.config:FeedbackSettings",
        8005,
    ),
    "rag": ServiceSpec(
        "rag",
        "services.rag.app:create_app",
        "services.rag.config:RagSettings",
        8006,
    ),
}


def load_settings(spec: ServiceSpec) -> ServiceSettings:
    """Validate the configuration up front, so a bad one is one clear line, not a traceback."""
    try:
        return spec.settings_cls()()
    except ValueError as exc:  # pydantic's ValidationError and every SettingsError
        print(f"llmops: cannot start {spec.name}: {settings_error_text(exc)}", file=sys.stderr)
        raise SystemExit(2) from exc


def serve(
    spec: ServiceSpec,
    *,
    host: str | None = None,
    port: int | None = None,
    workers: int | None = None,
) -> None:
    """Run one service; ``host``, ``port`` and ``workers`` override its settings (CLI flags)."""
    settings = load_settings(spec)
    host = host or settings.host
    port = port or settings.port
    workers = workers or settings.workers
    limit = settings.worker_limit()
    if limit is not None and workers > limit[0]:
        print(
            f"llmops: cannot start {spec.name} with {workers} workers: {limit[1]}; "
            f"use --workers {limit[0]} or scale with replicas",
            file=sys.stderr,
        )
        raise SystemExit(2)
    setup_logging(settings.log_level, settings.log_redact_pii)
    if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Each worker writes its samples here; /metrics sums them (see common/metrics.py).
        # Under TMPDIR, one of the directories a read-only root filesystem leaves writable.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix=f"llmops-{spec.name}-")
    common = {
        "host": host,
        "port": port,
        "log_config": None,
        "access_log": False,
        "server_header": False,
        # In-flight requests get this long after the listener closes (see common/lifecycle.py).
        "timeout_graceful_shutdown": max(1, round(settings.graceful_shutdown_s)),
    }
    if workers > 1:
        uvicorn.run(spec.factory, factory=True, workers=workers, **common)  # type: ignore[arg-type]
    else:
        module, _, attr = spec.factory.partition(":")
        app = getattr(importlib.import_module(module), attr)(settings)
        uvicorn.run(app, **common)  # type: ignore[arg-type]


def main(name: str) -> None:
    """``python -m services.<name>``: the service alone, configured by its environment only
    (the images' command; the CLI and its dependencies are not imported)."""
    if len(sys.argv) > 1:
        print(
            f"usage: python -m {SERVICES[name].factory.split('.app:')[0]} (no arguments: every "
            f"setting comes from the environment, e.g. {SERVICES[name].env_prefix()}PORT)",
            file=sys.stderr,
        )
        raise SystemExit(2)
    serve(SERVICES[name])
