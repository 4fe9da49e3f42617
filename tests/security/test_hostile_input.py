"""Hand-written hostile input against the real processes of every service that takes input
(embeddings, retrieval, feedback, rag, llm-proxy, local-llm): bodies over the limit, JSON nested
100,000 levels deep, invalid UTF-8, lone surrogates, NaN and 1e309, the wrong Content-Type,
huge, negative, fractional and non-numeric numbers, control characters in ids and headers, and
path traversal in names.

Every answer is a 2xx the test expects or an error in the one JSON shape (``assert_error``), never
a 5xx, and the service is ready (``/readyz`` 200) after each attack. At the end: no service log
has a line forged by a CR/LF in the input, and nothing was created outside the data dirs. One
row per service goes to the reliability report's ``hostile`` table.

Two answers are not the JSON shape, on purpose: a raw CR, LF, ESC or NUL in a header never
reaches the app (uvicorn's HTTP parser answers its own plain-text 400 and closes).
"""

from __future__ import annotations

import socket
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import orjson
import pytest
import yaml

from services.embeddings.config import EmbeddingsSettings
from services.feedback.config import FeedbackSettings
from services.llm_proxy.config import ProxySettings
from services.local_llm.config import LocalLLMSettings
from services.rag.config import RagSettings
from services.retrieval.config import RetrievalSettings
from tests.conftest import API_KEY, API_KEY_HASH, ServiceProcess, assert_error, fresh_pg_database
from tests.llm_proxy.conftest import MASTER_KEY, FakeUpstream
from tests.rag.platform import Platform, start_retrieval
from tests.reliability.harness import record_row

SERVICES = ("embeddings", "retrieval", "feedback", "rag", "llm-proxy", "local-llm")
LIMITS = {  # each service's documented body limit: its settings' default
    "embeddings": EmbeddingsSettings.model_fields["max_body_bytes"].default,
    "retrieval": RetrievalSettings.model_fields["max_body_bytes"].default,
    "feedback": FeedbackSettings.model_fields["max_body_bytes"].default,
    "rag": RagSettings.model_fields["max_body_bytes"].default,
    "llm-proxy": ProxySettings.model_fields["max_body_bytes"].default,
    "local-llm": LocalLLMSettings.model_fields["max_body_bytes"].default,
}
FOUND_AND_FIXED = {
    "embeddings": "lone surrogate in input/tokenize -> 500 (tokenizer); deep nesting and invalid "
    "UTF-8 -> a vague 'error parsing the body': bodies now parsed by orjson (400 invalid JSON)",
    "retrieval": "lone surrogate in a query or a document's text -> 500 (encoders): orjson bodies; "
    "a document id with a line break was stored but could never be deleted (DELETE's route cannot "
    "match it) -> control characters refused in document ids",
    "feedback": "NUL in a text field: a 400 only from the database (202 then dead-lettered while "
    "spooling) -> refused at acceptance naming the field; NUL in an id or filter -> 500; "
    "created_at/since pushed past year 9999 by an offset -> 500; token counts over INTEGER -> "
    "database error; text/plain and form bodies accepted -> 400",
    "rag": "collection pasted into retrieval's URL ('../', '?', NUL reached other routes: 404 "
    "naming retrieval's paths, 503, 500) -> retrieval's name pattern; NUL in question/user/session "
    "answered then dropped by feedback -> 400; Infinity in a filter -> 500",
    "llm-proxy": "admin: rpm/tpm over INTEGER, huge or infinite expires_in_s, NUL in a key name "
    "or a key id, Infinity in metadata -> 500; chat/embeddings took text/plain and form bodies",
    "local-llm": "lone surrogate in content -> 500 (tokenizer): orjson bodies",
}

FORGED = '{"level":"error","logger":"llmops.auth","msg":"FORGED-LOG-LINE"}'
EMBED_MODEL = "all-MiniLM-L6-v2"
LOCAL_MODEL = "smollm2-135m-instruct"
TALLY: dict[str, Counter[str]] = {s: Counter() for s in SERVICES}


