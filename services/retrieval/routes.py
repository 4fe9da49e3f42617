"""HTTP routes of the retrieval service: collections, documents, search."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from services.common.errors import APIError
from services.common.routing import JsonRoute
from services.common.scopes import needs_scope
from services.retrieval.embedder import EmbeddingsClient, EmbeddingsUnavailable
from services.retrieval.filters import to_qdrant
from services.retrieval.ingest import Ingestor
from services.retrieval.schemas import CollectionCreate, DocumentsRequest, SearchRequest
from services.retrieval.sparse import BM25
from services.retrieval.store import CollectionInfo, QdrantStore

router = APIRouter(tags=["retrieval"], route_class=JsonRoute)


def _store(request: Request) -> QdrantStore:
    store: QdrantStore = request.app.state.store
    return store


def _card(info: CollectionInfo, store: QdrantStore) -> dict[str, Any]:
    warning = store.size_warning(info)
    return {
        "name": info.name,
        "points_count": info.points_count,
        "vector_size": info.vector_size,
        "distance": "cosine",
        "sparse": "bm25" if info.sparse else None,
        "search_mode": info.search_mode,
        "search_modes": list(info.modes),
        "warnings": [warning] if warning else [],
    }


async def _collection(request: Request, name: str) -> CollectionInfo:
    info = await _store(request).info(name)
    if info is None:
        raise APIError(
            404,
            f"Collection '{name}' does not exist; create it with POST /v1/collections.",
            param="collection",
            code="collection_not_found",
        )
    return info


def _unavailable(exc: EmbeddingsUnavailable) -> APIError:
    return APIError(
        503, f"Cannot embed: {exc}", code="embeddings_unavailable", headers={"Retry-After": "2"}
    )


@router.post(
    "/v1/collections",
    openapi_extra=needs_scope("ingest"),
    status_code=201,
    summary="Create a collection.",
)
async def create_collection(body: CollectionCreate, request: Request) -> JSONResponse:
    store = _store(request)
    if await store.exists(body.name):
        raise APIError(
            409, f"Collection '{body.name}' already exists.", param="name", code="collection_exists"
        )
    embedder: EmbeddingsClient = request.app.state.embedder
    try:
        size = await embedder.dimension()
    except EmbeddingsUnavailable as exc:
        raise _unavailable(exc) from exc
    mode = body.search_mode or request.app.state.settings.default_search_mode
    await store.create(body.name, size, dict(body.metadata_fields), mode)
    info = await _collection(request, body.name)
    return JSONResponse(_card(info, store), status_code=201)


@router.get(
    "/v1/collections",
    openapi_extra=needs_scope("search"),
    summary="Collections with their point counts.",
)
async def list_collections(request: Request) -> dict[str, Any]:
    store = _store(request)
    return {"object": "list", "data": [_card(c, store) for c in await store.all()]}


@router.get(
    "/v1/collections/{name}", openapi_extra=needs_scope("search"), summary="One collection."
)
async def get_collection(name: str, request: Request) -> dict[str, Any]:
    return _card(await _collection(request, name), _store(request))


@router.delete(
    "/v1/collections/{name}",
    openapi_extra=needs_scope("admin"),
    summary="Delete a collection and all its points.",
)
async def delete_collection(name: str, request: Request) -> dict[str, Any]:
    await _collection(request, name)
    await _store(request).drop(name)
    return {"deleted": name}


@router.post(
    "/v1/collections/{name}/documents",
    openapi_extra=needs_scope("ingest"),
    summary="Ingest documents (idempotent).",
)
async def ingest_documents(name: str, body: DocumentsRequest, request: Request) -> dict[str, Any]:
    settings = request.app.state.settings
    docs = body.documents
    if not docs:
        raise APIError(400, "'documents' is empty.", param="documents", code="empty_input")
    if len(docs) > settings.max_documents_per_request:
        raise APIError(
            413,
            f"{len(docs)} documents in one request; at most {settings.max_documents_per_request}"
            " are accepted. Send them in several requests.",
            param="documents",
            code="too_many_documents",
        )
    for i, doc in enumerate(docs):
        if doc.size_bytes() > settings.max_document_bytes:
            raise APIError(
                413,
                f"documents[{i}] is {doc.size_bytes()} bytes; the limit is "
                f"{settings.max_document_bytes}. Split it into smaller documents.",
                param=f"documents[{i}]",
                code="document_too_large",
            )
    await _collection(request, name)
    ingestor: Ingestor = request.app.state.ingestor
    outcomes = await ingestor.ingest(name, docs)
    # Local mode slows down as a collection grows: say so once it is past the threshold.
    warning = await _store(request).check_size(name)
    summary = {k: 0 for k in ("added", "unchanged", "replaced", "failed")}
    for o in outcomes:
        summary[o.status] += 1
    return {
        "collection": name,
        "results": [
            {"index": i, "id": o.id, "status": o.status, "chunks": o.chunks, "reason": o.reason}
            for i, o in enumerate(outcomes)
        ],
        "summary": summary,
        "warnings": [warning] if warning else [],
    }


@router.delete(
    "/v1/collections/{name}/documents/{doc_id:path}",
    openapi_extra=needs_scope("ingest"),
    summary="Delete a document.",
)
async def delete_document(name: str, doc_id: str, request: Request) -> dict[str, Any]:
    await _collection(request, name)
    store = _store(request)
    flt = QdrantStore.doc_filter(doc_id)
    count = await store.count(name, flt)
    if count == 0:
        raise APIError(
            404,
            f"Document '{doc_id}' is not in '{name}'.",
            param="doc_id",
            code="document_not_found",
        )
    await store.delete(name, flt)
    await store.check_size(name)  # back under the threshold: a later crossing is logged again
    return {"id": doc_id, "deleted_chunks": count}


@router.post(
    "/v1/collections/{name}/search",
    openapi_extra=needs_scope("search"),
    summary="Nearest chunks to a text or a vector.",
)
async def search(name: str, body: SearchRequest, request: Request) -> dict[str, Any]:
    settings = request.app.state.settings
    metrics = request.app.state.search_metrics
    started = time.perf_counter()
    if body.top_k > settings.max_top_k:
        raise APIError(
            400,
            f"'top_k' is {body.top_k}; at most {settings.max_top_k}.",
            param="top_k",
            code="invalid_value",
        )
    flt = to_qdrant(body.filter)
    store = _store(request)
    info = await store.layout(name) or await _collection(request, name)
    mode = body.mode or ("dense" if body.vector is not None else info.search_mode)
    if mode not in info.modes:
        raise APIError(
            400,
            f"'{name}' holds dense vectors only (it was created before hybrid search), so it "
            f'cannot be searched in mode \'{mode}\'. Search it with "mode": "dense", or '
            "create a new collection and ingest the documents into it again: new collections "
            "hold BM25 vectors too.",
            param="mode",
            code="mode_unavailable",
        )
    if mode == "hybrid" and body.score_threshold is not None:
        raise APIError(
            400,
            "'score_threshold' has no fixed scale on a hybrid search's fused (reciprocal rank) "
            'scores; search with "mode": "dense" (cosine similarity) or "sparse" (BM25) to use '
            "a threshold.",
            param="score_threshold",
            code="invalid_value",
        )
    sparse = None
    if body.vector is not None:
        vector: list[float] | None = body.vector
    else:
        assert body.query is not None
        if mode != "dense":
            sparse = BM25.query(body.query)
        vector = None
        if mode != "sparse":
            try:
                vector = (await request.app.state.embedder.embed([body.query]))[0].tolist()
            except EmbeddingsUnavailable as exc:
                raise _unavailable(exc) from exc
    if vector is not None and len(vector) != info.vector_size:
        raise APIError(
            400,
            f"'vector' has {len(vector)} dimensions; '{name}' holds {info.vector_size}.",
            param="vector",
            code="invalid_value",
        )
    try:
        points = await store.search(
            info, mode, vector, sparse, flt, body.top_k, body.score_threshold, body.with_vectors
        )
    except Exception as exc:
        if not QdrantStore.is_missing_collection(exc):
            raise
        store.forget(name)  # deleted through another replica since it was cached
        await _collection(request, name)
        raise

    results = []
    for p in points:
        payload = p.payload or {}
        item: dict[str, Any] = {
            "id": str(p.id),
            "doc_id": payload.get("doc_id"),
            "chunk_index": payload.get("chunk_index"),
            "headings": payload.get("headings", []),
            "score": p.score,
            "metadata": payload.get("metadata", {}),
        }
        if body.with_text:
            item["text"] = payload.get("text")
        if body.with_vectors:
            item["vector"] = p.vector.get(info.dense) if isinstance(p.vector, dict) else p.vector
        results.append(item)
    elapsed = time.perf_counter() - started
    metrics["seconds"].observe(elapsed)
    metrics["modes"].labels(mode).inc()
    metrics["results"].observe(len(results))
    if not results:
        metrics["empty"].inc()
    return {
        "collection": name,
        "mode": mode,
        "results": results,
        "took_ms": round(elapsed * 1000, 3),
    }
