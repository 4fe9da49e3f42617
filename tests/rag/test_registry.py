"""The rag prompt registry client against a real ``mlflow server``: aliases, pinned versions,
the TTL cache, single-flight, and what it serves while the registry is down."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from mlflow import MlflowClient

from services.rag.registry import (
    PromptNotFound,
    PromptRegistry,
    PromptUnavailable,
    ResolvedPrompt,
)
from tests.conftest import ROOT, free_port
from tests.rag.conftest import MlflowServer

BUNDLED = ROOT / "services" / "rag" / "prompts" / "rag-answer.txt"
V1 = "v1: answer {{ question }} from {{context}}"
V2 = "v2: answer {{question}} using only {{ context }}, citing [n]"

T = TypeVar("T")


def unique(prefix: str = "rag-answer") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def client(url: str) -> MlflowClient:
    return MlflowClient(tracking_uri=url, registry_uri=url)


def seed(url: str, name: str, alias: str = "production", on: int = 1) -> MlflowClient:
    """Two versions of ``name``, ``alias`` on version ``on``."""
    c = client(url)
    c.register_prompt(name, V1, commit_message="first")
    c.register_prompt(name, V2, commit_message="second")
    c.set_prompt_alias(name, alias, on)
    # register_prompt links the prompt to an experiment from a thread of its own: let it finish,
    # so that its requests are not counted as the registry's.
    for thread in threading.enumerate():
        if thread.name.startswith("link_prompt_to_experiment"):
            thread.join()
    return c


def registry(url: str | None, name: str, ttl_s: float = 30.0, **kw: Any) -> PromptRegistry:
    return PromptRegistry(url, name, "production", ttl_s, BUNDLED, **kw)


def get(reg: PromptRegistry, version: str | None = None) -> ResolvedPrompt:
    return asyncio.run(reg.get(version))


def eventually(check: Callable[[], T | None], within: float = 20) -> T:
    deadline = time.monotonic() + within
    while True:
        got = check()
        if got is not None:
            return got
        assert time.monotonic() < deadline, f"not within {within} s"
        time.sleep(0.1)


def requests_for(server: MlflowServer, name: str) -> int:
    """Requests the server logged for this prompt (uvicorn's access log has the query)."""
    return sum(1 for line in server.logs().splitlines() if f"name={name}" in line)


def test_alias_and_pinned_version_come_from_the_registry(mlflow_server: str) -> None:
    name = unique()
    seed(mlflow_server, name)
    reg = registry(mlflow_server, name)

    prompt = get(reg)
    assert prompt == ResolvedPrompt(name, "1", V1, "registry", ())
    pinned = get(reg, "2")
    assert (pinned.version, pinned.template, pinned.source, pinned.degraded) == (
        "2",
        V2,
        "registry",
        (),
    )

    status = reg.status()
    assert status["source"] == "registry" and status["last_error"] is None
    assert status["last_success_at"] is not None and status["errors"] == 0
    assert set(status["cached"]) == {"@production", "2"}
    assert status["cached"]["@production"]["version"] == "1"


def test_fresh_copies_are_served_without_asking_and_concurrent_asks_share_one_fetch(
    mlflow_server_process: MlflowServer,
) -> None:
    name = unique()
    seed(mlflow_server_process.url, name)
    reg = registry(mlflow_server_process.url, name)
    before = requests_for(mlflow_server_process, name)

    async def many() -> list[ResolvedPrompt]:
        return await asyncio.gather(*(reg.get() for _ in range(20)))

    assert {p.version for p in asyncio.run(many())} == {"1"}
    # Logged before each answer was sent. One lookup is two requests (the prompt, its alias).
    one_fetch = requests_for(mlflow_server_process, name) - before
    assert 0 < one_fetch <= 2

    for _ in range(10):
        assert get(reg).version == "1"
    assert requests_for(mlflow_server_process, name) - before == one_fetch


def test_an_alias_move_is_seen_after_the_ttl_and_not_before(mlflow_server: str) -> None:
    name = unique()
    c = seed(mlflow_server, name)
    short = registry(mlflow_server, name, ttl_s=0.5)
    long = registry(mlflow_server, name, ttl_s=300)
    assert get(short).version == get(long).version == "1"

    c.set_prompt_alias(name, "production", 2)
    moved = eventually(lambda: p if (p := get(short)).version == "2" else None, within=10)
    assert moved.template == V2 and moved.source == "registry"
    assert get(long).version == "1"  # still fresh: the registry is not asked again


def test_unknown_alias_version_or_name_says_what_to_do(mlflow_server: str) -> None:
    name = unique()
    seed(mlflow_server, name, alias="staging")
    reg = registry(mlflow_server, name)
    with pytest.raises(PromptNotFound, match=r"no version of prompt .* has alias 'production'"):
        get(reg)
    with pytest.raises(PromptNotFound, match=r"llmops prompts promote .* --to production"):
        get(reg)  # the answer is cached for the TTL like a prompt
    with pytest.raises(PromptNotFound, match="has no version 9"):
        get(reg, "9")
    with pytest.raises(PromptNotFound, match="versions are numbers"):
        get(reg, "latest")
    with pytest.raises(PromptNotFound, match=r"does not exist .*llmops prompts push"):
        get(registry(mlflow_server, unique("never-pushed")))
    assert reg.status()["last_error"] is None  # the registry answered: not an outage


def test_without_mlflow_the_bundled_prompt_is_served_not_degraded() -> None:
    prompt = get(registry(None, "rag-answer"))
    assert prompt == ResolvedPrompt(
        "rag-answer", None, BUNDLED.read_text(encoding="utf-8"), "bundled", ()
    )


def test_a_registry_never_reached_serves_the_bundled_prompt_for_the_alias_only() -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    reg = registry(url, "rag-answer", timeout_s=2)
    prompt = get(reg)
    assert prompt.source == "bundled" and prompt.version is None
    assert prompt.degraded == ("prompt_registry_unavailable",)
    assert prompt.template == BUNDLED.read_text(encoding="utf-8")
    with pytest.raises(PromptUnavailable, match=rf"{url} is unreachable .* never fetched"):
        get(reg, "3")
    status = reg.status()
    assert status["errors"] == 1  # backing off: the second ask did not try again
    assert "Connection refused" in status["last_error"] and status["last_success_at"] is None


def test_registry_down_serves_the_last_known_good_copy_then_recovers(
    restartable_mlflow: MlflowServer,
) -> None:
    name = unique()
    c = seed(restartable_mlflow.url, name)
    reg = registry(restartable_mlflow.url, name, ttl_s=0.5, timeout_s=2)
    assert get(reg).source == "registry" and get(reg, "2").source == "registry"

    restartable_mlflow.stop()
    stale = eventually(lambda: p if (p := get(reg)).source != "registry" else None)
    assert (stale.version, stale.template) == ("1", V1)
    assert (stale.source, stale.degraded) == ("last-known-good", ("prompt_registry_stale",))
    pinned = eventually(lambda: p if (p := get(reg, "2")).source != "registry" else None)
    assert (pinned.template, pinned.degraded) == (V2, ("prompt_registry_stale",))
    with pytest.raises(PromptUnavailable):
        get(reg, "1")  # never fetched by itself: no other version's text stands in for it
    status = reg.status()
    assert status["source"] == "last-known-good" and status["last_error"]

    restartable_mlflow.start()
    c.set_prompt_alias(name, "production", 2)
    back = eventually(lambda: p if (p := get(reg)).source == "registry" else None)
    assert (back.version, back.template, back.degraded) == ("2", V2, ())


def test_render_fills_every_variable_once_and_names_a_missing_one() -> None:
    prompt = ResolvedPrompt("p", "1", "Q: {{question}} | C: {{ context }} | {{  question  }}",
                            "registry", ())  # fmt: skip
    assert prompt.render(question="why?", context="[1] because") == (
        "Q: why? | C: [1] because | why?"
    )
    # A passage that quotes the template syntax is not itself rewritten.
    assert prompt.render(question="q", context="{{ question }}") == "Q: q | C: {{ question }} | q"
    with pytest.raises(ValueError, match="'context'"):
        prompt.render(question="q")


def test_the_bundled_prompt_asks_for_cited_answers_from_the_context() -> None:
    bundled = get(registry(None, "rag-answer"))
    text = bundled.render(context="[1] (a.md)\nThe sky is blue.", question="What colour?")
    assert "[1] (a.md)\nThe sky is blue." in text and "What colour?" in text
    assert "{{" not in text and "[1]" in bundled.template
    with pytest.raises(ValueError, match="question"):
        bundled.render(context="x")


def test_a_missing_bundled_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot be read"):
        PromptRegistry(None, "rag-answer", "production", 30, tmp_path / "nope.txt")
