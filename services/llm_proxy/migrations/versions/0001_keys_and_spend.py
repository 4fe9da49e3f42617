"""Virtual keys and spend totals.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "virtual_keys",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("key_hint", sa.String(32), nullable=False),
        sa.Column("name", sa.String(200)),
        sa.Column("aliases", sa.JSON()),
        sa.Column("rpm", sa.Integer()),
        sa.Column("tpm", sa.Integer()),
        sa.Column("max_budget_usd", sa.Float()),
        sa.Column("spend_usd", sa.Float(), nullable=False, server_default="0"),
        sa.Column("expires_at", sa.DateTime(timezone=True)),
        sa.Column("metadata", sa.JSON()),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True)),
    )
    op.create_index("ix_virtual_keys_key_hash", "virtual_keys", ["key_hash"], unique=True)
    op.create_table(
        "spend",
        sa.Column(
            "key_id",
            sa.String(36),
            sa.ForeignKey("virtual_keys.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("alias", sa.String(200), primary_key=True),
        sa.Column("deployment", sa.String(200), primary_key=True),
        sa.Column("requests", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("input_tokens", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("output_tokens", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("cost_usd", sa.Float(), nullable=False, server_default="0"),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("spend")
    op.drop_index("ix_virtual_keys_key_hash", table_name="virtual_keys")
    op.drop_table("virtual_keys")
