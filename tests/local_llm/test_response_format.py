"""response_format on the local model: constrained decoding through the real service (two short
generations), refusals of what it cannot follow, and the decoding adapter on a toy vocabulary."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import jsonschema_rs
import pytest
import torch
from openai import OpenAI

from services.local_llm.constrained import JsonConstraints, UnsupportedSchema, parser_for
from tests.conftest import API_KEY, ServiceProcess, assert_error, auth_headers

MODEL = "smollm2-135m-instruct"
PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def client(local_llm: ServiceProcess) -> Iterator[OpenAI]:
    with OpenAI(base_url=f"{local_llm.url}/v1", api_key=API_KEY, max_retries=0, timeout=120) as c:
        yield c


def test_json_schema_answer_parses_and_validates(client: OpenAI) -> None:
    res = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Describe a person named Alice who is 30."}],
        max_tokens=64,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "person", "schema": PERSON, "strict": True},
        },
    )
    choice = res.choices[0]
    assert choice.finish_reason == "stop", choice.message.content
    value = json.loads(choice.message.content or "")
    assert jsonschema_rs.validator_for(PERSON).is_valid(value), value


def test_json_object_cut_by_max_tokens_streams_a_json_prefix(client: OpenAI) -> None:
    """max_tokens still rules: the JSON may be incomplete then, and finish_reason says so."""
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "List three fruits with their colours."}],
            max_tokens=4,
            stream=True,
            response_format={"type": "json_object"},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.lstrip().startswith("{"), text
    assert chunks[-1].choices[0].finish_reason == "length"


@pytest.mark.parametrize(
    ("response_format", "param"),
    [
        ({"type": "json_schema"}, "response_format.json_schema"),
        (
            {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "strnig"}}},
            "response_format.json_schema.schema",
        ),
        ({"type": "yaml"}, None),
    ],
)
def test_formats_it_cannot_follow_are_400(
    local_llm: ServiceProcess, response_format: dict[str, Any], param: str | None
) -> None:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Hi"}],
        "response_format": response_format,
    }
    r = httpx.post(f"{local_llm.url}/v1/chat/completions", json=body, headers=auth_headers())
    err = assert_error(r, 400)
    if param is not None:
        assert err["param"] == param


# --------------------------------------------------------------------------- no model


VOCAB = ["<eos>", "{", "}", '"', "a", "b", ":", ",", " ", "0", "1", "2", '{"', '":', "ab", "[", "]"]


def test_parser_for_refuses_what_it_cannot_follow() -> None:
    parser_for(PERSON)
    with pytest.raises(UnsupportedSchema):
        parser_for({"type": "strnig"})


@pytest.mark.parametrize("seed", range(5))
def test_constrained_steps_always_yield_valid_json(seed: int) -> None:
    """Whatever the logits, the masked argmax walk ends in JSON valid for the schema."""
    schema = {
        "type": "object",
        "properties": {"a": {"type": "integer"}, "b": {"type": "array", "items": {"enum": ["ab"]}}},
        "required": ["a", "b"],
        "additionalProperties": False,
    }

    def decode(ids: list[int]) -> str:
        return "".join(VOCAB[i] for i in ids if i != 0)

    def encode(text: str) -> list[int]:
        return [VOCAB.index(text)]

    constraints = JsonConstraints(decode, encode, len(VOCAB), [0], [0])
    prompt = [4, 5]
    processor = constraints.processor(torch, schema, len(prompt))
    generator = torch.Generator().manual_seed(seed)
    ids = list(prompt)
    for _ in range(300):
        scores = torch.randn((1, len(VOCAB)), generator=generator)
        scores[0, 8] += 1  # a model that likes spaces must still finish
        token = int(processor(torch.tensor([ids]), scores).argmax())
        if token == 0:
            break
        ids.append(token)
    else:
        pytest.fail(f"no end of sequence: {decode(ids[len(prompt) :])!r}")
    value = json.loads(decode(ids[len(prompt) :]))
    assert jsonschema_rs.validator_for(schema).is_valid(value), value
    assert constraints.build_seconds is not None
