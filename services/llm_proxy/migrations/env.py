"""Alembic environment: always run from :func:`services.llm_proxy.db.migrate` with a connection."""

from __future__ import annotations

from alembic import context

from services.llm_proxy.keys import Base

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=True,
    version_table=context.config.attributes.get("version_table", "alembic_version"),
)
with context.begin_transaction():
    context.run_migrations()
