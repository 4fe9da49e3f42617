"""Regressions found by tests/reliability/test_proxy_faults.py: Redis restarted under a replica
that holds pooled connections, the key store unreachable for the admin API, a cached key served
stale for ever while the key store is down, and a spend batch written twice when the answer to
its COMMIT was lost."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.conftest import assert_error, fresh_pg_database
from tests.feedback.conftest import TcpProxy
from tests.llm_proxy.conftest import FakeUpstream, PrivateRedis, Proxy, base_config


def _burst(proxy: Proxy, keys: list[str], per_key: int) -> list[httpx.Response]:
    """Every key ``per_key`` times, all at once: several Redis calls in flight together, so the
    replica's Redis pool holds several connections."""
    calls = keys * per_key

    def one(key: str) -> httpx.Response:
        with httpx.Client(timeout=30) as c:
            return c.post(
                f"{proxy.url}/v1/chat/completions",
                json={"model": "fake", "max_tokens": 1, "messages": [{"role": "user",
                                                                     "content": "hi"}]},
                headers={"Authorization": f"Bearer {key}"},
            )  # fmt: skip

    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        return list(pool.map(one, calls))


def test_a_redis_restart_between_requests_is_not_an_outage(
    proxy_factory: Any, fakes: dict[str, FakeUpstream], private_redis: PrivateRedis
) -> None:
    # Fail closed makes a failed Redis call visible as a 503. rpm 19: leases of one request,
    # so every request asks Redis.
    proxy = proxy_factory(
        base_config(fakes),
        LLM_PROXY_REDIS_URL=private_redis.url,
        LLM_PROXY_REDIS_FAIL_MODE="closed",
        LLM_PROXY_REDIS_RETRY_AFTER_S="0.5",
        LLM_PROXY_REDIS_TIMEOUT_S="2",  # a slow answer on a busy machine is not this fault
    )
    keys = [proxy.create_key(name=f"pooled-{i}", rpm=19)["key"] for i in range(8)]
    assert [r.status_code for r in _burst(proxy, keys, 2)] == [200] * 16
    # Redis restarts (empty) while the proxy is idle: its pooled connections are all closed.
    private_redis.kill()
    private_redis.start()
    # Each stale connection used to fail once and put the replica in its fail mode (503s for
    # REDIS_RETRY_AFTER_S each time) although Redis was there: now it reconnects.
    codes = [r.status_code for r in _burst(proxy, keys, 2)]
    assert codes == [200] * 16, codes


def test_limiter_unavailable_names_redis(
    proxy_factory: Any, fakes: dict[str, FakeUpstream], private_redis: PrivateRedis
) -> None:
    proxy = proxy_factory(
        base_config(fakes),
        LLM_PROXY_REDIS_URL=private_redis.url,
        LLM_PROXY_REDIS_FAIL_MODE="closed",
    )
    key = proxy.create_key(name="closed", rpm=19)["key"]
    assert proxy.chat(key, max_tokens=1).status_code == 200
    private_redis.kill()
    r = proxy.chat(key, max_tokens=1)
    err = assert_error(r, 503, "limiter_unavailable")
    assert "Redis" in err["message"], err  # the operator knows what to look at
    assert r.headers["Retry-After"] == "1"


@pytest.fixture
def cut_store(
    proxy_factory: Any, fakes: dict[str, FakeUpstream]
) -> Iterator[tuple[Proxy, TcpProxy]]:
    """A proxy whose PostgreSQL key store is reached through a TcpProxy that can cut it."""
    db = TcpProxy()
    with fresh_pg_database("llmops_proxy_cut") as url:
        proxy = proxy_factory(
            base_config(fakes),
            LLM_PROXY_DATABASE_URL=db.url(url),
            LLM_PROXY_KEY_CACHE_TTL_S="0.25",
        )
        try:
            yield proxy, db
        finally:
            proxy.proc.stop()
            db.cut()


