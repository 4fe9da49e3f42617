from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import API_KEY, API_KEY_HASH, ServiceProcess, auth_headers


def retrieval_env(embeddings_url: str, qdrant_path: Path, **extra: str) -> dict[str, str]:
    return {
        "RETRIEVAL_API_KEY_HASHES": API_KEY_HASH,
        "RETRIEVAL_EMBEDDINGS_URL": embeddings_url,
        "RETRIEVAL_EMBEDDINGS_API_KEY": API_KEY,
        "RETRIEVAL_QDRANT_PATH": str(qdrant_path),
        **extra,
    }


@pytest.fixture(scope="session")
def retrieval(
    service_factory: Any, embeddings: ServiceProcess, tmp_path_factory: pytest.TempPathFactory
) -> ServiceProcess:
    """Retrieval on local Qdrant, talking to the real embeddings service; small chunks so a
    few thousand of them stay quick to embed."""
    env = retrieval_env(
        embeddings.url,
        tmp_path_factory.mktemp("qdrant"),
        RETRIEVAL_CHUNK_TOKENS="48",
        RETRIEVAL_CHUNK_OVERLAP_TOKENS="8",
        RETRIEVAL_MAX_TOP_K="5000",
        RETRIEVAL_MAX_DOCUMENTS_PER_REQUEST="64",
        RETRIEVAL_MAX_DOCUMENT_BYTES="200000",
    )
    return service_factory("retrieval", **env).wait_ready()


@pytest.fixture(scope="session")
def api(retrieval: ServiceProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=retrieval.url, headers=auth_headers(), timeout=300) as client:
        yield client


def make_collection(api: httpx.Client, name: str, **fields: str) -> None:
    r = api.post("/v1/collections", json={"name": name, "metadata_fields": fields})
    assert r.status_code == 201, r.text


def ingest(api: httpx.Client, name: str, docs: list[dict[str, Any]]) -> dict[str, Any]:
    r = api.post(f"/v1/collections/{name}/documents", json={"documents": docs})
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def make_pdf(lines: list[str]) -> bytes:
    """A one-page PDF with these lines of text (Helvetica), built by hand."""

    def esc(s: str) -> str:
        return s.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")

    content = "BT /F1 11 Tf 72 740 Td 14 TL " + " ".join(f"({esc(x)}) '" for x in lines) + " ET"
    objects = [
        "<< /Type /Catalog /Pages 2 0 R >>",
        "<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        "/Resources << /Font << /F1 5 0 R >> >> >>",
        f"<< /Length {len(content)} >>\nstream\n{content}\nendstream",
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = b"%PDF-1.4\n"
    offsets = []
    for i, obj in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{i} 0 obj\n{obj}\nendobj\n".encode("latin-1")
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    for off in offsets:
        out += f"{off:010d} 00000 n \n".encode()
    out += (
        f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    )
    return out
