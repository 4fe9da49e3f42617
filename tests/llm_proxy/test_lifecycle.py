"""The proxy as a pod: a stop that loses no stream and no spend, and tables a Job migrates."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import ROOT, clean_env, fresh_pg_database
from tests.llm_proxy.conftest import MASTER_KEY, FakeUpstream, base_config


def test_sigterm_readiness_503_at_once_streams_finish_spend_is_written(
    proxy_factory: Any, fakes: dict[str, FakeUpstream]
) -> None:
    proxy = proxy_factory(
        base_config(fakes), LLMOPS_SHUTDOWN_DELAY_S="1.5", LLM_PROXY_SPEND_FLUSH_S="3600"
    )  # spend only leaves memory at the stop
    key = proxy.create_key(name="stopping")["key"]
    chunks: list[str] = []

    fakes["slow"].always({"delay_ms": 1500})  # then 8 chunks 200 ms apart: about 3 s in all

    def stream() -> None:
        body = {"model": "slow", "stream": True, "max_tokens": 8,
                "messages": [{"role": "user", "content": "count"}]}  # fmt: skip
        headers = {"Authorization": f"Bearer {key}"}
        with httpx.stream(
            "POST", f"{proxy.url}/v1/chat/completions", json=body, headers=headers, timeout=60
        ) as r:
            chunks.extend(line for line in r.iter_lines() if line.startswith("data:"))

    worker = threading.Thread(target=stream)
    worker.start()
    time.sleep(0.6)
    proxy.proc.proc.send_signal(signal.SIGTERM)
    assert worker.is_alive()  # the stream is in flight when the stop begins
    time.sleep(0.2)
    ready = httpx.get(f"{proxy.url}/readyz", timeout=5)
    assert ready.status_code == 503 and ready.json()["error"]["code"] == "shutting_down"
    assert httpx.get(f"{proxy.url}/healthz", timeout=5).status_code == 200  # not a restart
    assert proxy.chat(key).status_code == 200  # still served during the delay
    worker.join(60)
    # Whole: the role, 8 pieces, the finish, [DONE]; not cut by the stop.
    assert chunks[-1] == "data: [DONE]" and len(chunks) == 11, chunks
    assert '"finish_reason":"stop"' in chunks[-2]
    proxy.proc.proc.wait(60)
    # What was summed in memory reached the key store at the stop: the stream and the chat.
    db = proxy.config_path.parent / "proxy.db"
    with sqlite3.connect(db) as conn:
        (requests,) = conn.execute(
            "SELECT SUM(s.requests) FROM spend s JOIN virtual_keys k ON k.id = s.key_id "
            "WHERE k.name = 'stopping'"
        ).fetchone()
    assert requests == 2


def test_schema_behind_is_unready_with_the_reason_until_the_job_migrates(
    service_factory: Any, fakes: dict[str, FakeUpstream], redis_url: str, tmp_path: Path
) -> None:
    import yaml

    routing = tmp_path / "routing.yaml"
    routing.write_text(yaml.safe_dump(base_config(fakes)))
    with fresh_pg_database("llmops_proxy_job") as url:
        svc = service_factory(
            "llm-proxy",
            ENV="production",
            LLM_PROXY_CONFIG_PATH=str(routing),
            LLM_PROXY_MASTER_KEY=MASTER_KEY,
            LLM_PROXY_DATABASE_URL=url,
            LLM_PROXY_REDIS_URL=redis_url,
        )
        deadline = time.monotonic() + 60
        while True:  # started (alive), not ready: the tables are not there
            try:
                r = httpx.get(f"{svc.url}/readyz", timeout=2)
                if r.status_code == 503 and "never migrated" in r.text:
                    break
            except httpx.HTTPError:
                pass
            assert svc.proc.poll() is None and time.monotonic() < deadline, svc.logs()
            time.sleep(0.2)
        assert "llmops db upgrade llm-proxy" in r.json()["error"]["message"]
        assert httpx.get(f"{svc.url}/healthz").status_code == 200
        # The Job, twice at once (a retried Job racing its first try): both succeed.
        cmd = [sys.executable, "-m", "services.cli.main", "db", "upgrade", "llm-proxy"]
        env = clean_env(LLM_PROXY_DATABASE_URL=url)
        jobs = [subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE) for _ in "ab"]
        outs = [j.communicate(timeout=120)[0].decode() for j in jobs]
        assert [j.returncode for j in jobs] == [0, 0], outs
        assert all("llm-proxy: at revision 0001 (postgresql)" in o for o in outs)
        svc.wait_ready(30)  # no restart needed
        r = httpx.post(
            f"{svc.url}/admin/keys", json={"name": "after"},
            headers={"Authorization": f"Bearer {MASTER_KEY}"},
        )  # fmt: skip
        assert r.status_code == 201
        svc.stop()
