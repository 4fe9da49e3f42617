"""Two retrieval replicas ingesting the same document at once leave one whole version.

Each "replica" is its own Ingestor (its own per-replica lock, as two pods have) over one real
Qdrant store (local mode) and the real embeddings service. The store of each is wrapped only
to hold its writes at chosen points, so every interleaving of the two writes is run, the
worst first: both write, then both clean up. Before versioned writes, that order deleted both
versions (each dropped the chunks whose hash was not its own).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from services.common.metrics import Metrics
from services.retrieval.config import RetrievalSettings
from services.retrieval.embedder import EmbeddingsClient
from services.retrieval.ingest import Ingestor
from services.retrieval.schemas import Document
from services.retrieval.store import QdrantStore
from tests.conftest import API_KEY, API_KEY_HASH, ServiceProcess


class Held:
    """A store that runs ``before`` before each call named in it, and ``after`` after."""

    def __init__(self, store: QdrantStore, before: dict[str, Any], after: dict[str, Any]) -> None:
        self._store, self._before, self._after = store, before, after

    def __getattr__(self, name: str) -> Any:
        real = getattr(self._store, name)
        if name not in ("upsert", "delete", "count"):
            return real

        async def held(*args: Any, **kwargs: Any) -> Any:
            if name in self._before:
                await self._before.pop(name)()
            out = await real(*args, **kwargs)
            if name in self._after:
                await self._after.pop(name)()
            return out

        return held


def text(label: str, paragraphs: int) -> str:
    return "\n\n".join(
        f"{label} paragraph {i} about rivers, otters and dams." for i in range(paragraphs)
    )


async def scenario(order: str, settings: RetrievalSettings) -> tuple[list[dict[str, Any]], Any]:
    store = QdrantStore(settings, Metrics())
    embedder = EmbeddingsClient(settings)
    try:
        await store.create("c", 384, {}, "hybrid")
        a_up, b_up, a_done = asyncio.Event(), asyncio.Event(), asyncio.Event()

        async def set_(e: asyncio.Event) -> None:
            e.set()

        if order == "both-write-then-both-clean":  # A writes, B writes, A cleans, B cleans
            a_hooks = ({}, {"upsert": lambda: wait_after(a_up, b_up)})
            b_hooks = ({"upsert": a_up.wait}, {"upsert": lambda: wait_after(b_up, a_done)})
        elif order == "b-writes-first":  # B writes, A writes and cleans, B cleans
            a_hooks = ({"upsert": b_up.wait}, {})
            b_hooks = ({}, {"upsert": lambda: wait_after(b_up, a_done)})
        elif order == "sequential":  # A entirely, then B
            a_hooks, b_hooks = ({}, {}), ({"upsert": a_done.wait}, {})
        else:
            raise AssertionError(order)
        a = Ingestor(settings, Held(store, *a_hooks), embedder, Metrics())  # type: ignore[arg-type]
        b = Ingestor(settings, Held(store, *b_hooks), embedder, Metrics())  # type: ignore[arg-type]

        async def run_a() -> Any:
            try:
                return await a.ingest("c", [Document(id="doc", text=text("Alpha", 12))])
            finally:
                a_done.set()

        out_a, out_b = await asyncio.wait_for(
            asyncio.gather(run_a(), b.ingest("c", [Document(id="doc", text=text("Beta", 5))])),
            timeout=120,
        )
        points, _ = await store.client.scroll("c", limit=1000, with_payload=True)
        return [p.payload for p in points], (out_a[0], out_b[0])
    finally:
        await embedder.close()
        await store.close()


async def wait_after(mine: asyncio.Event, other: asyncio.Event) -> None:
    mine.set()
    await other.wait()


@pytest.mark.parametrize("order", ["both-write-then-both-clean", "b-writes-first", "sequential"])
def test_concurrent_ingests_leave_one_whole_version(
    order: str, embeddings: ServiceProcess, tmp_path: Path
) -> None:
    settings = RetrievalSettings(
        env="dev", api_key_hashes=[API_KEY_HASH], qdrant_path=tmp_path / "q",
        embeddings_url=embeddings.url, embeddings_api_key=API_KEY,
        chunk_tokens=40, chunk_overlap_tokens=0,
    )  # fmt: skip
    payloads, outcomes = asyncio.run(scenario(order, settings))
    assert payloads, f"{order}: the document vanished ({outcomes})"
    versions = {p["version"] for p in payloads}
    assert len(versions) == 1, f"{order}: mixed versions left: {versions} ({outcomes})"
    count = payloads[0]["chunk_count"]
    assert sorted(p["chunk_index"] for p in payloads) == list(range(count)), order
    assert len({p["content_hash"] for p in payloads}) == 1
    # The newest write stands; the other one says it was superseded (or replaced by it).
    label = payloads[0]["text"].split()[0]
    winner = outcomes[0] if label == "Alpha" else outcomes[1]
    assert winner.chunks == count and winner.status in ("added", "replaced"), outcomes
    loser = outcomes[1] if label == "Alpha" else outcomes[0]
    assert loser.status in ("added", "replaced") and loser.status != "failed", outcomes
