"""Ingest: load, chunk, embed, upsert; idempotent per document.

Every chunk carries the document's content hash, so re-sending an unchanged document costs
one lookup. A changed document is written as a new *version* (a number that grows with time,
in every chunk's payload and in its point id) beside the old one, then the older versions are
dropped, so readers never see a half-written document for longer than that step. Two replicas
writing the same document at once each write their own version; each then drops what is older
than its own, and the one that finds a newer version drops its own: one whole version is left
(the newest), whatever the interleaving. Vectors are computed before anything is written: when
embedding fails the stored document is untouched; when a write fails half-way its own chunks
are removed and the previous version stays whole.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import logging
import secrets
import time
import uuid
import weakref
from dataclasses import dataclass
from typing import Any

import orjson
from qdrant_client import models

from services.common.errors import APIError
from services.common.metrics import Metrics
from services.retrieval import sparse
from services.retrieval.chunking import chunk_blocks
from services.retrieval.config import RetrievalSettings
from services.retrieval.embedder import EmbeddingsClient, EmbeddingsUnavailable
from services.retrieval.loaders import LoadError, load
from services.retrieval.schemas import Document
from services.retrieval.store import SPARSE, QdrantStore

log = logging.getLogger("llmops.retrieval")
NAMESPACE = uuid.UUID("6f1c0c36-4f0e-4a39-9d0a-1d9f6c3f2b11")
_PARALLEL_DOCUMENTS = 8


@dataclass
class Outcome:
    id: str
    status: str  # added | unchanged | replaced | failed
    chunks: int = 0
    reason: str | None = None


def point_id(doc_id: str, version: int, chunk: int) -> str:
    return str(uuid.uuid5(NAMESPACE, f"{doc_id}\x00{version}\x00{chunk}"))


def _reason(exc: Exception) -> str:
    return exc.message if isinstance(exc, APIError) else str(exc)


def new_version() -> int:
    """Milliseconds since the epoch times 1000, plus 0-999 at random: grows with time, ties
    between replicas are unlikely, and it stays exact in Qdrant's float ranges (< 2**53)."""
    return (time.time_ns() // 1_000_000) * 1000 + secrets.randbelow(1000)


def _content(doc: Document) -> tuple[bytes | str, str]:
    if doc.text is not None:
        return doc.text, doc.content_type or "text/plain"
    try:
        raw = base64.b64decode(doc.content_base64 or "", validate=True)
    except (binascii.Error, ValueError) as exc:
        raise LoadError(f"content_base64 is not valid base64: {exc}") from exc
    return raw, doc.content_type or "application/octet-stream"


class Ingestor:
    def __init__(
        self,
        settings: RetrievalSettings,
        store: QdrantStore,
        embedder: EmbeddingsClient,
        metrics: Metrics,
    ) -> None:
        self.settings = settings
        self.store = store
        self.embedder = embedder
        self.m_docs = metrics.counter(
            "retrieval_documents_total", "Documents ingested, by outcome.", ["outcome"]
        )
        self.m_chunks = metrics.counter(
            "retrieval_chunks_total",
            "Chunks of ingested documents, by the document's outcome.",
            ["outcome"],
        )
        self.m_seconds = metrics.histogram(
            "retrieval_ingest_seconds", "Seconds per ingest request."
        )
        self._parallel = asyncio.Semaphore(_PARALLEL_DOCUMENTS)
        self._doc_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )

    def _hash(self, content: bytes | str, content_type: str, doc: Document) -> str:
        s = self.settings
        digest = hashlib.sha256(content if isinstance(content, bytes) else content.encode())
        # Metadata and chunking settings are part of what was stored: a change re-ingests.
        digest.update(orjson.dumps([content_type, doc.metadata], option=orjson.OPT_SORT_KEYS))
        digest.update(
            f"{s.chunk_tokens}/{s.chunk_overlap_tokens}/{s.embeddings_model}/{sparse.VERSION}"
            f"/{s.bm25_avg_len}".encode()
        )
        return digest.hexdigest()

    async def ingest(self, collection: str, docs: list[Document]) -> list[Outcome]:
        started = time.perf_counter()
        outcomes = await asyncio.gather(*(self._guarded(collection, d) for d in docs))
        self.m_seconds.observe(time.perf_counter() - started)
        for o in outcomes:
            self.m_docs.labels(o.status).inc()
            self.m_chunks.labels(o.status).inc(o.chunks)
        return list(outcomes)

    async def _guarded(self, collection: str, doc: Document) -> Outcome:
        # Two writes of one document must not interleave: each drops the chunks whose hash is
        # not its own. (Documents without an id are named by their content: writers agree.)
        # This lock covers one replica; across replicas see the closing notes.
        lock = (
            self._doc_locks.setdefault(f"{collection}\x00{doc.id}", asyncio.Lock())
            if doc.id
            else contextlib.nullcontext()
        )
        async with self._parallel, lock:
            try:
                return await self._one(collection, doc)
            except (LoadError, EmbeddingsUnavailable) as exc:
                return Outcome(doc.id or "?", "failed", reason=str(exc))
            except APIError as exc:
                return Outcome(doc.id or "?", "failed", reason=exc.message)

    async def _one(self, collection: str, doc: Document) -> Outcome:
        layout = await self.store.layout(collection)
        if layout is None:  # deleted since the route looked
            return Outcome(doc.id or "?", "failed", reason=f"'{collection}' no longer exists")
        content, content_type = _content(doc)
        content_hash = self._hash(content, content_type, doc)
        doc_id = doc.id or f"sha256:{content_hash[:32]}"
        doc.id = doc_id
        stored = await self.store.stored_hash(collection, doc_id)
        if stored == content_hash:
            count = await self.store.count(collection, QdrantStore.doc_filter(doc_id))
            return Outcome(doc_id, "unchanged", count)

        blocks = await asyncio.to_thread(load, content, content_type)
        s = self.settings
        chunks = await chunk_blocks(
            blocks,
            self.embedder.count_tokens,
            s.chunk_tokens,
            s.chunk_overlap_tokens,
            await self.embedder.input_limit(),
        )
        texts = [c.embed_text for c in chunks]
        vectors = await self.embedder.embed(texts)
        lexical: list[models.SparseVector] = []
        if layout.sparse:
            bm25 = sparse.BM25(s.bm25_avg_len)
            lexical = await asyncio.to_thread(lambda: [bm25.document(t) for t in texts])

        def vector(i: int) -> Any:
            if not layout.dense:  # a collection made before hybrid search: one unnamed vector
                return vectors[i].tolist()
            named: dict[str, Any] = {layout.dense: vectors[i].tolist()}
            if lexical:
                named[SPARSE] = lexical[i]
            return named

        now = time.time()
        version = new_version()
        points = [
            models.PointStruct(
                id=point_id(doc_id, version, c.index),
                vector=vector(i),
                payload={
                    "doc_id": doc_id,
                    "chunk_index": c.index,
                    "chunk_count": len(chunks),
                    "headings": list(c.headings),
                    "text": c.text,
                    "tokens": c.tokens,
                    "content_hash": content_hash,
                    "content_type": content_type,
                    "metadata": doc.metadata,
                    "ingested_at": now,
                    "version": version,
                },
            )
            for i, c in enumerate(chunks)
        ]
        store = self.store
        try:
            await store.upsert(collection, points)
        except Exception as exc:
            log.exception("write of %s failed; removing its new chunks", doc_id)
            try:
                await store.delete(collection, QdrantStore.version_filter(doc_id, eq=version))
            except Exception:
                log.exception("cleanup of %s's new chunks failed", doc_id)
            return Outcome(
                doc_id, "failed", reason=f"write failed, previous version kept: {_reason(exc)}"
            )
        try:
            await store.delete(collection, QdrantStore.version_filter(doc_id, older_than=version))
            if await store.count(
                collection, QdrantStore.version_filter(doc_id, newer_than=version)
            ):
                # Another replica wrote a newer version meanwhile: it stands, this one goes.
                await store.delete(collection, QdrantStore.version_filter(doc_id, eq=version))
                return Outcome(doc_id, "replaced", 0, reason="superseded by a newer version")
        except Exception as exc:
            log.exception("cleanup of %s's older versions failed", doc_id)
            return Outcome(
                doc_id,
                "failed",
                reason=f"written, but older chunks remain (re-send it): {_reason(exc)}",
            )
        return Outcome(doc_id, "added" if stored is None else "replaced", len(points))
