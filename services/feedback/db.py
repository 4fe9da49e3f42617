"""The feedback store's migrations: run at start, by ``llmops db upgrade``, or a Helm hook."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.engine import Engine

from services.common import db

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
LOCK_ID = 7_301_205
VERSION_TABLE = "feedback_alembic_version"  # its own: may share a database with the proxy


def migrate(engine: Engine, revision: str = "head") -> None:
    db.migrate(engine, MIGRATIONS, lock_id=LOCK_ID, version_table=VERSION_TABLE, revision=revision)


def check_schema(engine: Engine) -> None:
    """Raise ``SchemaBehind`` unless the tables are at this code's head (see common/db.py)."""
    db.check_schema(engine, MIGRATIONS, version_table=VERSION_TABLE, service="feedback")
