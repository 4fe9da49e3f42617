"""Reading the store: listings with filters and cursor paging, statistics, dataset exports.

Cursors are keyset cursors over ``(created_at, id)``: a page costs the same at row 10 and at
row 10 million, and rows written while a client pages never shift what it sees.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import ColumnElement, Select, and_, case, exists, func, or_, select
from sqlalchemy.engine import Engine

from services.common.errors import APIError
from services.common.pii import redact_value
from services.feedback.models import Feedback, Interaction, Preference
from services.feedback.store import as_utc, iso, prompt_of

Z95 = 1.959963984540054


@dataclass
class Filters:
    """What listings, stats and exports filter on (all optional, all combined with AND)."""

    since: datetime | None = None
    until: datetime | None = None
    prompt_name: str | None = None
    prompt_version: str | None = None
    model: str | None = None
    environment: str | None = None
    session_id: str | None = None
    user_id: str | None = None
    rating: int | None = None
    label: str | None = None
    kind: str | None = None
    interaction_id: str | None = None

    def on_interactions(self) -> list[ColumnElement[bool]]:
        """Conditions on :class:`Interaction` (time is the interaction's)."""
        c: list[ColumnElement[bool]] = []
        if self.since is not None:
            c.append(Interaction.created_at >= as_utc(self.since))
        if self.until is not None:
            c.append(Interaction.created_at < as_utc(self.until))
        for name in ("prompt_name", "prompt_version", "model", "environment", "session_id"):
            value = getattr(self, name)
            if value is not None:
                c.append(getattr(Interaction, name) == value)
        if self.rating is not None:
            c.append(
                exists().where(
                    Feedback.interaction_id == Interaction.id,
                    Feedback.kind == "rating",
                    Feedback.value_num == float(self.rating),
                )
            )
        if self.label is not None:
            c.append(
                exists().where(
                    Feedback.interaction_id == Interaction.id,
                    Feedback.kind == "label",
                    Feedback.value_text == self.label,
                )
            )
        return c


def encode_cursor(ts: datetime, ident: str) -> str:
    return base64.urlsafe_b64encode(orjson.dumps([iso(ts), ident])).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        ts, ident = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        return as_utc(datetime.fromisoformat(ts.replace("Z", "+00:00"))), str(ident)
    except Exception:
        raise APIError(
            400,
            "Invalid cursor: pass the 'next_cursor' of the previous page unchanged.",
            param="cursor",
            code="invalid_cursor",
        ) from None


def _after(created: Any, ident: Any, cursor: str | None, descending: bool) -> list[Any]:
    if cursor is None:
        return []
    ts, key = decode_cursor(cursor)
    if descending:
        return [or_(created < ts, and_(created == ts, ident < key))]
    return [or_(created > ts, and_(created == ts, ident > key))]


def _page(
    engine: Engine, q: Select[Any], limit: int, to_json: Any, created: str = "created_at"
) -> dict[str, Any]:
    with engine.connect() as conn:
        rows = list(conn.execute(q.limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    nxt = encode_cursor(getattr(rows[-1], created), rows[-1].id) if more and rows else None
    return {
        "object": "list",
        "data": [to_json(r) for r in rows],
        "has_more": more,
        "next_cursor": nxt,
    }


def interaction_json(r: Any) -> dict[str, Any]:
    return {
        "object": "interaction",
        "id": r.id,
        "trace_id": r.trace_id,
        "session_id": r.session_id,
        "user_id": r.user_id,
        "created_at": iso(r.created_at),
        "model": r.model,
        "deployment": r.deployment,
        "prompt_name": r.prompt_name,
        "prompt_version": r.prompt_version,
        "messages": r.messages,
        "question": r.question,
        "context_ids": r.context_ids,
        "answer": r.answer,
        "latency_ms": r.latency_ms,
        "usage": {"prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens},
        "environment": r.environment,
        "metadata": r.metadata,
    }


def feedback_json(r: Any) -> dict[str, Any]:
    value: Any = r.value_text
    if r.kind == "rating":
        value = int(r.value_num)
    return {
        "object": "feedback",
        "id": r.id,
        "interaction_id": r.interaction_id,
        "kind": r.kind,
        "value": value,
        "positive": r.positive,
        "comment": r.comment,
        "user_id": r.user_id,
        "idempotency_key": r.idempotency_key,
        "created_at": iso(r.created_at),
        "metadata": r.metadata,
    }


def preference_json(r: Any) -> dict[str, Any]:
    return {
        "object": "preference",
        "id": r.id,
        "source": r.source,
        "interaction_id": r.interaction_id,
        "rejected_interaction_id": r.rejected_interaction_id,
        "feedback_id": r.feedback_id,
        "prompt": r.prompt,
        "chosen": r.chosen,
        "rejected": r.rejected,
        "user_id": r.user_id,
        "created_at": iso(r.created_at),
        "metadata": r.metadata,
    }


_INTERACTION_COLS = [c for c in Interaction.__table__.columns if c.name != "request_hash"]
_FEEDBACK_COLS = [
    c for c in Feedback.__table__.columns if not c.name.startswith(("request_hash", "langfuse"))
]
_PREFERENCE_COLS = [c for c in Preference.__table__.columns if c.name != "request_hash"]


def list_interactions(engine: Engine, f: Filters, limit: int, cursor: str | None) -> dict[str, Any]:
    q = select(*_INTERACTION_COLS).where(*f.on_interactions())
    if f.user_id is not None:
        q = q.where(Interaction.user_id == f.user_id)
    q = q.where(*_after(Interaction.created_at, Interaction.id, cursor, True))
    q = q.order_by(Interaction.created_at.desc(), Interaction.id.desc())
    return _page(engine, q, limit, interaction_json)


def get_interaction(engine: Engine, interaction_id: str) -> dict[str, Any] | None:
    with engine.connect() as conn:
        row = conn.execute(
            select(*_INTERACTION_COLS).where(Interaction.id == interaction_id)
        ).first()
        if row is None:
            return None
        fb = conn.execute(
            select(*_FEEDBACK_COLS)
            .where(Feedback.interaction_id == interaction_id)
            .order_by(Feedback.created_at, Feedback.id)
        )
        out = interaction_json(row)
        out["feedback"] = [feedback_json(r) for r in fb]
        return out


def list_feedback(engine: Engine, f: Filters, limit: int, cursor: str | None) -> dict[str, Any]:
    q = select(*_FEEDBACK_COLS).join(Interaction, Interaction.id == Feedback.interaction_id)
    inter = Filters(**{**f.__dict__, "since": None, "until": None, "rating": None, "label": None})
    q = q.where(*inter.on_interactions())
    if f.since is not None:
        q = q.where(Feedback.created_at >= as_utc(f.since))
    if f.until is not None:
        q = q.where(Feedback.created_at < as_utc(f.until))
    if f.kind is not None:
        q = q.where(Feedback.kind == f.kind)
    if f.rating is not None:
        q = q.where(Feedback.kind == "rating", Feedback.value_num == float(f.rating))
    if f.label is not None:
        q = q.where(Feedback.kind == "label", Feedback.value_text == f.label)
    if f.user_id is not None:
        q = q.where(Feedback.user_id == f.user_id)
    if f.interaction_id is not None:
        q = q.where(Feedback.interaction_id == f.interaction_id)
    q = q.where(*_after(Feedback.created_at, Feedback.id, cursor, True))
    q = q.order_by(Feedback.created_at.desc(), Feedback.id.desc())
    return _page(engine, q, limit, feedback_json)


def list_preferences(engine: Engine, f: Filters, limit: int, cursor: str | None) -> dict[str, Any]:
    q = select(*_PREFERENCE_COLS).join(Interaction, Interaction.id == Preference.interaction_id)
    q = q.where(*f.on_interactions())
    q = q.where(*_after(Preference.created_at, Preference.id, cursor, True))
    q = q.order_by(Preference.created_at.desc(), Preference.id.desc())
    return _page(engine, q, limit, preference_json)


# -- statistics --------------------------------------------------------------------------------


def wilson(positive: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval: unlike the normal approximation it stays inside [0, 1] and
    behaves at small n and at rates near 0 or 1, which is where feedback data lives."""
    if n == 0:
        return 0.0, 0.0
    p = positive / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, center - half), min(1.0, center + half)


GROUPS = ("prompt_name", "prompt_version", "model", "day")


def _day(engine: Engine, col: Any) -> Any:
    if engine.dialect.name == "postgresql":
        return func.to_char(func.timezone("UTC", col), "YYYY-MM-DD")
    return func.strftime("%Y-%m-%d", col)


def stats(engine: Engine, f: Filters, group_by: list[str]) -> dict[str, Any]:
    """Counts and the positive rate (with its 95% Wilson interval) per group.

    A signal is a thumbs or a rating; each user's latest signal of each kind on an interaction
    counts once (changing one's mind is not two votes). Positive: thumbs up, or rating 4-5.
    Groups take the interaction's prompt, model and UTC day.
    """
    day = _day(engine, Interaction.created_at)
    dims = {
        "prompt_name": Interaction.prompt_name,
        "prompt_version": Interaction.prompt_version,
        "model": Interaction.model,
        "day": day,
    }
    keys = [dims[g].label(g) for g in group_by]
    where = f.on_interactions()

    latest = (
        select(
            Feedback.interaction_id,
            Feedback.kind,
            Feedback.positive,
            Feedback.value_num,
            func.row_number()
            .over(
                partition_by=(
                    Feedback.interaction_id,
                    func.coalesce(Feedback.user_id, Feedback.id),
                    Feedback.kind,
                ),
                order_by=(Feedback.created_at.desc(), Feedback.id.desc()),
            )
            .label("rn"),
        )
        .where(Feedback.positive.is_not(None))
        .subquery()
    )
    signals = (
        select(
            *keys,
            func.count().label("signals"),
            func.sum(case((latest.c.positive.is_(True), 1), else_=0)).label("positive"),
            func.sum(case((latest.c.kind == "thumbs", 1), else_=0)).label("thumbs"),
            func.sum(
                case((and_(latest.c.kind == "thumbs", latest.c.positive.is_(True)), 1), else_=0)
            ).label("thumbs_up"),
            func.sum(case((latest.c.kind == "rating", 1), else_=0)).label("ratings"),
            func.avg(case((latest.c.kind == "rating", latest.c.value_num))).label("mean_rating"),
        )
        .select_from(latest.join(Interaction, Interaction.id == latest.c.interaction_id))
        .where(latest.c.rn == 1, *where)
        .group_by(*keys)
    )
    counts = (
        select(*keys, Feedback.kind, func.count().label("n"))
        .select_from(
            Feedback.__table__.join(
                Interaction.__table__, Interaction.id == Feedback.interaction_id
            )
        )
        .where(*where)
        .group_by(*keys, Feedback.kind)
    )
    interactions = select(*keys, func.count().label("n")).where(*where).group_by(*keys)

    groups: dict[tuple[Any, ...], dict[str, Any]] = {}

    def group(row: Any) -> dict[str, Any]:
        key = tuple(getattr(row, g) for g in group_by)
        if key not in groups:
            groups[key] = {
                **dict(zip(group_by, key, strict=True)),
                "interactions": 0,
                "feedback": {},
                "signals": 0,
                "positive": 0,
                "thumbs_up": 0,
                "thumbs_down": 0,
                "ratings": 0,
                "mean_rating": None,
            }
        return groups[key]

    with engine.connect() as conn:
        for row in conn.execute(interactions):
            group(row)["interactions"] = row.n
        for row in conn.execute(counts):
            group(row)["feedback"][row.kind] = row.n
        for row in conn.execute(signals):
            g = group(row)
            g.update(
                signals=int(row.signals),
                positive=int(row.positive or 0),
                thumbs_up=int(row.thumbs_up or 0),
                thumbs_down=int(row.thumbs or 0) - int(row.thumbs_up or 0),
                ratings=int(row.ratings or 0),
                mean_rating=None if row.mean_rating is None else float(row.mean_rating),
            )
    data = []
    for key in sorted(groups, key=lambda k: tuple("" if v is None else str(v) for v in k)):
        g = groups[key]
        n, k = g["signals"], g["positive"]
        low, high = wilson(k, n)
        g["positive_rate"] = k / n if n else None
        g["ci95"] = [low, high] if n else None
        data.append(g)
    return {
        "object": "feedback.stats",
        "group_by": group_by,
        "confidence": 0.95,
        "method": "wilson",
        "data": data,
    }


# -- exports -----------------------------------------------------------------------------------

FORMATS = ("sft", "kto", "dpo")


def _assistant(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def export_count(engine: Engine, fmt: str, f: Filters) -> int:
    """How many rows the export will have at most (for a progress bar): the candidates."""
    with engine.connect() as conn:
        if fmt == "dpo":
            q = (
                select(func.count())
                .select_from(Preference)
                .join(Interaction, Interaction.id == Preference.interaction_id)
                .where(*f.on_interactions())
            )
        else:
            q = (
                select(func.count())
                .select_from(Interaction)
                .where(*f.on_interactions(), _has_signal())
            )
        return int(conn.execute(q).scalar_one())


def _has_signal() -> ColumnElement[bool]:
    return exists().where(
        Feedback.interaction_id == Interaction.id,
        or_(Feedback.positive.is_not(None), Feedback.kind == "correction"),
    )


def _chunks(
    engine: Engine, q: Select[Any], created: Any, ident: Any, size: int
) -> Iterator[list[Any]]:
    """The rows of ``q`` oldest first, ``size`` at a time, by keyset (each chunk a new query,
    so a long export holds no transaction open)."""
    after: tuple[datetime, str] | None = None
    while True:
        page = q
        if after is not None:
            ts, key = after
            page = page.where(or_(created > ts, and_(created == ts, ident > key)))
        with engine.connect() as conn:
            rows = list(conn.execute(page.order_by(created, ident).limit(size)))
        if not rows:
            return
        yield rows
        after = (rows[-1].created_at, rows[-1].id)


def _signals(engine: Engine, ids: list[str]) -> dict[str, list[Any]]:
    """Thumbs, ratings and corrections of these interactions, oldest first."""
    q = (
        select(
            Feedback.interaction_id,
            Feedback.kind,
            Feedback.positive,
            Feedback.value_text,
            Feedback.user_id,
            Feedback.id,
        )
        .where(
            Feedback.interaction_id.in_(ids),
            or_(Feedback.positive.is_not(None), Feedback.kind == "correction"),
        )
        .order_by(Feedback.created_at, Feedback.id)
    )
    out: dict[str, list[Any]] = {}
    with engine.connect() as conn:
        for row in conn.execute(q):
            out.setdefault(row.interaction_id, []).append(row)
    return out


def _lines(fmt: str, inter: Any, feedback: list[Any]) -> Iterator[dict[str, Any]]:
    prompt = prompt_of(inter)
    latest: dict[tuple[str, str], Any] = {}  # per (user, kind): later rows overwrite earlier
    for row in feedback:
        latest[(row.user_id or row.id, row.kind)] = row
    signals = [r for r in latest.values() if r.kind != "correction"]
    corrections = [r for r in latest.values() if r.kind == "correction"]
    if fmt == "sft":
        if corrections:
            yield {"messages": prompt + _assistant(corrections[-1].value_text)}
        elif signals and all(r.positive for r in signals):
            yield {"messages": prompt + _assistant(inter.answer)}
        return
    for r in signals:
        yield {"prompt": prompt, "completion": _assistant(inter.answer), "label": bool(r.positive)}
    for r in corrections:
        yield {"prompt": prompt, "completion": _assistant(r.value_text), "label": True}


def export_rows(
    engine: Engine, fmt: str, f: Filters, chunk: int = 500, redact_pii: bool = False
) -> Iterator[list[bytes]]:
    """JSONL lines in TRL's conversational formats, a chunk at a time (oldest first).

    * sft: ``{"messages": [...prompt, assistant]}``: answers someone liked and nobody disliked,
      and corrections (the corrected answer replaces the original).
    * kto: ``{"prompt", "completion", "label"}``: each user's latest thumbs/rating as a label
      on the answer; a correction adds the corrected answer labelled true.
    * dpo: ``{"prompt", "chosen", "rejected"}``: preference pairs and corrections.

    ``redact_pii``: every string of a row (the messages' contents, completions, corrections)
    with its PII replaced by placeholders (``[EMAIL]``...); keys and roles stay as they are.
    """
    dump = _redacted_dump if redact_pii else orjson.dumps
    if fmt == "dpo":
        q = select(
            Preference.id,
            Preference.created_at,
            Preference.prompt,
            Preference.chosen,
            Preference.rejected,
        ).join(Interaction, Interaction.id == Preference.interaction_id)
        for rows in _chunks(
            engine, q.where(*f.on_interactions()), Preference.created_at, Preference.id, chunk
        ):
            yield [
                dump(
                    {
                        "prompt": r.prompt,
                        "chosen": _assistant(r.chosen),
                        "rejected": _assistant(r.rejected),
                    }
                )
                for r in rows
            ]
        return
    q = select(
        Interaction.id,
        Interaction.created_at,
        Interaction.messages,
        Interaction.question,
        Interaction.answer,
    ).where(*f.on_interactions(), _has_signal())
    for inters in _chunks(engine, q, Interaction.created_at, Interaction.id, chunk):
        feedback = _signals(engine, [i.id for i in inters])
        yield [dump(row) for i in inters for row in _lines(fmt, i, feedback.get(i.id, []))]


def _redacted_dump(row: dict[str, Any]) -> bytes:
    return orjson.dumps(redact_value(row))
