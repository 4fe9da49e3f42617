"""Admin and API input the proxy turned into a 500, found by tests/security/test_hostile_input.py,
on PostgreSQL (its INTEGER and text columns are what refused them): rpm and tpm past INTEGER, an
expires_in_s so large the date overflows (or infinite), a NUL in a key's name or in a key id,
Infinity in metadata; and chat bodies sent as text/plain or a form were taken as JSON."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.conftest import assert_error
from tests.llm_proxy.conftest import MASTER_KEY, FakeUpstream, Proxy, base_config


@pytest.fixture(scope="module")
def pg_proxy(proxy_factory: Any, fakes: dict[str, FakeUpstream], pg_database: str) -> Proxy:
    proxy: Proxy = proxy_factory(base_config(fakes), LLM_PROXY_DATABASE_URL=pg_database)
    return proxy


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"rpm": 10**12}, "rpm"),
        ({"tpm": 2**31}, "tpm"),
        ({"expires_in_s": 1e12}, "expires_in_s"),
        ({"name": "a\x00b"}, "name"),
        ({"name": "a\x1b[2Jb"}, "name"),
        ({"name": "a\r\nb"}, "name"),
    ],
)
def test_key_fields_out_of_range_are_a_400(pg_proxy: Proxy, body: Any, param: str) -> None:
    assert assert_error(pg_proxy.admin("POST", "/keys", json=body), 400)["param"] == param


@pytest.mark.parametrize(
    "body", [b'{"expires_in_s": 1e309}', b'{"metadata": {"a": Infinity}}', b'{"name": "\\ud800"}']
)
def test_non_finite_numbers_and_lone_surrogates_are_invalid_json(
    pg_proxy: Proxy, body: bytes
) -> None:
    r = pg_proxy.http.post(
        f"{pg_proxy.url}/admin/keys",
        content=body,
        headers={"Authorization": f"Bearer {MASTER_KEY}", "content-type": "application/json"},
    )
    assert "not valid JSON" in assert_error(r, 400)["message"]


@pytest.mark.parametrize("key_id", ["a%00b", "a%0d%0ab", "..%5C..%5Cboot.ini", "x" * 100])
def test_a_key_id_that_is_no_uuid_is_a_404(pg_proxy: Proxy, key_id: str) -> None:
    for method in ("GET", "DELETE"):
        assert_error(pg_proxy.admin(method, f"/keys/{key_id}"), 404, "key_not_found")


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"],
)
def test_a_chat_body_of_another_type_is_a_400(pg_proxy: Proxy, content_type: str) -> None:
    body = b'{"model": "fake", "messages": [{"role": "user", "content": "hi"}]}'
    for path in ("/v1/chat/completions", "/v1/embeddings"):
        r = httpx.post(
            f"{pg_proxy.url}{path}",
            content=body,
            headers={"Authorization": f"Bearer {MASTER_KEY}", "content-type": content_type},
        )
        assert_error(r, 400, "invalid_content_type")
    r = pg_proxy.http.post(
        f"{pg_proxy.url}/v1/chat/completions",
        content=body,
        headers={"Authorization": f"Bearer {MASTER_KEY}", "content-type": "application/json"},
    )
    assert r.status_code == 200, r.text
