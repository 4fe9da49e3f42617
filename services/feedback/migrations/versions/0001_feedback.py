"""Interactions, feedback and preferences.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "interactions",
        sa.Column("id", sa.String(200), primary_key=True),
        sa.Column("trace_id", sa.String(64), nullable=False),
        sa.Column("session_id", sa.String(200)),
        sa.Column("user_id", sa.String(200)),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("received_at", TZ, nullable=False),
        sa.Column("model", sa.String(200)),
        sa.Column("deployment", sa.String(200)),
        sa.Column("prompt_name", sa.String(200)),
        sa.Column("prompt_version", sa.String(100)),
        sa.Column("messages", sa.JSON()),
        sa.Column("question", sa.Text()),
        sa.Column("context_ids", sa.JSON()),
        sa.Column("answer", sa.Text(), nullable=False),
        sa.Column("latency_ms", sa.Float()),
        sa.Column("prompt_tokens", sa.Integer()),
        sa.Column("completion_tokens", sa.Integer()),
        sa.Column("environment", sa.String(40), nullable=False),
        sa.Column("metadata", sa.JSON()),
        sa.Column("request_hash", sa.String(64), nullable=False),
    )
    op.create_index("ix_interactions_trace_id", "interactions", ["trace_id"])
    op.create_index("ix_interactions_session_id", "interactions", ["session_id"])
    op.create_index("ix_interactions_created_at", "interactions", ["created_at"])
    op.create_index("ix_interactions_prompt", "interactions", ["prompt_name", "prompt_version"])
    op.create_index("ix_interactions_model", "interactions", ["model"])

    op.create_table(
        "feedback",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column(
            "interaction_id",
            sa.String(200),
            sa.ForeignKey("interactions.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("value_text", sa.Text()),
        sa.Column("value_num", sa.Float()),
        sa.Column("positive", sa.Boolean()),
        sa.Column("comment", sa.Text()),
        sa.Column("user_id", sa.String(200)),
        sa.Column("idempotency_key", sa.String(200)),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("received_at", TZ, nullable=False),
        sa.Column("metadata", sa.JSON()),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("langfuse_state", sa.SmallInteger(), nullable=False, server_default="0"),
        sa.Column("langfuse_attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("langfuse_next_at", TZ),
    )
    op.create_index("ix_feedback_interaction_id", "feedback", ["interaction_id"])
    op.create_index("ix_feedback_created_at", "feedback", ["created_at"])
    op.create_index(
        "ix_feedback_langfuse_pending",
        "feedback",
        ["langfuse_state"],
        postgresql_where=sa.text("langfuse_state = 0"),
        sqlite_where=sa.text("langfuse_state = 0"),
    )

    op.create_table(
        "preferences",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("source", sa.String(20), nullable=False),
        sa.Column(
            "interaction_id",
            sa.String(200),
            sa.ForeignKey("interactions.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column(
            "rejected_interaction_id",
            sa.String(200),
            sa.ForeignKey("interactions.id", ondelete="CASCADE"),
        ),
        sa.Column("feedback_id", sa.String(36)),
        sa.Column("prompt", sa.JSON(), nullable=False),
        sa.Column("chosen", sa.Text(), nullable=False),
        sa.Column("rejected", sa.Text(), nullable=False),
        sa.Column("user_id", sa.String(200)),
        sa.Column("idempotency_key", sa.String(200)),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("received_at", TZ, nullable=False),
        sa.Column("metadata", sa.JSON()),
        sa.Column("request_hash", sa.String(64), nullable=False),
    )
    op.create_index("ix_preferences_interaction_id", "preferences", ["interaction_id"])
    op.create_index("ix_preferences_created_at", "preferences", ["created_at"])


def downgrade() -> None:
    op.drop_table("preferences")
    op.drop_table("feedback")
    op.drop_table("interactions")
