"""``POST /v1/ask`` over the real platform: citations, streaming, one trace, degraded modes,
and interactions that reach the feedback service even through its outage."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai._streaming import SSEDecoder

from tests.conftest import (
    ServiceProcess,
    assert_error,
    auth_headers,
    free_port,
    metric,
    scrape,
)
from tests.fakes.otlp import OtlpReceiver
from tests.feedback.conftest import TcpProxy
from tests.rag.platform import Platform, set_reply

REPLY = "Damaged items can be returned within 30 days [1]. Digital goods are not [1][7]."
SHOWN = "Damaged items can be returned within 30 days [1]. Digital goods are not [1]."  # no [7]


@pytest.fixture(scope="module")
def rag(
    platform: Platform, service_factory: Any, tmp_path_factory: pytest.TempPathFactory
) -> ServiceProcess:
    env = platform.rag_env(tmp_path_factory.mktemp("rag"))
    svc: ServiceProcess = service_factory("rag", **env).wait_ready(60)
    return svc


@pytest.fixture(autouse=True)
def _reply(request: pytest.FixtureRequest) -> Iterator[None]:
    if "platform" in request.fixturenames:
        fake = request.getfixturevalue("platform").fake
        fake.reset()
        set_reply(fake, REPLY)
    yield


def _attrs(span: Any) -> dict[str, Any]:
    """An OTLP span's attributes as plain values."""
    out: dict[str, Any] = {}
    for kv in span.attributes:
        which = kv.value.WhichOneof("value")
        out[kv.key] = getattr(kv.value, which) if which else None
    return out


def ask(svc: ServiceProcess, **body: Any) -> httpx.Response:
    body.setdefault("question", "Can I return a damaged item?")
    headers = {**auth_headers(), **body.pop("headers", {})}
    return httpx.post(f"{svc.url}/v1/ask", json=body, headers=headers, timeout=60)


def ask_stream(svc: ServiceProcess, question: str) -> tuple[httpx.Response, list[Any]]:
    """A streamed ask read to its end: the response (status, headers) and its SSE events, as
    the OpenAI SDK's own parser reads them."""
    with httpx.stream(
        "POST",
        f"{svc.url}/v1/ask",
        headers=auth_headers(),
        timeout=60,
        json={"question": question, "stream": True},
    ) as r:
        return r, list(SSEDecoder().iter_bytes(r.iter_bytes()))


