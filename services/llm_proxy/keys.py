"""Virtual keys: stored hashed in SQL (SQLite or PostgreSQL), served from a short-TTL cache.

A key is shown once, at creation; only its SHA-256 is stored. The request path looks keys up in
memory; the database is asked at most once per key per ``key_cache_ttl_s`` (and only by one
request at a time), so revoking a key takes effect within that TTL on every replica.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    func,
    select,
    text,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from services.common import db
from services.common.auth import hash_key

log = logging.getLogger("llmops.llm_proxy.keys")

KEY_PREFIX = "sk-llmops-"


class Base(DeclarativeBase):
    pass


class VirtualKey(Base):
    __tablename__ = "virtual_keys"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    key_hint: Mapped[str] = mapped_column(String(32))
    name: Mapped[str | None] = mapped_column(String(200))
    aliases: Mapped[list[str] | None] = mapped_column(JSON)
    rpm: Mapped[int | None] = mapped_column(Integer)
    tpm: Mapped[int | None] = mapped_column(Integer)
    max_budget_usd: Mapped[float | None] = mapped_column(Float)
    spend_usd: Mapped[float] = mapped_column(Float, default=0.0)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    metadata_: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Spend(Base):
    """Running totals per key, alias and deployment, written in batches by :class:`SpendLog`."""

    __tablename__ = "spend"

    key_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("virtual_keys.id", ondelete="CASCADE"), primary_key=True
    )
    alias: Mapped[str] = mapped_column(String(200), primary_key=True)
    deployment: Mapped[str] = mapped_column(String(200), primary_key=True)
    requests: Mapped[int] = mapped_column(Integer, default=0)
    input_tokens: Mapped[int] = mapped_column(Integer, default=0)
    output_tokens: Mapped[int] = mapped_column(Integer, default=0)
    cost_usd: Mapped[float] = mapped_column(Float, default=0.0)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class SpendWriteError(Exception):
    """A spend batch was not confirmed written. ``txid``: its PostgreSQL transaction, which
    may have committed anyway (the answer to COMMIT lost); None: it surely did not."""

    def __init__(self, message: str, txid: int | None) -> None:
        super().__init__(message)
        self.txid = txid


def _aware(value: datetime | None) -> datetime | None:
    """SQLite hands datetimes back naive; they were written in UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


@dataclass(frozen=True)
class KeyRecord:
    """What the request path needs to know about a caller (no secret in it)."""

    id: str
    name: str | None
    aliases: frozenset[str] | None  # None: every alias
    rpm: int | None = None
    tpm: int | None = None
    max_budget_usd: float | None = None
    spend_usd: float = 0.0
    expires_at: datetime | None = None
    revoked: bool = False
    metadata: dict[str, Any] = field(default_factory=dict)
    admin: bool = False

    @classmethod
    def from_row(cls, row: VirtualKey) -> KeyRecord:
        return cls(
            id=row.id,
            name=row.name,
            aliases=None if row.aliases is None else frozenset(row.aliases),
            rpm=row.rpm,
            tpm=row.tpm,
            max_budget_usd=row.max_budget_usd,
            spend_usd=row.spend_usd or 0.0,
            expires_at=_aware(row.expires_at),
            revoked=row.revoked_at is not None,
            metadata=row.metadata_ or {},
        )

    def may_use(self, alias: str) -> bool:
        return self.aliases is None or alias in self.aliases

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and self.expires_at.timestamp() <= now


def key_view(row: VirtualKey) -> dict[str, Any]:
    """The admin API's view of a key: everything but the secret."""
    return {
        "id": row.id,
        "name": row.name,
        "key_hint": row.key_hint,
        "aliases": row.aliases,
        "rpm": row.rpm,
        "tpm": row.tpm,
        "max_budget_usd": row.max_budget_usd,
        "spend_usd": round(row.spend_usd or 0.0, 9),
        "expires_at": _iso(row.expires_at),
        "metadata": row.metadata_ or {},
        "created_at": _iso(row.created_at),
        "revoked_at": _iso(row.revoked_at),
    }


def _iso(value: datetime | None) -> str | None:
    value = _aware(value)
    return None if value is None else value.isoformat()


def make_engine(url: str) -> Engine:
    """SQLite (WAL lets the spend writer and key lookups run side by side) or PostgreSQL."""
    return db.make_engine(url)


