"""Request bodies, and how each becomes rows with their keys fixed at acceptance.

The request hash is taken over what the client sent (not the defaults filled in here), so a
replay of the same body matches and a different body under the same key is a conflict (409).
"""

from __future__ import annotations

import hashlib
import re
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import orjson
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from services.common.errors import APIError
from services.common.tracing import trace_id_for
from services.common.validation import INT4_MAX

ID_PATTERN = r"^[A-Za-z0-9._:\-]+$"
# Langfuse's rule for environments, so the value forwards unchanged.
ENV_PATTERN = re.compile(r"^(?!langfuse)[a-z0-9_-]{1,40}$")
KINDS = ("thumbs", "rating", "label", "comment", "correction")
# Feedback ids derive from idempotency keys in this namespace (and preference ids likewise).
NAMESPACE = uuid.UUID("5b0c0e7a-3f5e-4d8e-9d43-7f1c2a6b9e10")
MAX_BATCH = 1000

Id = Field(min_length=1, max_length=200, pattern=ID_PATTERN)
OptionalText = Field(None, max_length=200)


def request_hash(model: BaseModel) -> str:
    sent = model.model_dump(mode="json", exclude_unset=True)
    return hashlib.sha256(orjson.dumps(sent, option=orjson.OPT_SORT_KEYS)).hexdigest()


def utc(ts: datetime | None, now: datetime) -> datetime:
    if ts is None:
        return now
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


def utc_representable(ts: datetime) -> datetime:
    """An offset can push a date-time past year 9999 (or before year 1) once it is converted to
    UTC, which every timestamp here is: refused as a 400, not an OverflowError's 500."""
    try:
        utc(ts, ts)
    except OverflowError:
        raise ValueError(
            "out of range once converted to UTC; use a date-time between years 1 and 9999"
        ) from None
    return ts


Timestamp = Annotated[datetime, AfterValidator(utc_representable)]


def refuse_nul(model: BaseModel, where: str = "") -> None:
    """The top-level strings of a body go to text columns, where PostgreSQL cannot store a NUL:
    refused at acceptance, so no write is answered 201 (or spooled, 202) and refused later."""
    for name, value in model:
        if isinstance(value, str) and "\x00" in value:
            raise APIError(
                400,
                f"'{where}{name}' contains a NUL character (\\u0000), which cannot be stored; "
                "remove it.",
                param=f"{where}{name}",
                code="invalid_value",
            )


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None


class Usage(BaseModel):
    model_config = ConfigDict(extra="allow")

    prompt_tokens: int | None = Field(None, ge=0, le=INT4_MAX)
    completion_tokens: int | None = Field(None, ge=0, le=INT4_MAX)


class InteractionIn(BaseModel):
    """One question and its answer, as the RAG service (or any client) recorded it."""

    model_config = ConfigDict(extra="forbid")

    id: str = Id
    trace_id: str | None = Field(None, min_length=1, max_length=64, pattern=ID_PATTERN)
    session_id: str | None = OptionalText
    user_id: str | None = OptionalText
    created_at: Timestamp | None = None
    model: str | None = OptionalText
    deployment: str | None = OptionalText
    prompt_name: str | None = OptionalText
    prompt_version: str | None = Field(None, max_length=100)
    messages: list[Message] | None = Field(
        None, max_length=1000, description="The conversation sent to the model, without the answer."
    )
    question: str | None = Field(None, max_length=100_000)
    context_ids: list[str] | None = Field(None, max_length=1000)
    answer: str = Field(max_length=1_000_000)
    latency_ms: float | None = Field(None, ge=0)
    usage: Usage | None = None
    environment: str | None = Field(None, max_length=40)
    metadata: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _prompt_given(self) -> InteractionIn:
        if not self.messages and not self.question:
            raise ValueError("send 'messages' (the conversation) or 'question' (or both)")
        if self.environment is not None and not ENV_PATTERN.match(self.environment):
            raise ValueError(
                "'environment' must be 1-40 lowercase letters, digits, '-' or '_' "
                "(e.g. staging, production), not starting with 'langfuse'"
            )
        return self

    def row(self, now: datetime, default_environment: str) -> dict[str, Any]:
        refuse_nul(self)
        usage = self.usage or Usage()
        return {
            "id": self.id,
            "trace_id": self.trace_id or trace_id_for(self.id),
            "session_id": self.session_id,
            "user_id": self.user_id,
            "created_at": utc(self.created_at, now).isoformat(),
            "received_at": now.isoformat(),
            "model": self.model,
            "deployment": self.deployment,
            "prompt_name": self.prompt_name,
            "prompt_version": self.prompt_version,
            "messages": None
            if self.messages is None
            else [m.model_dump(exclude_none=True) for m in self.messages],
            "question": self.question,
            "context_ids": self.context_ids,
            "answer": self.answer,
            "latency_ms": self.latency_ms,
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "environment": self.environment or default_environment,
            "metadata": self.metadata,
            "request_hash": request_hash(self),
        }


