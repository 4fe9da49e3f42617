"""Dynamic batching: concurrent requests share one forward pass.

Every text of every request is queued on its own, so small requests merge into one batch and a
large request spreads over several. A batch closes at ``max_batch_size`` texts, at
``max_batch_tokens`` padded tokens, or ``max_wait`` after the first text arrived while the model
was idle. The default wait is 0: an idle model starts at once (a lone query, as in a RAG ask,
never waits for company), and everything that arrives during that pass forms the next batch.
Inference runs in one worker thread, so the event loop keeps accepting requests (and the next
batch fills) while the model computes. The queue is bounded in texts: past it, callers
get :class:`QueueFull` and answer 429 with a ``Retry-After`` from the measured throughput.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from services.common.metrics import Metrics
from services.embeddings.encoder import Encoder, Vectors

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


# Cost of one extra forward pass, in padded tokens; measured on 2 CPU cores with MiniLM.
_CALL_OVERHEAD_TOKENS = 64
_MAX_GROUP = 128


def plan_groups(lengths: list[int], overhead: int = _CALL_OVERHEAD_TOKENS) -> list[list[int]]:
    """Split one batch into length-sorted groups that minimise padded tokens + pass overhead.

    A batch of arrivals mixes short and long texts; padding them all to the longest wastes
    compute (an offline ``encode`` avoids it by sorting its whole input). Sorting the batch and
    cutting it where padding would cost more than another pass recovers most of that.
    (Measured on 2 cores, 32 random 8-24 word texts a batch: 133 -> 179 texts/s.)
    """
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    sorted_len = [lengths[i] for i in order]
    n = len(order)
    best = [0.0] + [float("inf")] * n
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        width = sorted_len[j - 1]
        for i in range(max(0, j - _MAX_GROUP), j):  # bounded: O(n * 128) for any batch size
            cost = best[i] + width * (j - i) + overhead
            if cost < best[j]:
                best[j], cut[j] = cost, i
    groups: list[list[int]] = []
    j = n
    while j > 0:
        groups.append(order[cut[j] : j])
        j = cut[j]
    return groups[::-1]


class QueueFull(Exception):
    def __init__(self, retry_after: int) -> None:
        super().__init__("embedding queue is full")
        self.retry_after = retry_after


class BatcherStopped(Exception):
    """The service is shutting down; the request was not run."""


@dataclass(eq=False)
class _Job:
    size: int
    future: asyncio.Future[Vectors]
    out: Vectors | None = None
    remaining: int = 0
    cancelled: bool = False
    failed: bool = False


class Batcher:
    def __init__(
        self,
        encoder: Encoder,
        metrics: Metrics,
        *,
        max_batch_size: int,
        max_batch_tokens: int,
        max_wait_s: float,
        max_queue_texts: int,
    ) -> None:
        self.encoder = encoder
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens
        self.max_wait_s = max_wait_s
        self.max_queue_texts = max_queue_texts
        self.depth = 0  # texts accepted and not yet answered (waiting or running)
        self._pending: deque[tuple[_Job, int, list[int]]] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embed")
        self._rate = 0.0  # texts/s, exponentially weighted, for Retry-After
        self._stopped = False

        self.m_depth = metrics.gauge(
            "embeddings_queue_depth",
            "Texts waiting for or in inference.",
            multiprocess_mode="livesum",
        )
        self.m_batch = metrics.histogram(
            "embeddings_batch_size", "Texts per forward pass.", buckets=BATCH_BUCKETS
        )
        self.m_batch_tokens = metrics.histogram(
            "embeddings_batch_padded_tokens",
            "Padded tokens per forward pass.",
            buckets=(64, 256, 1024, 2048, 4096, 8192, 16384, 32768),
        )
        self.m_infer = metrics.histogram(
            "embeddings_inference_seconds", "Seconds per forward pass."
        )
        self.m_texts = metrics.counter("embeddings_texts_total", "Texts embedded.")
        self.m_tokens = metrics.counter("embeddings_tokens_total", "Tokens embedded.")
        self.m_rejected = metrics.counter(
            "embeddings_queue_rejections_total", "Requests refused with 429 (queue full)."
        )

    def start(self) -> asyncio.Task[None]:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="embed-batcher")
        return self._task

    async def stop(self) -> None:
        self._stopped = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while self._pending:
            job, _, _ = self._pending.popleft()
            if not job.future.done():
                job.future.set_exception(BatcherStopped())
        self._executor.shutdown(wait=True, cancel_futures=True)

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def retry_after(self) -> int:
        rate = self._rate or 50.0
        return max(1, math.ceil(self.depth / rate))

    async def embed(self, ids: list[list[int]]) -> Vectors:
        """Vectors for these tokenized texts, in order; raises QueueFull past the bound."""
        if self._stopped:
            raise BatcherStopped()
        n = len(ids)
        if self.depth + n > self.max_queue_texts:
            self.m_rejected.inc()
            raise QueueFull(self.retry_after())
        job = _Job(size=n, future=asyncio.get_running_loop().create_future(), remaining=n)
        self.depth += n
        self.m_depth.inc(n)
        self._pending.extend((job, i, seq) for i, seq in enumerate(ids))
        self._wake.set()
        try:
            return await job.future
        except asyncio.CancelledError:
            job.cancelled = True  # the loop drops its texts that have not run yet
            raise

    def _take(self) -> list[tuple[_Job, int, list[int]]]:
        batch: list[tuple[_Job, int, list[int]]] = []
        longest = 0
        while self._pending and len(batch) < self.max_batch_size:
            job, _, seq = self._pending[0]
            if job.cancelled or job.failed:
                self._pending.popleft()
                self._release(1)
                continue
            width = max(longest, len(seq))
            if batch and width * (len(batch) + 1) > self.max_batch_tokens:
                break
            longest = width
            batch.append(self._pending.popleft())
        return batch

    def _release(self, n: int) -> None:
        self.depth -= n
        self.m_depth.dec(n)

    async def _gather(self) -> None:
        """Wait (at most max_wait) for a batch to fill while the model is idle."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait_s
        while len(self._pending) < self.max_batch_size:
            left = deadline - loop.time()
            if left <= 0:
                return
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), left)
            except TimeoutError:
                return

    async def _run(self) -> None:
        while True:
            if not self._pending:
                self._wake.clear()
                await self._wake.wait()
            if self.max_wait_s > 0:
                await self._gather()
            batch = self._take()
            if not batch:
                continue
            # One forward pass per length group; each group's callers are answered as soon as
            # it is done, so their responses (and next requests) overlap the next pass.
            for group in plan_groups([len(seq) for _, _, seq in batch]):
                await self._forward([batch[i] for i in group])

    async def _forward(self, part: list[tuple[_Job, int, list[int]]]) -> None:
        seqs = [seq for _, _, seq in part]
        started = time.perf_counter()
        try:
            vectors = await asyncio.get_running_loop().run_in_executor(
                self._executor, self.encoder.encode_ids, seqs
            )
        except Exception as exc:
            self._fail(part, exc)
            return
        elapsed = time.perf_counter() - started
        self.m_infer.observe(elapsed)
        self.m_batch.observe(len(seqs))
        self.m_batch_tokens.observe(max(map(len, seqs)) * len(seqs))
        self.m_texts.inc(len(seqs))
        self.m_tokens.inc(sum(map(len, seqs)))
        rate = len(seqs) / max(elapsed, 1e-6)
        self._rate = rate if not self._rate else 0.8 * self._rate + 0.2 * rate
        self._deliver(part, vectors)

    def _deliver(self, batch: list[tuple[_Job, int, list[int]]], vectors: Vectors) -> None:
        for row, (job, index, _) in enumerate(batch):
            if job.out is None:
                job.out = np.empty((job.size, vectors.shape[1]), dtype=np.float32)
            job.out[index] = vectors[row]
            job.remaining -= 1
            if job.remaining == 0 and not job.future.done():
                job.future.set_result(job.out)
        self._release(len(batch))

    def _fail(self, batch: list[tuple[_Job, int, list[int]]], exc: Exception) -> None:
        for job, _, _ in batch:
            job.failed = True
            if not job.future.done():
                job.future.set_exception(exc)
        self._release(len(batch))
