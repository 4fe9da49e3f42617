"""Limits and budgets across two replicas on the real Redis, and Redis going away.

Counts are exact: RPM and budget tests assert the number of admitted requests, whatever the
interleaving of the two processes. Windows are calendar minutes, so a test waits for a
window with enough time left instead of racing its end.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.llm_proxy.conftest import FakeUpstream, PrivateRedis, Proxy, base_config, deployment


def _fresh_window(need_s: float = 12.0) -> None:
    left = 60 - time.time() % 60
    if left < need_s:
        time.sleep(left + 0.2)


def _config(fakes: dict[str, FakeUpstream]) -> dict[str, Any]:
    config = base_config(fakes)
    # Output-priced only, and the fake returns exactly max_tokens: reservation == actual cost.
    config["deployments"].append(deployment("priced", fakes["b"], output_cost_per_1k=1.0))
    config["aliases"]["priced"] = {"deployments": [{"deployment": "priced"}]}
    return config


@pytest.fixture(scope="module")
def replicas(
    proxy_factory: Any, fakes: dict[str, FakeUpstream], pg_database: str, redis_url: str
) -> tuple[Proxy, Proxy]:
    env = {"LLM_PROXY_DATABASE_URL": pg_database, "LLM_PROXY_REDIS_URL": redis_url}
    return proxy_factory(_config(fakes), **env), proxy_factory(_config(fakes), **env)


def _burst(replicas: tuple[Proxy, Proxy], key: str, n: int, **body: Any) -> list[httpx.Response]:
    """``n`` requests at once, alternating between the two replicas."""

    def one(i: int) -> httpx.Response:
        p = replicas[i % 2]
        with httpx.Client(timeout=30) as c:
            return c.post(
                f"{p.url}/v1/chat/completions",
                json={"messages": [{"role": "user", "content": "hi"}], **body},
                headers={"Authorization": f"Bearer {key}"},
            )

    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(one, range(n)))


def test_rpm_holds_exactly_across_replicas(replicas: tuple[Proxy, Proxy]) -> None:
    key = replicas[0].create_key(name="rpm", rpm=7)["key"]
    _fresh_window()
    results = _burst(replicas, key, 24, model="fake", max_tokens=1)
    codes = [r.status_code for r in results]
    assert codes.count(200) == 7, codes
    assert codes.count(429) == 17
    refused = next(r for r in results if r.status_code == 429)
    assert refused.json()["error"]["code"] == "rate_limit_rpm"
    assert 1 <= int(refused.headers["Retry-After"]) <= 60


def test_large_limits_are_leased_and_still_hold(replicas: tuple[Proxy, Proxy]) -> None:
    # rpm 100: each replica takes 5 at a time from Redis, yet together they never pass 100,
    # and at most one lease per replica (5) can be left unused when the burst ends.
    key = replicas[0].create_key(name="leased", rpm=100)["key"]
    _fresh_window()
    results = _burst(replicas, key, 140, model="fake", max_tokens=1)
    ok = sum(r.status_code == 200 for r in results)
    assert 90 <= ok <= 100, ok
    assert {r.status_code for r in results} == {200, 429}
    # Far from its limits, a burst is never refused: concurrent requests on one replica wait
    # for one top-up of the lease instead of each taking (and exhausting) the shared limit.
    roomy = replicas[0].create_key(name="roomy", rpm=10_000_000, tpm=10**9, max_budget_usd=1e6)
    results = _burst(replicas, roomy["key"], 64, model="fake", max_tokens=1)
    assert [r.status_code for r in results] == [200] * 64


def test_tpm_never_admits_more_tokens_than_the_limit(replicas: tuple[Proxy, Proxy]) -> None:
    # Each request reserves its prompt estimate (8) + max_tokens (20) = 28 tokens and then
    # settles to the actual 21 (1 prompt word + 20): never more than 200 tokens in the minute.
    key = replicas[0].create_key(name="tpm", tpm=200)["key"]
    _fresh_window()
    results = _burst(replicas, key, 20, model="fake", max_tokens=20)
    ok = [r for r in results if r.status_code == 200]
    used = sum(r.json()["usage"]["total_tokens"] for r in ok)
    assert used <= 200
    assert len(ok) >= 200 // 28  # whatever the interleaving, at least the reserved fit
    assert {r.json()["error"]["code"] for r in results if r.status_code != 200} == {
        "rate_limit_tpm"
    }
    # A request that could never fit is a 400 that says what to change, not an endless 429.
    r = replicas[0].chat(key, max_tokens=500)
    assert r.status_code == 400 and r.json()["error"]["code"] == "tokens_exceed_limit"


def test_budget_holds_exactly_across_replicas(replicas: tuple[Proxy, Proxy]) -> None:
    created = replicas[0].create_key(name="budget", max_budget_usd=0.05)
    # 10 output tokens at $1 per 1k = $0.01 a request: exactly 5 fit in $0.05.
    results = _burst(replicas, created["key"], 12, model="priced", max_tokens=10)
    codes = [r.status_code for r in results]
    assert codes.count(200) == 5, codes
    refused = next(r for r in results if r.status_code == 429)
    assert refused.json()["error"]["code"] == "budget_exceeded"
    for p in replicas:
        p.admin("GET", "/spend")  # flush both replicas' batches
    detail = replicas[0].admin("GET", f"/keys/{created['id']}").json()
    assert detail["spend_usd"] == pytest.approx(0.05)


def test_in_memory_limits_on_one_instance(
    proxy_factory: Any, fakes: dict[str, FakeUpstream]
) -> None:
    p: Proxy = proxy_factory(_config(fakes))
    key = p.create_key(name="mem", rpm=3)["key"]
    _fresh_window(10)
    codes = [p.chat(key, max_tokens=1).status_code for _ in range(5)]
    assert codes == [200, 200, 200, 429, 429]


def test_redis_down_follows_the_fail_mode(
    proxy_factory: Any, fakes: dict[str, FakeUpstream], tmp_path: Path
) -> None:
    redis = PrivateRedis(tmp_path)
    try:
        env = {"LLM_PROXY_REDIS_URL": redis.url, "LLM_PROXY_REDIS_RETRY_AFTER_S": "0.5"}
        fail_open = proxy_factory(_config(fakes), LLM_PROXY_REDIS_FAIL_MODE="open", **env)
        fail_closed = proxy_factory(_config(fakes), LLM_PROXY_REDIS_FAIL_MODE="closed", **env)
        # rpm 19: leases of one request, so every request needs Redis (a larger limit would
        # keep admitting from what the replica already holds, by design, until that runs out).
        keys = [p.create_key(name="limited", rpm=19)["key"] for p in (fail_open, fail_closed)]
        assert fail_open.chat(keys[0]).status_code == 200
        assert fail_closed.chat(keys[1]).status_code == 200
    finally:
        redis.stop()
    open_codes = [fail_open.chat(keys[0]).status_code for _ in range(10)]
    assert open_codes == [200] * 10  # admitted, no 5xx storm (and no limit without Redis)
    closed = [fail_closed.chat(keys[1]) for _ in range(10)]
    assert {r.status_code for r in closed} == {503}
    assert closed[0].json()["error"]["code"] == "limiter_unavailable"
    assert closed[0].headers["Retry-After"] == "1"
    for p in (fail_open, fail_closed):
        text = p.metrics()
        count = next(
            float(line.split()[-1])
            for line in text.splitlines()
            if line.startswith("llmops_llm_redis_errors_total ")
        )
        assert count >= 1
    ready = fail_open.http.get(f"{fail_open.url}/readyz").json()
    assert ready["redis"] == "unreachable"
