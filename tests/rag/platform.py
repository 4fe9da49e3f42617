"""The real platform under the rag service, for its tests: embeddings, retrieval on local
Qdrant, the proxy over the fake upstream, feedback on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.conftest import API_KEY, API_KEY_HASH, ServiceProcess, auth_headers, fresh_pg_database
from tests.llm_proxy.conftest import MASTER_KEY, FakeUpstream
from tests.retrieval.conftest import retrieval_env

DOCS = [
    {
        "id": "handbook/refunds.md",
        "text": "# Refunds\n\n## Damaged items\n\nDamaged items can be returned within 30 days "
        "for a full refund. Keep the original packaging.\n\n## Digital goods\n\nDigital goods "
        "are not refundable once downloaded.",
        "content_type": "text/markdown",
    },
    {
        "id": "handbook/shipping.md",
        "text": "# Shipping\n\nStandard shipping takes 3 to 5 business days. Express shipping "
        "arrives the next business day when ordered before noon.",
        "content_type": "text/markdown",
    },
    {
        "id": "handbook/support.md",
        "text": "# Support\n\nThe support desk answers email within one business day. Phone "
        "support is open from 9 to 17 on weekdays.",
        "content_type": "text/markdown",
    },
]


@dataclass
class Platform:
    retrieval: ServiceProcess
    proxy: ServiceProcess
    fake: FakeUpstream
    feedback_url: str
    database_url: str = ""  # feedback's PostgreSQL, for tests that count its rows

    def rag_env(self, tmp: Path, **extra: str) -> dict[str, str]:
        return {
            "ENV": "dev",
            "RAG_API_KEY_HASHES": API_KEY_HASH,
            "RAG_RETRIEVAL_URL": self.retrieval.url,
            "RAG_RETRIEVAL_API_KEY": API_KEY,
            "RAG_PROXY_URL": self.proxy.url,
            "RAG_PROXY_API_KEY": MASTER_KEY,
            "RAG_FEEDBACK_URL": self.feedback_url,
            "RAG_FEEDBACK_API_KEY": API_KEY,
            "RAG_DEFAULT_COLLECTION": "handbook",
            "RAG_OUTBOX_DIR": str(tmp / "outbox"),
            "RAG_MAX_TOKENS": "64",
            **extra,
        }


@contextmanager
def running_platform(
    service_factory: Any, embeddings: ServiceProcess, tmp: Path, name: str = "rag"
) -> Iterator[Platform]:
    """Feedback on a fresh PostgreSQL database, retrieval with the handbook, the proxy over a
    fake upstream of its own; the fake is stopped (the services by the factory) afterwards."""
    fake = FakeUpstream(f"{name}-fake", tmp)
    try:
        with fresh_pg_database(f"llmops_{name}") as pg:
            feedback: ServiceProcess = service_factory(
                "feedback",
                ENV="dev",
                FEEDBACK_API_KEY_HASHES=API_KEY_HASH,
                FEEDBACK_DATABASE_URL=pg,
                FEEDBACK_SPOOL_DIR=str(tmp / "fb-spool"),
            ).wait_ready(120)
            yield Platform(
                retrieval=start_retrieval(service_factory, embeddings, tmp),
                proxy=start_proxy(service_factory, fake, tmp),
                fake=fake,
                feedback_url=feedback.url,
                database_url=pg,
            )
    finally:
        fake.stop()


def start_retrieval(service_factory: Any, embeddings: ServiceProcess, tmp: Path) -> ServiceProcess:
    svc: ServiceProcess = service_factory(
        "retrieval",
        **retrieval_env(
            embeddings.url,
            tmp / "qdrant",
            RETRIEVAL_CHUNK_TOKENS="64",
            RETRIEVAL_CHUNK_OVERLAP_TOKENS="8",
        ),
    ).wait_ready()
    with httpx.Client(base_url=svc.url, headers=auth_headers(), timeout=120) as api:
        assert api.post("/v1/collections", json={"name": "handbook"}).status_code == 201
        r = api.post("/v1/collections/handbook/documents", json={"documents": DOCS})
        assert r.status_code == 200, r.text
    return svc


def start_proxy(service_factory: Any, fake: FakeUpstream, tmp: Path) -> ServiceProcess:
    config = {
        "deployments": [{"name": "fake", "api_base": fake.api_base, "model": "fake-model"}],
        "aliases": {"smollm2": {"deployments": [{"deployment": "fake"}]}},
    }
    path = tmp / "routing.yaml"
    path.write_text(yaml.safe_dump(config))
    proc: ServiceProcess = service_factory(
        "llm-proxy",
        LLM_PROXY_CONFIG_PATH=str(path),
        LLM_PROXY_MASTER_KEY=MASTER_KEY,
        LLM_PROXY_DATABASE_URL=f"sqlite:///{tmp}/proxy.db",
    ).wait_ready(60)
    return proc


def set_reply(fake: FakeUpstream, content: str | None) -> None:
    httpx.post(f"{fake.url}/_script", json={"content": content}).raise_for_status()
