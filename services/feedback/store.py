"""Writing batches of accepted operations in one transaction (the group commit's database side).

An *op* is one accepted request: ``{"op": "interaction" | "feedback" | "preference", "rows":
[...]}`` with every key already fixed. The same op is written directly, or first to the spool
and later here; in both cases inserting a row whose key exists is a no-op, so each lands once.
Ops fail one by one (404 unknown interaction, 409 same key with another body), never the batch.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Table, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from services.feedback.models import Feedback, Interaction, Preference
from services.feedback.schemas import correction_preference_id

Op = dict[str, Any]
_DATES = ("created_at", "received_at")

INTERACTIONS: Table = Interaction.__table__  # type: ignore[assignment]
FEEDBACK: Table = Feedback.__table__  # type: ignore[assignment]
PREFERENCES: Table = Preference.__table__  # type: ignore[assignment]


@dataclass
class Outcome:
    """What the client of one op is told: HTTP status and body."""

    status: int
    body: dict[str, Any]
    message: str | None = None
    code: str | None = None
    param: str | None = None


@dataclass
class Written:
    """What a batch wrote, for the metrics (counted only once the transaction committed)."""

    interactions: list[dict[str, Any]] = field(default_factory=list)
    feedback: list[tuple[dict[str, Any], dict[str, Any]]] = field(default_factory=list)
    preferences: int = 0


def as_utc(ts: datetime) -> datetime:
    """SQLite hands timestamps back naive; every timestamp here is UTC."""
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


def iso(ts: datetime) -> str:
    return as_utc(ts).isoformat().replace("+00:00", "Z")


def _db_row(row: dict[str, Any], columns: Iterable[str]) -> dict[str, Any]:
    out = {k: row.get(k) for k in columns}
    for k in _DATES:
        value = out.get(k)
        if isinstance(value, str):
            out[k] = datetime.fromisoformat(value)
    return out


def _insert(conn: Connection, table: Table, rows: Sequence[dict[str, Any]]) -> set[str]:
    """Insert, skipping keys that exist; the ids actually inserted."""
    if not rows:
        return set()
    dialect = conn.dialect.name
    ins = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = ins(table).on_conflict_do_nothing(index_elements=["id"]).returning(table.c.id)
    cols = [c.name for c in table.columns if c.name in rows[0]]  # the rest: column defaults
    data = [_db_row(r, cols) for r in rows]
    return {r[0] for r in conn.execute(stmt, data)}


def _existing(conn: Connection, table: Table, ids: Iterable[str]) -> dict[str, Any]:
    wanted = sorted(set(ids))
    out: dict[str, Any] = {}
    for start in range(0, len(wanted), 1000):
        chunk = wanted[start : start + 1000]
        for row in conn.execute(select(table).where(table.c.id.in_(chunk))):
            out[row.id] = row
    return out


def interaction_result(row: Any) -> dict[str, Any]:
    return {
        "object": "interaction",
        "id": row.id if not isinstance(row, dict) else row["id"],
        "trace_id": row.trace_id if not isinstance(row, dict) else row["trace_id"],
    }


def feedback_result(row: Any) -> dict[str, Any]:
    get = row.get if isinstance(row, dict) else row._mapping.get
    return {
        "object": "feedback",
        "id": get("id"),
        "interaction_id": get("interaction_id"),
        "kind": get("kind"),
    }


def preference_result(row: Any) -> dict[str, Any]:
    get = row.get if isinstance(row, dict) else row._mapping.get
    return {"object": "preference", "id": get("id"), "source": get("source")}


def _conflict(what: str, key: str, param: str) -> Outcome:
    return Outcome(
        409,
        {},
        f"{what} {key!r} was already recorded with a different body; a replay must send the "
        "same body (use a new key for a new write).",
        "idempotency_conflict",
        param,
    )


def _unknown(interaction_id: str, param: str) -> Outcome:
    return Outcome(
        404,
        {},
        f"No interaction {interaction_id!r}: record it with POST /v1/interactions first.",
        "interaction_not_found",
        param,
    )


def prompt_of(inter: Any) -> list[dict[str, Any]]:
    """The conversation an interaction answered, in chat form (TRL's conversational format)."""
    get = inter.get if isinstance(inter, dict) else inter._mapping.get
    messages = get("messages")
    if messages:
        return list(messages)
    return [{"role": "user", "content": get("question") or ""}]


def apply(conn: Connection, ops: Sequence[Op]) -> tuple[list[Outcome], Written]:
    """Write a batch in the caller's transaction; one outcome per op, in order."""
    outcomes: list[Outcome | None] = [None] * len(ops)
    written = Written()

    # 1. Interactions: one row per op; the first of several with one id in a batch wins.
    inter_rows: dict[str, dict[str, Any]] = {}
    for op in ops:
        if op["op"] == "interaction":
            row = op["rows"][0]
            inter_rows.setdefault(row["id"], row)
    inserted = _insert(conn, INTERACTIONS, list(inter_rows.values()))
    written.interactions = [r for i, r in inter_rows.items() if i in inserted]
    others = {i for i in inter_rows if i not in inserted}
    prior = _existing(conn, INTERACTIONS, others) if others else {}
    for n, op in enumerate(ops):
        if op["op"] != "interaction":
            continue
        row = op["rows"][0]
        stored = prior.get(row["id"])
        first = inter_rows[row["id"]]
        if stored is None and first is row and row["id"] in inserted:
            outcomes[n] = Outcome(201, interaction_result(row))
            continue
        original_hash = stored.request_hash if stored is not None else first["request_hash"]
        if original_hash != row["request_hash"]:
            outcomes[n] = _conflict("Interaction", row["id"], "id")
        else:
            outcomes[n] = Outcome(200, interaction_result(stored if stored is not None else first))

    # 2. The interactions that feedback and preferences refer to.
    refs: set[str] = set()
    for op in ops:
        if op["op"] == "feedback":
            refs.update(r["interaction_id"] for r in op["rows"])
        elif op["op"] == "preference":
            row = op["rows"][0]
            refs.add(row["interaction_id"])
            if row.get("rejected_interaction_id"):
                refs.add(row["rejected_interaction_id"])
    known = _existing(conn, INTERACTIONS, refs) if refs else {}

    # 3. Feedback: an op (a batch from one request) is written whole or not at all.
    fb_ids = [r["id"] for op in ops if op["op"] == "feedback" for r in op["rows"]]
    fb_prior = _existing(conn, FEEDBACK, fb_ids) if fb_ids else {}
    fb_new: dict[str, dict[str, Any]] = {}
    pref_new: dict[str, dict[str, Any]] = {}
    fb_outcome_rows: dict[int, list[Any]] = {}
    for n, op in enumerate(ops):
        if op["op"] != "feedback":
            continue
        batch = op.get("batch", False)
        results: list[Any] = []
        failure: Outcome | None = None
        for i, row in enumerate(op["rows"]):
            where = f"[{i}]." if batch else ""
            if row["interaction_id"] not in known:
                failure = _unknown(row["interaction_id"], f"{where}interaction_id")
                break
            stored = fb_prior.get(row["id"]) or fb_new.get(row["id"])
            if stored is not None:
                stored_hash = (
                    stored["request_hash"] if isinstance(stored, dict) else stored.request_hash
                )
                if stored_hash != row["request_hash"]:
                    failure = _conflict(
                        "Feedback idempotency key",
                        row["idempotency_key"],
                        f"{where}idempotency_key",
                    )
                    break
                results.append(stored)
            else:
                results.append(row)
        if failure is not None:
            outcomes[n] = failure
            continue
        for row in results:
            if isinstance(row, dict) and row["id"] not in fb_new and row["id"] not in fb_prior:
                fb_new[row["id"]] = row
                if row["kind"] == "correction":
                    inter = known[row["interaction_id"]]
                    pid = correction_preference_id(row["id"])
                    pref_new[pid] = {
                        "id": pid,
                        "source": "correction",
                        "interaction_id": row["interaction_id"],
                        "rejected_interaction_id": None,
                        "feedback_id": row["id"],
                        "prompt": prompt_of(inter),
                        "chosen": row["value_text"],
                        "rejected": inter.answer,
                        "user_id": row["user_id"],
                        "idempotency_key": None,
                        "created_at": row["created_at"],
                        "received_at": row["received_at"],
                        "metadata": None,
                        "request_hash": row["request_hash"],
                    }
        fb_outcome_rows[n] = results
    fb_inserted = _insert(conn, FEEDBACK, list(fb_new.values()))
    for fid in fb_inserted:
        row = fb_new[fid]
        written.feedback.append((row, known[row["interaction_id"]]._asdict()))
    for n, results in fb_outcome_rows.items():
        fresh = any(isinstance(r, dict) and r["id"] in fb_inserted for r in results)
        data = [feedback_result(r) for r in results]
        if ops[n].get("batch"):
            outcomes[n] = Outcome(201 if fresh else 200, {"object": "list", "data": data})
        else:
            outcomes[n] = Outcome(201 if fresh else 200, data[0])

    # 4. Preferences.
    pref_ids = [op["rows"][0]["id"] for op in ops if op["op"] == "preference"]
    pref_prior = _existing(conn, PREFERENCES, pref_ids) if pref_ids else {}
    pref_ops: dict[int, dict[str, Any]] = {}
    for n, op in enumerate(ops):
        if op["op"] != "preference":
            continue
        row = dict(op["rows"][0])
        stored = pref_prior.get(row["id"])
        if stored is not None or row["id"] in pref_new:
            original = (
                stored.request_hash if stored is not None else pref_new[row["id"]]["request_hash"]
            )
            outcomes[n] = (
                Outcome(200, preference_result(stored if stored is not None else row))
                if original == row["request_hash"]
                else _conflict(
                    "Preference idempotency key", row["idempotency_key"], "idempotency_key"
                )
            )
            continue
        param = "chosen_interaction_id" if row["source"] == "pair" else "interaction_id"
        chosen = known.get(row["interaction_id"])
        if chosen is None:
            outcomes[n] = _unknown(row["interaction_id"], param)
            continue
        correction = row.pop("correction", None)
        if row["source"] == "pair":
            rejected = known.get(row["rejected_interaction_id"])
            if rejected is None:
                outcomes[n] = _unknown(row["rejected_interaction_id"], "rejected_interaction_id")
                continue
            if prompt_of(chosen) != prompt_of(rejected):
                outcomes[n] = Outcome(
                    400,
                    {},
                    f"Interactions {chosen.id!r} and {rejected.id!r} answer different prompts; "
                    "a preference pair compares two answers to the same prompt.",
                    "prompt_mismatch",
                    "rejected_interaction_id",
                )
                continue
            row.update(prompt=prompt_of(chosen), chosen=chosen.answer, rejected=rejected.answer)
        else:
            row.update(prompt=prompt_of(chosen), chosen=correction, rejected=chosen.answer)
        pref_new[row["id"]] = row
        pref_ops[n] = row
    pref_inserted = _insert(conn, PREFERENCES, list(pref_new.values()))
    written.preferences = len(pref_inserted)
    for n, row in pref_ops.items():
        outcomes[n] = Outcome(201 if row["id"] in pref_inserted else 200, preference_result(row))

    final: list[Outcome] = []
    for n, maybe in enumerate(outcomes):
        if maybe is None:
            maybe = Outcome(400, {}, f"Unknown operation {ops[n]['op']!r}.", "invalid_op")
        final.append(maybe)
    return final, written
