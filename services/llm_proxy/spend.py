"""Spend per key, alias and deployment, summed in memory and written in batches.

The request path only adds to a dict; a background task writes the sums every
``spend_flush_s`` in one transaction. A failed write keeps the sums for the next try, and the
last batch is written at shutdown. A write whose COMMIT went unanswered (the connection lost)
may be in the database already: it is kept aside until the database says whether that
transaction committed, so it is never counted twice. Budgets are enforced from the limiter's
counters, not from these rows, so batching never lets a key overspend.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from services.llm_proxy.keys import KeyStore, SpendWriteError

log = logging.getLogger("llmops.llm_proxy.spend")

Row = tuple[str, str, str]  # key id, alias, deployment


class SpendLog:
    def __init__(self, store: KeyStore, interval_s: float) -> None:
        self.store = store
        self.interval_s = interval_s
        self._pending: dict[Row, list[float]] = {}
        self._in_doubt: list[tuple[int, dict[Row, list[float]]]] = []  # (txid, batch)
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    def add(
        self, key_id: str, alias: str, deployment: str, tin: int, tout: int, cost: float
    ) -> None:
        sums = self._pending.get((key_id, alias, deployment))
        if sums is None:
            self._pending[(key_id, alias, deployment)] = [1, tin, tout, cost]
        else:
            sums[0] += 1
            sums[1] += tin
            sums[2] += tout
            sums[3] += cost

    def start(self) -> asyncio.Task[None]:
        self._task = asyncio.create_task(self._run(), name="spend-writer")
        return self._task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            # Shielded: a stop that cancels this task mid-write would otherwise drop the batch
            # it had taken out of ``_pending`` (the write's outcome never seen). stop() then
            # waits for it on the lock and writes what is left.
            await asyncio.shield(self.flush())

    async def flush(self) -> int:
        """Write what has accumulated; returns the number of rows written."""
        async with self._lock:
            await self._settle_in_doubt()
            if not self._pending:
                return 0
            batch, self._pending = self._pending, {}
            rows = [
                (k, a, d, int(s[0]), int(s[1]), int(s[2]), float(s[3]))
                for (k, a, d), s in batch.items()
            ]
            try:
                await asyncio.to_thread(self.store.add_spend, rows)
            except SpendWriteError as exc:
                if exc.txid is None:
                    log.error(
                        "spend write failed; keeping %d rows for the next try: %s", len(rows), exc
                    )
                    self._keep(batch)
                else:
                    log.error(
                        "spend write failed, perhaps after its commit; keeping %d rows until "
                        "the database says whether transaction %d committed: %s",
                        len(rows),
                        exc.txid,
                        exc,
                    )
                    self._in_doubt.append((exc.txid, batch))
                return 0
            return len(rows)

    def _keep(self, batch: dict[Row, list[float]]) -> None:
        """Put an unwritten batch back, to go with the next one."""
        for row, sums in batch.items():
            mine = self._pending.setdefault(row, [0, 0, 0, 0.0])
            for i in range(4):
                mine[i] += sums[i]

    async def _settle_in_doubt(self) -> None:
        """For each batch whose COMMIT went unanswered: written already (drop it), or not (write
        it with the next batch); while the database cannot say, ask again next time."""
        waiting = []
        for txid, batch in self._in_doubt:
            try:
                done = await asyncio.to_thread(self.store.committed, txid)
            except Exception:
                done = None
            if done is None:
                waiting.append((txid, batch))
            elif not done:
                self._keep(batch)
            else:
                log.info("spend batch of transaction %d was committed before the failure", txid)
        self._in_doubt = waiting

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush()
        if self._in_doubt:
            log.error(
                "at stop, %d spend batches are still in doubt (transactions %s): check them "
                "with txid_status() before adding them by hand",
                len(self._in_doubt),
                ", ".join(str(t) for t, _ in self._in_doubt),
            )