@dataclass
class Target:
    name: str
    proc: ServiceProcess
    key: str
    data_dirs: list[Path] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.proc.url


@pytest.fixture(scope="module")
def targets(
    service_factory: Any,
    embeddings: ServiceProcess,
    local_llm: ServiceProcess,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, Target]]:
    """The platform under rag, with feedback and the proxy on PostgreSQL of their own (its
    INTEGER and text columns are what refuse the out-of-range values and NULs)."""
    tmp = tmp_path_factory.mktemp("hostile")
    fake = FakeUpstream("hostile", tmp)
    config = {
        "deployments": [{"name": "fake", "api_base": fake.api_base, "model": "fake-model"}],
        "aliases": {"smollm2": {"deployments": [{"deployment": "fake"}]}},
    }
    (tmp / "routing.yaml").write_text(yaml.safe_dump(config))
    with (
        fresh_pg_database("llmops_hostile_fb") as fb_db,
        fresh_pg_database("llmops_hostile_px") as px_db,
    ):
        fb: ServiceProcess = service_factory(
            "feedback", FEEDBACK_API_KEY_HASHES=API_KEY_HASH, FEEDBACK_DATABASE_URL=fb_db,
            FEEDBACK_DATA_DIR=str(tmp / "feedback"),
        )  # fmt: skip
        px: ServiceProcess = service_factory(
            "llm-proxy", LLM_PROXY_CONFIG_PATH=str(tmp / "routing.yaml"),
            LLM_PROXY_MASTER_KEY=MASTER_KEY, LLM_PROXY_DATABASE_URL=px_db,
        )  # fmt: skip
        ret = start_retrieval(service_factory, embeddings, tmp)
        platform = Platform(retrieval=ret, proxy=px.wait_ready(60), fake=fake,
                            feedback_url=fb.wait_ready(60).url)  # fmt: skip
        rag: ServiceProcess = service_factory("rag", **platform.rag_env(tmp)).wait_ready(60)
        found = {
            "embeddings": Target("embeddings", embeddings, API_KEY),
            "retrieval": Target("retrieval", ret, API_KEY, [tmp / "qdrant"]),
            "feedback": Target("feedback", fb, API_KEY, [tmp / "feedback"]),
            "rag": Target("rag", rag, API_KEY, [tmp / "outbox"]),
            "llm-proxy": Target("llm-proxy", px, MASTER_KEY),
            "local-llm": Target("local-llm", local_llm, API_KEY),
        }
        r = send(found["feedback"], "POST", "/v1/interactions", body=INTERACTION)
        assert r.status_code in (200, 201), r.text
        yield found
        for proc in (rag, ret, px, fb):  # before their databases are dropped
            proc.stop()
    fake.stop()


@pytest.fixture(scope="module", autouse=True)
def _report() -> Iterator[None]:
    """One row per service for the report's ``hostile`` table, with what was counted."""
    yield
    for svc in SERVICES:
        if TALLY[svc]["cases"]:
            tally = TALLY[svc]
            record_row("hostile", service=svc, cases=tally["cases"], server_errors=tally["5xx"],
                       found_and_fixed=FOUND_AND_FIXED[svc])  # fmt: skip


INTERACTION = {"id": "hostile-1", "question": "What is the refund policy?", "answer": "30 days."}


def send(
    target: Target,
    method: str,
    path: str,
    *,
    body: Any = None,
    content: bytes | Iterator[bytes] | None = None,
    headers: dict[str, str] | None = None,
    key: str | None = None,
) -> httpx.Response:
    """One request, counted for the report (a 5xx is counted before any assert fails)."""
    h = {"Authorization": f"Bearer {key or target.key}"}
    if body is not None:
        content = orjson.dumps(body)
        h["content-type"] = "application/json"
    h.update(headers or {})
    r = httpx.request(method, target.url + path, content=content, headers=h, timeout=120)
    count(target.name, r)
    return r


def count(svc: str, r: httpx.Response) -> None:
    TALLY[svc]["cases"] += 1
    TALLY[svc]["5xx"] += r.status_code >= 500


