"""The API on both stores: SQLite (the default) and the real PostgreSQL."""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest

from tests.conftest import API_KEY_HASH, ServiceProcess, assert_error, metric, scrape
from tests.feedback.conftest import client, interaction


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def svc(
    request: pytest.FixtureRequest, service_factory: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    tmp = tmp_path_factory.mktemp(f"feedback-{request.param}")
    if request.param == "sqlite":
        url = f"sqlite:///{tmp / 'feedback.db'}"
        yield from _started(service_factory, url, tmp)
    else:
        pg_url = request.getfixturevalue("pg_url")
        yield from _started(service_factory, pg_url, tmp)


def _started(service_factory: Any, url: str, tmp: Any) -> Iterator[ServiceProcess]:
    proc: ServiceProcess = service_factory(
        "feedback",
        ENV="dev",
        FEEDBACK_API_KEY_HASHES=API_KEY_HASH,
        FEEDBACK_DATABASE_URL=url,
        FEEDBACK_SPOOL_DIR=str(tmp / "spool"),
        FEEDBACK_MAX_BODY_BYTES="200000",
    )
    proc.wait_ready(60)
    yield proc


@pytest.fixture
def api(svc: ServiceProcess) -> Iterator[httpx.Client]:
    with client(svc) as c:
        yield c


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


# -- idempotent writes --------------------------------------------------------------------------


def test_interaction_replay_returns_the_original_and_a_changed_body_is_a_conflict(
    api: httpx.Client,
) -> None:
    body = interaction(uid("replay"))
    first = api.post("/v1/interactions", json=body)
    assert first.status_code == 201, first.text
    assert first.json()["id"] == body["id"]
    # Without a trace id, it is Langfuse's create_trace_id(seed=id): sha256(id)[:16] as hex.
    import hashlib

    assert first.json()["trace_id"] == hashlib.sha256(body["id"].encode()).digest()[:16].hex()
    again = api.post("/v1/interactions", json=body)
    assert again.status_code == 200
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()
    changed = api.post("/v1/interactions", json={**body, "answer": "Something else."})
    err = assert_error(changed, 409, "idempotency_conflict")
    assert err["param"] == "id"
    listed = api.get("/v1/interactions", params={"prompt_name": "rag-qa", "limit": 1000}).json()
    assert [i["id"] for i in listed["data"]].count(body["id"]) == 1
    stored = api.get(f"/v1/interactions/{body['id']}").json()
    assert stored["answer"] == body["answer"] and stored["usage"]["prompt_tokens"] == 10


def test_feedback_replays_by_idempotency_key_and_batches_are_all_or_nothing(
    api: httpx.Client,
) -> None:
    iid = uid("fb")
    assert api.post("/v1/interactions", json=interaction(iid)).status_code == 201
    key = uid("key")
    one = {"interaction_id": iid, "kind": "thumbs", "value": "up", "idempotency_key": key}
    first = api.post("/v1/feedback", json=one)
    assert first.status_code == 201, first.text
    again = api.post("/v1/feedback", json=one)
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    assert_error(
        api.post("/v1/feedback", json={**one, "value": "down"}), 409, "idempotency_conflict"
    )

    batch = [
        {"interaction_id": iid, "kind": "rating", "value": 4, "idempotency_key": uid("b")},
        {"interaction_id": iid, "kind": "label", "value": "hallucination"},
        {"interaction_id": "no-such-interaction", "kind": "thumbs", "value": "down"},
    ]
    err = assert_error(api.post("/v1/feedback", json=batch), 404, "interaction_not_found")
    assert err["param"] == "[2].interaction_id"
    assert api.get("/v1/feedback", params={"interaction_id": iid}).json()["data"] == [
        api.get("/v1/feedback", params={"interaction_id": iid}).json()["data"][0]
    ]  # only the thumbs: nothing of the refused batch was written
    ok = api.post("/v1/feedback", json=batch[:2])
    assert ok.status_code == 201
    assert [d["kind"] for d in ok.json()["data"]] == ["rating", "label"]
    replay = api.post("/v1/feedback", json=batch[:1])
    assert replay.status_code == 200
    assert replay.json()["data"][0]["id"] == ok.json()["data"][0]["id"]
    kinds = sorted(f["kind"] for f in api.get(f"/v1/interactions/{iid}").json()["feedback"])
    assert kinds == ["label", "rating", "thumbs"]


def test_preferences_pairs_corrections_and_their_errors(api: httpx.Client) -> None:
    prompt = [{"role": "user", "content": "Best colour?"}]
    a, b, c = uid("pa"), uid("pb"), uid("pc")
    for iid, answer in ((a, "Blue."), (b, "I refuse.")):
        api.post("/v1/interactions", json=interaction(iid, messages=prompt, answer=answer))
    api.post("/v1/interactions", json=interaction(c))  # another prompt
    key = uid("pref")
    pair = {"chosen_interaction_id": a, "rejected_interaction_id": b, "idempotency_key": key}
    first = api.post("/v1/preferences", json=pair)
    assert first.status_code == 201, first.text
    assert first.json()["source"] == "pair"
    assert api.post("/v1/preferences", json=pair).json()["id"] == first.json()["id"]
    err = assert_error(
        api.post(
            "/v1/preferences", json={"chosen_interaction_id": a, "rejected_interaction_id": c}
        ),
        400,
        "prompt_mismatch",
    )
    assert "same prompt" in err["message"]
    assert_error(
        api.post(
            "/v1/preferences", json={"chosen_interaction_id": a, "rejected_interaction_id": "ghost"}
        ),
        404,
        "interaction_not_found",
    )
    assert_error(api.post("/v1/preferences", json={"chosen_interaction_id": a}), 400)
    corr = api.post("/v1/preferences", json={"interaction_id": b, "correction": "Green."})
    assert corr.status_code == 201 and corr.json()["source"] == "correction"
    listed = api.get("/v1/preferences", params={"limit": 1000}).json()["data"]
    mine = {p["id"]: p for p in listed}
    assert mine[first.json()["id"]]["chosen"] == "Blue."
    assert mine[first.json()["id"]]["rejected"] == "I refuse."
    assert mine[corr.json()["id"]]["chosen"] == "Green."
    assert mine[corr.json()["id"]]["rejected"] == "I refuse."


# -- bad input ----------------------------------------------------------------------------------


def test_time_filters_take_iso_8601_not_numbers(api: httpx.Client) -> None:
    """Found by Schemathesis: ?until=0.5 was read as 0.5 s after the epoch."""
    for path in ("/v1/feedback/stats", "/v1/feedback", "/v1/interactions"):
        for value in ("0.5", "1700000000", "-3", "1e9"):
            err = assert_error(api.get(path, params={"until": value}), 400, "invalid_value")
            assert "ISO 8601" in err["message"] and err["param"] == "until", err
    r = api.get("/v1/feedback/stats", params={"since": "2026-11-01", "until": "2026-11-02T00:00Z"})
    assert r.status_code == 200, r.text


def test_bad_input_gets_clear_4xx_errors(api: httpx.Client) -> None:
    iid = uid("bad")
    api.post("/v1/interactions", json=interaction(iid))
    fb = {"interaction_id": iid, "kind": "rating", "value": 6}
    err = assert_error(api.post("/v1/feedback", json=fb), 400, "invalid_value")
    assert "1 to 5" in err["message"] and err["param"] == "value"
    assert_error(api.post("/v1/feedback", json={**fb, "value": 3.5}), 400, "invalid_value")
    assert_error(api.post("/v1/feedback", json={**fb, "value": True}), 400, "invalid_value")
    err = assert_error(api.post("/v1/feedback", json={**fb, "kind": "stars"}), 400, "unknown_kind")
    assert "thumbs, rating, label, comment, correction" in err["message"]
    assert_error(api.post("/v1/feedback", json={**fb, "kind": "thumbs", "value": "meh"}), 400)
    assert_error(api.post("/v1/feedback", json={**fb, "kind": "label", "value": ""}), 400)
    err = assert_error(
        api.post("/v1/feedback", json={"interaction_id": "nope", "kind": "thumbs", "value": "up"}),
        404,
        "interaction_not_found",
    )
    assert "POST /v1/interactions" in err["message"]
    err = assert_error(api.post("/v1/feedback", json=[fb] * 1001), 413, "batch_too_large")
    err = assert_error(
        api.post("/v1/interactions", json=interaction(uid("big"), answer="x" * 300_000)), 413
    )
    assert_error(
        api.post(
            "/v1/interactions", content=b"{not json", headers={"content-type": "application/json"}
        ),
        400,
        "invalid_json",
    )
    err = assert_error(api.post("/v1/interactions", json={"id": uid("n"), "answer": "a"}), 400)
    assert "messages" in err["message"] and "question" in err["message"]
    err = assert_error(
        api.post("/v1/interactions", json={**interaction(uid("t")), "anwser": 1}), 400
    )
    assert err["param"] == "anwser"
    assert_error(api.post("/v1/interactions", json=interaction("bad id/with slash")), 400)
    assert_error(api.post("/v1/interactions", json=interaction(uid("e"), environment="Prod!")), 400)
    assert_error(api.get("/v1/feedback", params={"kind": "stars"}), 400, "unknown_kind")
    assert_error(api.get("/v1/interactions", params={"cursor": "garbage"}), 400, "invalid_cursor")
    assert_error(api.get("/v1/feedback/stats", params={"group_by": "weekday"}), 400)
    assert_error(api.get("/v1/exports/csv"), 404, "unknown_format")
    assert_error(api.get("/v1/interactions/never-recorded"), 404, "interaction_not_found")
    assert_error(httpx.post(f"{api.base_url}/v1/interactions", json=interaction(uid("x"))), 401)


# -- listing, stats, exports --------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus(svc: ServiceProcess) -> dict[str, Any]:
    """A known set: 2 prompt versions x 2 models over 3 days, with feedback written to match."""
    tag = uid("corpus")
    base = datetime(2026, 3, 1, 10, tzinfo=UTC)
    items: list[dict[str, Any]] = []
    feedback: list[dict[str, Any]] = []
    for n in range(30):
        version = "v1" if n % 2 else "v2"
        model = "small" if n % 3 else "large"
        created = base + timedelta(days=n % 3, minutes=n)
        iid = f"{tag}-{n:02d}"
        items.append(
            interaction(
                iid,
                prompt_name=tag,
                prompt_version=version,
                model=model,
                created_at=created.isoformat(),
                session_id=f"s{n % 4}",
            )
        )
        if n % 5 != 4:
            feedback.append(
                {
                    "interaction_id": iid,
                    "kind": "thumbs",
                    "user_id": "u1",
                    "value": "up" if n % 4 else "down",
                }
            )
        if n % 3 == 0:
            feedback.append(
                {"interaction_id": iid, "kind": "rating", "user_id": "u2", "value": 1 + n % 5}
            )
        if n % 7 == 0:
            feedback.append({"interaction_id": iid, "kind": "label", "value": "off-topic"})
        if n == 5:
            # u1 changes their mind on #5: only the latest thumbs counts in stats and exports.
            feedback.append(
                {
                    "interaction_id": iid,
                    "kind": "thumbs",
                    "user_id": "u1",
                    "value": "down",
                    "created_at": (created + timedelta(hours=1)).isoformat(),
                }
            )
        if n == 6:
            feedback.append({"interaction_id": iid, "kind": "correction", "value": "Better 6."})
    for f in feedback:  # feedback comes a minute after its answer (the change of mind: later)
        f.setdefault(
            "created_at",
            (
                datetime.fromisoformat(items[int(f["interaction_id"][-2:])]["created_at"])
                + timedelta(minutes=1)
            ).isoformat(),
        )
    with client(svc) as api:
        for item in items:
            assert api.post("/v1/interactions", json=item).status_code == 201
        r = api.post("/v1/feedback", json=feedback)
        assert r.status_code == 201, r.text
    return {"tag": tag, "items": items, "feedback": feedback, "base": base}


def test_listing_filters_and_cursor_paging(api: httpx.Client, corpus: dict[str, Any]) -> None:
    tag = corpus["tag"]
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"prompt_name": tag, "limit": 7}
        if cursor:
            params["cursor"] = cursor
        page = api.get("/v1/interactions", params=params).json()
        seen += [i["id"] for i in page["data"]]
        pages += 1
        cursor = page["next_cursor"]
        if not page["has_more"]:
            assert cursor is None
            break
    assert pages == 5 and len(seen) == 30 and len(set(seen)) == 30
    created = [i["created_at"] for i in corpus["items"]]
    assert seen == [
        f"{tag}-{n:02d}" for n in sorted(range(30), key=lambda n: created[n], reverse=True)
    ]

    def ids(**params: Any) -> set[str]:
        data = api.get("/v1/interactions", params={"prompt_name": tag, "limit": 1000, **params})
        assert data.status_code == 200, data.text
        return {i["id"] for i in data.json()["data"]}

    def expect(pred: Any) -> set[str]:
        return {i["id"] for i in corpus["items"] if pred(i)}

    assert ids(prompt_version="v1") == expect(lambda i: i["prompt_version"] == "v1")
    assert ids(model="large", prompt_version="v2") == expect(
        lambda i: i["model"] == "large" and i["prompt_version"] == "v2"
    )
    day2 = corpus["base"] + timedelta(days=1)
    assert ids(since=day2.isoformat(), until=(day2 + timedelta(days=1)).isoformat()) == expect(
        lambda i: datetime.fromisoformat(i["created_at"]).date() == day2.date()
    )
    rated = {
        f["interaction_id"] for f in corpus["feedback"] if f["kind"] == "rating" and f["value"] == 4
    }
    assert ids(rating=4) == rated and rated
    labelled = {f["interaction_id"] for f in corpus["feedback"] if f["kind"] == "label"}
    assert ids(label="off-topic") == labelled
    assert ids(session_id="s1") == expect(lambda i: i["session_id"] == "s1")

    fb = api.get("/v1/feedback", params={"prompt_name": tag, "kind": "thumbs", "limit": 1000})
    assert len(fb.json()["data"]) == sum(f["kind"] == "thumbs" for f in corpus["feedback"])
    fb_pages: list[str] = []
    cursor = None
    while True:
        params = {"prompt_name": tag, "limit": 4, **({"cursor": cursor} if cursor else {})}
        page = api.get("/v1/feedback", params=params).json()
        fb_pages += [f["id"] for f in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(fb_pages) == len(set(fb_pages)) == len(corpus["feedback"])


def wilson(k: int, n: int) -> tuple[float, float]:
    """By hand, from the formula (z = 1.96)."""
    z = 1.96
    p = k / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre - spread) / (1 + z * z / n), (centre + spread) / (1 + z * z / n)