def test_admin_api_answers_503_when_the_key_store_is_unreachable(
    cut_store: tuple[Proxy, TcpProxy],
) -> None:
    proxy, db = cut_store
    created = proxy.create_key(name="before")
    db.cut()
    for r in (
        proxy.admin("GET", "/keys"),
        proxy.admin("POST", "/keys", json={"name": "during"}),
        proxy.admin("GET", f"/keys/{created['id']}"),
        proxy.admin("GET", "/spend"),
    ):
        assert_error(r, 503, "key_store_unavailable")  # was a 500 internal_error
        assert r.headers["Retry-After"] == "2"
    db.restore()
    assert proxy.admin("GET", "/keys").status_code == 200
    assert proxy.admin("POST", "/keys", json={"name": "after"}).status_code == 201


def test_a_cached_key_is_served_stale_for_the_grace_only(
    cut_store: tuple[Proxy, TcpProxy],
) -> None:
    proxy, db = cut_store
    key = proxy.create_key(name="stale")["key"]
    assert proxy.chat(key, max_tokens=1).status_code == 200  # confirmed by the store now
    confirmed = time.monotonic()
    db.cut()
    time.sleep(0.4)  # past the TTL (0.25 s): the store is asked, fails, the entry is stale
    assert proxy.chat(key, max_tokens=1).status_code == 200
    # Used every 0.2 s, the entry used to be re-trusted on each stale serve, for as long as
    # the outage lasted. It ends STALE_GRACE (12) TTLs after the store's confirmation expired.
    grace = 0.25 + 12 * 0.25
    refused_at = None
    while time.monotonic() - confirmed < grace + 15:
        r = proxy.chat(key, max_tokens=1)
        if r.status_code != 200:
            assert_error(r, 503, "key_store_unavailable")
            refused_at = time.monotonic() - confirmed
            break
        time.sleep(0.2)
    assert refused_at is not None, "a stale key was trusted for the whole outage"
    assert refused_at > grace / 2  # long after the TTL: the grace was served first
    db.restore()
    deadline = time.monotonic() + 30
    while proxy.chat(key, max_tokens=1).status_code != 200:
        assert time.monotonic() < deadline, "lookups did not come back"
        time.sleep(0.2)


class CommitCutter(TcpProxy):
    """Forwards to PostgreSQL; once armed, it lets the next COMMIT through and drops the
    connection before the answer comes back: the server has committed, the client cannot know."""

    def __init__(self) -> None:
        self.armed = threading.Event()
        self.tripped = threading.Event()
        self._muted: set[socket.socket] = set()
        super().__init__()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:  # type: ignore[override]
        try:
            to_server = dst.getpeername() == self.target
            client = src if to_server else dst
            while data := src.recv(65536):
                if not to_server and client in self._muted:
                    continue  # the answer is lost
                if to_server and self.armed.is_set() and b"COMMIT" in data:
                    self.armed.clear()
                    self._muted.add(client)
                    dst.sendall(data)
                    time.sleep(0.5)  # the server commits and answers into the void
                    self.tripped.set()
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)


def test_a_spend_batch_whose_commit_went_unanswered_is_not_written_twice(
    proxy_factory: Any, fakes: dict[str, FakeUpstream]
) -> None:
    db = CommitCutter()
    with fresh_pg_database("llmops_proxy_commit") as url:
        proxy = proxy_factory(
            base_config(fakes), LLM_PROXY_DATABASE_URL=db.url(url), LLM_PROXY_SPEND_FLUSH_S="0.3"
        )
        try:
            key = proxy.create_key(name="in-doubt")["key"]
            db.armed.set()  # the next COMMIT is the spend writer's
            for _ in range(3):
                assert proxy.chat(key, max_tokens=2).status_code == 200
            assert db.tripped.wait(60), "the spend writer never committed"
            # The writer failed with its batch committed: it used to keep the batch and write it
            # again. It asks PostgreSQL about the transaction first now.
            time.sleep(1.0)  # a few flushes
            data = proxy.admin("GET", "/spend").json()["data"]
            assert [(r["requests"], r["output_tokens"]) for r in data] == [(3, 6)], data
            assert "perhaps after its commit" in proxy.proc.logs()  # the path was taken
        finally:
            proxy.proc.stop()
            db.cut()
