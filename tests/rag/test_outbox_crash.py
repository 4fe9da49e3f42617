"""An answered ask survives a ``kill -9`` that comes right after its answer: the interaction was
fsync'd to the outbox before the answer (a plain 200, or a stream's final ``rag.ask`` event)
left, and the next life of rag on the same outbox sends it to the feedback service."""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import orjson

from tests.conftest import ServiceProcess, auth_headers
from tests.rag.platform import Platform, set_reply

ROUNDS = 3
ASKS = 6  # per round, at once; every third streamed


def _ask(svc: ServiceProcess, n: int) -> str:
    """One ask, answered; its interaction id (from the stream's final event when streamed)."""
    body = {"question": f"Can I return a damaged item? ({n})", "stream": n % 3 == 0}
    with httpx.Client(headers=auth_headers(), timeout=60) as api:
        if not body["stream"]:
            r = api.post(f"{svc.url}/v1/ask", json=body)
            assert r.status_code == 200, r.text
            return str(r.json()["interaction_id"])
        with api.stream("POST", f"{svc.url}/v1/ask", json=body) as r:
            assert r.status_code == 200
            events = [orjson.loads(x[6:]) for x in r.iter_lines() if x.startswith("data: {")]
    final = [e for e in events if e.get("object") == "rag.ask"]
    assert len(final) == 1, events
    return str(final[0]["interaction_id"])


def test_an_answered_ask_survives_a_kill_9_right_after_its_answer(
    platform: Platform, service_factory: Any, tmp_path: Path
) -> None:
    set_reply(platform.fake, "Damaged items can be returned within 30 days [1].")
    env = platform.rag_env(tmp_path)
    answered: list[str] = []
    svc: ServiceProcess = service_factory("rag", **env).wait_ready(120)
    for r in range(ROUNDS):
        with ThreadPoolExecutor(ASKS) as pool:
            ids = list(pool.map(_ask, [svc] * ASKS, range(r * ASKS, (r + 1) * ASKS)))
        os.kill(svc.proc.pid, signal.SIGKILL)  # at once: no shutdown, no flush, no send
        svc.proc.wait()
        answered += ids
        svc = service_factory("rag", **env).wait_ready(120)
    # The last life adopts the outbox its killed predecessors left, and sends it.
    missing, deadline = answered, time.monotonic() + 60
    while missing and time.monotonic() < deadline:
        time.sleep(0.5)
        missing = [i for i in missing if not _recorded(platform.feedback_url, i)]
    assert not missing, f"{len(missing)} of {len(answered)} answered asks lost: {missing}"


def _recorded(feedback_url: str, interaction_id: str) -> bool:
    r = httpx.get(f"{feedback_url}/v1/interactions/{interaction_id}", headers=auth_headers())
    return r.status_code == 200
