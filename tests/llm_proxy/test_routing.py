"""Routing against scripted fake upstreams: retries, fallbacks, breakers, timeouts, streaming."""

from __future__ import annotations

import time
from typing import Any

import httpx
import openai
import pytest
import yaml

from tests.llm_proxy.conftest import MASTER_KEY, FakeUpstream, Proxy, deployment


def _alias(*targets: tuple[str, int], fallbacks: list[str] | None = None, **kw: Any) -> Any:
    spec: dict[str, Any] = {
        "deployments": [{"deployment": d, "priority": p} for d, p in targets],
        **kw,
    }
    if fallbacks:
        spec["fallbacks"] = fallbacks
    return spec


@pytest.fixture(scope="module")
def routed(proxy_factory: Any, fakes: dict[str, FakeUpstream]) -> Proxy:
    a, b, c, slow = fakes["a"], fakes["b"], fakes["c"], fakes["slow"]
    deps = [
        deployment("retry-a", a),
        deployment("fo-a", a, max_retries=0),
        deployment("fo-b", b),
        deployment("ra-a", a, max_retries=3),
        deployment("ra-b", b),
        deployment("chain-a", a),
        deployment("brk-c", c, max_retries=0),
        deployment("brk-b", b),
        deployment("to-a", a, timeout_s=0.5, max_retries=1),
        deployment("mal-a", a, max_retries=1),
        deployment("s-a", a, max_retries=0),
        deployment("s-b", b),
        deployment("cut-a", a),
        deployment("slow", slow),
        deployment("w-a", a),
        deployment("w-b", b),
        deployment("ll-a", a),
        deployment("ll-b", b),
        deployment("cost-a", a, input_cost_per_1k=1.0, output_cost_per_1k=1.0),
        deployment("cost-b", b, input_cost_per_1k=0.1, output_cost_per_1k=0.1),
        deployment("cap-a", a, rpm=2),
        deployment("cap-b", b),
        deployment("b", b),
    ]
    aliases = {
        "retry": _alias(("retry-a", 0)),
        "failover": _alias(("fo-a", 0), ("fo-b", 1)),
        "retry-after": _alias(("ra-a", 0), ("ra-b", 1)),
        "other": _alias(("b", 0)),
        "chain": _alias(("chain-a", 0), fallbacks=["other"]),
        "breaker": _alias(("brk-c", 0), ("brk-b", 1)),
        "timeout": _alias(("to-a", 0)),
        "malformed": _alias(("mal-a", 0)),
        "stream-fo": _alias(("s-a", 0), ("s-b", 1)),
        "cut": _alias(("cut-a", 0)),
        "slow": _alias(("slow", 0)),
        "weighted": {
            "deployments": [{"deployment": "w-a", "weight": 3}, {"deployment": "w-b", "weight": 1}]
        },
        "fastest": _alias(("ll-a", 0), ("ll-b", 0), strategy="least-latency"),
        "cheapest": _alias(("cost-a", 0), ("cost-b", 0), strategy="lowest-cost"),
        "capped": _alias(("cap-a", 0), ("cap-b", 1)),
    }
    config = {
        "deployments": deps,
        "aliases": aliases,
        "router": {
            "backoff_initial_s": 0.01,
            "backoff_max_s": 0.05,
            "breaker": {"failures": 3, "cooldown_s": 1.0},
        },
    }
    p: Proxy = proxy_factory(config)
    return p


def chat(p: Proxy, model: str, **body: Any) -> httpx.Response:
    return p.chat(MASTER_KEY, model=model, **body)


def served_by(r: httpx.Response) -> str:
    assert r.status_code == 200, r.text
    return r.headers["x-llmops-deployment"]


def test_retries_a_5xx_then_succeeds(routed: Proxy, fakes: dict[str, FakeUpstream]) -> None:
    fakes["a"].script({"status": 500}, {"status": 502})
    r = chat(routed, "retry")
    assert served_by(r) == "retry-a" and r.headers["x-llmops-attempts"] == "3"
    assert fakes["a"].stats()["chat"] == 3
    assert 'llmops_llm_retries_total{deployment="retry-a",reason="500"} 1.0' in routed.metrics()


def test_retry_after_is_honoured_or_skipped(routed: Proxy, fakes: dict[str, FakeUpstream]) -> None:
    fakes["a"].script({"status": 429, "retry_after": 1})
    started = time.monotonic()
    r = chat(routed, "retry-after")
    assert served_by(r) == "ra-a"
    assert time.monotonic() - started >= 0.9  # waited as told, not the 10 ms backoff
    # A hint longer than router.max_retry_after_s (10 s): go to the next deployment instead.
    fakes["a"].script({"status": 429, "retry_after": 120})
    assert served_by(chat(routed, "retry-after")) == "ra-b"


