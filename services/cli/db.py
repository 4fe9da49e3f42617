"""``llmops db upgrade|current``: migrations without starting a service (a Helm hook Job)."""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from types import ModuleType

from rich.console import Console
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError
from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_exponential

from services.common.db import current_revision, make_engine

# One line per message: a Job's log is read by line, not at a terminal's width.
console = Console(stderr=True, soft_wrap=True)
_PREFIX = {"feedback": "FEEDBACK_", "llm-proxy": "LLM_PROXY_"}
_DEFAULT = {"feedback": "feedback.db", "llm-proxy": "llm-proxy.db"}  # under LLMOPS_DATA_DIR


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
    data_dir = Path(os.environ.get("LLMOPS_DATA_DIR", ".llmops")).expanduser().resolve()
    return f"sqlite:///{data_dir / _DEFAULT[service]}"


def _module(service: str) -> ModuleType:
    """The service's db module (migrate, VERSION_TABLE), imported only when asked for."""
    name = "services.feedback.db" if service == "feedback" else "services.llm_proxy.db"
    return importlib.import_module(name)


def _wait_for(engine: Engine, wait_s: float) -> None:
    """Connect within ``wait_s`` (a Job may start before its database does), with backoff."""
    for attempt in Retrying(
        stop=stop_after_delay(wait_s),
        wait=wait_exponential(multiplier=0.5, max=5),
        retry=retry_if_exception_type(OperationalError),
        reraise=True,
    ):
        with attempt, engine.connect() as conn:
            conn.execute(text("SELECT 1"))


def upgrade(services: list[str], revision: str, given_url: str | None, wait_s: float = 60) -> int:
    """Migrate each service's tables; exit 0 only once each is verified at the revision."""
    for service in services:
        engine = make_engine(database_url(service, given_url))
        module = _module(service)
        where = engine.url.render_as_string(hide_password=True)
        try:
            _wait_for(engine, wait_s)
        except OperationalError as exc:
            console.print(
                f"[red]{service}: the database at {where} did not answer within {wait_s:.0f} s:[/]"
                f" {str(exc.orig).strip().splitlines()[0] if exc.orig else exc}"
            )
            engine.dispose()
            return 1
        try:
            module.migrate(engine, revision)
            at = current_revision(engine, module.VERSION_TABLE)
            if revision == "head":
                module.check_schema(engine)  # success is said only of a verified head
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
