"""``llmops ask`` against a real rag service: real retrieval (the handbook) and proxy, the fake
provider behind it. What a person sees: the answer as it is written, then its sources; and one
clear line with an exit code when something fails."""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.cli.test_cli import LLMOPS, run
from tests.conftest import API_KEY, API_KEY_HASH, ROOT, ServiceProcess, clean_env, free_port
from tests.llm_proxy.conftest import MASTER_KEY, FakeUpstream
from tests.rag.platform import set_reply, start_proxy, start_retrieval

QUESTION = "Can I return a damaged item?"
REPLY = "Damaged items can be returned within 30 days [1] [1]. Keep the packaging [7]."
SHOWN = "Damaged items can be returned within 30 days [1]. Keep the packaging."


class Rag:
    def __init__(self, fake: FakeUpstream, service_factory: Any, env: dict[str, str]) -> None:
        self.fake = fake
        self.env = env
        self.svc: ServiceProcess = service_factory("rag", **env).wait_ready(60)

    def cli_env(self, **extra: str) -> dict[str, str]:
        env = {"LLMOPS_RAG_URL": self.svc.url, "LLMOPS_API_KEY": API_KEY, "COLUMNS": "200"}
        return clean_env(**{**env, **extra})


@pytest.fixture(scope="module")
def rag(
    service_factory: Any, embeddings: ServiceProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Rag]:
    """rag over the handbook with no feedback service (interactions stay in its outbox)."""
    tmp = tmp_path_factory.mktemp("ask-cli")
    fake = FakeUpstream("ask-cli-fake", tmp)
    try:
        retrieval = start_retrieval(service_factory, embeddings, tmp)
        proxy = start_proxy(service_factory, fake, tmp)
        env = {
            "RAG_API_KEY_HASHES": API_KEY_HASH,
            "RAG_RETRIEVAL_URL": retrieval.url,
            "RAG_RETRIEVAL_API_KEY": API_KEY,
            "RAG_PROXY_URL": proxy.url,
            "RAG_PROXY_API_KEY": MASTER_KEY,
            "RAG_FEEDBACK_URL": "",
            "RAG_DEFAULT_COLLECTION": "handbook",
            "RAG_OUTBOX_DIR": str(tmp / "outbox"),
            "RAG_MAX_TOKENS": "64",
        }
        yield Rag(fake, service_factory, env)
    finally:
        fake.stop()


@pytest.fixture(autouse=True)
def _reply(rag: Rag) -> None:
    rag.fake.reset()
    set_reply(rag.fake, REPLY)


def test_the_answer_then_its_citations(rag: Rag) -> None:
    r = run("ask", QUESTION, "--collection", "handbook", env=rag.cli_env())
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == SHOWN  # streamed, markers naming no passage left out
    assert lines[1] == ""
    assert lines[2].startswith("[1] handbook/refunds.md (Refunds")
    assert len(lines) == 3  # [1] once, however often the answer cites it
    assert "removed markers that name no retrieved passage: [7]" in r.stderr
    assert "degraded" not in r.stderr
    # The same without streaming, and with the service's default collection and a top_k.
    plain = run("ask", QUESTION, "--no-stream", "-k", "2", env=rag.cli_env())
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout == r.stdout
    assert not rag.fake.requests()[-1]["body"].get("stream")


def test_json_prints_the_whole_answer_object(rag: Rag) -> None:
    r = run("ask", QUESTION, "--json", env=rag.cli_env())
    assert r.returncode == 0, r.stderr
    data = orjson.loads(r.stdout)
    assert data["object"] == "rag.ask" and data["answer"] == SHOWN
    assert data["invalid_citations"] == [7]
    assert [c["marker"] for c in data["citations"]] == ["[1]"]
    assert data["citations"][0]["document_id"] == "handbook/refunds.md"


def test_the_answer_is_printed_as_it_arrives(rag: Rag) -> None:
    """The provider stalls after a few words: those words are on the terminal already, while
    the answer is still unfinished."""
    rag.fake.script({"hang_after_chunks": 4})
    proc = subprocess.Popen(
        [*LLMOPS, "ask", QUESTION],
        cwd=ROOT,
        env=rag.cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    seen = b""
    arrived = threading.Event()

    def read() -> None:
        nonlocal seen
        assert proc.stdout is not None
        while chunk := os.read(proc.stdout.fileno(), 4096):
            seen += chunk
            if b"items can" in seen:
                arrived.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert arrived.wait(120), seen
        assert seen.startswith(b"Damaged items can")
        assert proc.poll() is None  # the answer is not over: the provider still holds it
    finally:
        proc.terminate()
        proc.wait(30)
        reader.join(30)


def test_failures_are_one_line_with_an_exit_code(rag: Rag, tmp_path: Path) -> None:
    # The caller's mistakes: exit 2, rag's own message.
    r = run("ask", QUESTION, "--collection", "nope", env=rag.cli_env())
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.startswith("error:") and "nope" in r.stderr and "Traceback" not in r.stderr
    r = run("ask", QUESTION, "--top-k", "500", "--no-stream", env=rag.cli_env())
    assert r.returncode == 2 and "top_k" in r.stderr
    # The platform's: exit 1, with what to do.
    r = run("ask", QUESTION, env=rag.cli_env(LLMOPS_API_KEY="sk-wrong-key-0123456789"))
    assert r.returncode == 1 and "LLMOPS_API_KEY" in r.stderr
    dead = f"http://127.0.0.1:{free_port()}"
    r = run("ask", QUESTION, "--url", dead, env=rag.cli_env())
    assert r.returncode == 1 and f"cannot reach the rag service at {dead}" in r.stderr
    rag.fake.always({"status": 500})
    r = run("ask", QUESTION, "--no-stream", env=rag.cli_env())
    assert r.returncode == 1 and "The model failed" in r.stderr
    rag.fake.always(None)
    rag.fake.script({"cut_after_chunks": 3})
    r = run("ask", QUESTION, env=rag.cli_env())
    assert r.returncode == 1 and "the answer failed midway" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_degraded_answers_say_so(rag: Rag, service_factory: Any, tmp_path: Path) -> None:
    """A registry that never answered: rag serves its bundled prompt and flags it."""
    env = {
        **rag.env,
        "RAG_MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}",
        "RAG_OUTBOX_DIR": str(tmp_path / "outbox"),
    }
    svc: ServiceProcess = service_factory("rag", **env).wait_ready(60)
    r = run("ask", QUESTION, "--url", svc.url, env=rag.cli_env())
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(SHOWN)
    assert "degraded: prompt_registry_unavailable" in r.stderr
