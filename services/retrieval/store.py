"""Qdrant access: one code path for the embedded local mode and a replicated server.

Only the client's construction differs. Every call has a timeout; transient failures
(timeouts, connection errors, 5xx, 429 with its retry delay, write-consistency failures) are
retried with backoff and jitter, then surface as 503 with ``Retry-After``.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
import orjson
from qdrant_client import AsyncQdrantClient, models
from qdrant_client.common.client_exceptions import ResourceExhaustedResponse
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse
from tenacity import RetryCallState

from services.common.errors import APIError
from services.common.metrics import Metrics
from services.common.retry import retry_after_seconds, retrying
from services.retrieval.config import RetrievalSettings

log = logging.getLogger("llmops.retrieval")
_SIZE_TTL_S = 5.0
T = TypeVar("T")

FIELD_TYPES = {
    "keyword": models.PayloadSchemaType.KEYWORD,
    "integer": models.PayloadSchemaType.INTEGER,
    "float": models.PayloadSchemaType.FLOAT,
    "bool": models.PayloadSchemaType.BOOL,
    "datetime": models.PayloadSchemaType.DATETIME,
    "text": models.PayloadSchemaType.TEXT,
}


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, ResourceExhaustedResponse):  # 429, with the server's retry delay
        return True
    if isinstance(exc, UnexpectedResponse):
        code = exc.status_code or 0
        return code == 429 or code >= 500
    return isinstance(exc, (ResponseHandlingException, httpx.TransportError, TimeoutError))


def _retry_after(exc: BaseException) -> float | None:
    if isinstance(exc, ResourceExhaustedResponse):
        return float(exc.retry_after_s)
    if isinstance(exc, UnexpectedResponse):
        return retry_after_seconds(exc.headers.get("retry-after"))
    return None


def _qdrant_message(exc: UnexpectedResponse) -> str:
    """What Qdrant said: ``{"status": {"error": "..."}}`` in its REST answers."""
    try:
        body = orjson.loads(exc.content)
        message = body["status"]["error"] if isinstance(body["status"], dict) else body["status"]
        return str(message)[:500]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        text = exc.content.decode("utf-8", "replace").strip()[:300]
        return text or exc.reason_phrase or f"HTTP {exc.status_code}"


def _refused(operation: str, exc: UnexpectedResponse) -> APIError:
    """A Qdrant 4xx as the answer it means for our caller, with Qdrant's own words."""
    status = exc.status_code or 400
    said = _qdrant_message(exc)
    if status in (401, 403):
        return APIError(
            502,
            f"Qdrant refused the retrieval service's credentials ({operation}): {said}. "
            "Check RETRIEVAL_QDRANT_API_KEY.",
            code="vector_store_auth",
        )
    if status in (400, 422):
        return APIError(
            400, f"The vector store refused the request ({operation}): {said}", code="invalid_value"
        )
    if status == 404:
        return APIError(404, f"Not found in the vector store: {said}", code="not_found")
    if status == 409:
        return APIError(409, f"The vector store reports a conflict: {said}", code="conflict")
    if status == 413:
        return APIError(
            413,
            f"The vector store refused a request this large ({operation}): {said}. Send fewer "
            "or smaller documents per request.",
            code="request_too_large",
        )
    return APIError(
        502, f"The vector store answered {status} ({operation}): {said}", code="vector_store_error"
    )


DENSE = "dense"  # the named vectors of a collection made for hybrid search
SPARSE = "bm25"
MODES = ("dense", "sparse", "hybrid")
_MODE_KEY = "llmops_search_mode"  # in the collection's Qdrant metadata


@dataclass(frozen=True)
class CollectionInfo:
    name: str
    points_count: int
    vector_size: int
    dense: str  # the dense vector's name; "" in a collection made before hybrid search
    sparse: bool  # holds BM25 vectors
    search_mode: str  # what a search without "mode" does

    @property
    def modes(self) -> tuple[str, ...]:
        return MODES if self.sparse else ("dense",)


