"""Secrets and payloads never reach logs, traces or error bodies.

The whole platform runs with keys of its own (unique markers: the services' key, the proxy's
master key, a virtual key, the provider key the proxy sends upstream, the OTLP exporter's
Authorization) and exports its traces to a real OTLP receiver. Requests carry marker prompts,
questions, documents and answers, and many of them fail on purpose (wrong keys, bad bodies, an
upstream that errors, a value the database refuses) so the error paths log too. Then every
service's log file, every exported span and every error body is searched for every marker.

What feedback stores (the interaction, its question and answer) is stored on purpose: its
database and its exports are not what this test looks at.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import API_KEY, fresh_pg_database, no_keys_in_logs
from tests.fakes.otlp import OtlpReceiver
from tests.reliability.conftest import Keys, WholePlatform, whole_platform

TAG = secrets.token_hex(6)
KEYS = Keys(
    service=f"sk-svc-{TAG}-service-key-marker",
    master=f"sk-master-{TAG}-master-key-marker",
    provider=f"sk-prov-{TAG}-provider-key-marker",
    otlp_auth=f"b3RscC{TAG}-otlp-auth-marker",
)
WRONG_KEY = f"sk-wrong-{TAG}-unknown-key-marker"
PROMPT = f"PROMPT-{TAG}-marker how do refunds of damaged items work"
QUESTION = f"QUESTION-{TAG}-marker can I return a damaged item"
DOCUMENT = f"DOCUMENT-{TAG}-marker Refunds of damaged items take thirty days to process."
ANSWER = f"ANSWER-{TAG}-marker Damaged items can be returned [1]."
COMMENT = f"COMMENT-{TAG}-marker the answer was helpful"


@pytest.fixture(scope="module")
def otlp() -> Iterator[OtlpReceiver]:
    receiver = OtlpReceiver()
    yield receiver
    receiver.server.shutdown()


@pytest.fixture(scope="module")
def marked(
    service_factory: Any, tmp_path_factory: pytest.TempPathFactory, otlp: OtlpReceiver
) -> Iterator[WholePlatform]:
    with whole_platform(
        service_factory,
        tmp_path_factory.mktemp("secrets"),
        keys=KEYS,
        otlp_endpoint=f"http://127.0.0.1:{otlp.port}/api/public/otel",
        reply=ANSWER,
    ) as p:
        yield p


class Exchange:
    """Sends requests and keeps every error body (and every answer) it got."""

    def __init__(self) -> None:
        self.http = httpx.Client(timeout=120)
        self.errors: list[tuple[str, int, str]] = []
        self.answers: list[httpx.Response] = []

    def send(self, method: str, url: str, key: str | None, **kw: Any) -> httpx.Response:
        headers = {**kw.pop("headers", {})}
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        r = self.http.request(method, url, headers=headers, **kw)
        r.read()
        self.answers.append(r)
        text = r.text
        if r.headers.get("content-type", "").startswith("text/event-stream"):
            # A stream's error is its error event; the chunks before it are the answer.
            text = "\n".join(ln for ln in text.splitlines() if ln.startswith('data: {"error"'))
        if r.status_code >= 400 or _item_failed(r) or text.startswith('data: {"error"'):
            self.errors.append((f"{method} {url}", r.status_code, text))
        return r

    def expect(self, status: int, method: str, url: str, key: str | None, **kw: Any) -> None:
        r = self.send(method, url, key, **kw)
        assert r.status_code == status, (method, url, r.status_code, r.text)

    def refused(self, method: str, url: str, key: str | None, **kw: Any) -> None:
        """A bad request: some 4xx, or a 200 whose item failed (retrieval's per-document
        results), never a 5xx."""
        r = self.send(method, url, key, **kw)
        assert 400 <= r.status_code < 500 or _item_failed(r), (method, url, r.status_code, r.text)


def _item_failed(r: httpx.Response) -> bool:
    """Retrieval answers 200 to a batch of documents and says which ones failed."""
    if r.status_code != 200 or not r.headers.get("content-type", "").startswith("application/json"):
        return False
    body = r.json()
    return isinstance(body, dict) and bool(body.get("summary", {}).get("failed"))


def _secrets(p: WholePlatform) -> dict[str, str]:
    """What must not appear: each key whole, and each payload by its unique head (so a
    truncated echo of it is found too)."""
    return {
        "service key": KEYS.service,
        "master key": KEYS.master,
        "provider key": KEYS.provider,
        "otlp auth": KEYS.otlp_auth or "",
        "virtual key": p.virtual_key,
        "wrong key": WRONG_KEY,
        "prompt": PROMPT.split(" ")[0],
        "question": QUESTION.split(" ")[0],
        "document": DOCUMENT.split(" ")[0],
        "answer": ANSWER.split(" ")[0],
        "comment": COMMENT.split(" ")[0],
    }


def _other_forms(p: WholePlatform) -> dict[str, str]:
    """Forms of the keys that cannot be used as the key: fine to appear, reported if they do."""
    out = {}
    for name, key in (
        ("service", KEYS.service),
        ("master", KEYS.master),
        ("provider", KEYS.provider),
        ("virtual", p.virtual_key),
        ("wrong", WRONG_KEY),
    ):
        out[f"{name} key sha256"] = hashlib.sha256(key.encode()).hexdigest()
        out[f"{name} key first 12 chars"] = key[:12]
    out["virtual key hint"] = p.virtual_key_hint
    return out


def _exercise(p: WholePlatform, x: Exchange) -> None:
    svc, master, virtual = KEYS.service, KEYS.master, p.virtual_key
    emb, ret, prx, fb, rag = (s.url for s in p.services().values())
    trace = {"traceparent": f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"}
    chat = {"model": "smollm2", "messages": [{"role": "user", "content": PROMPT}]}

    # What works, with every secret and payload in play.
    x.expect(
        200,
        "POST",
        f"{emb}/v1/embeddings",
        svc,
        json={"model": "all-MiniLM-L6-v2", "input": [PROMPT]},
    )
    x.expect(201, "POST", f"{ret}/v1/collections", svc, json={"name": "secrets"})
    x.expect(
        200,
        "POST",
        f"{ret}/v1/collections/secrets/documents",
        svc,
        json={"documents": [{"id": "marked", "text": DOCUMENT}]},
    )
    x.expect(
        200,
        "POST",
        f"{ret}/v1/collections/secrets/search",
        svc,
        json={"query": PROMPT},
        headers=trace,
    )
    x.expect(200, "POST", f"{prx}/v1/chat/completions", virtual, json=chat, headers=trace)
    x.expect(200, "POST", f"{prx}/v1/chat/completions", virtual, json={**chat, "stream": True})
    x.expect(200, "POST", f"{prx}/v1/chat/completions", master, json=chat)
    x.expect(200, "GET", f"{prx}/admin/keys", master)
    asked = x.send("POST", f"{rag}/v1/ask", svc, json={"question": QUESTION}, headers=trace)
    assert asked.status_code == 200, asked.text
    x.expect(200, "POST", f"{rag}/v1/ask", svc, json={"question": QUESTION, "stream": True})
    iid = asked.json()["interaction_id"]
    x.expect(
        201,
        "POST",
        f"{fb}/v1/feedback",
        svc,
        json={"interaction_id": _recorded(x, fb, iid), "kind": "comment", "value": COMMENT},
    )
    x.expect(
        201,
        "POST",
        f"{fb}/v1/interactions",
        svc,
        json={
            "id": f"own-{TAG}",
            "question": QUESTION,
            "answer": ANSWER,
            "messages": [{"role": "user", "content": PROMPT}],
        },
    )
    x.expect(
        201,
        "POST",
        f"{fb}/v1/feedback",
        svc,
        json={
            "interaction_id": f"own-{TAG}",
            "kind": "correction",
            "value": ANSWER,
            "comment": COMMENT,
        },
    )
    x.expect(200, "GET", f"{fb}/v1/interactions/own-{TAG}", svc)

    # Wrong keys, everywhere (and a malformed header carrying a key).
    for url in (
        f"{emb}/v1/embeddings",
        f"{ret}/v1/collections/secrets/search",
        f"{prx}/v1/chat/completions",
        f"{fb}/v1/interactions",
        f"{rag}/v1/ask",
    ):
        x.expect(401, "POST", url, WRONG_KEY, json={"question": QUESTION, "input": PROMPT})
        x.expect(
            401,
            "POST",
            url,
            None,
            json={"input": PROMPT},
            headers={"Authorization": f"Basic {WRONG_KEY}"},
        )
    x.expect(401, "GET", f"{prx}/admin/keys", WRONG_KEY)
    x.expect(403, "GET", f"{prx}/admin/keys", virtual)

    # Bad bodies that carry the payloads.
    x.refused("POST", f"{emb}/v1/embeddings", svc, json={"model": "nope", "input": PROMPT})
    x.refused(
        "POST",
        f"{emb}/v1/embeddings",
        svc,
        json={"model": "all-MiniLM-L6-v2", "input": PROMPT, "dimensions": PROMPT},
    )
    x.refused(
        "POST",
        f"{emb}/v1/embeddings",
        svc,
        content=f'{{"input": "{PROMPT}"'.encode(),
        headers={"content-type": "application/json"},
    )
    x.refused(
        "POST",
        f"{ret}/v1/collections/secrets/documents",
        svc,
        json={
            "documents": [
                {"id": "b64", "content_base64": f"{DOCUMENT}!!", "content_type": "application/pdf"}
            ]
        },
    )
    x.refused(
        "POST",
        f"{ret}/v1/collections/secrets/search",
        svc,
        json={"query": PROMPT, "filter": {"field": PROMPT}, "top_k": 0},
    )
    x.refused("POST", f"{ret}/v1/collections/nope/search", svc, json={"query": PROMPT})
    x.refused("POST", f"{prx}/v1/chat/completions", virtual, json={**chat, "model": "nope"})
    x.refused(
        "POST", f"{prx}/v1/chat/completions", virtual, json={"model": "smollm2", "messages": PROMPT}
    )
    x.refused(
        "POST",
        f"{prx}/v1/chat/completions",
        virtual,
        content=f'{{"messages": [{{"content": "{PROMPT}"'.encode(),
    )
    x.refused("POST", f"{rag}/v1/ask", svc, json={"question": QUESTION, "top_k": 500})
    x.refused("POST", f"{rag}/v1/ask", svc, json={"question": QUESTION, "qestion": PROMPT})
    x.refused("POST", f"{rag}/v1/ask", svc, json={"question": QUESTION, "collection": "nope"})
    x.refused(
        "POST",
        f"{fb}/v1/interactions",
        svc,
        json={"id": "bad env", "question": QUESTION, "answer": ANSWER, "environment": PROMPT},
    )
    x.refused(
        "POST",
        f"{fb}/v1/feedback",
        svc,
        json={"interaction_id": iid, "kind": "rating", "value": PROMPT},
    )
    # PostgreSQL refuses a NUL in text: the database's own error path, with the payload in it.
    x.expect(
        400,
        "POST",
        f"{fb}/v1/interactions",
        svc,
        json={"id": f"nul-{TAG}", "question": f"{QUESTION}\u0000", "answer": ANSWER},
    )

    # The provider failing: the proxy's and rag's upstream error paths (a 400 first: the 500s
    # open the deployment's circuit, after which the answer is a 503).
    p.fake.always({"status": 400})
    x.expect(400, "POST", f"{prx}/v1/chat/completions", virtual, json=chat)
    p.fake.always({"cut_after_chunks": 1})
    x.send("POST", f"{rag}/v1/ask", svc, json={"question": QUESTION, "stream": True})
    x.send("POST", f"{prx}/v1/chat/completions", virtual, json={**chat, "stream": True})
    p.fake.always({"status": 500})
    for url, body in (
        (f"{prx}/v1/chat/completions", chat),
        (f"{rag}/v1/ask", {"question": QUESTION}),
    ):
        r = x.send("POST", url, virtual if url.startswith(prx) else svc, json=body)
        assert r.status_code in (502, 503), r.text
    p.fake.always(None)
    # The provider got the provider key (so the proxy had it to leak), not the caller's.
    sent = {r["headers"].get("authorization") for r in p.fake.requests()}
    assert sent == {f"Bearer {KEYS.provider}"}, sent


def _recorded(x: Exchange, feedback_url: str, iid: str) -> str:
    deadline = time.monotonic() + 30
    while (
        x.http.get(
            f"{feedback_url}/v1/interactions/{iid}",
            headers={"Authorization": f"Bearer {KEYS.service}"},
        ).status_code
        != 200
    ):
        assert time.monotonic() < deadline, "the ask never reached feedback"
        time.sleep(0.1)
    return iid


def test_no_key_or_payload_in_logs_traces_or_error_bodies(
    marked: WholePlatform, otlp: OtlpReceiver
) -> None:
    x = Exchange()
    _exercise(marked, x)
    # Every service exported spans before it stops (each flushes its exporter when it does).
    names = set(marked.services())
    deadline = time.monotonic() + 30
    while not names <= _exporters(otlp) and time.monotonic() < deadline:
        time.sleep(0.2)
    marked.stop()  # logs complete, spans flushed

    logs = {svc.log_path: svc.log_path.read_bytes() for svc in marked.services().values()}
    spans = b"".join(body for _, _, body in otlp.bodies)
    headers = "".join(str(h) for _, h, _ in otlp.bodies)
    bodies = "\n".join(text for _, _, text in x.errors)
    found: dict[str, list[str]] = {}
    for name, value in _secrets(marked).items():
        where = [str(path.name) for path, text in logs.items() if value.encode() in text]
        if value.encode() in spans:
            where.append("otlp spans")
        if value in headers and name != "otlp auth":  # the exporter's own header is meant
            where.append("otlp request headers")
        where += [f"{what} -> {status}" for what, status, text in x.errors if value in text]
        if where:
            found[name] = where
    forms = {
        name: [p.name for p, text in logs.items() if v.encode() in text]
        + (["otlp spans"] if v.encode() in spans else [])
        + (["error bodies"] if v in bodies else [])
        for name, v in _other_forms(marked).items()
    }
    lines = sum(t.count(b"\n") for t in logs.values())
    print(
        f"SECRETS grep: {len(logs)} log files ({sum(map(len, logs.values()))} bytes, "
        f"{lines} lines), {len(otlp.bodies)} OTLP exports "
        f"({len(otlp.spans())} spans from {sorted(_exporters(otlp))}), {len(x.errors)} error "
        f"bodies of {len(x.answers)} answers; markers {sorted(_secrets(marked))}; "
        f"other forms present: { {k: v for k, v in forms.items() if v} }"
    )
    assert len(x.errors) >= 30
    assert names <= _exporters(otlp), _exporters(otlp)  # every service's traces were searched
    assert not found, f"secrets or payloads leaked: {found}"


def _exporters(otlp: OtlpReceiver) -> set[str]:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    names = set()
    for _, _, body in otlp.bodies:
        req = ExportTraceServiceRequest()
        req.ParseFromString(body)
        for rs in req.resource_spans:
            for kv in rs.resource.attributes:
                if kv.key == "service.name":
                    names.add(kv.value.string_value)
    return names


def test_a_refused_statement_names_no_values(tmp_path: Path) -> None:
    """Regression: SQLAlchemy put a refused statement's values into its error, which feedback's
    committer logs with the traceback; a question with a NUL byte (PostgreSQL refuses it) put
    the whole prompt and answer into the log. Engines now hide parameters."""
    from sqlalchemy import exc as sa_exc
    from sqlalchemy import text

    from services.common.db import make_engine

    with fresh_pg_database("llmops_hidden") as url:
        engine = make_engine(url)
        try:
            with pytest.raises(sa_exc.DataError) as refused, engine.connect() as conn:
                conn.execute(text("SELECT CAST(:v AS text)"), {"v": f"{PROMPT}\u0000"})
        finally:
            engine.dispose()
    assert PROMPT not in str(refused.value) and "hide_parameters" in str(refused.value)
    engine = make_engine(f"sqlite:///{tmp_path}/t.db")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (v TEXT CHECK (length(v) < 5))"))
    with pytest.raises(sa_exc.IntegrityError) as refused, engine.begin() as conn:
        conn.execute(text("INSERT INTO t VALUES (:v)"), {"v": PROMPT})
    assert PROMPT not in str(refused.value)


def test_the_session_guard_fails_loudly_on_a_key_in_a_log(tmp_path: Path) -> None:
    """tests/conftest.py runs this over every service log of the session when it ends."""
    (tmp_path / "clean-1.log").write_text('{"msg": "GET /v1/models 200"}\n')
    no_keys_in_logs(tmp_path)  # nothing found: nothing said
    (tmp_path / "rag-2.log").write_text(f'{{"msg": "calling with {API_KEY}"}}\n')
    with pytest.raises(pytest.fail.Exception, match=r"rag-2\.log holds API_KEY"):
        no_keys_in_logs(tmp_path)