def recorded(feedback_url: str, interaction_id: str, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = httpx.get(f"{feedback_url}/v1/interactions/{interaction_id}", headers=auth_headers())
        if r.status_code == 200:
            data: dict[str, Any] = r.json()
            return data
        time.sleep(0.1)
    raise TimeoutError(f"interaction {interaction_id} never reached the feedback service")


def test_answer_cites_only_retrieved_chunks_and_is_recorded(
    rag: ServiceProcess, platform: Platform
) -> None:
    r = ask(rag, session_id="s-1", user_id="u-1")
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["answer"] == SHOWN
    assert data["degraded"] == [] and data["prompt"]["source"] == "bundled"
    assert r.headers["x-llmops-interaction-id"] == data["interaction_id"]
    # [1] cited (once, though it appears twice); [7] names no retrieved chunk.
    assert [c["marker"] for c in data["citations"]] == ["[1]"]
    assert data["invalid_citations"] == [7]
    first = data["contexts"][0]
    assert data["citations"][0]["document_id"] == first["document_id"] == "handbook/refunds.md"
    assert data["citations"][0]["heading_path"][0] == "Refunds"
    assert {c["chunk_id"] for c in data["citations"]} <= {c["chunk_id"] for c in data["contexts"]}
    # The model saw the retrieved text, numbered, and the question.
    sent = platform.fake.requests()[-1]["body"]["messages"][0]["content"]
    assert "[1] " in sent and "within 30 days" in sent and "[2] " in sent
    assert "Can I return a damaged item?" in sent
    # Where the bundled prompt's next block begins, the model stops (OpenAI's limit: 4).
    stop = platform.fake.requests()[-1]["body"]["stop"]
    assert "\nQuestion:" in stop and len(stop) <= 4
    stored = recorded(platform.feedback_url, data["interaction_id"])
    assert stored["answer"] == SHOWN and stored["prompt_version"] == "bundled"
    assert stored["metadata"]["model_answer"] == REPLY  # what the model wrote, [7] included
    assert stored["trace_id"] == data["trace_id"] and stored["session_id"] == "s-1"
    assert stored["context_ids"] == [c["chunk_id"] for c in data["contexts"]]
    assert stored["metadata"]["citations"] == ["[1]"]


def test_streaming_is_sse_that_the_sdk_parser_reads(rag: ServiceProcess) -> None:
    deltas: list[str] = []
    final: dict[str, Any] = {}
    r, events = ask_stream(rag, "How fast is shipping?")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    assert events[-1].data == "[DONE]"
    for event in events[:-1]:
        obj = event.json()
        if obj["object"] == "rag.ask.chunk":
            deltas.append(obj["delta"])
        else:
            final = obj
    assert len(deltas) > 3 and "".join(deltas).strip() == final["answer"] == SHOWN
    assert [c["marker"] for c in final["citations"]] == ["[1]"]
    assert final["invalid_citations"] == [7]


def test_markers_that_name_nothing_and_marker_runs_are_not_shown(
    rag: ServiceProcess, platform: Platform
) -> None:
    """What a small model writes over real documents (issue 16): a run of markers past the
    passages it was given. Shown: the valid ones, once; the rest only in invalid_citations,
    in the whole answer and in the stream alike; the interaction keeps the model's text."""
    raw = "Use add_subparsers() [2] [2] [1] [9] [10] [11] [12] [13] [14] [15] [16].\n\n[17]"
    set_reply(platform.fake, raw)
    whole = ask(rag, question="How do I return a damaged item?")
    assert whole.status_code == 200, whole.text
    data = whole.json()
    assert len(data["contexts"]) >= 2
    assert data["answer"] == "Use add_subparsers() [2][1]."
    assert [c["marker"] for c in data["citations"]] == ["[2]", "[1]"]
    assert data["invalid_citations"] == [9, 10, 11, 12, 13, 14, 15, 16, 17]
    stored = recorded(platform.feedback_url, data["interaction_id"])
    assert stored["answer"] == data["answer"] and stored["metadata"]["model_answer"] == raw
    _, sse = ask_stream(rag, "How do I return a damaged item?")
    events = [e.json() for e in sse if e.data != "[DONE]"]
    deltas = [e["delta"] for e in events if e["object"] == "rag.ask.chunk"]
    assert "".join(deltas) == events[-1]["answer"] == data["answer"]
    assert not any("[9]" in d or "[17]" in d for d in deltas)


def test_one_trace_from_the_caller_through_the_proxy_to_feedback(
    rag: ServiceProcess, platform: Platform
) -> None:
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    r = ask(rag, headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"})
    assert r.status_code == 200
    assert r.json()["trace_id"] == trace_id
    upstream = platform.fake.requests()[-1]["headers"]
    assert upstream["traceparent"].split("-")[1] == trace_id  # rag -> proxy -> provider
    assert recorded(platform.feedback_url, r.json()["interaction_id"])["trace_id"] == trace_id
    # Without a caller's trace (and nothing exported), the ask still is one trace, named after
    # the interaction: the id the response gives is the one the proxy and feedback saw.
    r = ask(rag)
    own = r.json()["trace_id"]
    assert platform.fake.requests()[-1]["headers"]["traceparent"].split("-")[1] == own
    assert recorded(platform.feedback_url, r.json()["interaction_id"])["trace_id"] == own


def test_bad_requests_get_clear_errors(rag: ServiceProcess, platform: Platform) -> None:
    assert_error(ask(rag, collection="nope"), 404)
    assert_error(ask(rag, question="   "), 400)
    assert_error(ask(rag, top_k=500), 400, "invalid_value")
    assert_error(ask(rag, prompt_version="latest"), 400)
    assert_error(ask(rag, qestion="typo"), 400)
    assert_error(httpx.post(f"{rag.url}/v1/ask", json={"question": "x"}), 401)
    platform.fake.always({"status": 429, "retry_after": 600})  # past what the proxy waits for
    err = assert_error(ask(rag), 429, "rate_limited")
    assert "rate limited" in err["message"]
    platform.fake.always({"status": 500})
    assert_error(ask(rag), 502, "upstream_error")
    platform.fake.always(None)


def test_retrieval_down_fails_or_answers_without_context(
    platform: Platform, service_factory: Any, embeddings: ServiceProcess, tmp_path: Path
) -> None:
    from tests.rag.platform import start_retrieval

    own = start_retrieval(service_factory, embeddings, tmp_path / "retrieval")
    strict = service_factory(
        "rag", **platform.rag_env(tmp_path / "a", RAG_RETRIEVAL_URL=own.url)
    ).wait_ready(60)
    lenient = service_factory(
        "rag",
        **platform.rag_env(
            tmp_path / "b", RAG_RETRIEVAL_URL=own.url, RAG_ON_RETRIEVAL_FAILURE="no_context"
        ),
    ).wait_ready(60)
    assert ask(strict).status_code == 200  # while it runs
    own.stop()  # the real dependency goes away
    assert_error(ask(strict), 503, "retrieval_unavailable")
    r = ask(lenient)
    assert r.status_code == 200, r.text
    assert r.json()["degraded"] == ["retrieval_unavailable"] and r.json()["contexts"] == []
    assert r.json()["citations"] == [] and r.json()["invalid_citations"] == [1, 7]
    assert metric(scrape(lenient), "llmops_rag_degraded_total", reason="retrieval_unavailable") == 1


def test_no_interaction_is_lost_while_feedback_is_down(
    platform: Platform, service_factory: Any, tmp_path: Path
) -> None:
    port = int(platform.feedback_url.rsplit(":", 1)[1])
    tunnel = TcpProxy(("127.0.0.1", port))
    try:
        svc = service_factory(
            "rag", **platform.rag_env(tmp_path, RAG_FEEDBACK_URL=f"http://127.0.0.1:{tunnel.port}")
        ).wait_ready(60)
        tunnel.cut()
        ids = []
        for n in range(5):
            r = ask(svc, question=f"How fast is express shipping? ({n})")
            assert r.status_code == 200  # the outage is not the caller's problem
            ids.append(r.json()["interaction_id"])
        deadline = time.monotonic() + 30
        while httpx.get(f"{svc.url}/readyz").json()["outbox_depth"] != 5:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert metric(scrape(svc), "llmops_rag_outbox_failures_total", reason="unavailable") >= 1
        tunnel.restore()
        for iid in ids:
            assert recorded(platform.feedback_url, iid)["id"] == iid
    finally:
        tunnel.cut()


def test_prompt_comes_from_the_registry_alias_moves_and_registry_outages(
    platform: Platform, service_factory: Any, tmp_path: Path, restartable_mlflow: Any
) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=restartable_mlflow.url)
    name = "rag-answer"
    base = "Context:\n{{ context }}\n\nQuestion: {{ question }}\nAnswer with [n] citations. "
    v1 = client.register_prompt(name=name, template=base + "MARK-V1")
    client.set_prompt_alias(name, alias="staging", version=int(v1.version))
    otlp = OtlpReceiver()  # what Langfuse's OTLP endpoint is
    svc = service_factory(
        "rag",
        **platform.rag_env(
            tmp_path,
            RAG_PROMPT_ALIAS="staging",  # what ENV=staging picks (see test_registry.py)
            RAG_MLFLOW_TRACKING_URI=restartable_mlflow.url,
            RAG_PROMPT_TTL_S="0.5",
            RAG_OTLP_ENDPOINT=f"http://127.0.0.1:{otlp.port}/api/public/otel",
        ),
    ).wait_ready(60)

    def sent() -> str:
        content: str = platform.fake.requests()[-1]["body"]["messages"][0]["content"]
        return content

    deadline = time.monotonic() + 30
    while (r := ask(svc)).json()["prompt"]["source"] != "registry":  # the warm-up may be slow
        assert time.monotonic() < deadline, r.text
        time.sleep(0.2)
    assert r.json()["prompt"] == {"name": name, "version": "1", "source": "registry"}
    assert "MARK-V1" in sent() and r.json()["degraded"] == []
    # The trace Langfuse gets links the generation to the prompt version (its OTel mapping).
    deadline = time.monotonic() + 30
    while not (linked := [s for s in otlp.spans() if s.name == "rag.generate" and
                          _attrs(s).get("langfuse.observation.prompt.version") == 1]):  # fmt: skip
        assert time.monotonic() < deadline, [s.name for s in otlp.spans()]
        time.sleep(0.2)
    attrs = _attrs(linked[0])
    assert attrs["langfuse.observation.prompt.name"] == name
    assert attrs["gen_ai.operation.name"] == "chat" and attrs["gen_ai.request.model"]
    assert linked[0].trace_id.hex() == r.json()["trace_id"]
    otlp.server.shutdown()

    v2 = client.register_prompt(name=name, template=base + "MARK-V2")
    client.set_prompt_alias(name, alias="staging", version=int(v2.version))
    deadline = time.monotonic() + 30  # seen within the TTL (0.5 s), whatever the machine does
    while ask(svc).json()["prompt"]["version"] != "2":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert "MARK-V2" in sent()
    pinned = ask(svc, prompt_version="1")
    assert pinned.json()["prompt"]["version"] == "1" and "MARK-V1" in sent()
    assert_error(ask(svc, prompt_version="99"), 404, "prompt_not_found")

    restartable_mlflow.stop()
    time.sleep(0.6)  # past the TTL: the next ask has to go to the registry, which is down
    down = ask(svc)
    assert down.status_code == 200, down.text
    assert down.json()["prompt"] == {"name": name, "version": "2", "source": "last-known-good"}
    assert down.json()["degraded"] == ["prompt_registry_stale"] and "MARK-V2" in sent()
    assert metric(scrape(svc), "llmops_rag_degraded_total", reason="prompt_registry_stale") >= 1


def test_registry_never_reached_serves_the_bundled_prompt(
    platform: Platform, service_factory: Any, tmp_path: Path
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    svc = service_factory(
        "rag", **platform.rag_env(tmp_path, RAG_MLFLOW_TRACKING_URI=dead)
    ).wait_ready(60)
    r = ask(svc)
    assert r.status_code == 200, r.text
    assert r.json()["prompt"]["source"] == "bundled"
    assert r.json()["degraded"] == ["prompt_registry_unavailable"]
    assert_error(ask(svc, prompt_version="1"), 503, "prompt_registry_unavailable")