def test_failover_to_lower_priority(routed: Proxy, fakes: dict[str, FakeUpstream]) -> None:
    fakes["a"].script({"status": 503})
    r = chat(routed, "failover")
    assert served_by(r) == "fo-b"
    assert (
        'llmops_llm_fallbacks_total{alias="failover",from_deployment="fo-a",to_deployment="fo-b"}'
        in routed.metrics()
    )


def test_fallback_alias_on_refused_credentials(
    routed: Proxy, fakes: dict[str, FakeUpstream]
) -> None:
    fakes["a"].script({"status": 401})
    r = chat(routed, "chain")
    assert served_by(r) == "b"
    assert fakes["a"].stats()["chat"] == 1  # a 401 is not retried on the same deployment


def test_client_errors_are_relayed_not_retried(
    routed: Proxy, fakes: dict[str, FakeUpstream]
) -> None:
    fakes["a"].script({"status": 400})
    r = chat(routed, "chain")
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "upstream_rejected_request"
    assert fakes["a"].stats()["chat"] == 1 and fakes["b"].stats()["chat"] == 0


def test_circuit_breaker_stops_calling_a_dead_upstream(
    routed: Proxy, fakes: dict[str, FakeUpstream]
) -> None:
    fakes["c"].always({"status": 500})
    for _ in range(3):
        assert served_by(chat(routed, "breaker")) == "brk-b"
    assert fakes["c"].stats()["chat"] == 3
    for _ in range(5):  # open: the dead one is not even tried
        assert served_by(chat(routed, "breaker")) == "brk-b"
    assert fakes["c"].stats()["chat"] == 3
    routing = routed.admin("GET", "/routing").json()
    assert routing["deployments"]["brk-c"]["circuit"] == "open"
    # After the cooldown one probe goes through; it succeeds and the circuit closes.
    fakes["c"].always(None)
    time.sleep(1.2)
    assert served_by(chat(routed, "breaker")) == "brk-c"
    assert routed.admin("GET", "/routing").json()["deployments"]["brk-c"]["circuit"] == "closed"


def test_timeout_gives_504(routed: Proxy, fakes: dict[str, FakeUpstream]) -> None:
    fakes["a"].always({"hang": True})
    r = chat(routed, "timeout")
    assert r.status_code == 504, r.text
    assert r.json()["error"]["code"] == "upstream_timeout"
    assert fakes["a"].stats()["chat"] == 2  # one retry


def test_malformed_and_dropped_answers_are_retried(
    routed: Proxy, fakes: dict[str, FakeUpstream]
) -> None:
    fakes["a"].script({"malformed": True})
    assert served_by(chat(routed, "malformed")) == "mal-a"
    fakes["a"].script({"drop": True})
    assert served_by(chat(routed, "malformed")) == "mal-a"
    fakes["a"].always({"malformed": True})
    r = chat(routed, "malformed")
    assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_error"


def _stream(p: Proxy, model: str) -> openai.Stream[Any]:
    c = openai.OpenAI(base_url=f"{p.url}/v1", api_key=MASTER_KEY, max_retries=0)
    return c.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "x"}], max_tokens=3, stream=True
    )


def test_stream_failure_before_first_chunk_falls_back(
    routed: Proxy, fakes: dict[str, FakeUpstream]
) -> None:
    fakes["a"].always({"status": 500})
    text = "".join(ch.choices[0].delta.content or "" for ch in _stream(routed, "stream-fo"))
    assert text == "tok0 tok1 tok2 "
    assert fakes["b"].stats()["streams_started"] == 1
    fakes["a"].always(None)
    fakes["a"].script({"malformed": True})  # a garbage first event is retried too
    with httpx.stream(
        "POST",
        f"{routed.url}/v1/chat/completions",
        json={"model": "stream-fo", "messages": [{"role": "user", "content": "x"}], "stream": True},
        headers={"Authorization": f"Bearer {MASTER_KEY}"},
    ) as r:
        assert r.headers["x-llmops-deployment"] == "s-b"
        assert r.read().decode().rstrip().endswith("[DONE]")


def test_stream_cut_midway_ends_with_an_error_event(
    routed: Proxy, fakes: dict[str, FakeUpstream]
) -> None:
    fakes["a"].script({"cut_after_chunks": 2})
    got: list[str] = []
    with pytest.raises(openai.APIError) as info:
        for ch in _stream(routed, "cut"):
            if ch.choices:
                got.append(ch.choices[0].delta.content or "")
    assert "".join(got) == "tok0 tok1 "
    assert "incomplete" in str(info.value)
    assert 'status="502"' in routed.metrics()