class KeyStore:
    """Synchronous SQLAlchemy; the async app calls it through ``asyncio.to_thread``."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.sessions = sessionmaker(engine, expire_on_commit=False)

    def create(
        self,
        *,
        name: str | None,
        aliases: Sequence[str] | None,
        rpm: int | None,
        tpm: int | None,
        max_budget_usd: float | None,
        expires_at: datetime | None,
        metadata: dict[str, Any] | None,
    ) -> tuple[VirtualKey, str]:
        plain = KEY_PREFIX + secrets.token_urlsafe(32)
        row = VirtualKey(
            id=str(uuid.uuid4()),
            key_hash=hash_key(plain),
            key_hint=f"{plain[:14]}...{plain[-4:]}",
            name=name,
            aliases=list(aliases) if aliases is not None else None,
            rpm=rpm,
            tpm=tpm,
            max_budget_usd=max_budget_usd,
            spend_usd=0.0,
            expires_at=expires_at,
            metadata_=metadata,
            created_at=datetime.now(UTC),
        )
        with self.sessions.begin() as s:
            s.add(row)
        return row, plain

    def all(self, include_revoked: bool) -> list[VirtualKey]:
        with self.sessions() as s:
            q = select(VirtualKey).order_by(VirtualKey.created_at)
            if not include_revoked:
                q = q.where(VirtualKey.revoked_at.is_(None))
            return list(s.scalars(q))

    def get(self, key_id: str) -> VirtualKey | None:
        with self.sessions() as s:
            return s.get(VirtualKey, key_id)

    def revoke(self, key_id: str) -> tuple[VirtualKey | None, str | None]:
        """Returns the row and its hash (to drop from this replica's cache at once)."""
        with self.sessions.begin() as s:
            row = s.get(VirtualKey, key_id)
            if row is None:
                return None, None
            if row.revoked_at is None:
                row.revoked_at = datetime.now(UTC)
            return row, row.key_hash

    def lookup(self, key_hash: str) -> KeyRecord | None:
        with self.sessions() as s:
            row = s.scalars(select(VirtualKey).where(VirtualKey.key_hash == key_hash)).first()
            return None if row is None else KeyRecord.from_row(row)

    def spend(self, key_id: str | None) -> list[dict[str, Any]]:
        with self.sessions() as s:
            q = select(Spend).order_by(Spend.key_id, Spend.alias, Spend.deployment)
            if key_id is not None:
                q = q.where(Spend.key_id == key_id)
            return [
                {
                    "key_id": r.key_id,
                    "alias": r.alias,
                    "deployment": r.deployment,
                    "requests": r.requests,
                    "input_tokens": r.input_tokens,
                    "output_tokens": r.output_tokens,
                    "cost_usd": round(r.cost_usd, 9),
                }
                for r in s.scalars(q)
            ]

    def add_spend(self, rows: Iterable[tuple[str, str, str, int, int, int, float]]) -> None:
        """One transaction for the whole batch; an upsert per (key, alias, deployment).

        The sums are increments, so a batch written twice is counted twice. On PostgreSQL a
        failure carries the transaction's id (:class:`SpendWriteError`): if the connection was
        lost during COMMIT, :meth:`committed` tells whether the batch is in before any retry.
        """
        now = datetime.now(UTC)
        per_key: dict[str, float] = {}
        txid: int | None = None
        try:
            with self.sessions.begin() as s:
                if self.engine.dialect.name == "postgresql":
                    txid = int(s.execute(text("SELECT txid_current()")).scalar_one())
                insert = _insert_for(self.engine)
                for key_id, alias, deployment, requests, tin, tout, cost in rows:
                    stmt = insert(Spend).values(
                        key_id=key_id,
                        alias=alias,
                        deployment=deployment,
                        requests=requests,
                        input_tokens=tin,
                        output_tokens=tout,
                        cost_usd=cost,
                        updated_at=now,
                    )
                    stmt = stmt.on_conflict_do_update(
                        index_elements=["key_id", "alias", "deployment"],
                        set_={
                            "requests": Spend.requests + requests,
                            "input_tokens": Spend.input_tokens + tin,
                            "output_tokens": Spend.output_tokens + tout,
                            "cost_usd": Spend.cost_usd + cost,
                            "updated_at": now,
                        },
                    )
                    s.execute(stmt)
                    per_key[key_id] = per_key.get(key_id, 0.0) + cost
                for key_id, cost in per_key.items():
                    s.execute(
                        update(VirtualKey)
                        .where(VirtualKey.id == key_id)
                        .values(spend_usd=func.coalesce(VirtualKey.spend_usd, 0.0) + cost)
                    )
        except Exception as exc:
            raise SpendWriteError(str(exc), txid) from exc

    def committed(self, txid: int) -> bool | None:
        """Whether a PostgreSQL transaction committed; None while the server still has it in
        progress (it has not yet noticed that its client went away)."""
        with self.engine.connect() as conn:
            status = conn.execute(text("SELECT txid_status(:t)"), {"t": txid}).scalar()
        return None if status == "in progress" else status == "committed"

    def ping(self) -> bool:
        with self.engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
        return True


def _insert_for(engine: Engine) -> Any:
    if engine.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert


class KeyCache:
    """Key hash -> record, trusted for ``ttl_s``; a miss or an expired entry asks the store once.

    Unknown keys are cached too (so a client hammering with a bad key costs no DB queries). If
    the database is down when an entry expires, the stale entry keeps serving, logged, instead
    of locking every client out, for ``STALE_GRACE`` TTLs after the store last confirmed it
    (serving it stale does not extend that: a revocation made elsewhere still lands).
    """

    MAX_ENTRIES = 100_000
    STALE_GRACE = 12

    def __init__(self, store: KeyStore, ttl_s: float) -> None:
        self.store = store
        self.ttl_s = ttl_s
        # key hash -> (record, trusted until, the store's confirmation expired at)
        self._entries: dict[str, tuple[KeyRecord | None, float, float]] = {}
        self._pending: dict[str, asyncio.Future[KeyRecord | None]] = {}

    def forget(self, key_hash: str) -> None:
        self._entries.pop(key_hash, None)

    async def get(self, key_hash: str) -> KeyRecord | None:
        entry = self._entries.get(key_hash)
        now = time.monotonic()
        if entry is not None and entry[1] > now:
            return entry[0]
        pending = self._pending.get(key_hash)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[KeyRecord | None] = asyncio.get_running_loop().create_future()
        self._pending[key_hash] = future
        try:
            try:
                record = await asyncio.to_thread(self.store.lookup, key_hash)
                confirmed = time.monotonic() + self.ttl_s
            except Exception as exc:
                if entry is not None and entry[2] + self.ttl_s * self.STALE_GRACE > now:
                    log.warning("key store unreachable; serving a cached key: %s", exc)
                    record, confirmed = entry[0], entry[2]
                else:
                    raise
            if len(self._entries) >= self.MAX_ENTRIES:
                self._entries.clear()
            self._entries[key_hash] = (record, time.monotonic() + self.ttl_s, confirmed)
            future.set_result(record)
            return record
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: no "never retrieved" warning when nobody waits
            raise
        finally:
            del self._pending[key_hash]