def still_ready(target: Target) -> None:
    r = httpx.get(f"{target.url}/readyz", timeout=30)
    assert r.status_code == 200, f"{target.url} not ready after the attack: {r.text}"


def refused(r: httpx.Response, status: int = 400, param: str | None = None) -> dict[str, Any]:
    err = assert_error(r, status)
    if param is not None:
        assert err["param"] == param, err
    return err


# -- malformed JSON bodies, on every JSON route --------------------------------------------------

# Each route's valid body as a template: {S} a string, {N} a number (None: no number in it).
ROUTES: list[tuple[str, str, bytes, bytes | None]] = [
    ("embeddings", "/v1/embeddings", b'{"model":"%s","input":{S},"dimensions":{N}}'
     % EMBED_MODEL.encode(), b"384"),
    ("embeddings", "/v1/tokenize", b'{"input":[{S}]}', None),
    ("retrieval", "/v1/collections/handbook/search", b'{"query":{S},"top_k":{N}}', b"2"),
    ("retrieval", "/v1/collections/handbook/documents",
     b'{"documents":[{"id":"hostile-doc","text":{S},"metadata":{"n":{N}}}]}', b"1"),
    ("retrieval", "/v1/collections", b'{"name":{S},"metadata_fields":{"n":"integer"}}', None),
    ("feedback", "/v1/interactions",
     b'{"id":"hostile-2","question":"What is the refund policy?","answer":{S},"latency_ms":{N}}',
     b"5"),
    ("feedback", "/v1/feedback",
     b'{"interaction_id":"hostile-1","kind":"comment","value":{S},"metadata":{"n":{N}}}', b"1"),
    ("feedback", "/v1/preferences",
     b'{"interaction_id":"hostile-1","correction":{S},"metadata":{"n":{N}}}', b"1"),
    ("rag", "/v1/ask", b'{"question":{S},"top_k":{N}}', b"2"),
    ("llm-proxy", "/v1/chat/completions",
     b'{"model":"smollm2","messages":[{"role":"user","content":{S}}],"max_tokens":{N}}', b"4"),
    ("llm-proxy", "/admin/keys", b'{"name":{S},"max_budget_usd":{N}}', b"1"),
    ("local-llm", "/v1/chat/completions", b'{"model":"%s","messages":[{"role":"user","content":'
     b'{S}}],"max_tokens":{N}}' % LOCAL_MODEL.encode(), b"1"),
]  # fmt: skip
VALID_TEXT = b'"hostile-text-1"'  # also a valid collection name, for POST /v1/collections


def fill(template: bytes, s: bytes = VALID_TEXT, n: bytes | None = None) -> bytes:
    return template.replace(b"{S}", s).replace(b"{N}", n or b"1")


# (name, how to break the body, Content-Type); each must be a 400 whose message says why.
ATTACKS: list[tuple[str, Callable[[bytes, bytes | None], bytes | None], str, str]] = [
    ("deep-array", lambda t, n: b"[" * 100_000 + b"]" * 100_000, "application/json", "JSON"),
    ("deep-object", lambda t, n: b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
     "application/json", "JSON"),
    ("invalid-utf8", lambda t, n: fill(t, b'"\xff\xfe\xc3("', n), "application/json", "JSON"),
    ("lone-high-surrogate", lambda t, n: fill(t, b'"x\\ud800y"', n), "application/json", "JSON"),
    ("lone-low-surrogate", lambda t, n: fill(t, b'"\\udc00"', n), "application/json", "JSON"),
    ("nan", lambda t, n: fill(t, n=b"NaN") if n else None, "application/json", "JSON"),
    ("infinity", lambda t, n: fill(t, n=b"-Infinity") if n else None, "application/json", "JSON"),
    ("1e309", lambda t, n: fill(t, n=b"1e309") if n else None, "application/json", "JSON"),
    ("truncated", lambda t, n: fill(t, n=n)[:-1], "application/json", "JSON"),
    ("empty", lambda t, n: b"", "application/json", ""),
    ("text-plain", lambda t, n: fill(t, n=n), "text/plain", "application/json"),
    ("form", lambda t, n: fill(t, n=n), "application/x-www-form-urlencoded", "application/json"),
    ("multipart", lambda t, n: fill(t, n=n), "multipart/form-data; boundary=x", "application/json"),
]  # fmt: skip
MALFORMED = [
    pytest.param(svc, path, template, n, attack, id=f"{svc}{path}-{attack[0]}")
    for svc, path, template, n in ROUTES
    for attack in [("valid", lambda t, n: fill(t, n=n), "application/json", ""), *ATTACKS]
    if attack[1](template, n) is not None
]


