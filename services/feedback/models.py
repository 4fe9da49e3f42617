"""The feedback store's tables: interactions, the feedback on them, and preference pairs.

Every primary key is fixed before the row is written (the client's interaction id, or an id
derived from an idempotency key, or one drawn when the request is accepted). That is what makes
a replay, a retried batch or a spool drained twice land exactly once: inserting a row whose key
exists is a no-op.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    SmallInteger,
    String,
    Text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Langfuse forwarding state of a feedback row (an outbox: survives restarts and replicas).
LANGFUSE_PENDING = 0
LANGFUSE_SENT = 1
LANGFUSE_REJECTED = 2  # Langfuse answered 4xx: retrying would not help


class Base(DeclarativeBase):
    pass


class Interaction(Base):
    __tablename__ = "interactions"

    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    trace_id: Mapped[str] = mapped_column(String(64), index=True)
    session_id: Mapped[str | None] = mapped_column(String(200), index=True)
    user_id: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    model: Mapped[str | None] = mapped_column(String(200))
    deployment: Mapped[str | None] = mapped_column(String(200))
    prompt_name: Mapped[str | None] = mapped_column(String(200))
    prompt_version: Mapped[str | None] = mapped_column(String(100))
    messages: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON(none_as_null=True))
    question: Mapped[str | None] = mapped_column(Text)
    context_ids: Mapped[list[str] | None] = mapped_column(JSON(none_as_null=True))
    answer: Mapped[str] = mapped_column(Text)
    latency_ms: Mapped[float | None] = mapped_column(Float)
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    completion_tokens: Mapped[int | None] = mapped_column(Integer)
    environment: Mapped[str] = mapped_column(String(40))
    metadata_: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON(none_as_null=True))
    request_hash: Mapped[str] = mapped_column(String(64))

    __table_args__ = (
        Index("ix_interactions_prompt", "prompt_name", "prompt_version"),
        Index("ix_interactions_model", "model"),
    )


class Feedback(Base):
    __tablename__ = "feedback"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    interaction_id: Mapped[str] = mapped_column(
        String(200), ForeignKey("interactions.id", ondelete="CASCADE"), index=True
    )
    kind: Mapped[str] = mapped_column(String(20))
    value_text: Mapped[str | None] = mapped_column(Text)
    value_num: Mapped[float | None] = mapped_column(Float)
    # thumbs up / rating >= 4: True; thumbs down / rating <= 3: False; other kinds: None.
    positive: Mapped[bool | None] = mapped_column(Boolean)
    comment: Mapped[str | None] = mapped_column(Text)
    user_id: Mapped[str | None] = mapped_column(String(200))
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    metadata_: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON(none_as_null=True))
    request_hash: Mapped[str] = mapped_column(String(64))
    langfuse_state: Mapped[int] = mapped_column(SmallInteger, default=LANGFUSE_PENDING)
    langfuse_attempts: Mapped[int] = mapped_column(Integer, default=0)
    langfuse_next_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        Index(
            "ix_feedback_langfuse_pending",
            "langfuse_state",
            postgresql_where="langfuse_state = 0",
            sqlite_where="langfuse_state = 0",
        ),
    )


class Preference(Base):
    __tablename__ = "preferences"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    source: Mapped[str] = mapped_column(String(20))  # "pair" or "correction"
    # The interaction that gives the pair its prompt, model and prompt version (the chosen one
    # of a pair, the corrected one of a correction): exports filter through it.
    interaction_id: Mapped[str] = mapped_column(
        String(200), ForeignKey("interactions.id", ondelete="CASCADE"), index=True
    )
    rejected_interaction_id: Mapped[str | None] = mapped_column(
        String(200), ForeignKey("interactions.id", ondelete="CASCADE")
    )
    feedback_id: Mapped[str | None] = mapped_column(String(36))
    prompt: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    chosen: Mapped[str] = mapped_column(Text)
    rejected: Mapped[str] = mapped_column(Text)
    user_id: Mapped[str | None] = mapped_column(String(200))
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    metadata_: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON(none_as_null=True))
    request_hash: Mapped[str] = mapped_column(String(64))
