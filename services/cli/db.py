"""``llmops db upgrade|current``: migrations without starting a service (a Helm hook Job)."""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from types import ModuleType

from rich.console import Console

from services.common.db import current_revision, make_engine

console = Console(stderr=True)
_PREFIX = {"feedback": "FEEDBACK_", "llm-proxy": "LLM_PROXY_"}
_DEFAULT = {
    "feedback": "sqlite:///.llmops/feedback.db",
    "llm-proxy": "sqlite:///.llmops/llm-proxy.db",
}


def database_url(service: str, given: str | None) -> str:
    """The URL the service itself would use: its env variable, its _FILE, or its default."""
    if given:
        return given
    name = f"{_PREFIX[service]}DATABASE_URL"
    if os.environ.get(name):
        return os.environ[name]
    path = os.environ.get(f"{name}_FILE")
    if path:
        return Path(path).read_text(encoding="utf-8").strip()
    return _DEFAULT[service]


def _module(service: str) -> ModuleType:
    """The service's db module (migrate, VERSION_TABLE), imported only when asked for."""
    name = "services.feedback.db" if service == "feedback" else "services.llm_proxy.db"
    return importlib.import_module(name)


def upgrade(services: list[str], revision: str, given_url: str | None) -> int:
    for service in services:
        engine = make_engine(database_url(service, given_url))
        try:
            _module(service).migrate(engine, revision)
            at = current_revision(engine, _module(service).VERSION_TABLE)
        except Exception as exc:
            console.print(
                f"[red]{service}: migration failed:[/] {type(exc).__name__}: "
                f"{str(exc).splitlines()[0]}"
            )
            return 1
        finally:
            engine.dispose()
        print(f"{service}: at revision {at} ({engine.url.get_backend_name()})")
    return 0


def current(services: list[str], given_url: str | None) -> int:
    for service in services:
        engine = make_engine(database_url(service, given_url))
        try:
            at = current_revision(engine, _module(service).VERSION_TABLE)
        except Exception as exc:
            console.print(f"[red]{service}:[/] {type(exc).__name__}: {str(exc).splitlines()[0]}")
            return 1
        finally:
            engine.dispose()
        print(f"{service}: {at or 'not migrated'}")
    return 0
