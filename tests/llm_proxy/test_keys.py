"""Virtual keys: shown once, stored hashed, cached briefly, revocable, expiring; and the CLI."""

from __future__ import annotations

import hashlib
import sqlite3
import subprocess
import sys
import time
from typing import Any

import pytest

from tests.conftest import ROOT, clean_env
from tests.llm_proxy.conftest import MASTER_KEY, FakeUpstream, Proxy, base_config


def test_key_is_shown_once_and_stored_hashed(proxy: Proxy) -> None:
    created = proxy.create_key(name="hashed", metadata={"team": "search"})
    key = created["key"]
    assert key.startswith("sk-llmops-") and len(key) > 40
    listed = proxy.admin("GET", "/keys").json()["data"]
    mine = next(k for k in listed if k["id"] == created["id"])
    assert "key" not in mine and mine["key_hint"].endswith(key[-4:])
    assert mine["metadata"] == {"team": "search"}
    path = proxy.config_path.parent / "proxy.db"  # the proxy fixture keeps it there
    wal = path.with_name(path.name + "-wal")
    raw = path.read_bytes() + (wal.read_bytes() if wal.exists() else b"")
    assert key.encode() not in raw
    with sqlite3.connect(path) as conn:
        stored = conn.execute(
            "SELECT key_hash FROM virtual_keys WHERE id = ?", (created["id"],)
        ).fetchone()[0]
    assert stored == hashlib.sha256(key.encode()).hexdigest()


def test_revoked_key_is_refused_at_once_here(proxy: Proxy) -> None:
    created = proxy.create_key(name="to-revoke")
    assert proxy.chat(created["key"]).status_code == 200
    r = proxy.admin("DELETE", f"/keys/{created['id']}")
    assert r.status_code == 200 and r.json()["revoked_at"]
    r = proxy.chat(created["key"])
    assert r.status_code == 401 and r.json()["error"]["code"] == "revoked_api_key"
    assert proxy.admin("DELETE", "/keys/nope").status_code == 404
    ids = [k["id"] for k in proxy.admin("GET", "/keys").json()["data"]]
    assert created["id"] not in ids
    ids = [k["id"] for k in proxy.admin("GET", "/keys?include_revoked=true").json()["data"]]
    assert created["id"] in ids


def test_key_expires(proxy: Proxy) -> None:
    created = proxy.create_key(name="short", expires_in_s=1.5)
    assert proxy.chat(created["key"]).status_code == 200
    time.sleep(1.6)
    r = proxy.chat(created["key"])
    assert r.status_code == 401 and r.json()["error"]["code"] == "expired_api_key"


def test_alias_allow_list(proxy: Proxy) -> None:
    key = proxy.create_key(aliases=["other"])["key"]
    assert proxy.chat(key, model="other").status_code == 200
    assert proxy.chat(key, model="fake").status_code == 403
    models = proxy.http.get(
        f"{proxy.url}/v1/models", headers={"Authorization": f"Bearer {key}"}
    ).json()
    assert [m["id"] for m in models["data"]] == ["other"]


@pytest.fixture(scope="module")
def pg_replicas(
    proxy_factory: Any, fakes: dict[str, FakeUpstream], pg_database: str
) -> tuple[Proxy, Proxy]:
    """Two proxies sharing one PostgreSQL key store, each with a 1 s key cache."""
    env = {"LLM_PROXY_DATABASE_URL": pg_database, "LLM_PROXY_KEY_CACHE_TTL_S": "1"}
    return proxy_factory(base_config(fakes), **env), proxy_factory(base_config(fakes), **env)


def test_revocation_reaches_other_replicas_within_the_ttl(
    pg_replicas: tuple[Proxy, Proxy],
) -> None:
    one, two = pg_replicas
    created = one.create_key(name="shared")
    assert two.chat(created["key"]).status_code == 200  # cached on replica two now
    assert one.admin("DELETE", f"/keys/{created['id']}").status_code == 200
    # Replica two's cached record is older than its 1 s TTL once this sleep is over, however
    # slow the machine: the very next request must be refused (not merely "eventually").
    time.sleep(1.2)
    r = two.chat(created["key"], max_tokens=1)
    assert r.status_code == 401 and r.json()["error"]["code"] == "revoked_api_key", r.text


def test_spend_is_written_to_postgresql(pg_replicas: tuple[Proxy, Proxy]) -> None:
    one, two = pg_replicas
    created = one.create_key(name="spender")
    for p in (one, two):
        r = p.chat(created["key"], messages=[{"role": "user", "content": "a b c d"}], max_tokens=6)
        assert r.status_code == 200
    one.admin("GET", "/spend")  # flushes replica one now
    two.admin("GET", "/spend")
    detail = one.admin("GET", f"/keys/{created['id']}").json()
    # (4 * 0.5 + 6 * 1.5) / 1000 per request, two requests
    assert detail["spend_usd"] == pytest.approx(0.022)
    (row,) = detail["spend"]
    assert (row["alias"], row["deployment"], row["requests"]) == ("fake", "a", 2)
    assert (row["input_tokens"], row["output_tokens"]) == (8, 12)


def _cli(*args: str, url: str) -> subprocess.CompletedProcess[str]:
    env = clean_env(LLMOPS_MASTER_KEY=MASTER_KEY, COLUMNS="200")
    env.pop("LLMOPS_API_KEY", None)
    return subprocess.run(
        [sys.executable, "-m", "services.cli.main", "keys", *args, "--url", url],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_cli_create_list_revoke(proxy: Proxy) -> None:
    out = _cli("create", "--name", "from-cli", "--alias", "fake", "--rpm", "5", url=proxy.url)
    assert out.returncode == 0, out.stderr
    key = out.stdout.strip()
    assert key.startswith("sk-llmops-")
    assert proxy.chat(key).status_code == 200
    listed = _cli("list", url=proxy.url)
    assert listed.returncode == 0 and "from-cli" in listed.stdout
    assert key not in listed.stdout
    key_id = next(
        k["id"] for k in proxy.admin("GET", "/keys").json()["data"] if k["name"] == "from-cli"
    )
    assert _cli("revoke", key_id, url=proxy.url).returncode == 0
    assert proxy.chat(key).status_code == 401
    bad = _cli("revoke", "no-such-id", url=proxy.url)
    assert bad.returncode == 1 and "No key" in bad.stderr
