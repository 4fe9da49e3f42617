"""Schema migrations of the key store with Alembic, run at start (or as a Kubernetes Job with
auto_migrate off, via ``llmops db upgrade``)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.engine import Engine

from services.common import db

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
LOCK_ID = 7_301_204  # any constant: serialises replicas migrating one PostgreSQL at once
VERSION_TABLE = "alembic_version"  # the proxy came first and keeps Alembic's default name


def migrate(engine: Engine, revision: str = "head") -> None:
    db.migrate(engine, MIGRATIONS, lock_id=LOCK_ID, version_table=VERSION_TABLE, revision=revision)


def check_schema(engine: Engine) -> None:
    """Raise ``SchemaBehind`` unless the tables are at this code's head (see common/db.py)."""
    db.check_schema(engine, MIGRATIONS, version_table=VERSION_TABLE, service="llm-proxy")
