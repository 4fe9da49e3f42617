"""The ``llmops`` command: key hashing, configuration errors, and ``llmops up`` under honcho."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from services.common import ports
from tests.conftest import API_KEY, API_KEY_HASH, ROOT, clean_env, free_port

LLMOPS = [sys.executable, "-m", "services.cli.main"]


def run(
    *args: str, env: dict[str, str] | None = None, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*LLMOPS, *args], cwd=ROOT, env=env or clean_env(), input=stdin,
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_hash_key_matches_configured_digest() -> None:
    assert run("hash-key", API_KEY).stdout.strip() == API_KEY_HASH
    assert run("hash-key", stdin=API_KEY + "\n").stdout.strip() == API_KEY_HASH


def test_hash_key_with_scopes() -> None:
    r = run("hash-key", API_KEY, "--scopes", "search, ask")
    assert r.returncode == 0 and r.stdout.strip() == f"{API_KEY_HASH}:search+ask"
    r = run("hash-key", API_KEY, "--scopes", "everything")
    assert r.returncode == 2 and "unknown scope(s) everything" in r.stderr


def test_serve_with_bad_config_exits_2_with_one_clear_line() -> None:
    r = run("serve", "embeddings", "--port", str(free_port()))
    assert r.returncode == 2
    assert "no API keys configured" in r.stderr
    assert "Traceback" not in r.stderr
    env = clean_env(RETRIEVAL_API_KEY_HASHES=API_KEY_HASH)
    r = run("serve", "retrieval", "--workers", "2", "--port", str(free_port()), env=env)
    assert r.returncode == 2 and "single-process store" in r.stderr
    r = run("serve", "nope")
    assert r.returncode == 2 and "unknown service" in r.stderr


def test_up_runs_every_service_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    # embeddings on base + 1, ... feedback + 5, rag + 6, mlflow + 10
    base = ports.free_base_port([1, 2, 3, 4, 5, 6, 10, 1090])
    env = clean_env(LLMOPS_DATA_DIR=str(tmp_path))
    log = (tmp_path / "up.log").open("wb")
    cmd = [*LLMOPS, "up", "--base-port", str(base), "--monitoring"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{base + 1}"
    try:
        key = None
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "up.log").read_text()
            key_file = tmp_path / "dev-api-key"
            if key_file.exists():
                key = key_file.read_text().strip()
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        assert key and (tmp_path / "dev-api-key").stat().st_mode & 0o777 == 0o600
        r = httpx.post(
            f"{url}/v1/embeddings",
            json={"model": "all-MiniLM-L6-v2", "input": "up"},
            headers={"Authorization": f"Bearer {key}"},
        )
        assert r.status_code == 200
        assert httpx.get(f"{url}/v1/models").status_code == 401

        # llmops ingest / search against the retrieval service `up` started.
        retrieval = f"http://127.0.0.1:{base + 2}"
        while httpx.get(f"{retrieval}/readyz", timeout=5).status_code != 200:
            time.sleep(0.3)
        cli_env = clean_env(LLMOPS_DATA_DIR=str(tmp_path), COLUMNS="200")
        args = ["README.md", "docs", "--collection", "demo", "--url", retrieval]
        first = run("ingest", *args, env=cli_env)
        assert first.returncode == 0, first.stdout + first.stderr
        assert "ingested into 'demo'" in first.stdout
        again = run("ingest", *args, env=cli_env)
        assert again.returncode == 0
        row = next(line for line in again.stdout.splitlines() if line.startswith("│"))
        cells = [c.strip() for c in row.split("│")[1:5]]
        files = 1 + len(list((ROOT / "docs").rglob("*.md")))  # README.md and docs/**/*.md
        assert cells == ["0", str(files), "0", "0"], again.stdout  # all unchanged
        found = run(
            "search", "how is the benchmark ratio computed", "--collection", "demo",
            "--url", retrieval, "-k", "3", "--filter", "extension=md", env=cli_env,
        )  # fmt: skip
        assert found.returncode == 0, found.stderr
        assert "docs/benchmarks.md" in found.stdout

        # The proxy `up` started: the dev key is its master key; make a virtual key with it.
        proxy = f"http://127.0.0.1:{base + 3}"
        while httpx.get(f"{proxy}/readyz", timeout=5).status_code != 200:
            time.sleep(0.3)
        made = run("keys", "create", "--alias", "smollm2", "--url", proxy, env=cli_env)
        assert made.returncode == 0, made.stderr
        models = httpx.get(
            f"{proxy}/v1/models", headers={"Authorization": f"Bearer {made.stdout.strip()}"}
        ).json()
        assert [m["id"] for m in models["data"]] == ["smollm2"]

        # --monitoring: a real Prometheus scraping every service, with the chart's rules.
        prom = f"http://127.0.0.1:{base + 1090}"
        deadline = time.monotonic() + 60
        health: dict[str, str] = {}
        while time.monotonic() < deadline:
            try:
                got = httpx.get(f"{prom}/api/v1/targets", timeout=5).json()
                health = {t["labels"]["component"]: t["health"]
                          for t in got["data"]["activeTargets"]}  # fmt: skip
                if set(health.values()) == {"up"} and len(health) == 6:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        assert health == dict.fromkeys(
            ["embeddings", "retrieval", "llm-proxy", "local-llm", "feedback", "rag"], "up"
        ), health
        groups = httpx.get(f"{prom}/api/v1/rules", timeout=5).json()["data"]["groups"]
        assert {g["name"] for g in groups} >= {"llmops-slo-alerts", "llmops-symptoms"}
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
        log.close()
    output = (tmp_path / "up.log").read_text()
    assert "embeddings" in output
    assert f"http://127.0.0.1:{base + 1090}" in output
    assert key not in output  # the key is never printed or logged
    time.sleep(0.5)
    try:
        httpx.get(f"{url}/healthz", timeout=1)
        raise AssertionError("the service is still running after Ctrl-C")
    except httpx.HTTPError:
        pass


def test_up_refuses_ports_in_use_and_the_demo_starts_again_elsewhere(tmp_path: Path) -> None:
    """A port taken before the platform binds it (another server asked for that very number)
    must not fail the demo: it starts the platform again on other ports."""
    import socket as sockets

    from services.cli.demo import _start_platform, _stop

    offsets = [1, 2, 3, 4, 5, 6, 10]
    taken = ports.free_base_port(offsets)
    with sockets.socket() as squatter:
        squatter.bind(("127.0.0.1", taken + 3))  # the proxy's port
        squatter.listen()
        env = clean_env(LLMOPS_DATA_DIR=str(tmp_path), LLMOPS_API_KEY=API_KEY)
        r = run("up", "--base-port", str(taken), env=env)
        assert r.returncode == 2 and f"{taken + 3}" in r.stderr and "in use" in r.stderr

        bases = iter([taken, ports.free_base_port(offsets)])
        log = tmp_path / "platform.log"
        base, proc = _start_platform(env, log, choose=lambda: next(bases))
        try:
            assert base != taken and proc.poll() is None
            r = httpx.get(f"http://127.0.0.1:{base + 3}/healthz", timeout=5)
            assert r.status_code == 200
            assert log.read_text().count("in use") == 1  # the first attempt, then this one
        finally:
            _stop(proc)


def test_check_names_what_is_not_ready_and_fails(tmp_path: Path) -> None:
    """`llmops check` (the chart's helm test): a refused URL and a 503 with its reason."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Unready(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps({"error": {"message": "the feedback database was never migrated"}})
            self.send_response(503)
            self.send_header("content-type", "application/json")
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Unready)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        unready = f"http://127.0.0.1:{server.server_port}/readyz"
        refused = f"http://127.0.0.1:{free_port()}/readyz"
        key = tmp_path / "key"
        key.write_text("sk-test\n")
        r = run("check", "--ready", unready, "--ready", refused, "--ask", "http://x", "--wait", "0",
                env={**clean_env(), "LLMOPS_API_KEY_FILE": str(key)})  # fmt: skip
        assert r.returncode == 1, r.stdout + r.stderr
        assert f"FAIL  {unready}  503: the feedback database was never migrated" in r.stdout
        assert f"FAIL  {refused}  ConnectError" in r.stdout
        assert "ask" not in r.stdout  # no ask once something is not ready
    finally:
        server.shutdown()
