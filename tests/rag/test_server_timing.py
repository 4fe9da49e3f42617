"""``Server-Timing`` on ``POST /v1/ask`` (issue 18): the pipeline's stage times, as
``llmops_rag_stage_seconds`` records them, over the real platform. No timing thresholds: only
that the header parses, names every stage and ``total``, and agrees with itself, the metric and
the answer's ``latency_ms`` up to its rounding (0.1 ms)."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
from openai._streaming import SSEDecoder

from tests.conftest import ServiceProcess, auth_headers, metric, scrape
from tests.rag.platform import Platform, set_reply

STAGES = ("retrieval", "prompt", "llm")
ROUNDING = 0.05  # each dur is rounded to 0.1 ms
# One metric of W3C Server Timing: a token name, then parameters; ours carry dur only.
ENTRY = re.compile(r"^([!#$%&'*+\-.^_`|~0-9A-Za-z]+)((?:\s*;\s*[^;,=\s]+\s*=\s*[^;,\s]+)*)$")


@pytest.fixture(scope="module")
def rag(
    platform: Platform, service_factory: Any, tmp_path_factory: pytest.TempPathFactory
) -> ServiceProcess:
    set_reply(platform.fake, "Damaged items can be returned within 30 days [1].")
    env = platform.rag_env(tmp_path_factory.mktemp("rag-timing"))
    svc: ServiceProcess = service_factory("rag", **env).wait_ready(60)
    return svc


def parse(header: str) -> dict[str, float]:
    """``name;dur=ms, ...`` -> {name: ms}; fails on anything the grammar does not allow, a
    metric without ``dur`` or a name given twice."""
    out: dict[str, float] = {}
    for raw in header.split(","):
        m = ENTRY.match(raw.strip())
        assert m, f"not a Server-Timing metric: {raw!r} in {header!r}"
        params = dict(
            (k.strip().lower(), v.strip())
            for k, _, v in (p.partition("=") for p in m.group(2).split(";")[1:])
        )
        assert m.group(1) not in out, header
        assert re.fullmatch(r"\d+\.\d", params["dur"]), header  # ms, one decimal
        out[m.group(1)] = float(params["dur"])
    return out


def stage_sums(svc: ServiceProcess) -> dict[str, float]:
    text = scrape(svc)
    return {
        s: metric(text, "llmops_rag_stage_seconds_sum", stage=s) * 1000 for s in (*STAGES, "total")
    }


def test_an_answer_carries_its_stage_times(rag: ServiceProcess) -> None:
    before = stage_sums(rag)
    r = httpx.post(
        f"{rag.url}/v1/ask",
        json={"question": "Can I return a damaged item?"},
        headers=auth_headers(),
        timeout=60,
    )
    after = stage_sums(rag)
    assert r.status_code == 200, r.text
    timing = parse(r.headers["server-timing"])
    assert list(timing) == [*STAGES, "total"]
    assert all(ms >= 0 for ms in timing.values()), timing
    assert timing["total"] >= sum(timing[s] for s in STAGES) - ROUNDING * 4, timing
    # The figures are the metric's own (this rag serves nobody else) and the answer's total.
    for stage, ms in timing.items():
        assert ms == pytest.approx(after[stage] - before[stage], abs=ROUNDING + 1e-6), stage
    assert timing["total"] == pytest.approx(r.json()["latency_ms"], abs=ROUNDING + 0.005)
    assert "timings_ms" not in r.json()  # a whole answer says it in the header only


def test_a_stream_says_what_it_knows_then_all_in_its_final_event(rag: ServiceProcess) -> None:
    with httpx.stream(
        "POST",
        f"{rag.url}/v1/ask",
        headers=auth_headers(),
        timeout=60,
        json={"question": "Can I return a damaged item?", "stream": True},
    ) as r:
        events = list(SSEDecoder().iter_bytes(r.iter_bytes()))
    assert r.status_code == 200
    assert events[-1].data == "[DONE]"
    final = events[-2].json()
    assert final["object"] == "rag.ask"
    # The headers leave before the model is asked: retrieval and prompt, not llm nor total.
    early = parse(r.headers["server-timing"])
    assert list(early) == ["retrieval", "prompt"]
    timings = final["timings_ms"]
    assert list(timings) == [*STAGES, "total"]
    assert all(ms >= 0 for ms in timings.values()), timings
    assert timings["total"] >= sum(timings[s] for s in STAGES) - ROUNDING * 4, timings
    assert {k: timings[k] for k in early} == early  # the same measurements, said twice
    assert timings["total"] == pytest.approx(final["latency_ms"], abs=ROUNDING + 0.005)
