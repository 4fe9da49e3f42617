"""``llmops db upgrade|current`` on the real PostgreSQL, and ``llmops feedback export``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import orjson

from tests.cli.test_cli import run
from tests.conftest import (
    API_KEY,
    API_KEY_HASH,
    ServiceProcess,
    auth_headers,
    clean_env,
    fresh_pg_database,
)


def test_db_upgrade_migrates_both_services_into_one_database_idempotently() -> None:
    with fresh_pg_database("llmops_cli_db") as url:
        before = run("db", "current", "--database-url", url)
        assert before.returncode == 0, before.stderr
        assert before.stdout.splitlines() == ["feedback: not migrated", "llm-proxy: not migrated"]
        for _ in range(2):  # the second run finds nothing to do
            up = run("db", "upgrade", "all", "--database-url", url)
            assert up.returncode == 0, up.stderr
            assert up.stdout.splitlines() == [
                "feedback: at revision 0001 (postgresql)",
                "llm-proxy: at revision 0001 (postgresql)",
            ]
        assert run("db", "current", "feedback", "--database-url", url).stdout.strip() == (
            "feedback: 0001"
        )
    bad = run(
        "db",
        "upgrade",
        "feedback",
        "--database-url",
        "postgresql+psycopg://postgres@127.0.0.1:1/none",
        "--wait",
        "1",
    )
    assert bad.returncode == 1 and "did not answer within 1 s" in bad.stderr
    assert "Traceback" not in bad.stderr
    assert run("db", "upgrade", "retrieval").returncode == 2


def test_feedback_export_streams_a_dataset_into_a_file(
    service_factory: Any, tmp_path: Path
) -> None:
    svc: ServiceProcess = service_factory(
        "feedback",
        ENV="dev",
        FEEDBACK_API_KEY_HASHES=API_KEY_HASH,
        FEEDBACK_DATABASE_URL=f"sqlite:///{tmp_path / 'f.db'}",
        FEEDBACK_SPOOL_DIR=str(tmp_path / "spool"),
    ).wait_ready(60)
    with httpx.Client(base_url=svc.url, headers=auth_headers()) as api:
        for n in range(450):
            body = {
                "id": f"e{n}",
                "question": f"Q{n}?",
                "answer": f"A{n}.",
                "prompt_version": "v1" if n % 2 else "v2",
            }
            assert api.post("/v1/interactions", json=body).status_code == 201
        batch = [
            {"interaction_id": f"e{n}", "kind": "thumbs", "value": "up" if n % 3 else "down"}
            for n in range(450)
        ]
        batch += [
            {"interaction_id": f"e{n}", "kind": "correction", "value": f"Better {n}."}
            for n in range(0, 450, 9)
        ]
        assert api.post("/v1/feedback", json=batch).status_code == 201
    env = clean_env(LLMOPS_API_KEY=API_KEY)
    out = tmp_path / "data" / "kto.jsonl"
    r = run("feedback", "export", "--format", "kto", "-o", str(out), "--url", svc.url, env=env)
    assert r.returncode == 0, r.stderr
    rows = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert len(rows) == 450 + 50
    assert all(set(row) == {"prompt", "completion", "label"} for row in rows)
    assert f"wrote {len(rows)} kto rows" in r.stderr
    dpo = tmp_path / "dpo.jsonl"
    r = run(
        "feedback",
        "export",
        "-f",
        "dpo",
        "-o",
        str(dpo),
        "--url",
        svc.url,
        "--prompt-version",
        "v2",
        env=env,
    )
    assert r.returncode == 0, r.stderr
    pairs = [orjson.loads(line) for line in dpo.read_bytes().splitlines()]
    assert len(pairs) == sum(1 for n in range(0, 450, 9) if n % 2 == 0)
    assert all(set(p) == {"prompt", "chosen", "rejected"} for p in pairs)

    assert run("feedback", "export", "-f", "csv", "-o", str(dpo), env=env).returncode == 2
    denied = run(
        "feedback",
        "export",
        "-f",
        "sft",
        "-o",
        str(tmp_path / "x.jsonl"),
        "--url",
        svc.url,
        env=clean_env(LLMOPS_API_KEY="wrong-key-1234567"),
    )
    assert denied.returncode == 1 and "export refused" in denied.stderr
    assert not (tmp_path / "x.jsonl").exists()
    assert not list(tmp_path.glob("*.partial"))
