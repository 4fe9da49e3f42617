"""Retrieval service settings (env prefix ``RETRIEVAL_``)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from services.common.settings import ServiceSettings


class RetrievalSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="RETRIEVAL_")
    default_port: ClassVar[int] = 8002

    service_name: str = "retrieval"

    # Qdrant: a server when a URL is set, else embedded local mode under qdrant_path.
    qdrant_url: str | None = None
    qdrant_api_key: SecretStr | None = None
    qdrant_path: Path = Field(
        Path("qdrant"), description="Local mode's files; default: DATA_DIR/qdrant."
    )
    local_warn_points: int = Field(
        20_000,
        ge=0,
        description="Local mode only: past this many points in one collection the service logs "
        "a WARNING (at startup and after the ingest that crosses it) and adds a warning to "
        "ingest answers and collection cards. Local mode holds every point in this process's "
        "memory (about 29 KB each: some 0.7 GB at 20,000, the chart's 1 GiB limit near "
        "30,000), reads them all back at startup and scans them on every search (unfiltered "
        "p50 about 16 ms at 20,000, 130 ms at 100,000; with a payload filter, evaluated in "
        "Python, 0.2 s and 1.3 s); see bench/retrieval.py --scale. 0 disables.",
    )
    qdrant_timeout_s: float = Field(10.0, gt=0)
    qdrant_retries: int = Field(4, ge=0, description="Retries of a transient Qdrant failure.")
    # New collections; the defaults fit a 3-node cluster.
    shard_number: int = Field(3, ge=1)
    replication_factor: int = Field(2, ge=1)
    write_consistency_factor: int = Field(1, ge=1)
    read_consistency: Literal["all", "majority", "quorum"] | int = "majority"

    # The embeddings service.
    embeddings_url: str = "http://127.0.0.1:8001"
    embeddings_api_key: SecretStr | None = None
    embeddings_model: str = "all-MiniLM-L6-v2"
    embeddings_timeout_s: float = Field(60.0, gt=0)
    embed_batch_size: int = Field(64, ge=1, le=2048)

    # Chunking, in the embedding model's tokens.
    chunk_tokens: int = Field(200, ge=16)
    chunk_overlap_tokens: int = Field(32, ge=0)

    # Search. New collections hold a dense and a BM25 vector per chunk; a search without
    # "mode" uses the collection's own default (this one, for collections made without one).
    default_search_mode: Literal["dense", "sparse", "hybrid"] = "hybrid"
    bm25_avg_len: float = Field(
        100.0, gt=0, description="A typical chunk's length in BM25 terms (length normalisation)."
    )
    hybrid_candidates: int = Field(
        50, ge=1, description="Candidates each half of a hybrid search hands to the fusion."
    )
    rrf_k: int = Field(
        60, ge=1, description="Reciprocal rank fusion's constant: 1/(k + rank) per list."
    )
    rrf_dense_weight: float = Field(
        1.0,
        gt=0,
        description="The dense list's weight in the fusion, the lexical list's being 1: as "
        "Qdrant weighs RRF, a point at rank r of a list adds 1/(r/weight + k - 1), so a weight "
        "of 2 makes rank 2 count as rank 1. At 1 no weights are sent (any Qdrant 1.16+); other "
        "values need a Qdrant whose Query API takes `rrf.weights`.",
    )

    # Limits.
    max_documents_per_request: int = Field(256, ge=1)
    max_document_bytes: int = Field(5 * 1024 * 1024, ge=1)
    max_top_k: int = Field(100, ge=1)
    max_body_bytes: int = Field(64 * 1024 * 1024, gt=0)

    def worker_limit(self) -> tuple[int, str] | None:
        if self.qdrant_url:
            return None
        return 1, "local Qdrant (no RETRIEVAL_QDRANT_URL) is a single-process store"

    def fill_defaults(self) -> None:
        super().fill_defaults()
        self.under_data_dir(qdrant_path="qdrant")

    def replica_unsafe(self) -> list[str]:
        out = self.loopback_urls("qdrant_url", "embeddings_url")
        if not self.qdrant_url:
            out.insert(
                0,
                "RETRIEVAL_QDRANT_URL is unset: embedded Qdrant keeps the vectors in this one "
                "pod's files, where no other replica sees them; set the Qdrant cluster's URL",
            )
        return out

    @model_validator(mode="after")
    def _overlap_fits(self) -> RetrievalSettings:
        if self.chunk_overlap_tokens >= self.chunk_tokens // 2:
            raise ValueError(
                "RETRIEVAL_CHUNK_OVERLAP_TOKENS must be under half of RETRIEVAL_CHUNK_TOKENS"
            )
        return self
