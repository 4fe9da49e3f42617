"""Values that PostgreSQL refuses or Python cannot convert, found by
tests/security/test_hostile_input.py. Each was a 500, or a 400 that came from the database only,
which while the database is down meant a 202 (spooled) and then a dead letter: an acknowledged
write lost. All are refused at acceptance now, naming the field."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.conftest import API_KEY_HASH, ServiceProcess, assert_error, free_port
from tests.feedback.conftest import client, interaction


def _start(service_factory: Any, database_url: str, spool: Path) -> ServiceProcess:
    proc: ServiceProcess = service_factory(
        "feedback",
        ENV="dev",
        FEEDBACK_API_KEY_HASHES=API_KEY_HASH,
        FEEDBACK_DATABASE_URL=database_url,
        FEEDBACK_SPOOL_DIR=str(spool),
        FEEDBACK_DB_CONNECT_TIMEOUT_S="1",
    )
    return proc.wait_ready(60)


@pytest.fixture(scope="module")
def svc(
    service_factory: Any, pg_url: str, tmp_path_factory: pytest.TempPathFactory
) -> ServiceProcess:
    return _start(service_factory, pg_url, tmp_path_factory.mktemp("hostile-spool"))


@pytest.fixture(scope="module")
def spooling(service_factory: Any, tmp_path_factory: pytest.TempPathFactory) -> ServiceProcess:
    """No database at all (nothing listens there): every write goes to the spool, 202."""
    nowhere = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/none"
    return _start(service_factory, nowhere, tmp_path_factory.mktemp("hostile-spool-down"))


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/interactions", interaction("nul-1", answer="a\x00b"), "answer"),
        ("/v1/interactions", interaction("nul-2", session_id="s\x00"), "session_id"),
        ("/v1/feedback", {"interaction_id": "i", "kind": "label", "value": "x\x00"}, "value"),
        (
            "/v1/feedback",
            [
                {"interaction_id": "i", "kind": "thumbs", "value": "up"},
                {"interaction_id": "i", "kind": "thumbs", "value": "up", "user_id": "\x00"},
            ],
            "[1].user_id",
        ),
        ("/v1/preferences", {"interaction_id": "i", "correction": "c\x00"}, "correction"),
        (
            "/v1/interactions",
            interaction("big-tokens", usage={"prompt_tokens": 2**31}),
            "usage.prompt_tokens",
        ),
        (
            "/v1/interactions",
            interaction("far-date", created_at="9999-12-31T23:59:59-14:00"),
            "created_at",
        ),
        (
            "/v1/feedback",
            {
                "interaction_id": "i",
                "kind": "thumbs",
                "value": "up",
                "created_at": "0001-01-01T00:00:00+14:00",
            },
            "created_at",
        ),
    ],
    ids=["answer", "session", "value", "batch", "correction", "int4", "year-10000", "year-0"],
)
def test_refused_at_acceptance_even_while_spooling(
    svc: ServiceProcess, spooling: ServiceProcess, path: str, body: object, param: str
) -> None:
    with client(svc) as api:
        assert assert_error(api.post(path, json=body), 400)["param"] == param
    with client(spooling) as api:
        r = api.post("/v1/interactions", json=interaction(f"spooled-{uuid.uuid4().hex}"))
        assert r.status_code == 202, r.text  # the database is down: this one waits in the spool
        assert assert_error(api.post(path, json=body), 400)["param"] == param


@pytest.mark.parametrize(
    "query",
    [
        "/v1/interactions/a%00b",
        "/v1/interactions?session_id=a%00b",
        "/v1/feedback?interaction_id=%00",
        "/v1/feedback/stats?prompt_name=a%00b",
        "/v1/interactions?since=9999-12-31T23:59:59-14:00",
        "/v1/feedback?until=0001-01-01T00:00:00%2B14:00",
    ],
)
def test_a_read_with_a_nul_or_a_date_out_of_range_is_a_400(svc: ServiceProcess, query: str) -> None:
    """Each was a 500 (the driver's DataError, or an OverflowError in the UTC conversion)."""
    with client(svc) as api:
        assert_error(api.get(query), 400)


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"],
)
def test_a_json_body_sent_as_another_type_is_a_400(svc: ServiceProcess, content_type: str) -> None:
    """The fast routes read any body as JSON; every other route refuses these types (400)."""
    with client(svc) as api:
        for path in ("/v1/interactions", "/v1/feedback", "/v1/preferences"):
            r = api.post(
                path,
                content=orjson.dumps(interaction("typed")),
                headers={"content-type": content_type},
            )
            assert assert_error(r, 400, "invalid_content_type")
