"""Liveness: a service whose needed loop died, or whose model cannot load, asks to be restarted
(503 on /healthz) instead of answering 200 forever while it serves nothing."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import API_KEY_HASH


async def _probe(app: Any, path: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://pod") as client:
        return await client.get(path)


def test_a_dead_committer_fails_liveness_and_names_the_loop(tmp_path: Path) -> None:
    from services.feedback.app import create_app
    from services.feedback.config import FeedbackSettings

    settings = FeedbackSettings(
        env="dev", api_key_hashes=[API_KEY_HASH], data_dir=tmp_path, shutdown_delay_s=0
    )
    app = create_app(settings)

    async def scenario() -> tuple[int, int, httpx.Response, int]:
        async with app.router.lifespan_context(app):
            before = (await _probe(app, "/healthz")).status_code
            ready = (await _probe(app, "/readyz")).status_code
            for task in asyncio.all_tasks():
                if task.get_name() == "feedback-committer":
                    task.cancel()  # as if the loop had ended on an error nobody caught
            await asyncio.sleep(0.05)
            after = await _probe(app, "/healthz")
            still_ready = (await _probe(app, "/readyz")).status_code
        return before, ready, after, still_ready

    before, ready, after, _ = asyncio.run(scenario())
    assert (before, ready) == (200, 200)
    assert after.status_code == 503
    err = after.json()["error"]
    assert err["code"] == "not_alive" and "feedback committer loop stopped" in err["message"]


def test_a_loop_that_raised_is_named_with_its_error() -> None:
    from services.common.lifecycle import Lifecycle

    async def scenario() -> list[str]:
        life = Lifecycle(0, 30)

        async def crash() -> None:
            raise RuntimeError("disk on fire")

        life.watch("outbox sender", asyncio.create_task(crash()))
        await asyncio.sleep(0.01)
        dead = life.dead()
        life.begin_stop()  # stopping: the loops end on purpose, liveness stays green
        return [*dead, *life.dead()]

    assert asyncio.run(scenario()) == [
        "the outbox sender loop stopped (RuntimeError: disk on fire)"
    ]


def test_a_model_that_cannot_load_fails_liveness(service_factory: Any, tmp_path: Path) -> None:
    """The embeddings process, started on a directory that holds no model: it answers (so the
    kubelet sees why), unready and not alive, and a restart is what it asks for."""
    empty = tmp_path / "no-model"
    empty.mkdir()
    svc = service_factory(
        "embeddings", EMBEDDINGS_API_KEY_HASHES=API_KEY_HASH, EMBEDDINGS_MODEL_PATH=str(empty)
    )
    deadline = time.monotonic() + 120
    while True:
        try:
            r = httpx.get(f"{svc.url}/healthz", timeout=2)
            if r.status_code == 503:
                break
        except httpx.HTTPError:
            pass
        assert svc.proc.poll() is None and time.monotonic() < deadline, svc.logs()
        time.sleep(0.2)
    assert "the model failed to load" in r.json()["error"]["message"]
    ready = httpx.get(f"{svc.url}/readyz", timeout=2)
    assert ready.status_code == 503 and "failed to load" in ready.text
