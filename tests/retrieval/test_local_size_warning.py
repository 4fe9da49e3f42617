"""A local-mode collection past RETRIEVAL_LOCAL_WARN_POINTS: the service logs a WARNING (after
the ingest that crosses it, and at startup for one already past it) and puts the warning in the
answers the CLI reads (ingest, collection card); ``llmops ingest`` prints it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.retrieval.config import RetrievalSettings
from services.retrieval.store import CollectionInfo, size_warning
from tests.conftest import API_KEY, ServiceProcess, auth_headers
from tests.retrieval.conftest import ingest, make_collection, retrieval_env

THRESHOLD = 5
ADVICE = "use a Qdrant server (RETRIEVAL_QDRANT_URL)"


@dataclass
class Small:
    service: ServiceProcess
    env: dict[str, str]


@pytest.fixture(scope="module")
def small(
    service_factory: Any, embeddings: ServiceProcess, tmp_path_factory: pytest.TempPathFactory
) -> Small:
    """Retrieval on its own local Qdrant, warning past 5 points; small chunks."""
    env = retrieval_env(
        embeddings.url,
        tmp_path_factory.mktemp("qdrant-size-warning"),
        RETRIEVAL_CHUNK_TOKENS="48",
        RETRIEVAL_CHUNK_OVERLAP_TOKENS="8",
        RETRIEVAL_LOCAL_WARN_POINTS=str(THRESHOLD),
    )
    return Small(service_factory("retrieval", **env).wait_ready(), env)


@pytest.fixture(scope="module")
def small_api(small: Small) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=small.service.url, headers=auth_headers(), timeout=300) as client:
        yield client


def size_warnings(svc: ServiceProcess) -> list[dict[str, Any]]:
    """The service's WARNING log lines about a collection's size."""
    out = []
    for line in svc.logs().splitlines():
        if not line.startswith("{"):
            continue
        record = json.loads(line)
        if record.get("level") == "warning" and "RETRIEVAL_LOCAL_WARN_POINTS" in record["msg"]:
            out.append(record)
    return out


def long_text(paragraphs: int) -> str:
    para = (
        "The retrieval service keeps its vectors in an embedded Qdrant when no server URL is "
        "configured, which is convenient on a laptop and for the demo, and costs memory and "
        "time on every search as the collection grows past what one process holds comfortably."
    )
    return "\n\n".join(f"Paragraph {i}. {para}" for i in range(paragraphs))


def test_the_ingest_that_crosses_the_threshold_warns(small: Small, small_api: httpx.Client) -> None:
    make_collection(small_api, "grows")
    assert small_api.get("/v1/collections/grows").json()["warnings"] == []
    under = ingest(small_api, "grows", [{"id": "short", "text": "One short sentence."}])
    assert under["results"][0]["chunks"] <= THRESHOLD
    assert under["warnings"] == []
    assert size_warnings(small.service) == []

    over = ingest(small_api, "grows", [{"id": "long", "text": long_text(12)}])
    total = under["results"][0]["chunks"] + over["results"][0]["chunks"]
    assert total > THRESHOLD
    [warning] = over["warnings"]
    assert ADVICE in warning and f"{total:,} points" in warning
    assert f"RETRIEVAL_LOCAL_WARN_POINTS={THRESHOLD}" in warning
    [logged] = size_warnings(small.service)
    assert logged["msg"] == warning
    assert logged["collection"] == "grows" and logged["points_count"] == total
    assert logged["local_warn_points"] == THRESHOLD

    # Still past it: every answer says so, the log only once.
    again = ingest(small_api, "grows", [{"id": "more", "text": "Another short sentence."}])
    assert len(again["warnings"]) == 1 and ADVICE in again["warnings"][0]
    assert len(size_warnings(small.service)) == 1
    card = small_api.get("/v1/collections/grows").json()
    assert card["warnings"] == again["warnings"]
    listed = {c["name"]: c for c in small_api.get("/v1/collections").json()["data"]}
    assert listed["grows"]["warnings"] == again["warnings"]


def test_llmops_ingest_prints_the_warning(
    small: Small,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from services.cli.client import ingest as cli_ingest

    monkeypatch.setenv("LLMOPS_API_KEY", API_KEY)
    (tmp_path / "notes.md").write_text("# Notes\n\n" + long_text(12), encoding="utf-8")
    assert cli_ingest([tmp_path], "cli-grows", small.service.url, 16) == 0
    printed = " ".join(capsys.readouterr().err.split())  # rich wraps long lines
    assert "warning: Collection 'cli-grows' holds" in printed
    assert ADVICE in printed


def test_startup_warns_about_a_collection_already_past_it(
    small: Small, small_api: httpx.Client, service_factory: Any
) -> None:
    make_collection(small_api, "before-restart")
    assert ingest(small_api, "before-restart", [{"text": long_text(12)}])["warnings"]
    small.service.stop()  # local Qdrant: one process at a time on a directory
    restarted: ServiceProcess = service_factory("retrieval", **small.env).wait_ready()
    logged = {r["collection"]: r for r in size_warnings(restarted)}
    assert "before-restart" in logged
    assert ADVICE in logged["before-restart"]["msg"]


@pytest.mark.parametrize(
    ("url", "limit", "points", "warns"),
    [
        (None, 5, 6, True),
        (None, 5, 5, False),  # at the threshold, not past it
        (None, 0, 10**6, False),  # 0 disables
        ("http://qdrant:6333", 5, 10**6, False),  # a server: no warning
    ],
)
def test_size_warning_rule(url: str | None, limit: int, points: int, warns: bool) -> None:
    settings = RetrievalSettings(
        env="dev", auth_disabled=True, qdrant_url=url, local_warn_points=limit
    )
    info = CollectionInfo("c", points, 384, "dense", True, "hybrid")
    assert (size_warning(settings, info) is not None) is warns