def test_stats_match_a_hand_computation(api: httpx.Client, corpus: dict[str, Any]) -> None:
    tag = corpus["tag"]
    r = api.get(
        "/v1/feedback/stats", params={"prompt_name": tag, "group_by": "prompt_version,model"}
    )
    assert r.status_code == 200, r.text
    got = {(g["prompt_version"], g["model"]): g for g in r.json()["data"]}
    # Expected: each user's latest thumbs and latest rating per interaction.
    items = {i["id"]: i for i in corpus["items"]}
    latest: dict[tuple[str, str, str], dict[str, Any]] = {}
    for f in corpus["feedback"]:  # written in order; the #5 change of mind is later in time
        if f["kind"] in ("thumbs", "rating"):
            latest[(f["interaction_id"], f.get("user_id") or "", f["kind"])] = f
    expected: dict[tuple[str, str], list[int]] = {}
    for (iid, _, kind), f in latest.items():
        item = items[iid]
        positive = f["value"] == "up" if kind == "thumbs" else f["value"] >= 4
        bucket = expected.setdefault((item["prompt_version"], item["model"]), [0, 0])
        bucket[0] += int(positive)
        bucket[1] += 1
    assert set(got) == set(expected)
    for key, (k, n) in expected.items():
        g = got[key]
        assert (g["positive"], g["signals"]) == (k, n), key
        assert g["positive_rate"] == pytest.approx(k / n)
        low, high = wilson(k, n)
        assert g["ci95"] == [pytest.approx(low, abs=1e-4), pytest.approx(high, abs=1e-4)]
        assert g["interactions"] == sum(
            1 for i in corpus["items"] if (i["prompt_version"], i["model"]) == key
        )
    by_day = api.get("/v1/feedback/stats", params={"prompt_name": tag, "group_by": "day"}).json()
    assert [g["day"] for g in by_day["data"]] == ["2026-03-01", "2026-03-02", "2026-03-03"]
    assert sum(g["interactions"] for g in by_day["data"]) == 30


