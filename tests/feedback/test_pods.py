"""Feedback as pods: a stop drains the spool, a pod's feedback may reach the database before its
interaction (spooled on another pod), the dead letters are bounded, and a schema the migration
Job has not brought up keeps the pod unready, not crash-looping. The database outages are
real (a TCP proxy in front of PostgreSQL that the test cuts)."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import ROOT, clean_env, fresh_pg_database, metric, scrape
from tests.feedback.conftest import Start, TcpProxy, client, interaction
from tests.feedback.test_durability import _counts, _pg, _post_all, _wait


def _readyz(svc: Any) -> dict[str, Any]:
    return dict(httpx.get(f"{svc.url}/readyz", timeout=10).json())


def test_a_stop_writes_the_spool_to_the_database_when_it_answers(
    start_feedback: Start, pg_url: str, pg_proxy: TcpProxy, tmp_path: Path
) -> None:
    """A pod removed by a scale-down must not strand what it spooled: it drains before exit."""
    # Probing only every 10 minutes: nothing but the stop itself can drain the spool.
    svc = start_feedback(pg_proxy.url(pg_url), FEEDBACK_PROBE_INTERVAL_S="600")
    pg_proxy.cut()
    items = [interaction(f"stop-{n}") for n in range(100)]
    assert {r.status_code for r in _post_all(svc, [("/v1/interactions", b) for b in items])} == {
        202
    }
    assert _readyz(svc)["spool_depth"] == 100
    pg_proxy.restore()
    svc.proc.send_signal(signal.SIGTERM)
    svc.proc.wait(60)
    with _pg(pg_url) as conn:
        rows = conn.execute("SELECT count(*) FROM interactions WHERE id LIKE 'stop-%'").fetchone()
    assert rows is not None and rows[0] == 100
    assert not list((tmp_path / "spool").glob("*.spool"))


def test_feedback_drained_before_its_interaction_waits_for_it(
    start_feedback: Start, tmp_path: Path
) -> None:
    """Pod A spooled the feedback, pod B the interaction it is about; A drains first. The
    feedback is tried again until B's drain brought the interaction, never dead-lettered."""
    with fresh_pg_database("llmops_feedback_orphan") as url:
        tunnel = TcpProxy()
        try:
            common = {"FEEDBACK_ORPHAN_RETRY_S": "0.3"}
            a = start_feedback(tunnel.url(url), FEEDBACK_SPOOL_DIR=str(tmp_path / "a"), **common)
            b = start_feedback(
                tunnel.url(url),
                FEEDBACK_SPOOL_DIR=str(tmp_path / "b"),
                FEEDBACK_PROBE_INTERVAL_S="600",  # B drains only at its stop
                **common,
            )
            tunnel.cut()
            with client(b) as api:
                assert api.post("/v1/interactions", json=interaction("far")).status_code == 202
            vote = {"interaction_id": "far", "kind": "thumbs", "value": "up"}
            with client(a) as api:
                assert api.post("/v1/feedback", json=vote).status_code == 202
            tunnel.restore()
            _wait(lambda: _readyz(a)["write_mode"] == "direct")  # A drained; the vote waits
            assert _readyz(a)["deferred_depth"] == 1 and _readyz(a)["dead_letters"] == 0
            assert metric(scrape(a), "llmops_feedback_deferred_depth") == 1
            assert _counts(url) == {"interactions": 0, "feedback": 0}
            b.proc.send_signal(signal.SIGTERM)  # B goes (a scale-down): it drains first
            b.proc.wait(60)
            _wait(lambda: _counts(url) == {"interactions": 1, "feedback": 1})
            _wait(lambda: _readyz(a)["deferred_depth"] == 0)
            assert not (tmp_path / "a" / "dead-letter.jsonl").exists()
            assert metric(scrape(a), "llmops_feedback_dead_letter_total") == 0
            a.stop()
        finally:
            tunnel.cut()


def test_the_dead_letter_file_is_bounded_counted_and_named(
    start_feedback: Start, pg_url: str, pg_proxy: TcpProxy, tmp_path: Path
) -> None:
    svc = start_feedback(
        pg_proxy.url(pg_url), FEEDBACK_ORPHAN_WINDOW_S="0", FEEDBACK_DEAD_LETTER_MAX_BYTES="2048"
    )
    pg_proxy.cut()
    ghosts = [
        {"interaction_id": f"ghost-{n}", "kind": "comment", "value": "x" * 300} for n in range(20)
    ]
    assert {r.status_code for r in _post_all(svc, [("/v1/feedback", g) for g in ghosts])} == {202}
    pg_proxy.restore()
    _wait(lambda: _readyz(svc)["write_mode"] == "direct")
    path = tmp_path / "spool" / "dead-letter.jsonl"
    kept = path.read_text().splitlines()
    assert 1 <= len(kept) < 20 and path.stat().st_size <= 2048
    text = scrape(svc)
    assert metric(text, "llmops_feedback_dead_letter_total", code="interaction_not_found") == 20
    assert metric(text, "llmops_feedback_dead_letter_entries", path=str(path)) == len(kept)
    assert metric(text, "llmops_feedback_dead_letter_dropped") == 20 - len(kept)
    assert _readyz(svc)["dead_letters"] == len(kept)


def test_a_schema_behind_is_unready_writes_wait_and_the_job_brings_it_up(
    start_feedback: Start, tmp_path: Path
) -> None:
    with fresh_pg_database("llmops_feedback_job") as url:
        svc = start_feedback(url, ready=False, ENV="production", FEEDBACK_AUTO_MIGRATE="false")
        _wait(lambda: _status(svc) == 503)
        r = httpx.get(f"{svc.url}/readyz")
        assert "never migrated" in r.text and "llmops db upgrade feedback" in r.text
        assert httpx.get(f"{svc.url}/healthz").status_code == 200  # alive: no crash loop
        # A write that reaches it anyway is kept (spooled), and lands after the migration.
        with client(svc) as api:
            assert api.post("/v1/interactions", json=interaction("early")).status_code == 202
        job = subprocess.run(
            [sys.executable, "-m", "services.cli.main", "db", "upgrade", "feedback"],
            cwd=ROOT, env=clean_env(FEEDBACK_DATABASE_URL=url), capture_output=True, text=True,
        )  # fmt: skip
        assert job.returncode == 0, job.stderr
        svc.wait_ready(30)
        _wait(lambda: _readyz(svc)["write_mode"] == "direct")
        assert _counts(url)["interactions"] == 1
        svc.stop()


def _status(svc: Any) -> int:
    try:
        return httpx.get(f"{svc.url}/readyz", timeout=2).status_code
    except httpx.HTTPError:
        return 0
