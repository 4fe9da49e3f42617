"""Found by tests/security/test_hostile_input.py: a lone surrogate in a query or a document's
text was a 500 (the embeddings client could not encode it), and a document whose id held a line
break could be written but never deleted (the DELETE route cannot match it)."""

from __future__ import annotations

from urllib.parse import quote

import httpx
import pytest

from tests.conftest import assert_error
from tests.retrieval.conftest import make_collection


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("search", b'{"query": "refunds \\ud800"}'),
        ("documents", b'{"documents": [{"id": "d", "text": "x \\udc00 y"}]}'),
    ],
)
def test_lone_surrogate_is_a_400(api: httpx.Client, path: str, body: bytes) -> None:
    make_collection(api, f"surrogate-{path}")
    r = api.post(
        f"/v1/collections/surrogate-{path}/{path}",
        content=body,
        headers={"content-type": "application/json"},
    )
    assert "not valid JSON" in assert_error(r, 400)["message"]


@pytest.mark.parametrize("doc_id", ["a\nb", "a\r\nb", "a\x00b", "a\x1b[2J", "a\x7f"])
def test_control_characters_in_a_document_id_are_a_400(api: httpx.Client, doc_id: str) -> None:
    body = {"documents": [{"id": doc_id, "text": "t"}]}
    r = api.post("/v1/collections/any/documents", json=body)  # refused before it is looked up
    assert assert_error(r, 400)["param"] == "documents[0].id"


def test_a_document_id_with_dots_and_slashes_is_deleted_by_its_url(api: httpx.Client) -> None:
    make_collection(api, "dotted-ids")
    ids = ["../../etc/passwd", "/abs/path", "a/../b", "%2e%2e%2f"]
    r = api.post(
        "/v1/collections/dotted-ids/documents",
        json={"documents": [{"id": i, "text": f"text {n}"} for n, i in enumerate(ids)]},
    )
    assert r.status_code == 200 and r.json()["summary"]["added"] == len(ids), r.text
    for i in ids:
        r = api.delete(f"/v1/collections/dotted-ids/documents/{quote(i, safe='')}")
        assert r.status_code == 200 and r.json()["id"] == i, r.text
