"""PII redaction of dataset exports: FEEDBACK_EXPORT_REDACT_PII sets the default (off unless
configured), ``?redact_pii=true|false`` decides for one export."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from services.feedback.config import FeedbackSettings
from tests.conftest import API_KEY_HASH, ServiceProcess, assert_error
from tests.feedback.conftest import client, interaction

EMAIL = "jane.doe@example.com"
PHONE = "+44 20 7946 0958"
CARD = "4111 1111 1111 1111"


@pytest.fixture(scope="module")
def svc(service_factory: Any, tmp_path_factory: pytest.TempPathFactory) -> ServiceProcess:
    """One SQLite feedback service whose exports are redacted by default."""
    tmp = tmp_path_factory.mktemp("feedback-redact")
    proc: ServiceProcess = service_factory(
        "feedback",
        ENV="dev",
        FEEDBACK_API_KEY_HASHES=API_KEY_HASH,
        FEEDBACK_DATABASE_URL=f"sqlite:///{tmp / 'feedback.db'}",
        FEEDBACK_SPOOL_DIR=str(tmp / "spool"),
        FEEDBACK_EXPORT_REDACT_PII="true",
    )
    return proc.wait_ready(60)


@pytest.fixture(scope="module")
def api(svc: ServiceProcess) -> Iterator[httpx.Client]:
    with client(svc) as c:
        yield c


@pytest.fixture(scope="module")
def tag(api: httpx.Client) -> str:
    """Two answers to one prompt carrying PII, liked, corrected and paired."""
    tag = f"redact-{uuid.uuid4().hex[:8]}"
    prompt = [
        {"role": "system", "content": "Answer from the context."},
        {"role": "user", "content": f"I am {EMAIL}, call me on {PHONE}. Is my card ok?"},
    ]
    a, b = f"{tag}-a", f"{tag}-b"
    for iid, answer in ((a, f"Yes, card {CARD} is active."), (b, "I cannot say.")):
        body = interaction(iid, messages=prompt, answer=answer, prompt_name=tag)
        assert api.post("/v1/interactions", json=body).status_code == 201
    feedback = [
        {"interaction_id": a, "kind": "thumbs", "value": "up", "user_id": "u1"},
        {"interaction_id": b, "kind": "correction", "value": f"Write to {EMAIL} for help."},
    ]
    assert api.post("/v1/feedback", json=feedback).status_code == 201
    pair = {"chosen_interaction_id": a, "rejected_interaction_id": b}
    assert api.post("/v1/preferences", json=pair).status_code == 201
    return tag


def export(api: httpx.Client, fmt: str, tag: str, **params: Any) -> tuple[str, list[Any]]:
    r = api.get(f"/v1/exports/{fmt}", params={"prompt_name": tag, **params})
    assert r.status_code == 200, r.text
    return r.headers["x-pii-redacted"], [orjson.loads(x) for x in r.text.splitlines() if x]


@pytest.mark.parametrize("fmt", ["sft", "kto", "dpo"])
def test_redacted_by_the_setting_and_raw_on_request(api: httpx.Client, tag: str, fmt: str) -> None:
    flag, rows = export(api, fmt, tag)
    assert flag == "true" and rows
    text = orjson.dumps(rows).decode()
    assert EMAIL not in text and PHONE not in text and CARD not in text
    assert "I am [EMAIL], call me on [PHONE]. Is my card ok?" in text
    assert "Yes, card [CREDIT_CARD] is active." in text
    assert "Write to [EMAIL] for help." in text  # the correction
    # Only the text changed: the columns, roles and labels are TRL's as before.
    flag, raw = export(api, fmt, tag, redact_pii="false")
    assert flag == "false" and len(raw) == len(rows)
    assert EMAIL in orjson.dumps(raw).decode()
    assert redact_shape(raw) == redact_shape(rows)
    assert export(api, fmt, tag, redact_pii="true")[1] == rows


def redact_shape(rows: list[Any]) -> Any:
    """The rows with every string that may hold PII (the contents) blanked."""

    def walk(value: Any, key: str = "") -> Any:
        if isinstance(value, dict):
            return {k: walk(v, k) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v) for v in value]
        return "" if key == "content" else value

    return walk(rows)


def test_bad_flag_is_refused(api: httpx.Client) -> None:
    assert_error(api.get("/v1/exports/sft", params={"redact_pii": "maybe"}), 400)


def test_exports_are_not_redacted_unless_configured(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("FEEDBACK_EXPORT_REDACT_PII", raising=False)
    monkeypatch.setenv("ENV", "dev")
    monkeypatch.setenv("FEEDBACK_DATA_DIR", str(tmp_path))
    assert FeedbackSettings(auth_disabled=True).export_redact_pii is False
    monkeypatch.setenv("FEEDBACK_EXPORT_REDACT_PII", "true")
    assert FeedbackSettings(auth_disabled=True).export_redact_pii is True
