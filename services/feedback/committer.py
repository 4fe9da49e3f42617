"""Group commit, and the switch to the spool when the database is unreachable.

One task owns every write. It takes all the ops waiting (up to ``max_batch``) and writes them
in one transaction in a worker thread, so 32 concurrent clients cost one round of SQL and one
commit, not 32. Modes:

* ``direct``: ops go to the database; the client hears 201/200 once the commit returned.
* ``spooling``: the database failed; ops go to the spool (one fsync per batch) and clients hear
  202. The database is probed every ``probe_interval_s``.
* ``draining``: the database answers again; the spool is written to it a chunk at a time. New
  ops still go to the spool behind the old ones, so feedback never overtakes the interaction it
  is about. When the spool is empty the mode is ``direct`` again.

A commit whose answer was lost (the connection died after COMMIT was sent) is spooled as well:
writing it again is a no-op, because every key was fixed when the op was accepted.

Feedback drained before its interaction exists (the interaction waits in another pod's spool,
or in a rag outbox) is not dead-lettered at once: it goes to the *deferred* spool and is tried
again every ``orphan_retry_s`` until ``orphan_window_s`` after it was accepted. At a stop, the
spool is written to the database if it answers (within the drain budget), so a pod removed by
a scale-down leaves nothing behind on its volume.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal

from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from sqlalchemy.engine import Engine

from services.common.spool import Segment, Spool
from services.feedback.store import Op, Outcome, Written, apply

log = logging.getLogger("llmops.feedback.committer")

Mode = Literal["direct", "spooling", "draining"]
_OUTAGE = (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError)


def is_outage(exc: BaseException) -> bool:
    if isinstance(exc, _OUTAGE):
        return True
    return isinstance(exc, sa_exc.DBAPIError) and bool(exc.connection_invalidated)


class Committer:
    def __init__(
        self,
        engine: Engine,
        spool: Spool,
        *,
        on_written: Callable[[Written], None],
        on_mode: Callable[[Mode], None],
        on_spool: Callable[[Spool, int], None],  # the spool, and how many ops just went in
        on_rejected: Callable[[str], None],
        max_batch: int = 512,
        drain_chunk: int = 500,
        probe_interval_s: float = 1.0,
        prepare: Callable[[], None] | None = None,
        deferred: Spool | None = None,
        orphan_window_s: float = 6 * 3600,
        orphan_retry_s: float = 10.0,
    ) -> None:
        self.engine = engine
        self.spool = spool
        self.on_written = on_written
        self.on_mode = on_mode
        self.on_spool = on_spool
        self.on_rejected = on_rejected
        self.max_batch = max_batch
        self.drain_chunk = drain_chunk
        self.probe_interval_s = probe_interval_s
        # Run once the database answers, before anything is written (the migrations, when
        # the service started while the database was down).
        self.prepare = prepare
        self.deferred = deferred
        self.orphan_window_s = orphan_window_s
        self.orphan_retry_s = orphan_retry_s
        self._next_retry = time.monotonic() + orphan_retry_s
        self.queue: asyncio.Queue[tuple[Op, asyncio.Future[Outcome]]] = asyncio.Queue()
        self.mode: Mode = "direct"
        self.last_error: str | None = None
        self.prepare_error: Exception | None = None  # why ``prepare`` last failed
        self._task: asyncio.Task[None] | None = None
        self._next_probe = 0.0

    # -- the public side ---------------------------------------------------------------------------

    def start(self, *, database_up: bool = True) -> asyncio.Task[None]:
        if not database_up:
            self._set_mode("spooling")
        elif self.spool.has_pending():
            self._set_mode("draining")  # a previous life left ops behind: they go first
        self._task = asyncio.create_task(self._run(), name="feedback-committer")
        return self._task

    async def stop(self, budget_s: float = 30.0) -> None:
        """Finish what was accepted (written or spooled), write the spool to the database if it
        answers, then stop; all within ``budget_s``. What is left stays on the volume."""
        if self._task is None:
            return
        deadline = time.monotonic() + budget_s
        try:
            await asyncio.wait_for(self.queue.join(), budget_s)
        except TimeoutError:
            log.error("stopping with %d accepted ops unanswered", self.queue.qsize())
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        left = deadline - time.monotonic()
        if left > 0 and (self.mode != "direct" or self.spool.has_pending()):
            try:
                await asyncio.wait_for(self._final_drain(), left)
            except Exception as exc:  # the spool stays for the next life of this pod
                log.warning("spool not drained at stop (%s): %d ops kept", exc, self.spool.depth)
        self.spool.close()
        if self.deferred is not None:
            self.deferred.close()

    async def _final_drain(self) -> None:
        if self.mode == "spooling":
            await asyncio.to_thread(self._probe)
            if self.prepare is not None:
                await asyncio.to_thread(self.prepare)
                self.prepare = None
        self._set_mode("draining")
        while self.mode == "draining":
            await self._drain_some()

    async def submit(self, op: Op) -> Outcome:
        op.setdefault("at", time.time())
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self.queue.put_nowait((op, future))
        return await asyncio.shield(future)

    # -- the loop ----------------------------------------------------------------------------------

    def _set_mode(self, mode: Mode) -> None:
        if mode != self.mode:
            log.warning("write mode %s -> %s", self.mode, mode, extra={"error": self.last_error})
            self.mode = mode
        self.on_mode(mode)

    def _take_nowait(
        self, first: tuple[Op, asyncio.Future[Outcome]] | None = None
    ) -> list[tuple[Op, asyncio.Future[Outcome]]]:
        items = [first] if first is not None else []
        while len(items) < self.max_batch:
            try:
                items.append(self.queue.get_nowait())
            except asyncio.QueueEmpty:
                break
        return items

    def _done(self, items: Sequence[tuple[Op, asyncio.Future[Outcome]]]) -> None:
        for _ in items:
            self.queue.task_done()

    async def _run(self) -> None:
        while True:
            try:
                if self.mode == "direct":
                    try:
                        first = await asyncio.wait_for(self.queue.get(), self._retry_wait())
                    except TimeoutError:
                        await self._retry_deferred()
                        continue
                    items = self._take_nowait(first)
                    await self._write(items)
                else:
                    await self._recover()
                    if self.mode != "direct":  # type: ignore[comparison-overlap]
                        try:
                            first = await asyncio.wait_for(
                                self.queue.get(), timeout=self._idle_wait()
                            )
                        except TimeoutError:
                            continue
                        await self._to_spool(self._take_nowait(first))
            except asyncio.CancelledError:
                raise
            except Exception:  # the loop must survive anything; the clients hear a 500
                log.exception("committer loop error")
                await asyncio.sleep(0.1)

    def _retry_wait(self) -> float | None:
        """How long direct mode may wait for a write before the deferred ops are due."""
        # The depth, not the folder: this runs before every batch of direct writes.
        if self.deferred is None or self.deferred.depth == 0:
            return None
        return max(0.0, self._next_retry - time.monotonic())

    def _idle_wait(self) -> float:
        if self.mode == "draining":
            return 0.0 if self.queue.empty() else 0.001
        return max(0.01, self._next_probe - time.monotonic())

    async def _write(self, items: list[tuple[Op, asyncio.Future[Outcome]]]) -> None:
        ops = [op for op, _ in items]
        try:
            outcomes, written = await asyncio.to_thread(self._transaction, ops)
        except Exception as exc:
            if self._outage(exc):
                await self._to_spool(items)
                return
            # One op the database refuses must not fail its batch-mates: write them one by one.
            log.warning("batch refused (%s); writing its ops one by one", type(exc).__name__)
            for item in items:
                await self._write_one(item)
            return
        self.on_written(written)
        for (_, future), outcome in zip(items, outcomes, strict=True):
            if not future.done():
                future.set_result(outcome)
        self._done(items)

    async def _write_one(self, item: tuple[Op, asyncio.Future[Outcome]]) -> None:
        op, future = item
        try:
            outcomes, written = await asyncio.to_thread(self._transaction, [op])
        except Exception as exc:
            if is_outage(exc):
                self._set_mode("spooling")
                await self._to_spool([item])
                return
            log.exception("write refused by the database")
            status = 400 if isinstance(exc, sa_exc.DataError) else 500
            outcome = Outcome(
                status,
                {},
                "The database refused this write "
                f"({type(getattr(exc, 'orig', exc)).__name__}); check the values sent."
                if status == 400
                else "The write failed; it was not recorded. Retry it with the same key.",
                "invalid_value" if status == 400 else "write_failed",
            )
            outcomes, written = [outcome], Written()
        self.on_written(written)
        if not future.done():
            future.set_result(outcomes[0])
        self.queue.task_done()

    def _transaction(self, ops: Sequence[Op]) -> tuple[list[Outcome], Written]:
        with self.engine.begin() as conn:
            return apply(conn, ops)

    async def _to_spool(self, items: list[tuple[Op, asyncio.Future[Outcome]]]) -> None:
        ops = [op for op, _ in items]
        try:
            await asyncio.to_thread(self.spool.append, ops)
        except OSError as exc:
            log.error("spool write failed: %s", exc)
            for _, future in items:
                if not future.done():
                    future.set_result(
                        Outcome(
                            503,
                            {},
                            "The database is unreachable and the local spool cannot be written "
                            f"({exc.strerror}); nothing was recorded. Retry later.",
                            "unavailable",
                        )
                    )
            self._done(items)
            return
        self.on_spool(self.spool, len(items))
        for op, future in items:
            if not future.done():
                future.set_result(Outcome(202, accepted_body(op)))
        self._done(items)

    # -- recovery ----------------------------------------------------------------------------------

    async def _recover(self) -> None:
        if self.mode == "spooling":
            if time.monotonic() < self._next_probe:
                return
            self._next_probe = time.monotonic() + self.probe_interval_s
            try:
                await asyncio.to_thread(self._probe)
                if self.prepare is not None:
                    await asyncio.to_thread(self.prepare)
                    self.prepare = None
                    self.prepare_error = None
            except Exception as exc:
                self.prepare_error = exc
                self.last_error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
                return
            self._set_mode("draining")
        if self.mode == "draining":
            await self._drain_some()

    async def _apply_spooled(self, ops: list[Op]) -> list[Op]:
        """Write spooled ops; the refused ones go to the dead letters, except feedback whose
        interaction is not there yet (within the window): those are returned, to try later."""
        outcomes, written = await asyncio.to_thread(self._transaction, ops)
        self.on_written(written)
        later: list[Op] = []
        for op, outcome in zip(ops, outcomes, strict=True):
            if outcome.status < 400:
                continue
            age = time.time() - float(op.get("at", 0))
            if (
                outcome.code == "interaction_not_found"
                and self.deferred is not None
                and age < self.orphan_window_s
            ):
                later.append(op)
                continue
            reason = f"{outcome.status} {outcome.code}: {outcome.message}"
            log.error("spooled op refused at drain: %s", reason)
            await asyncio.to_thread(self.spool.dead_letter, op, reason)
            self.on_rejected(outcome.code or "error")
        return later

    async def _retry_deferred(self) -> None:
        """One round over the deferred segments that exist now (not the ones it writes)."""
        assert self.deferred is not None
        self._next_retry = time.monotonic() + self.orphan_retry_s
        deferred = self.deferred
        due = set(await asyncio.to_thread(deferred.pending_files))
        while True:
            segment = await asyncio.to_thread(deferred.claim)
            if segment is None:
                return
            if segment.path not in due:
                segment.release()
                return
            try:
                ops = await asyncio.to_thread(_read_all, segment)
                later = await self._apply_spooled(ops)
                if later:
                    await asyncio.to_thread(deferred.append, later)
                await asyncio.to_thread(deferred.finish, segment, len(ops))
                self.on_spool(self.spool, 0)
            except Exception as exc:
                segment.release()
                if self._outage(exc):
                    return
                raise

    def _probe(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    async def _drain_some(self) -> None:
        """Write one segment's ops (in chunks) to the database; direct mode when none is left."""
        segment = await asyncio.to_thread(self.spool.claim)
        if segment is None:
            self.last_error = None
            self._set_mode("direct")
            self.on_spool(self.spool, 0)
            return
        try:
            ops = await asyncio.to_thread(_read_all, segment)
            later: list[Op] = []
            for start in range(0, len(ops), self.drain_chunk):
                chunk = ops[start : start + self.drain_chunk]
                later += await self._apply_spooled(chunk)
                # Let new writes in between chunks (they are spooled behind this segment).
                if not self.queue.empty():
                    await self._to_spool(self._take_nowait())
            if later:  # durable in the deferred spool before the segment goes
                assert self.deferred is not None
                await asyncio.to_thread(self.deferred.append, later)
            await asyncio.to_thread(self.spool.finish, segment, len(ops))
            self.on_spool(self.spool, 0)
        except Exception as exc:
            segment.release()
            if self._outage(exc):
                return
            raise

    def _outage(self, exc: Exception) -> bool:
        """Back to spooling when ``exc`` is the database going away; False for anything else."""
        if not is_outage(exc):
            return False
        self.last_error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        self._next_probe = time.monotonic() + self.probe_interval_s
        self._set_mode("spooling")
        return True


def _read_all(segment: Segment) -> list[Op]:
    return list(Spool.read(segment))


def accepted_body(op: Op) -> dict[str, Any]:
    """What a 202 says: the keys the write will have, and that it waits in the spool."""
    rows = op["rows"]
    if op["op"] == "interaction":
        body: dict[str, Any] = {
            "object": "interaction",
            "id": rows[0]["id"],
            "trace_id": rows[0]["trace_id"],
        }
    elif op["op"] == "feedback":
        items = [
            {
                "object": "feedback",
                "id": r["id"],
                "interaction_id": r["interaction_id"],
                "kind": r["kind"],
            }
            for r in rows
        ]
        body = {"object": "list", "data": items} if op.get("batch") else items[0]
    else:
        body = {"object": "preference", "id": rows[0]["id"], "source": rows[0]["source"]}
    body["status"] = "spooled"
    return body
