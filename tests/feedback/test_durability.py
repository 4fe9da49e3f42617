"""A 2xx is durable: through a PostgreSQL outage, a crash and a cold start, every accepted
write lands in the database exactly once. The outage is real: the service reaches PostgreSQL
through a TCP proxy that the test cuts (connections reset, new ones refused)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psycopg

from tests.conftest import ServiceProcess, assert_error, metric, scrape
from tests.feedback.conftest import Start, TcpProxy, client, interaction


def _pg(url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"))


def _counts(url: str) -> dict[str, int]:
    with _pg(url) as conn:
        return {
            t: int(conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0])  # type: ignore[index]
            for t in ("interactions", "feedback")
        }


def _ready(svc: ServiceProcess) -> dict[str, Any]:
    r = httpx.get(f"{svc.url}/readyz", timeout=10)
    assert r.status_code == 200, r.text  # still in the Service: writes are accepted
    return dict(r.json())


def _wait(cond: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.1)
    raise TimeoutError("condition not met in time")


def _post_all(svc: ServiceProcess, requests: list[tuple[str, Any]]) -> list[httpx.Response]:
    with client(svc) as api, ThreadPoolExecutor(32) as pool:
        return list(pool.map(lambda r: api.post(r[0], json=r[1]), requests))


def test_1000_writes_during_an_outage_land_exactly_once(
    start_feedback: Start, pg_url: str, pg_proxy: TcpProxy
) -> None:
    svc = start_feedback(pg_proxy.url(pg_url))
    before = [interaction(f"pre-{n}") for n in range(50)]
    assert {r.status_code for r in _post_all(svc, [("/v1/interactions", b) for b in before])} == {
        201
    }

    pg_proxy.cut()
    # 1,000 distinct writes: 400 new interactions, 600 feedback items (on interactions from
    # before the outage and on ones written during it), some with idempotency keys, some
    # without; plus 100 replays of them, which must not become duplicates.
    during = [interaction(f"out-{n}") for n in range(400)]
    feedback: list[dict[str, Any]] = []
    for n in range(600):
        target = before[n % 50]["id"] if n % 2 else during[n % 400]["id"]
        item: dict[str, Any] = {
            "interaction_id": target,
            "kind": "thumbs",
            "value": "up" if n % 3 else "down",
        }
        if n % 4:
            item["idempotency_key"] = f"out-key-{n}"
        feedback.append(item)
    requests = [("/v1/interactions", b) for b in during] + [("/v1/feedback", f) for f in feedback]
    replays = [r for r in requests[::10] if "idempotency_key" in r[1] or "answer" in r[1]][:100]
    answers = _post_all(svc, requests)
    answers += _post_all(svc, replays)
    assert [r.status_code for r in answers] == [202] * len(answers), {
        r.status_code: r.text for r in answers if r.status_code != 202
    }
    assert all(r.json()["status"] == "spooled" for r in answers)

    ready = _ready(svc)
    assert ready["status"] == "degraded" and ready["write_mode"] == "spooling"
    assert ready["database"] == "unreachable"
    assert ready["spool_depth"] == len(answers)
    assert metric(scrape(svc), "llmops_feedback_spool_depth") == len(answers)
    assert metric(scrape(svc), "llmops_feedback_write_mode", mode="spooling") == 1
    assert_error(client(svc).get("/v1/interactions"), 503, "database_unavailable")

    pg_proxy.restore()
    _wait(lambda: _ready(svc)["write_mode"] == "direct")
    counts = _counts(pg_url)
    assert counts == {"interactions": 50 + 400, "feedback": 600}
    with _pg(pg_url) as conn:
        keys = conn.execute(
            "SELECT count(DISTINCT idempotency_key) FROM feedback WHERE idempotency_key IS NOT NULL"
        ).fetchone()
        assert keys is not None and keys[0] == sum(1 for f in feedback if "idempotency_key" in f)
    text = scrape(svc)
    assert metric(text, "llmops_feedback_spool_depth") == 0
    assert metric(text, "llmops_feedback_spooled_total") == len(answers)
    assert metric(text, "llmops_feedback_dead_letter_total") == 0
    assert metric(text, "llmops_feedback_total", kind="thumbs") == 600
    # Back to normal: a write is committed again (201), reads work.
    with client(svc) as api:
        assert api.post("/v1/interactions", json=interaction("after")).status_code == 201
        assert api.get("/v1/feedback", params={"interaction_id": "out-1"}).status_code == 200


def test_spooled_writes_survive_a_crash_and_a_restart_during_the_outage(
    start_feedback: Start, pg_url: str, pg_proxy: TcpProxy, tmp_path: Path
) -> None:
    svc = start_feedback(pg_proxy.url(pg_url))
    with client(svc) as api:
        assert api.post("/v1/interactions", json=interaction("crash-0")).status_code == 201
    pg_proxy.cut()
    items = [interaction(f"crash-{n}") for n in range(1, 201)]
    answers = _post_all(svc, [("/v1/interactions", b) for b in items])
    assert {r.status_code for r in answers} == {202}
    os.kill(svc.proc.pid, signal.SIGKILL)  # no shutdown, no flush: only the fsync'd spool
    svc.proc.wait()

    # A new process on the same spool volume, started while the database is still away.
    again = start_feedback(pg_proxy.url(pg_url))
    ready = _ready(again)
    assert ready["write_mode"] != "direct" and ready["spool_depth"] == 200
    pg_proxy.restore()
    _wait(lambda: _ready(again)["write_mode"] == "direct")
    with _pg(pg_url) as conn:
        ids = [r[0] for r in conn.execute("SELECT id FROM interactions WHERE id LIKE 'crash-%'")]
    assert sorted(ids) == sorted(["crash-0"] + [b["id"] for b in items])
    assert not list((tmp_path / "spool").glob("*.spool"))


def test_a_cold_start_during_an_outage_migrates_and_drains_when_the_database_returns(
    start_feedback: Start, pg_proxy: TcpProxy, tmp_path: Path
) -> None:
    from tests.conftest import fresh_pg_database

    with fresh_pg_database("llmops_feedback_cold") as url:
        pg_proxy.cut()
        # Never migrated, database unreachable; feedback on an unknown interaction is refused
        # at drain at once (no window to wait for it to arrive from another pod).
        svc = start_feedback(pg_proxy.url(url), FEEDBACK_ORPHAN_WINDOW_S="0")
        ready = _ready(svc)
        assert ready["status"] == "degraded" and ready["write_mode"] == "spooling"
        with client(svc) as api:
            r = api.post("/v1/interactions", json=interaction("cold-1"))
            assert r.status_code == 202, r.text
            f = api.post(
                "/v1/feedback", json={"interaction_id": "cold-1", "kind": "rating", "value": 5}
            )
            assert f.status_code == 202, f.text
            # Unknown interaction: cannot be checked while the database is away; refused at
            # drain time, and kept for an operator rather than dropped.
            ghost = {"interaction_id": "ghost", "kind": "thumbs", "value": "up"}
            assert api.post("/v1/feedback", json=ghost).status_code == 202
        pg_proxy.restore()
        _wait(lambda: _ready(svc)["write_mode"] == "direct")
        assert _counts(url) == {"interactions": 1, "feedback": 1}
        dead = (tmp_path / "spool" / "dead-letter.jsonl").read_text().splitlines()
        assert len(dead) == 1 and "interaction_not_found" in dead[0] and "ghost" in dead[0]
        assert (
            metric(scrape(svc), "llmops_feedback_dead_letter_total", code="interaction_not_found")
            == 1
        )
        with client(svc) as api:
            got = api.get("/v1/interactions/cold-1").json()
            assert [f["value"] for f in got["feedback"]] == [5]
