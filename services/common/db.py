"""SQL engines and Alembic migrations, shared by the services that keep rows (proxy, feedback).

Each service has its own migrations folder and its own Alembic version table, so several
services can share one PostgreSQL database without stepping on each other's history.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine


def make_engine(url: str, *, pool_size: int = 5, connect_timeout_s: float = 5.0) -> Engine:
    """SQLite (WAL, foreign keys on) for local work; PostgreSQL with a bounded connect time, so
    an unreachable server is noticed in seconds rather than after the kernel's TCP timeout."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

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
        url, pool_pre_ping=True, pool_size=pool_size, max_overflow=pool_size, connect_args=args
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