def size_warning(settings: RetrievalSettings, info: CollectionInfo) -> str | None:
    """What to tell the operator when a local-mode collection holds more points than
    RETRIEVAL_LOCAL_WARN_POINTS (nothing on a Qdrant server, or with the setting at 0)."""
    limit = settings.local_warn_points
    if settings.qdrant_url or limit <= 0 or info.points_count <= limit:
        return None
    return (
        f"Collection '{info.name}' holds {info.points_count:,} points in local (embedded) "
        f"Qdrant, past RETRIEVAL_LOCAL_WARN_POINTS={limit:,}: local mode keeps every point in "
        "the service's memory, reads them all back at startup and scans them on each search, "
        "so it slows down as the collection grows; use a Qdrant server (RETRIEVAL_QDRANT_URL)."
    )


class QdrantStore:
    def __init__(self, settings: RetrievalSettings, metrics: Metrics) -> None:
        self.settings = settings
        if settings.qdrant_url:
            key = settings.qdrant_api_key
            self.client = AsyncQdrantClient(
                url=settings.qdrant_url,
                api_key=key.get_secret_value() if key else None,
                timeout=int(settings.qdrant_timeout_s),
            )
        else:
            settings.qdrant_path.mkdir(parents=True, exist_ok=True)
            self.client = AsyncQdrantClient(path=str(settings.qdrant_path))
        consistency = settings.read_consistency
        self.read_consistency: Any = (
            consistency if isinstance(consistency, int) else models.ReadConsistencyType(consistency)
        )
        hot = ("query", "upsert", "delete", "scroll")  # their series start at 0
        self.m_errors = metrics.counter(
            "retrieval_qdrant_errors_total",
            "Qdrant calls that failed, by operation.",
            ["operation"],
            initial=hot,
        )
        self._layouts: dict[str, tuple[CollectionInfo, float]] = {}
        self._warned: set[str] = set()  # local collections whose size warning has been logged
        self.m_retries = metrics.counter(
            "retrieval_qdrant_retries_total",
            "Qdrant calls retried, by operation.",
            ["operation"],
            initial=hot,
        )

    async def close(self) -> None:
        await self.client.close()

    def size_warning(self, info: CollectionInfo) -> str | None:
        return size_warning(self.settings, info)

    def _note_size(self, info: CollectionInfo) -> str | None:
        """The size warning, logged once per collection each time it goes past the threshold."""
        warning = self.size_warning(info)
        if warning is None:
            self._warned.discard(info.name)
        elif info.name not in self._warned:
            self._warned.add(info.name)
            log.warning(
                warning,
                extra={
                    "collection": info.name,
                    "points_count": info.points_count,
                    "local_warn_points": self.settings.local_warn_points,
                },
            )
        return warning

    async def check_size(self, name: str) -> str | None:
        """After a write: the collection's size warning, if it has one (one point count, and
        none at all on a Qdrant server)."""
        if self.settings.qdrant_url or self.settings.local_warn_points <= 0:
            return None
        info = await self.info(name)
        return self._note_size(info) if info else None

    async def check_sizes(self) -> None:
        """At startup: log the size warning of every local collection already past it."""
        if self.settings.qdrant_url or self.settings.local_warn_points <= 0:
            return
        for info in await self.all():
            self._note_size(info)

    async def layout(self, name: str) -> CollectionInfo | None:
        """The collection's vectors and search mode, cached for a few seconds: searches and
        ingests must not pay two extra Qdrant round trips to look them up."""
        now = time.monotonic()
        hit = self._layouts.get(name)
        if hit and hit[1] > now:
            return hit[0]
        info = await self.info(name)
        if info is None:
            self._layouts.pop(name, None)
            return None
        self._layouts[name] = (info, now + _SIZE_TTL_S)
        return info

    def forget(self, name: str) -> None:
        self._layouts.pop(name, None)

    async def call(self, operation: str, fn: Callable[[], Awaitable[T]]) -> T:
        def on_retry(state: RetryCallState) -> None:
            self.m_retries.labels(operation).inc()
            exc = state.outcome.exception() if state.outcome else None
            log.warning("qdrant %s failed, retrying: %s", operation, exc)

        try:
            async for attempt in retrying(
                self.settings.qdrant_retries, _transient, on_retry, retry_after=_retry_after
            ):
                with attempt:
                    return await fn()
        except Exception as exc:
            self.m_errors.labels(operation).inc()
            if _transient(exc):
                raise APIError(
                    503,
                    f"The vector store is unavailable ({operation}); retry later.",
                    code="vector_store_unavailable",
                    headers={"Retry-After": str(int(_retry_after(exc) or 2))},
                ) from exc
            if isinstance(exc, UnexpectedResponse) and 400 <= (exc.status_code or 0) < 500:
                raise _refused(operation, exc) from exc
            raise
        raise AssertionError("unreachable")

    async def ping(self) -> bool:
        try:
            await self.client.get_collections()
            return True
        except Exception:
            return False

    async def exists(self, name: str) -> bool:
        return await self.call("collection_exists", lambda: self.client.collection_exists(name))

    async def create(self, name: str, size: int, fields: dict[str, str], search_mode: str) -> None:
        """A dense vector and a BM25 sparse vector (Qdrant computes IDF over the collection),
        named; the default search mode goes in the collection's metadata."""
        s = self.settings
        await self.call(
            "create_collection",
            lambda: self.client.create_collection(
                name,
                vectors_config={
                    DENSE: models.VectorParams(size=size, distance=models.Distance.COSINE)
                },
                sparse_vectors_config={
                    SPARSE: models.SparseVectorParams(modifier=models.Modifier.IDF)
                },
                shard_number=s.shard_number,
                replication_factor=s.replication_factor,
                write_consistency_factor=s.write_consistency_factor,
                metadata={_MODE_KEY: search_mode},
            ),
        )
        with warnings.catch_warnings():  # local mode says indexes have no effect there
            warnings.simplefilter("ignore")
            for field, kind in {"doc_id": "keyword", **fields}.items():
                key = field if field == "doc_id" else f"metadata.{field}"
                await self.call(
                    "create_payload_index",
                    lambda key=key, kind=kind: self.client.create_payload_index(  # type: ignore[misc]
                        name, key, FIELD_TYPES[kind], wait=True
                    ),
                )

    async def info(self, name: str) -> CollectionInfo | None:
        if not await self.exists(name):
            return None
        got = await self.call("get_collection", lambda: self.client.get_collection(name))
        params = got.config.params
        vectors = params.vectors
        if isinstance(vectors, models.VectorParams):  # made before hybrid search: one, unnamed
            dense, size = "", vectors.size
        elif isinstance(vectors, dict) and DENSE in vectors:
            dense, size = DENSE, vectors[DENSE].size
        else:
            dense, size = "", 0
        sparse = SPARSE in (params.sparse_vectors or {})
        meta = getattr(got.config, "metadata", None) or {}
        mode = meta.get(_MODE_KEY) if isinstance(meta, dict) else None
        if mode not in MODES or (mode != "dense" and not sparse):
            mode = "hybrid" if sparse else "dense"
        return CollectionInfo(name, int(got.points_count or 0), int(size), dense, sparse, mode)

    async def all(self) -> list[CollectionInfo]:
        got = await self.call("get_collections", self.client.get_collections)
        out = []
        for c in sorted(got.collections, key=lambda c: c.name):
            info = await self.info(c.name)
            if info:
                out.append(info)
        return out

    async def drop(self, name: str) -> bool:
        self.forget(name)
        self._warned.discard(name)
        if not await self.exists(name):
            return False
        await self.call("delete_collection", lambda: self.client.delete_collection(name))
        return True

    @staticmethod
    def doc_filter(doc_id: str) -> models.Filter:
        return models.Filter(
            must=[models.FieldCondition(key="doc_id", match=models.MatchValue(value=doc_id))]
        )

    @staticmethod
    def version_filter(
        doc_id: str,
        *,
        eq: int | None = None,
        older_than: int | None = None,
        newer_than: int | None = None,
    ) -> models.Filter:
        """A document's chunks of one version, or of versions older or newer than one (chunks
        written before versions existed count as older)."""
        doc = models.FieldCondition(key="doc_id", match=models.MatchValue(value=doc_id))
        if eq is not None:
            exact = models.FieldCondition(key="version", range=models.Range(gte=eq, lte=eq))
            return models.Filter(must=[doc, exact])
        if newer_than is not None:
            newer = models.FieldCondition(key="version", range=models.Range(gt=newer_than))
            return models.Filter(must=[doc, newer])
        if older_than is None:
            raise ValueError("version_filter needs eq, older_than or newer_than")
        older = models.FieldCondition(key="version", range=models.Range(lt=older_than))
        legacy = models.IsEmptyCondition(is_empty=models.PayloadField(key="version"))
        return models.Filter(must=[doc], should=[older, legacy])

    async def stored_hash(self, name: str, doc_id: str) -> str | None:
        points, _ = await self.call(
            "scroll",
            lambda: self.client.scroll(
                name, scroll_filter=self.doc_filter(doc_id), limit=1, with_payload=["content_hash"]
            ),
        )
        if not points:
            return None
        return str((points[0].payload or {}).get("content_hash"))

    async def count(self, name: str, flt: models.Filter | None = None) -> int:
        got = await self.call(
            "count", lambda: self.client.count(name, count_filter=flt, exact=True)
        )
        return int(got.count)

    async def upsert(self, name: str, points: list[models.PointStruct]) -> None:
        await self.call("upsert", lambda: self.client.upsert(name, points, wait=True))

    async def delete(self, name: str, flt: models.Filter) -> None:
        await self.call(
            "delete",
            lambda: self.client.delete(
                name, points_selector=models.FilterSelector(filter=flt), wait=True
            ),
        )

    @staticmethod
    def is_missing_collection(exc: BaseException) -> bool:
        """Qdrant's 'no such collection' (server: 404; local mode: ValueError)."""
        if isinstance(exc, APIError):
            return exc.status_code == 404
        if isinstance(exc, UnexpectedResponse):
            return exc.status_code == 404
        return isinstance(exc, ValueError) and "not found" in str(exc).lower()

    async def search(
        self,
        info: CollectionInfo,
        mode: str,
        dense: list[float] | None,
        sparse: models.SparseVector | None,
        flt: models.Filter | None,
        limit: int,
        threshold: float | None,
        with_vectors: bool,
    ) -> list[models.ScoredPoint]:
        """One Query API call: the dense or the sparse vector alone, or both as prefetches
        fused by reciprocal rank (hybrid). A hybrid search whose query has no lexical terms
        (all stop words) is a dense one."""
        using = info.dense or None
        vectors: Any = [info.dense] if with_vectors and info.dense else with_vectors
        common: dict[str, Any] = {
            "query_filter": flt,
            "limit": limit,
            "score_threshold": threshold,
            "with_payload": True,
            "with_vectors": vectors,
            "consistency": self.read_consistency,
        }
        if mode == "hybrid" and sparse is not None and sparse.indices and dense is not None:
            deep = max(limit, self.settings.hybrid_candidates)
            w = self.settings.rrf_dense_weight
            # Weights in the order of the prefetches below; none at 1 (older servers).
            weighted = {} if w == 1.0 else {"weights": [w, 1.0]}
            query: Any = models.RrfQuery(rrf=models.Rrf(k=self.settings.rrf_k, **weighted))
            common["prefetch"] = [
                models.Prefetch(query=dense, using=using, filter=flt, limit=deep),
                models.Prefetch(query=sparse, using=SPARSE, filter=flt, limit=deep),
            ]
        elif mode == "sparse":
            if sparse is None or not sparse.indices:
                return []
            query, using = sparse, SPARSE
        else:
            query = dense
        if "prefetch" not in common:
            common["using"] = using
        got = await self.call(
            "query", lambda: self.client.query_points(info.name, query=query, **common)
        )
        return list(got.points)