def _export(api: httpx.Client, fmt: str, **params: Any) -> list[dict[str, Any]]:
    r = api.get(f"/v1/exports/{fmt}", params=params)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/x-ndjson")
    return [orjson.loads(line) for line in r.text.splitlines() if line]


def _is_conversation(messages: Any, last_role: str | None = None) -> bool:
    ok = isinstance(messages, list) and all(
        isinstance(m, dict)
        and m.get("role") in ("system", "user", "assistant")
        and isinstance(m.get("content"), str)
        for m in messages
    )
    return ok and (last_role is None or messages[-1]["role"] == last_role)


def test_exports_have_trl_columns_and_follow_the_feedback(
    api: httpx.Client, corpus: dict[str, Any]
) -> None:
    tag = corpus["tag"]
    items = {i["id"]: i for i in corpus["items"]}
    sft = _export(api, "sft", prompt_name=tag)
    kto = _export(api, "kto", prompt_name=tag)
    # TRL: SFT "conversational language modeling" is {"messages": [...]};
    # KTO "unpaired preference" is {"prompt", "completion", "label"}.
    assert sft and all(set(row) == {"messages"} for row in sft)
    assert all(_is_conversation(row["messages"], "assistant") for row in sft)
    assert kto and all(set(row) == {"prompt", "completion", "label"} for row in kto)
    assert all(
        _is_conversation(r["prompt"], "user")
        and _is_conversation(r["completion"])
        and isinstance(r["label"], bool)
        for r in kto
    )

    # SFT: liked by everyone who voted (latest votes), or corrected (the correction replaces).
    answers = {row["messages"][-1]["content"] for row in sft}

    def ans(n: int) -> str:
        return f"Answer {tag}-{n:02d}."

    assert "Better 6." in answers and ans(6) not in answers
    assert ans(5) not in answers  # u1 changed their mind to a thumbs-down
    assert ans(0) not in answers  # thumbs down
    assert ans(1) in answers  # thumbs up, no rating
    assert ans(4) not in answers  # no thumbs (n % 5 == 4), no rating: no signal
    # KTO: one row per latest signal, plus the correction as a desirable completion.
    latest = {}
    for f in corpus["feedback"]:
        if f["kind"] in ("thumbs", "rating"):
            latest[(f["interaction_id"], f.get("user_id"), f["kind"])] = f
    assert len(kto) == len(latest) + 1
    five = [r for r in kto if r["completion"][0]["content"] == ans(5)]
    assert [r["label"] for r in five] == [False]
    assert {
        "prompt": items[f"{tag}-06"]["messages"],
        "completion": [{"role": "assistant", "content": "Better 6."}],
        "label": True,
    } in kto
    # Filters apply to exports too.
    v1 = _export(api, "kto", prompt_name=tag, prompt_version="v1")
    assert 0 < len(v1) < len(kto)

    dpo = _export(api, "dpo", prompt_name=tag)
    # TRL: DPO "preference" is {"prompt", "chosen", "rejected"}; the correction made a pair.
    assert dpo == [
        {
            "prompt": items[f"{tag}-06"]["messages"],
            "chosen": [{"role": "assistant", "content": "Better 6."}],
            "rejected": [{"role": "assistant", "content": ans(6)}],
        }
    ]


def test_metrics_count_writes_by_kind_value_version_and_model(
    svc: ServiceProcess, corpus: dict[str, Any]
) -> None:
    text = scrape(svc)
    thumbs_up = sum(
        1
        for f in corpus["feedback"]
        if f["kind"] == "thumbs"
        and f["value"] == "up"
        and corpus["items"][int(f["interaction_id"][-2:])]["model"] == "large"
        and corpus["items"][int(f["interaction_id"][-2:])]["prompt_version"] == "v2"
    )
    got = metric(
        text, "llmops_feedback_total", kind="thumbs", value="up", model="large", prompt_version="v2"
    )
    assert got >= thumbs_up > 0
    assert metric(text, "llmops_feedback_interactions_total", model="small") >= 20
    assert metric(text, "llmops_feedback_total", kind="rating", value="4") >= 1
    assert metric(text, "llmops_feedback_spool_depth") == 0
    assert metric(text, "llmops_feedback_write_mode", mode="direct") == 1
    ready = httpx.get(f"{svc.url}/readyz").json()
    assert ready["status"] == "ready" and ready["write_mode"] == "direct"
