"""In-process checks of structured outputs: what a request asks for, what breaks it, the repair
conversation, and streams taken apart and put back together."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from services.llm_proxy.structured import (
    OutputSpec,
    StructuredRequestError,
    chunks_from_completion,
    completion_from_chunks,
    extract_json,
    normalize,
    output_spec,
    repair_messages,
    violations,
)

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer", "minimum": 0},
        "address": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "zip": {"type": "string"}},
            "required": ["city", "zip"],
            "additionalProperties": False,
        },
        "tags": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["name", "age", "address"],
    "additionalProperties": False,
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "strict": True,
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
MESSAGES = [{"role": "user", "content": "Tell me about Ada."}]


def schema_request(schema: Any = PERSON, strict: bool = True) -> dict[str, Any]:
    fmt = {"name": "person", "schema": schema, "strict": strict}
    return {"messages": MESSAGES, "response_format": {"type": "json_schema", "json_schema": fmt}}


def spec_for(body: dict[str, Any]) -> OutputSpec:
    spec = output_spec(body)
    assert spec is not None
    return spec


def completion(content: str | None = None, **message: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": None, **message},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12},
    }


def call(name: str, arguments: str, i: int = 0) -> dict[str, Any]:
    return {
        "id": f"call_{i}",
        "type": "function",
        "function": {"name": name, "arguments": arguments},
    }


ADA = {"name": "Ada", "age": 36, "address": {"city": "London", "zip": "W1"}, "tags": ["math"]}


# --------------------------------------------------------------------------- the request


def test_nothing_to_check_without_format_or_tools() -> None:
    assert output_spec({"messages": MESSAGES}) is None
    assert output_spec({"messages": MESSAGES, "response_format": None}) is None
    assert output_spec({"messages": MESSAGES, "response_format": {"type": "text"}}) is None


def test_spec_of_each_kind() -> None:
    spec = spec_for({"response_format": {"type": "json_object"}})
    assert (spec.kind, spec.schema, spec.strict, spec.tools) == ("json_object", None, False, {})
    spec = spec_for(schema_request())
    assert (spec.kind, spec.name, spec.strict, spec.schema) == (
        "json_schema",
        "person",
        True,
        PERSON,
    )
    assert spec.describe() == "JSON Schema 'person'"
    spec = spec_for({"tools": [WEATHER, {"type": "function", "function": {"name": "now"}}]})
    assert spec.kind is None
    assert spec.tools == {
        "get_weather": WEATHER["function"]["parameters"],
        "now": {"type": "object"},
    }
    assert spec.strict_tools == {"get_weather"}
    assert spec.describe() == "tool argument schemas"


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({"response_format": "json"}, "response_format", "expected an object"),
        ({"response_format": {"type": "yaml"}}, "response_format.type", "'json_schema'"),
        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema", "'name'"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"schema": PERSON}}},
            "response_format.json_schema.name",
            "letters",
        ),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "a b"}}},
            "response_format.json_schema.name",
            "letters",
        ),
        (schema_request(schema=[1]), "response_format.json_schema.schema", "JSON Schema object"),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "p", "schema": PERSON, "strict": "yes"},
                }
            },
            "response_format.json_schema.strict",
            "true or false",
        ),
        ({"tools": {"type": "function"}}, "tools", "list"),
        ({"tools": [{"type": "function"}]}, "tools[0].function", "'name'"),
        ({"tools": [{"type": "function", "function": {"name": ""}}]}, "tools[0].function.name", ""),
        ({"tools": [WEATHER, WEATHER]}, "tools[1].function.name", "declared twice"),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": "x"}}]},
            "tools[0].function.parameters",
            "JSON Schema object",
        ),
    ],
)
def test_malformed_requests_are_refused_with_the_param(
    body: dict[str, Any], param: str, words: str
) -> None:
    with pytest.raises(StructuredRequestError) as info:
        output_spec(body)
    assert info.value.param == param
    assert info.value.message.startswith(f"Invalid value for '{param}': ")
    assert words in info.value.message


@pytest.mark.parametrize(
    ("schema", "words"),
    [
        ({"type": "strnig"}, "(at $.type)"),
        (
            {"type": "object", "properties": {"a": {"minLength": -1}}},
            "(at $.properties.a.minLength)",
        ),
        ({"$ref": "#/$defs/missing"}, "/$defs/missing"),
        ({"$ref": "https://example.com/schema.json"}, "example.com"),  # never fetched
    ],
)
def test_invalid_schemas_are_refused(schema: dict[str, Any], words: str) -> None:
    with pytest.raises(StructuredRequestError) as info:
        output_spec(schema_request(schema=schema))
    assert info.value.param == "response_format.json_schema.schema"
    assert "not a valid JSON Schema" in info.value.message and words in info.value.message
    bad_tool = {"type": "function", "function": {"name": "f", "parameters": schema}}
    with pytest.raises(StructuredRequestError) as info:
        output_spec({"tools": [bad_tool]})
    assert info.value.param == "tools[0].function.parameters"


def test_local_refs_and_declared_drafts_work() -> None:
    schema = {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "type": "object",
        "properties": {"p": {"$ref": "#/definitions/point"}},
        "definitions": {"point": {"type": "array", "items": {"type": "number"}}},
    }
    spec = spec_for(schema_request(schema=schema))
    assert violations(spec, completion('{"p": [1, 2.5]}')) == []
    assert violations(spec, completion('{"p": [1, "2"]}')) == [
        'content $.p[1]: "2" is not of type "number"'
    ]


def test_equal_schemas_share_one_compiled_validator() -> None:
    a = spec_for(schema_request())
    b = spec_for(schema_request(schema=json.loads(json.dumps(PERSON))))
    assert a.validator is b.validator


# --------------------------------------------------------------------------- the answer


def test_json_object() -> None:
    spec = spec_for({"response_format": {"type": "json_object"}})
    assert violations(spec, completion('{"a": [1, {"b": null}]}')) == []
    assert violations(spec, completion("  {}\n")) == []
    assert violations(spec, completion("[1, 2]")) == [
        "content: expected a JSON object, got an array"
    ]
    assert violations(spec, completion('"hi"')) == ["content: expected a JSON object, got a string"]
    (problem,) = violations(spec, completion('{"a": 1,'))
    assert problem.startswith("content: not valid JSON: ")
    (problem,) = violations(spec, completion('{"a": NaN}'))
    assert "NaN is not JSON" in problem
    assert violations(spec, completion(None)) == ["content: empty, expected JSON"]


def test_json_schema_reports_nested_errors_with_paths() -> None:
    spec = spec_for(schema_request())
    assert violations(spec, completion(json.dumps(ADA))) == []
    bad = {"name": "Ada", "age": "x", "address": {"city": 1, "zip": "W1"}, "tags": ["a", 2]}
    problems = violations(spec, completion(json.dumps(bad)))
    assert 'content $.age: "x" is not of type "integer"' in problems
    assert 'content $.address.city: 1 is not of type "string"' in problems
    assert len(problems) == 3  # the first few only: $.tags[1] is the fourth
    missing = violations(spec, completion('{"name": "Ada", "age": -1, "extra": true}'))
    assert any(p == 'content $: "address" is a required property' for p in missing)
    assert any(p.startswith("content $.age: ") and "minimum" in p for p in missing)
    assert any("'extra' was unexpected" in p for p in missing)


def test_odd_keys_get_bracketed_paths() -> None:
    schema = {"type": "object", "additionalProperties": {"type": "integer"}}
    spec = spec_for(schema_request(schema=schema))
    assert violations(spec, completion('{"a b": "x"}')) == [
        'content $["a b"]: "x" is not of type "integer"'
    ]


def test_formats_are_checked() -> None:
    schema = {"type": "object", "properties": {"day": {"type": "string", "format": "date"}}}
    spec = spec_for(schema_request(schema=schema))
    assert violations(spec, completion('{"day": "2024-02-29"}')) == []
    assert len(violations(spec, completion('{"day": "yesterday"}'))) == 1


def test_a_refusal_is_not_a_violation() -> None:
    spec = spec_for(schema_request())
    assert violations(spec, completion(None, refusal="I can't help with that.")) == []


def test_fences_strict_is_a_violation_else_accepted_and_removed() -> None:
    fenced = "```json\n" + json.dumps(ADA) + "\n```"
    strict = spec_for(schema_request(strict=True))
    assert violations(strict, completion(fenced)) == [
        "content: wrapped in a Markdown code fence; send the bare JSON only"
    ]
    assert normalize(strict, completion(fenced)) == completion(fenced)
    lenient = spec_for(schema_request(strict=False))
    assert violations(lenient, completion(fenced)) == []
    fixed = normalize(lenient, completion(fenced))
    assert json.loads(fixed["choices"][0]["message"]["content"]) == ADA
    plain = completion(json.dumps(ADA))
    assert normalize(lenient, plain) is plain
    obj = spec_for({"response_format": {"type": "json_object"}})
    assert violations(obj, completion("```\n{}\n```")) == []
    # Text around the fence is not a fence around the whole answer.
    (problem,) = violations(lenient, completion("Here it is:\n" + fenced))
    assert problem.startswith("content: not valid JSON")


def test_extract_json() -> None:
    assert extract_json('```json\n{"a": 1}\n```') == '{"a": 1}'
    assert extract_json("  ```\n[1]\n```\n") == "[1]"
    assert extract_json('{"a": "```"}') == '{"a": "```"}'
    assert extract_json("```json\n{}") == "```json\n{}"


def test_tool_arguments() -> None:
    spec = spec_for({"tools": [WEATHER]})
    ok = completion(None, tool_calls=[call("get_weather", '{"city": "Oslo", "unit": "c"}')])
    assert violations(spec, ok) == []
    bad = completion(
        None,
        tool_calls=[
            call("get_weather", '{"unit": "k"}'),
            call("get_weather", '{"city": "Oslo"'),
            call("send_email", "{}", 2),
        ],
    )
    problems = violations(spec, bad)
    assert any(
        p == 'tool_calls[0] get_weather arguments $: "city" is a required property'
        for p in problems
    )
    assert any(p.startswith("tool_calls[0] get_weather arguments $.unit: ") for p in problems)
    assert any(
        p.startswith("tool_calls[1] get_weather: arguments are not valid JSON") for p in problems
    )
    assert (
        'tool_calls[2] send_email: unknown function "send_email" (declared: get_weather)'
        in problems
    )


def test_tool_calls_with_a_response_format_need_no_content() -> None:
    spec = spec_for({**schema_request(), "tools": [WEATHER]})
    assert (
        violations(spec, completion(None, tool_calls=[call("get_weather", '{"city": "x"}')])) == []
    )
    assert spec.describe() == "JSON Schema 'person' and tool argument schemas"


def test_several_choices_are_each_checked() -> None:
    spec = spec_for({"response_format": {"type": "json_object"}})
    two = completion("{}")
    second = copy.deepcopy(two["choices"][0])
    second["index"], second["message"]["content"] = 1, "nope"
    two["choices"].append(second)
    (problem,) = violations(spec, two)
    assert problem.startswith("choices[1] content: not valid JSON")
    assert violations(spec, {"choices": []}) == ["the answer has no choices"]


# --------------------------------------------------------------------------- repair


def test_repair_of_content_feeds_the_errors_and_the_schema_back() -> None:
    spec = spec_for(schema_request())
    reply = '{"name": "Ada", "age": "x"}'
    bad = completion(reply)
    problems = violations(spec, bad)
    out = repair_messages(MESSAGES, bad, problems, spec)
    assert out[: len(MESSAGES)] == MESSAGES
    assert out[1] == {"role": "assistant", "content": reply}
    last = out[2]
    assert last["role"] == "user" and len(out) == 3
    for p in problems:
        assert f"- {p}" in last["content"]
    assert json.dumps(PERSON, separators=(",", ":")) in last["content"]
    assert "only" in last["content"] and "code fence" in last["content"]
    assert MESSAGES == [{"role": "user", "content": "Tell me about Ada."}]  # not mutated


def test_repair_of_tool_calls_answers_each_call() -> None:
    spec = spec_for({"tools": [WEATHER]})
    calls = [call("get_weather", '{"city": "Oslo"}'), call("get_weather", "{", 1)]
    bad = completion(None, tool_calls=calls)
    out = repair_messages(MESSAGES, bad, violations(spec, bad), spec)
    assert out[1] == {"role": "assistant", "content": None, "tool_calls": calls}
    ok, broken = out[2], out[3]
    assert ok["role"] == broken["role"] == "tool"
    assert (ok["tool_call_id"], broken["tool_call_id"]) == ("call_0", "call_1")
    assert "Not run" in ok["content"]
    assert "arguments are not valid JSON" in broken["content"]
    assert len(out) == 4  # no user message: the tool answers say it


def test_repair_picks_the_invalid_choice() -> None:
    spec = spec_for({"response_format": {"type": "json_object"}})
    two = completion("{}")
    second = copy.deepcopy(two["choices"][0])
    second["index"], second["message"]["content"] = 1, "nope"
    two["choices"].append(second)
    out = repair_messages(MESSAGES, two, violations(spec, two), spec)
    assert out[1]["content"] == "nope"
    assert "- content: not valid JSON" in out[2]["content"]
    assert "a JSON object" in out[2]["content"]


# --------------------------------------------------------------------------- streams


def test_chunks_round_trip_with_tool_calls_and_usage() -> None:
    original = completion(
        "Let me check the weather in both cities, then answer.",
        tool_calls=[
            call("get_weather", '{"city": "Oslo", "unit": "c"}'),
            call("get_weather", '{"city": "Lima"}', 1),
        ],
    )
    original["system_fingerprint"] = "fp_1"
    original["choices"][0]["finish_reason"] = "tool_calls"
    chunks = chunks_from_completion(original, pieces=4)
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert {c["id"] for c in chunks} == {"chatcmpl-1"}
    first = chunks[0]["choices"][0]
    assert first["delta"] == {"role": "assistant", "content": ""}
    contents = [c["choices"][0]["delta"].get("content") for c in chunks if c["choices"]]
    assert len([t for t in contents if t]) >= 3
    fragments = [
        tc["function"].get("arguments")
        for c in chunks
        if c["choices"]
        for tc in c["choices"][0]["delta"].get("tool_calls", [])
    ]
    assert len([f for f in fragments if f]) > 2
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finishes[-1] == "tool_calls" and not any(finishes[:-1])
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == original["usage"]
    assert completion_from_chunks(chunks) == original


@pytest.mark.parametrize(
    "original",
    [
        completion(json.dumps(ADA)),
        completion(""),
        completion(None, refusal="I can't help with that."),
        {k: v for k, v in completion("no usage").items() if k != "usage"},
    ],
)
def test_chunks_round_trip(original: dict[str, Any]) -> None:
    assert completion_from_chunks(chunks_from_completion(original)) == original


def test_chunks_with_several_choices_and_logprobs() -> None:
    original = completion("a")
    second = copy.deepcopy(original["choices"][0])
    second["index"], second["message"]["content"] = 1, "b"
    second["logprobs"] = {"content": [{"token": "b", "logprob": -0.1}], "refusal": None}
    original["choices"].append(second)
    assert completion_from_chunks(chunks_from_completion(original)) == original


def test_assembling_a_real_shaped_stream() -> None:
    """Fragments as OpenAI streams them: name first, arguments in pieces, usage last."""
    head = {"id": "x", "object": "chat.completion.chunk", "created": 1, "model": "m"}

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {**head, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    stream = [
        chunk({"role": "assistant", "content": None}),
        chunk({"tool_calls": [{"index": 0, "id": "c1", "type": "function",
                               "function": {"name": "get_weather", "arguments": ""}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"ci'}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": 'ty": "Oslo"}'}}]}),
        chunk({}, "tool_calls"),
        {**head, "choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 2,
                                          "total_tokens": 3}},
    ]  # fmt: skip
    got = completion_from_chunks(stream)
    assert got["object"] == "chat.completion" and got["usage"]["total_tokens"] == 3
    (choice,) = got["choices"]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    assert choice["message"]["tool_calls"] == [
        call("get_weather", '{"city": "Oslo"}') | {"id": "c1"}
    ]
    spec = spec_for({"tools": [WEATHER]})
    assert violations(spec, got) == []