class FeedbackIn(BaseModel):
    """One signal on one interaction: thumbs, a 1-5 rating, a label, a comment or a correction."""

    model_config = ConfigDict(extra="forbid")

    interaction_id: str = Id
    kind: str = Field(description="thumbs | rating | label | comment | correction")
    value: str | int | float | bool = Field(
        description="thumbs: 'up'/'down' (or true/false); rating: 1-5; label: the label; "
        "comment: the text; correction: the better answer."
    )
    comment: str | None = Field(None, max_length=10_000)
    user_id: str | None = OptionalText
    idempotency_key: str | None = Field(None, min_length=1, max_length=200)
    created_at: Timestamp | None = None
    metadata: dict[str, Any] | None = None

    def row(self, now: datetime, where: str = "") -> dict[str, Any]:
        """The row, or a 400 naming the field (``where`` is the item's place in a batch)."""
        refuse_nul(self, where)
        text, num, positive = _kind_value(self.kind, self.value, where)
        fid = (
            str(uuid.uuid5(NAMESPACE, "feedback:" + self.idempotency_key))
            if self.idempotency_key
            else str(uuid.uuid4())
        )
        return {
            "id": fid,
            "interaction_id": self.interaction_id,
            "kind": self.kind,
            "value_text": text,
            "value_num": num,
            "positive": positive,
            "comment": self.comment,
            "user_id": self.user_id,
            "idempotency_key": self.idempotency_key,
            "created_at": utc(self.created_at, now).isoformat(),
            "received_at": now.isoformat(),
            "metadata": self.metadata,
            "request_hash": request_hash(self),
        }


def _kind_value(
    kind: str, value: str | float | bool, where: str
) -> tuple[str | None, float | None, bool | None]:
    param = f"{where}value"
    if kind == "thumbs":
        if value is True or value == "up":
            return "up", 1.0, True
        if value is False or value == "down":
            return "down", 0.0, False
        raise APIError(
            400,
            "A thumbs value is 'up' or 'down' (or true/false).",
            param=param,
            code="invalid_value",
        )
    if kind == "rating":
        if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
            raise APIError(
                400, "A rating is a whole number from 1 to 5.", param=param, code="invalid_value"
            )
        if not 1 <= value <= 5:
            raise APIError(
                400,
                f"Rating {value:g} is out of range: use a whole number from 1 to 5.",
                param=param,
                code="invalid_value",
            )
        return None, float(value), value >= 4
    if kind in ("label", "comment", "correction"):
        limit = {"label": 100, "comment": 10_000, "correction": 1_000_000}[kind]
        if not isinstance(value, str) or not value.strip():
            raise APIError(
                400, f"A {kind} value is a non-empty string.", param=param, code="invalid_value"
            )
        if len(value) > limit:
            raise APIError(
                400,
                f"A {kind} is at most {limit} characters; this one has {len(value)}.",
                param=param,
                code="invalid_value",
            )
        return value, None, None
    raise APIError(
        400,
        f"Unknown feedback kind {kind!r}: use one of {', '.join(KINDS)}.",
        param=f"{where}kind",
        code="unknown_kind",
    )


class PreferenceIn(BaseModel):
    """A pair (two interactions on the same prompt) or a correction against an answer."""

    model_config = ConfigDict(extra="forbid")

    chosen_interaction_id: str | None = Field(None, min_length=1, max_length=200)
    rejected_interaction_id: str | None = Field(None, min_length=1, max_length=200)
    interaction_id: str | None = Field(None, min_length=1, max_length=200)
    correction: str | None = Field(None, min_length=1, max_length=1_000_000)
    user_id: str | None = OptionalText
    idempotency_key: str | None = Field(None, min_length=1, max_length=200)
    created_at: Timestamp | None = None
    metadata: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _one_shape(self) -> PreferenceIn:
        pair = self.chosen_interaction_id is not None or self.rejected_interaction_id is not None
        corr = self.interaction_id is not None or self.correction is not None
        if (
            pair == corr
            or (pair and not (self.chosen_interaction_id and self.rejected_interaction_id))
            or (corr and not (self.interaction_id and self.correction))
        ):
            raise ValueError(
                "send either 'chosen_interaction_id' and 'rejected_interaction_id' (a pair), "
                "or 'interaction_id' and 'correction' (a better answer to that interaction)"
            )
        if pair and self.chosen_interaction_id == self.rejected_interaction_id:
            raise ValueError("the chosen and the rejected interaction are the same one")
        return self

    def row(self, now: datetime) -> dict[str, Any]:
        refuse_nul(self)
        pid = (
            str(uuid.uuid5(NAMESPACE, "preference:" + self.idempotency_key))
            if self.idempotency_key
            else str(uuid.uuid4())
        )
        pair = self.chosen_interaction_id is not None
        return {
            "id": pid,
            "source": "pair" if pair else "correction",
            "interaction_id": self.chosen_interaction_id if pair else self.interaction_id,
            "rejected_interaction_id": self.rejected_interaction_id,
            "feedback_id": None,
            "correction": self.correction,  # resolved into chosen/rejected when written
            "user_id": self.user_id,
            "idempotency_key": self.idempotency_key,
            "created_at": utc(self.created_at, now).isoformat(),
            "received_at": now.isoformat(),
            "metadata": self.metadata,
            "request_hash": request_hash(self),
        }


def correction_preference_id(feedback_id: str) -> str:
    return str(uuid.uuid5(NAMESPACE, "correction:" + feedback_id))
