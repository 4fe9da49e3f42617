"""In-process checks of the pieces: catalog validation, router order, breaker, limiter."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.llm_proxy.catalog import Breaker, Catalog, CatalogError, load_catalog
from services.llm_proxy.limits import NANO, Limits, MemoryLimiter, RateLimited, to_nano
from services.llm_proxy.router import CLOSED, HALF_OPEN, OPEN, CircuitBreaker, Router
from tests.conftest import ROOT


def _catalog(**aliases: Any) -> dict[str, Any]:
    return {
        "deployments": [
            {"name": n, "api_base": "http://x/v1", "model": n, "input_cost_per_1k": c}
            for n, c in (("a", 1.0), ("b", 0.1), ("c", 5.0))
        ]
        + [{"name": "e", "api_base": "http://x/v1", "model": "e", "mode": "embeddings"}],
        "aliases": aliases or {"x": {"deployments": [{"deployment": "a"}]}},
    }


@pytest.mark.parametrize(
    ("aliases", "message"),
    [
        ({"x": {"deployments": [{"deployment": "zz"}]}}, "names deployment 'zz'"),
        ({"x": {"deployments": [{"deployment": "a"}, {"deployment": "e"}]}}, "mixes chat"),
        ({"x": {"deployments": [{"deployment": "a"}], "fallbacks": ["x"]}}, "itself"),
        ({"x": {"deployments": [{"deployment": "a"}], "fallbacks": ["y"]}}, "unknown alias"),
        ({"x": {"deployments": []}}, "at least 1"),
        ({"x": {"deployments": [{"deployment": "a"}], "strategy": "fastest"}}, "strategy"),
    ],
)
def test_catalog_refuses_inconsistent_routing(
    tmp_path: Path, aliases: dict[str, Any], message: str
) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(_catalog(**aliases)))
    with pytest.raises(CatalogError, match=message):
        load_catalog(path)


def test_catalog_refuses_duplicates_and_missing_keys(tmp_path: Path) -> None:
    config = _catalog()
    config["deployments"].append(dict(config["deployments"][0]))
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(CatalogError, match="repeated: a"):
        load_catalog(path)
    config = _catalog()
    config["deployments"][0]["api_key_env"] = "LLMOPS_TEST_UNSET_VARIABLE"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(CatalogError, match="LLMOPS_TEST_UNSET_VARIABLE is not set"):
        load_catalog(path)
    path.write_text("deployments: [")
    with pytest.raises(CatalogError, match="not valid YAML"):
        load_catalog(path)


def test_example_config_is_valid() -> None:
    raw = yaml.safe_load((ROOT / "deploy" / "llm-proxy.example.yaml").read_text())
    catalog = Catalog.model_validate(raw)
    assert {"chat", "chat-cheap", "all-MiniLM-L6-v2"} <= set(catalog.aliases)


def test_plan_orders_priorities_strategies_and_fallbacks() -> None:
    catalog = Catalog.model_validate(
        _catalog(
            cheap={
                "strategy": "lowest-cost",
                "deployments": [{"deployment": "a"}, {"deployment": "b"}, {"deployment": "c"}],
            },
            tiered={
                "deployments": [{"deployment": "c", "priority": 1}, {"deployment": "a"}],
                "fallbacks": ["cheap"],
            },
        )
    )
    router = Router(catalog, {})
    assert [c.state.deployment.name for c in router.plan("cheap")] == ["b", "a", "c"]
    plan = router.plan("tiered")
    assert [(c.alias, c.state.deployment.name) for c in plan] == [
        ("tiered", "a"), ("tiered", "c"), ("cheap", "b"),
    ]  # fmt: skip
    # The dearest price reachable, for budget reservations: c's 5.0 via tiered.
    assert router.prices["tiered"].input_per_1k == 5.0


def test_breaker_opens_probes_and_closes() -> None:
    b = CircuitBreaker(Breaker(failures=3, cooldown_s=10))
    for t in range(3):
        assert b.allow(t)
        b.record(False, t)
    assert b.state == OPEN and not b.allow(5)
    assert b.allow(13) and b.state == HALF_OPEN
    assert not b.allow(13)  # one probe at a time
    b.record(False, 13)
    assert b.state == OPEN and not b.allow(20)
    assert b.allow(24)
    b.record(True, 24)
    assert b.state == CLOSED


def test_breaker_opens_on_failure_ratio() -> None:
    b = CircuitBreaker(Breaker(failures=100, failure_ratio=0.5, window=10, min_calls=10))
    for i in range(10):
        b.record(i % 2 == 0, float(i))  # alternating: never 100 in a row
    assert b.state == OPEN


def test_memory_limiter_reserves_and_settles() -> None:
    async def run() -> None:
        lim = MemoryLimiter()
        limits = Limits("k", tpm=100, budget_nano=to_nano(0.01))
        r1 = await lim.reserve(limits, 60, to_nano(0.006))
        with pytest.raises(RateLimited) as info:
            await lim.reserve(limits, 60, 0)
        assert info.value.reason == "tpm" and 1 <= info.value.retry_after <= 60
        lim.settle(r1, 30, to_nano(0.002))  # the call used less: the rest is freed
        await lim.reserve(limits, 60, to_nano(0.006))
        with pytest.raises(RateLimited, match="budget"):
            await lim.reserve(limits, 1, to_nano(0.003))
        assert await lim.spent_nano("k") == to_nano(0.008)

    asyncio.run(run())
    assert to_nano(0.01) == NANO // 100
