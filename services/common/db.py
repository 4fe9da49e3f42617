"""SQL engines and Alembic migrations, shared by the services that keep rows (proxy, feedback).

Each service has its own migrations folder and its own Alembic version table, so several
services can share one PostgreSQL database without stepping on each other's history.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine


def make_engine(url: str, *, pool_size: int = 5, connect_timeout_s: float = 5.0) -> Engine:
    """SQLite (WAL, foreign keys on) for local work; PostgreSQL with a bounded connect time, so
    an unreachable server is noticed in seconds rather than after the kernel's TCP timeout.

    ``hide_parameters``: a refused statement's error (logged with its traceback) names the SQL
    but not the values, which are prompts, answers and key digests."""
    if url.startswith("sqlite"):
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30}, hide_parameters=True
        )

        @event.listens_for(engine, "connect")
        def _pragma(dbapi_conn: Any, _: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    args: dict[str, Any] = {}
    if url.startswith("postgresql"):
        args["connect_timeout"] = max(1, round(connect_timeout_s))
    return create_engine(
        url,
        pool_pre_ping=True,
        pool_size=pool_size,
        max_overflow=pool_size,
        connect_args=args,
        hide_parameters=True,
    )


def migrate(
    engine: Engine,
    migrations: Path,
    *,
    lock_id: int,
    version_table: str = "alembic_version",
    revision: str = "head",
) -> None:
    """Upgrade to ``revision``. On PostgreSQL an advisory lock keeps concurrent replicas (and a
    Helm hook Job racing a pod) in line; the second one finds the work done."""
    if engine.url.get_backend_name() == "sqlite" and engine.url.database:
        Path(engine.url.database).parent.mkdir(parents=True, exist_ok=True)
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations))
    cfg.attributes["version_table"] = version_table
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": lock_id})
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def current_revision(engine: Engine, version_table: str = "alembic_version") -> str | None:
    """The revision a database is at (None: never migrated), for `llmops db current`."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"version_table": version_table})
        return ctx.get_current_revision()


class SchemaBehind(Exception):
    """The database is older than this code's migrations; the message says what to run."""


def check_schema(engine: Engine, migrations: Path, *, version_table: str, service: str) -> None:
    """Raise :class:`SchemaBehind` unless the database is at (or past) this code's head.

    Past it is fine: during a rolling upgrade the new version's Job migrates first and the old
    pods keep serving on the newer schema (migrations only add, then remove in a later release).
    """
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations))
    script = ScriptDirectory.from_config(cfg)
    heads = set(script.get_heads())
    current = current_revision(engine, version_table)
    if current in heads:
        return
    fix = f"run `llmops db upgrade {service}` (the chart's migration Job)"
    if current is None:
        raise SchemaBehind(f"the {service} database was never migrated: {fix}")
    try:
        script.get_revision(current)
    except Exception:  # a revision this code does not know: a newer release migrated it
        return
    raise SchemaBehind(
        f"the {service} schema is at revision {current}, this version needs "
        f"{', '.join(sorted(heads))}: {fix}"
    )


class SchemaGate:
    """Readiness of a service whose tables a migration Job owns: checked until it passes, at
    most every ``interval_s``; once at head it is not asked again."""

    def __init__(
        self, check: Callable[[], None], *, passed: bool = False, interval_s: float = 2.0
    ) -> None:
        self.check = check
        self.interval_s = interval_s
        self.ok = passed  # True: migrated at start by this very process (dev)
        self.reason: str | None = None if passed else "the schema has not been checked yet"
        self._next = 0.0

    async def blocked(self) -> str | None:
        """Why the service must stay unready (the schema behind, the database unreachable)."""
        if self.ok:
            return None
        now = time.monotonic()
        if now >= self._next:
            self._next = now + self.interval_s
            try:
                await asyncio.to_thread(self.check)
            except SchemaBehind as exc:
                self.reason = str(exc)
            except Exception as exc:
                self.reason = f"the database does not answer ({type(exc).__name__})"
            else:
                self.ok, self.reason = True, None
        return self.reason