@pytest.mark.parametrize(("svc", "path", "template", "n", "attack"), MALFORMED)
def test_malformed_json_is_a_clear_400(
    targets: dict[str, Target], svc: str, path: str, template: bytes, n: bytes | None, attack: Any
) -> None:
    """The "valid" row proves the template right, so each refusal is the attack's doing."""
    name, make, content_type, says = attack
    target = targets[svc]
    headers = {"content-type": content_type}
    r = send(target, "POST", path, content=make(template, n), headers=headers)
    if name == "valid":
        assert r.status_code < 300, r.text
        if path == "/v1/collections":  # created: gone again, so the next run creates it anew
            assert send(target, "DELETE", "/v1/collections/hostile-text-1").status_code == 200
    else:
        assert says in refused(r)["message"]
    still_ready(target)


# -- numbers: huge, negative, fractional, not a number --------------------------------------------

NUMBERS = [
    # service, path (a query takes {v}), body (the field holds "{v}"), param named[, values]
    ("embeddings", "/v1/embeddings", {"model": EMBED_MODEL, "input": "x", "dimensions": "{v}"},
     "dimensions"),
    ("retrieval", "/v1/collections/handbook/search", {"query": "refund", "top_k": "{v}"}, "top_k"),
    ("rag", "/v1/ask", {"question": "Can I return it?", "top_k": "{v}"}, "top_k"),
    ("feedback", "/v1/interactions?limit={v}", None, "limit"),
    ("feedback", "/v1/interactions",
     {**INTERACTION, "id": "hostile-n", "usage": {"prompt_tokens": "{v}"}}, "usage.prompt_tokens"),
    ("feedback", "/v1/feedback", {"interaction_id": "hostile-1", "kind": "rating", "value": "{v}"},
     "value"),
    ("local-llm", "/v1/chat/completions", {"model": LOCAL_MODEL, "max_tokens": "{v}",
     "messages": [{"role": "user", "content": "hi"}]}, "max_tokens"),
    ("local-llm", "/v1/chat/completions", {"model": LOCAL_MODEL, "n": "{v}", "max_tokens": 1,
     "messages": [{"role": "user", "content": "hi"}]}, "n"),
    ("llm-proxy", "/v1/chat/completions", {"model": "smollm2", "max_tokens": "{v}",
     "messages": [{"role": "user", "content": "hi"}]}, "max_tokens"),
    ("llm-proxy", "/v1/chat/completions", {"model": "smollm2", "n": "{v}",
     "messages": [{"role": "user", "content": "hi"}]}, "n"),
    ("llm-proxy", "/admin/keys", {"rpm": "{v}"}, "rpm"),
    ("llm-proxy", "/admin/keys", {"tpm": "{v}"}, "tpm"),
    ("llm-proxy", "/admin/keys", {"expires_in_s": "{v}"}, "expires_in_s", [10**12, 1e308, -1, "x"]),
]  # fmt: skip
VALUES = [10**12, -1, 0.5, "lots"]  # 1e309 and NaN: see the malformed bodies above