def test_client_disconnect_cancels_the_upstream(
    routed: Proxy, fakes: dict[str, FakeUpstream]
) -> None:
    with httpx.stream(
        "POST",
        f"{routed.url}/v1/chat/completions",
        json={"model": "slow", "messages": [{"role": "user", "content": "x"}], "stream": True},
        headers={"Authorization": f"Bearer {MASTER_KEY}"},
    ) as r:
        next(r.iter_lines())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and fakes["slow"].stats()["streams_cancelled"] == 0:
        time.sleep(0.1)
    stats = fakes["slow"].stats()
    assert stats["streams_cancelled"] == 1 and stats["streams_completed"] == 0


def test_weighted_split(routed: Proxy) -> None:
    counts = {"w-a": 0, "w-b": 0}
    for _ in range(300):
        counts[served_by(chat(routed, "weighted", max_tokens=1))] += 1
    assert 0.6 < counts["w-a"] / 300 < 0.9  # expected 0.75 (sd 0.025)


def test_least_latency_prefers_the_fast_one(routed: Proxy, fakes: dict[str, FakeUpstream]) -> None:
    fakes["b"].always({"delay_ms": 150})
    served = [served_by(chat(routed, "fastest", max_tokens=1)) for _ in range(12)]
    assert served[2:].count("ll-a") >= 9  # after each is measured once


def test_lowest_cost_prefers_the_cheap_one(routed: Proxy) -> None:
    assert {served_by(chat(routed, "cheapest")) for _ in range(10)} == {"cost-b"}


def test_deployment_rpm_spills_over(routed: Proxy) -> None:
    served = [served_by(chat(routed, "capped")) for _ in range(4)]
    assert served.count("cap-a") <= 2 and "cap-b" in served


def test_config_reload(proxy_factory: Any, fakes: dict[str, FakeUpstream]) -> None:
    config = {
        "deployments": [deployment("a", fakes["a"])],
        "aliases": {"fake": {"deployments": [{"deployment": "a"}]}},
    }
    p: Proxy = proxy_factory(config)
    c = openai.OpenAI(base_url=f"{p.url}/v1", api_key=MASTER_KEY, max_retries=0)
    config["aliases"]["fresh"] = {"deployments": [{"deployment": "a"}]}
    p.write_config(config)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and "fresh" not in {m.id for m in c.models.list()}:
        time.sleep(0.1)
    assert "fresh" in {m.id for m in c.models.list()}
    # A broken edit is refused; the last good routing keeps serving.
    p.config_path.write_text(yaml.safe_dump({"deployments": [], "aliases": {}}))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not p.admin("GET", "/routing").json()["config_error"]:
        time.sleep(0.1)
    assert "deployments" in p.admin("GET", "/routing").json()["config_error"]
    assert served_by(p.chat(MASTER_KEY, model="fresh")) == "a"
    assert 'llmops_llm_config_reloads_total{result="rejected"} 1.0' in p.metrics()


def test_upstream_credentials_and_azure_urls(
    proxy_factory: Any, fakes: dict[str, FakeUpstream]
) -> None:
    config = {
        "deployments": [
            deployment("keyed", fakes["a"], api_key_env="LLMOPS_TEST_UPSTREAM_KEY"),
            {
                "name": "azure",
                "api_base": fakes["b"].url,
                "api_version": "2024-10-21",
                "model": "gpt-4o-mini-prod",
                "api_key_env": "LLMOPS_TEST_UPSTREAM_KEY",
            },
        ],
        "aliases": {
            "keyed": {"deployments": [{"deployment": "keyed"}]},
            "azure": {"deployments": [{"deployment": "azure"}]},
        },
    }
    p: Proxy = proxy_factory(config, LLMOPS_TEST_UPSTREAM_KEY="sk-upstream-secret")
    assert served_by(chat(p, "keyed")) == "keyed"
    sent = fakes["a"].requests()[-1]
    assert sent["headers"]["authorization"] == "Bearer sk-upstream-secret"
    assert sent["headers"]["x-request-id"]  # the request id travels on
    assert served_by(chat(p, "azure")) == "azure"
    sent = fakes["b"].requests()[-1]
    assert sent["path"] == "/openai/deployments/gpt-4o-mini-prod/chat/completions"
    assert sent["query"] == {"api-version": "2024-10-21"}
    assert sent["headers"]["api-key"] == "sk-upstream-secret"
    assert "authorization" not in sent["headers"]
    assert "sk-upstream-secret" not in p.proc.logs()
