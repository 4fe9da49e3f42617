"""Feedback forwarded to Langfuse as scores through the SDK's API client, captured by a local
receiver of Langfuse's public API as the SDK documents it (POST /api/public/scores with a list of
scores; 202 accepted, 207 with per-batch rejections) with scripted failures."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.conftest import ServiceProcess, metric, scrape
from tests.feedback.conftest import Start, client, interaction

PUBLIC, SECRET = "pk-lf-test", "sk-lf-test-secret"


class Receiver:
    """Records every score; answers ``fail_next`` requests with 503, or all while ``down``; a
    score named in ``refuse`` gets 207 with it rejected, as Langfuse does for an invalid one."""

    def __init__(self) -> None:
        self.scores: list[dict[str, Any]] = []
        self.auth: set[str] = set()
        self.headers: list[dict[str, str]] = []
        self.fail_next = 0
        self.down = False
        self.refuse: set[str] = set()
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                status, reply = 202, b'{"message":"Accepted"}'
                with outer.lock:
                    outer.auth.add(self.headers.get("authorization", ""))
                    outer.headers.append(dict(self.headers))
                    failing = outer.down or outer.fail_next > 0
                    if outer.fail_next > 0:
                        outer.fail_next -= 1
                    if failing:
                        status, reply = 503, b'{"message":"down"}'
                    elif self.path != "/api/public/scores":
                        status, reply = 404, b'{"message":"not found"}'
                    else:
                        batch = json.loads(body)
                        assert isinstance(batch, list), batch  # the endpoint takes a list
                        kept = [x for x in batch if x["name"] not in outer.refuse]
                        outer.scores.extend(kept)
                        if len(kept) < len(batch):
                            status = 207
                            reply = json.dumps({
                                "accepted": len(kept), "rejected": len(batch) - len(kept),
                                "errors": [{"message": "invalid score"}],
                            }).encode()  # fmt: skip
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def by_id(self) -> dict[str, dict[str, Any]]:
        with self.lock:
            return {s["id"]: s for s in self.scores}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.server.shutdown()


def with_langfuse(start_feedback: Start, pg_url: str, receiver: Receiver) -> ServiceProcess:
    """A feedback service that forwards to ``receiver`` every 0.2 s."""
    return start_feedback(
        pg_url,
        FEEDBACK_LANGFUSE_HOST=receiver.url,
        FEEDBACK_LANGFUSE_PUBLIC_KEY=PUBLIC,
        FEEDBACK_LANGFUSE_SECRET_KEY=SECRET,
        FEEDBACK_LANGFUSE_FLUSH_S="0.2",
    )


def _wait_for(receiver: Receiver, n: int, timeout: float = 30) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = receiver.by_id()
        if len(got) >= n:
            return got
        time.sleep(0.1)
    raise TimeoutError(f"{len(receiver.by_id())} of {n} scores arrived")


def test_each_feedback_becomes_one_score_on_the_interactions_trace(
    start_feedback: Start, pg_url: str, receiver: Receiver
) -> None:
    receiver.fail_next = 2  # the first two sends fail: retried, never surfaced to the writer
    svc = with_langfuse(start_feedback, pg_url, receiver)
    with client(svc) as api:
        derived = interaction("lf-1", environment="staging")
        given = interaction("lf-2", trace_id="0af7651916cd43dd8448eb211c80319c")
        assert api.post("/v1/interactions", json=derived).status_code == 201
        assert api.post("/v1/interactions", json=given).status_code == 201
        sent = [
            {"interaction_id": "lf-1", "kind": "thumbs", "value": "up", "user_id": "u"},
            {
                "interaction_id": "lf-1",
                "kind": "rating",
                "value": 2,
                "comment": "vague; mail jane.doe@example.com",
            },
            {"interaction_id": "lf-2", "kind": "label", "value": "off-topic"},
            {"interaction_id": "lf-2", "kind": "correction", "value": "The better answer."},
        ]
        r = api.post("/v1/feedback", json=sent)
        assert r.status_code == 201, r.text
        ids = [d["id"] for d in r.json()["data"]]
    scores = _wait_for(receiver, 4)
    assert set(scores) == set(ids)
    trace_1 = hashlib.sha256(b"lf-1").digest()[:16].hex()  # Langfuse's create_trace_id(seed=)
    thumbs, rating, label, correction = (scores[i] for i in ids)
    assert thumbs["traceId"] == trace_1 and rating["traceId"] == trace_1
    assert label["traceId"] == "0af7651916cd43dd8448eb211c80319c"
    assert (thumbs["name"], thumbs["value"], thumbs["dataType"]) == ("thumbs", 1, "BOOLEAN")
    assert (rating["name"], rating["value"], rating["dataType"]) == ("rating", 2, "NUMERIC")
    assert rating["comment"] == "vague; mail [EMAIL]"  # FEEDBACK_LANGFUSE_REDACT_PII default
    assert (label["value"], label["dataType"]) == ("off-topic", "CATEGORICAL")
    assert correction["comment"] == "The better answer."
    assert thumbs["environment"] == "staging" and label["environment"] == "production"
    assert thumbs["metadata"] == {"interaction_id": "lf-1", "user_id": "u"}
    token = base64.b64encode(f"{PUBLIC}:{SECRET}".encode()).decode()
    assert receiver.auth == {f"Basic {token}"}
    # What the SDK's client sends besides: its public-key and SDK headers, and the documented
    # field names (camelCase aliases), nothing else.
    assert all(h.get("X-Langfuse-Public-Key") == PUBLIC for h in receiver.headers)
    assert all(h.get("X-Langfuse-Sdk-Name") == "llmops-feedback" for h in receiver.headers)
    documented = {"id", "traceId", "name", "value", "dataType", "comment", "environment",
                  "metadata"}  # fmt: skip
    assert all(set(s) <= documented for s in scores.values()), scores
    time.sleep(0.5)  # nothing is sent twice once delivered
    assert len(receiver.scores) == 4
    text = scrape(svc)
    assert metric(text, "llmops_feedback_langfuse_forwarded_total") == 4


def test_a_score_langfuse_refuses_is_marked_and_never_resent(
    start_feedback: Start, pg_url: str, receiver: Receiver
) -> None:
    receiver.refuse = {"label"}
    svc = with_langfuse(start_feedback, pg_url, receiver)
    with client(svc) as api:
        assert api.post("/v1/interactions", json=interaction("ref-1")).status_code == 201
        sent = [
            {"interaction_id": "ref-1", "kind": "label", "value": "odd"},
            {"interaction_id": "ref-1", "kind": "thumbs", "value": "down"},
        ]
        assert api.post("/v1/feedback", json=sent).status_code == 201
    assert [s["name"] for s in _wait_for(receiver, 1).values()] == ["thumbs"]
    deadline = time.monotonic() + 30
    while metric(scrape(svc), "llmops_feedback_langfuse_forward_failures_total",
                 reason="rejected") < 1:  # fmt: skip
        assert time.monotonic() < deadline, "the refusal was not counted"
        time.sleep(0.2)
    posts = len(receiver.headers)
    time.sleep(1)  # three flush intervals: the refused score is not sent again
    assert len(receiver.headers) == posts


def test_langfuse_down_never_blocks_writes_and_catches_up(
    start_feedback: Start, pg_url: str, receiver: Receiver
) -> None:
    receiver.down = True
    svc = with_langfuse(start_feedback, pg_url, receiver)
    with client(svc) as api:
        assert api.post("/v1/interactions", json=interaction("down-1")).status_code == 201
        for n in range(5):
            started = time.monotonic()
            r = api.post(
                "/v1/feedback",
                json={
                    "interaction_id": "down-1",
                    "kind": "thumbs",
                    "value": "up",
                    "idempotency_key": f"d{n}",
                },
            )
            assert r.status_code == 201
            assert time.monotonic() - started < 5  # not waiting on Langfuse's retries
    deadline = time.monotonic() + 30
    while (
        metric(scrape(svc), "llmops_feedback_langfuse_forward_failures_total", reason="unavailable")
        < 5
    ):
        assert time.monotonic() < deadline, "no forward failure counted"
        time.sleep(0.2)
    assert receiver.by_id() == {}
    receiver.down = False
    assert len(_wait_for(receiver, 5, timeout=30)) == 5  # the outbox kept them


def test_nothing_is_sent_when_langfuse_is_not_configured(
    start_feedback: Start, pg_url: str
) -> None:
    svc = start_feedback(pg_url)
    with client(svc) as api:
        assert api.get("/readyz").json()["langfuse"] == "off"
    assert "llmops_feedback_langfuse_forwarded_total 0.0" in scrape(svc)