def _with(value: Any, obj: Any) -> Any:
    if obj == "{v}":
        return value
    if isinstance(obj, dict):
        return {k: _with(value, v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_with(value, v) for v in obj]
    return obj


@pytest.mark.parametrize(
    ("svc", "path", "body", "param", "value"),
    [pytest.param(*row[:4], v, id=f"{row[0]}{row[1].split('?')[0]}-{row[3]}={v}")
     for row in NUMBERS for v in (row[4] if len(row) > 4 else VALUES)],
)  # fmt: skip
def test_out_of_range_numbers_are_a_400_naming_the_field(
    targets: dict[str, Target], svc: str, path: str, body: Any, param: str, value: Any
) -> None:
    target = targets[svc]
    if body is None:
        r = send(target, "GET", path.format(v=value))
    else:
        r = send(target, "POST", path, body=_with(value, body))
    if svc == "llm-proxy" and path.startswith("/v1/") and value == 10**12:
        # The proxy passes what it need not read through to the upstream, which decides (this
        # fake answers); what it does read is bounded by the key: one with a tokens-per-minute
        # limit is refused before any upstream call, naming max_tokens.
        assert r.status_code == 200, r.text
        limited = send(target, "POST", "/admin/keys", body={"name": "hostile-tpm", "tpm": 1000})
        r = send(target, "POST", path, body=_with(value, body), key=limited.json()["key"])
        assert refused(r, param="max_tokens")["code"] == "tokens_exceed_limit"
    else:
        refused(r, param=param)
    still_ready(target)


# -- control characters and path traversal in names and ids ---------------------------------------

CRLF = f"\r\n{FORGED}\r\n"
TRAVERSAL = ["../../etc/passwd", "..%2F..%2Fetc%2Fpasswd", "/etc/passwd", "..\\..\\boot.ini"]
URL_TRAVERSAL = ["..%2F..%2Fetc%2Fpasswd", "%2Fetc%2Fpasswd", "..%5C..%5Cboot.ini"]
# service, method, path, body, expected status, param named (None: not checked)
NAMES: list[tuple[str, str, str, Any, int, str | None]] = [
    *[("retrieval", "POST", "/v1/collections", {"name": n}, 400, "name")
      for n in ["a\x00b", "a\x1b[31m", f"a{CRLF}", *TRAVERSAL]],
    *[("retrieval", m, f"/v1/collections/{p}", None, 404, None)
      for m in ("GET", "DELETE") for p in [*URL_TRAVERSAL, "a%00b", "a%0d%0a" + quote(FORGED)]],
    ("retrieval", "POST", "/v1/collections/..%2F..%2Ftmp/documents",
     {"documents": [{"id": "x", "text": "t"}]}, 404, None),
    ("retrieval", "POST", "/v1/collections/a%00b/search", {"query": "x"}, 404, "collection"),
    *[("retrieval", "POST", "/v1/collections/handbook/documents",
       {"documents": [{"id": i, "text": "t"}]}, 400, "documents[0].id")
      for i in ["a\x00b", f"a{CRLF}", "a\nb", "a\x1b[2J", "a\x7f"]],
    *[("feedback", "POST", "/v1/interactions", {**INTERACTION, "id": i}, 400, "id")
      for i in ["a\x00b", f"a{CRLF}", "a\x1b[2J", *TRAVERSAL]],
    ("feedback", "POST", "/v1/interactions",
     {**INTERACTION, "id": "hostile-nul", "answer": "a\x00"}, 400, "answer"),
    ("feedback", "POST", "/v1/interactions",
     {**INTERACTION, "id": "hostile-t", "created_at": "0001-01-01T00:00:00+14:00"}, 400,
     "created_at"),
    ("feedback", "POST", "/v1/feedback",
     {"interaction_id": "../../etc/passwd", "kind": "thumbs", "value": "up"}, 400,
     "interaction_id"),
    ("feedback", "POST", "/v1/feedback",
     {"interaction_id": "hostile-1", "kind": "label", "value": "l\x00"}, 400, "value"),
    ("feedback", "POST", "/v1/feedback",
     [{"interaction_id": "hostile-1", "kind": "comment", "value": "ok"},
      {"interaction_id": "hostile-1", "kind": "comment", "value": "c", "user_id": "u\x00"}],
     400, "[1].user_id"),
    ("feedback", "POST", "/v1/preferences", {"interaction_id": "hostile-1", "correction": "c\x00"},
     400, "correction"),
    *[("feedback", "GET", p, None, 400, None) for p in [
        "/v1/interactions/a%00b", "/v1/interactions?session_id=a%00b", "/v1/feedback?label=%00",
        "/v1/feedback/stats?prompt_name=a%00b", "/v1/exports/sft?model=%00"]],
    ("feedback", "GET", "/v1/interactions?since=9999-12-31T23:59:59-14:00", None, 400, "since"),
    *[("feedback", "GET", p, None, 404, None) for p in [
        *[f"/v1/interactions/{t}" for t in URL_TRAVERSAL], "/v1/exports/..%2F..%2Fetc%2Fpasswd",
        "/v1/interactions/a%0d%0a" + quote(FORGED)]],
    ("feedback", "GET", "/v1/feedback/stats?prompt_name=..%2F..%2Fetc%2Fpasswd", None, 200, None),
    *[("rag", "POST", "/v1/ask", {"question": "Can I return it?", "collection": c}, 400,
       "collection") for c in [*TRAVERSAL, "x/../../collections", "handbook?x=1", "handbook#x",
                               "handbook/search?", "a\x00b", f"a{CRLF}", ".."]],
    *[("rag", "POST", "/v1/ask", {"question": "Can I return it?", f: "u\x00"}, 400, f)
      for f in ("user_id", "session_id")],
    ("rag", "POST", "/v1/ask", {"question": "Can I\x00 return it?"}, 400, "question"),
    *[("llm-proxy", "POST", "/admin/keys", {"name": n}, 400, "name")
      for n in ["k\x00", "k\x1b[2J", f"k{CRLF}"]],
    *[("llm-proxy", m, f"/admin/keys/{k}", None, 404, None)
      for m in ("GET", "DELETE") for k in ["a%00b", *URL_TRAVERSAL, "a%0d%0a" + quote(FORGED)]],
    *[("llm-proxy", "POST", "/v1/chat/completions",
       {"model": m, "messages": [{"role": "user", "content": "hi"}]}, 404, "model")
      for m in ["../../etc/passwd", f"smollm2{CRLF}", "smollm2\x00"]],
    *[(s, "GET", f"/v1/models/{m}", None, 404, None)
      for s in ("embeddings", "local-llm", "llm-proxy")
      for m in ["a%00b", *URL_TRAVERSAL, "a%0d%0a" + quote(FORGED)]],
    *[("embeddings", "POST", "/v1/embeddings", {"model": m, "input": "x"}, 404, "model")
      for m in ["m\x00", f"m{CRLF}", "../../etc/passwd"]],
    *[("local-llm", "POST", "/v1/chat/completions",
       {"model": m, "messages": [{"role": "user", "content": "hi"}]}, 404, "model")
      for m in ["m\x00", f"m{CRLF}", "../../etc/passwd"]],
    # Control characters as text are only text: embedded and answered like any other.
    ("embeddings", "POST", "/v1/embeddings", {"model": EMBED_MODEL, "input": f"\x00\x1b[2J{CRLF}"},
     200, None),
    ("local-llm", "POST", "/v1/chat/completions", {"model": LOCAL_MODEL, "max_tokens": 1,
     "messages": [{"role": "user", "content": f"\x00\x1b[2J{CRLF}"}]}, 200, None),
    ("llm-proxy", "POST", "/v1/chat/completions",
     {"model": "smollm2", "messages": [{"role": "user", "content": f"\x00{CRLF}"}]}, 200, None),
]  # fmt: skip


def _label(row: tuple[str, str, str, Any, int, str | None]) -> str:
    svc, method, path, body, _, param = row
    return f"{svc}-{method}-{path}-{param or ''}-{repr(body)[:40]}"


@pytest.mark.parametrize(
    ("svc", "method", "path", "body", "status", "param"), NAMES, ids=[_label(r) for r in NAMES]
)
def test_control_characters_and_traversal_in_names(
    targets: dict[str, Target],
    svc: str,
    method: str,
    path: str,
    body: Any,
    status: int,
    param: str | None,
) -> None:
    target = targets[svc]
    r = send(target, method, path, body=body)
    if status < 300:
        assert r.status_code == status, r.text
    else:
        refused(r, status, param)
    still_ready(target)


def test_hostile_document_ids_are_stored_and_returned_verbatim(
    targets: dict[str, Target],
) -> None:
    """A document id is the caller's name for it, not a path: '../', absolute paths, encoded
    separators are kept as given, found, and deleted through the URL-encoded id. No file is made
    from one (see the end). Control characters are refused (above): the id is also a URL."""
    ret = targets["retrieval"]
    ids = [*TRAVERSAL, "a/../../b", "%2e%2e%2f", "sp ace/é"]
    docs = [{"id": i, "text": f"hostile identifier {n} zebra"} for n, i in enumerate(ids)]
    r = send(ret, "POST", "/v1/collections/handbook/documents", body={"documents": docs})
    assert r.status_code == 200 and r.json()["summary"]["added"] == len(ids), r.text
    r = send(ret, "POST", "/v1/collections/handbook/search",
             body={"query": "hostile identifier zebra", "top_k": 20})  # fmt: skip
    assert r.status_code == 200, r.text
    assert set(ids) <= {hit["doc_id"] for hit in r.json()["results"]}
    for i in ids:
        r = send(ret, "DELETE", f"/v1/collections/handbook/documents/{quote(i, safe='')}")
        assert r.status_code == 200 and r.json()["id"] == i, (i, r.text)
    still_ready(ret)


def test_control_characters_in_free_text_are_stored_and_returned_verbatim(
    targets: dict[str, Target],
) -> None:
    """A session id, a user id or an idempotency key with CR/LF (and a forged log line after it)
    is text: feedback stores it and returns it exactly, JSON-escaped; through rag as well."""
    fb, rag = targets["feedback"], targets["rag"]
    session = f"s{CRLF}\x1b[31m"
    iid = f"hostile-s-{time.time_ns()}"
    r = send(fb, "POST", "/v1/interactions", body={**INTERACTION, "id": iid, "session_id": session})
    assert r.status_code == 201, r.text
    got = send(fb, "GET", f"/v1/interactions/{r.json()['id']}")
    assert got.status_code == 200 and got.json()["session_id"] == session, got.text
    r = send(fb, "POST", "/v1/feedback", body={"interaction_id": "hostile-1", "kind": "comment",
             "value": CRLF, "idempotency_key": f"k{CRLF}{time.time_ns()}"})  # fmt: skip
    assert r.status_code == 201, r.text

    r = send(rag, "POST", "/v1/ask", body={"question": "Can I return it?", "session_id": session})
    assert r.status_code == 200, r.text
    iid = r.json()["interaction_id"]
    deadline = time.monotonic() + 60
    while (got := send(fb, "GET", f"/v1/interactions/{iid}")).status_code == 404:
        assert time.monotonic() < deadline, "the interaction never reached the feedback service"
        time.sleep(0.1)
    assert got.status_code == 200 and got.json()["session_id"] == session, got.text
    still_ready(rag)


# -- bodies over the limit -----------------------------------------------------------------------

OVERSIZED = {
    "embeddings": "/v1/embeddings",
    "retrieval": "/v1/collections/handbook/documents",
    "feedback": "/v1/interactions",
    "rag": "/v1/ask",
    "llm-proxy": "/v1/chat/completions",
    "local-llm": "/v1/chat/completions",
}


def raw_http(url: str, request: bytes) -> httpx.Response:
    """Bytes on a socket (what httpx will not send), the answer parsed into a Response."""
    parsed = httpx.URL(url)
    with socket.create_connection((parsed.host, parsed.port), timeout=30) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = [tuple(line.split(": ", 1)) for line in lines if ": " in line]
    return httpx.Response(int(status_line.split()[1]), headers=headers, content=body)


@pytest.mark.parametrize("svc", SERVICES)
def test_body_over_the_limit_is_413_and_the_service_stays_ready(
    targets: dict[str, Target], svc: str
) -> None:
    """Declared (Content-Length over the limit: refused before a byte is read) and streamed
    (chunked, no length: refused once the limit is passed)."""
    target, path, limit = targets[svc], OVERSIZED[svc], LIMITS[svc]
    declared = raw_http(target.url, (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {target.key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {limit + 1}\r\n"
        "Connection: close\r\n\r\n{"
    ).encode())  # fmt: skip
    count(svc, declared)
    assert str(limit) in refused(declared, 413)["message"]

    def chunks() -> Iterator[bytes]:
        yield b'{"input": "'
        sent, piece = 11, b"x" * (1 << 20)
        while sent <= limit:
            yield piece
            sent += len(piece)

    r = send(target, "POST", path, content=chunks(), headers={"content-type": "application/json"})
    assert refused(r, 413)["code"] == "request_too_large"
    still_ready(target)


# -- headers -------------------------------------------------------------------------------------

HEADER_PATHS = {
    "embeddings": "/v1/models",
    "retrieval": "/v1/collections",
    "feedback": "/v1/interactions?limit=1",
    "rag": "/v1/ask",
    "llm-proxy": "/v1/models",
    "local-llm": "/v1/models",
}


@pytest.mark.parametrize("svc", SERVICES)
def test_control_characters_in_a_request_id_never_forge_a_log_line(
    targets: dict[str, Target], svc: str
) -> None:
    """A raw CR, LF, ESC or NUL in a header is refused by uvicorn's parser (its own plain-text
    400: the app never sees it); an id that is not [A-Za-z0-9._:-]{1,128} (percent-encoded CRLF,
    over-long) is replaced by a random one, so it never reaches a log line or an answer."""
    target, path = targets[svc], HEADER_PATHS[svc]
    forged = FORGED.encode()

    def request(rid: bytes) -> httpx.Response:
        r = raw_http(target.url, (
            f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {target.key}\r\n".encode()
            + b"X-Request-Id: " + rid + b"\r\nConnection: close\r\n\r\n"
        ))  # fmt: skip
        count(svc, r)
        return r

    for rid in [b"id\r\n" + forged, b"id\n" + forged, b"id\r" + forged, b"id\x1b[2J", b"id\x00"]:
        r = request(rid)
        assert r.status_code == 400 and b"Invalid HTTP request" in r.content, r.content
    for rid in [b"id%0d%0a" + quote(FORGED).encode(), b"x" * 129, b"id;drop", b"\xc3\xa9t\xc3\xa9"]:
        r = request(rid)
        assert r.status_code < 500, r.text
        assert len(r.headers["x-request-id"]) == 32 and r.headers["x-request-id"] != rid.decode(
            "latin-1"
        )
    still_ready(target)


# -- afterwards ----------------------------------------------------------------------------------


@pytest.mark.parametrize("svc", SERVICES)
def test_no_forged_line_in_the_service_log(targets: dict[str, Target], svc: str) -> None:
    """Every CR/LF above carried a forged JSON log line: wherever it reached a log (an access
    line's path, an error's message), it sits escaped inside a genuine JSON line."""
    lines = targets[svc].proc.logs().splitlines()
    hits = [line for line in lines if "FORGED-LOG-LINE" in line]
    for line in hits:
        assert line.startswith("{") and not line.startswith(FORGED), line
        assert orjson.loads(line)["msg"] != "FORGED-LOG-LINE", line


def test_nothing_created_outside_the_data_dirs(targets: dict[str, Target]) -> None:
    """'../', absolute paths and encoded separators in names made no file anywhere: the test's
    directory holds only the services' own data, and no name from the attacks."""
    root = targets["retrieval"].data_dirs[0].parent
    owned = [d for t in targets.values() for d in t.data_dirs]
    for path in root.rglob("*"):
        assert path.name.lower() not in {"passwd", "boot.ini", "etc", "tmp"}, path
        inside = any(path == d or d in path.parents for d in owned)
        assert inside or path.parent == root, path  # the logs and the routing file of the test
    collections = {p.name for p in (root / "qdrant" / "collection").iterdir()}
    assert collections == {"handbook"}, collections
