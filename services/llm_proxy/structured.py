"""Structured outputs: what a chat request asks for (``response_format``, tool schemas), whether
an answer meets it, the conversation that asks the model to repair it, and streams as objects.

Pure functions, no I/O: the routes call upstreams, count metrics and decide on retries.

Rules, as OpenAI states them for its own models (which other upstreams cannot guarantee):

* ``json_object``: the message content is one JSON object.
* ``json_schema``: the content parses and validates against the schema (JSON Schema Draft
  2020-12 unless the schema's ``$schema`` names another draft; ``format`` is checked). Only
  local ``$ref`` (``#...``) is allowed: nothing is ever fetched.
* Tools: each ``function.arguments`` of a tool call parses and validates against that
  function's ``parameters`` (an object of any shape when it declares none); a call to a
  function the request did not declare is a violation. Checked whether or not the tool is
  ``strict``: arguments that do not match their schema break the client either way.
* A refusal (``message.refusal`` set) is a valid answer: the model declined, nothing to check.
* A reply that calls tools may leave the content empty even when a ``response_format`` is set.
* Markdown fences (```` ```json ... ``` ````): OpenAI never sends them, small models often do.
  With ``strict`` they are a violation (the model is told to drop them); otherwise one fence
  around the whole content is accepted, and :func:`normalize` removes it, so the client still
  receives bare JSON. The proxy must pass every accepted answer through :func:`normalize`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Literal

import orjson

if TYPE_CHECKING:
    from jsonschema_rs import Validator

Kind = Literal["json_object", "json_schema"]

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_FENCE = re.compile(r"^\s*```[A-Za-z0-9_-]*[ \t]*\r?\n(.*?)\r?\n?[ \t]*```\s*$", re.S)
_MAX_ERRORS = 3  # per value checked: enough to repair, short enough for a prompt and a 502
_MAX_MESSAGE = 200  # characters of one error (jsonschema quotes whole instances)
_MAX_SCHEMA_IN_PROMPT = 4000
_ANY_OBJECT: dict[str, Any] = {"type": "object"}


class StructuredRequestError(ValueError):
    """The request's ``response_format`` or ``tools`` cannot be honoured: a 400 for the client."""

    def __init__(self, message: str, param: str | None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


@dataclass(frozen=True)
class OutputSpec:
    """What a chat request asks of the answer; validators compiled once (see :func:`_compile`)."""

    kind: Kind | None
    schema: dict[str, Any] | None = None
    strict: bool = False
    name: str | None = None
    # Function name -> its ``parameters`` schema, and the names declared ``strict``.
    tools: Mapping[str, dict[str, Any]] = field(default_factory=dict)
    strict_tools: frozenset[str] = frozenset()
    validator: Validator | None = field(default=None, compare=False, repr=False)
    tool_validators: Mapping[str, Validator] = field(
        default_factory=dict, compare=False, repr=False
    )

    def describe(self) -> str:
        """A few words for error messages: what the answer had to be."""
        parts = []
        if self.kind == "json_schema":
            parts.append(f"JSON Schema '{self.name}'" if self.name else "JSON Schema")
        elif self.kind == "json_object":
            parts.append("JSON object")
        if self.tools:
            parts.append("tool argument schemas")
        return " and ".join(parts) or "output format"


# --------------------------------------------------------------------------- the request


def _bad(param: str, why: str) -> StructuredRequestError:
    return StructuredRequestError(f"Invalid value for '{param}': {why}", param)


def _key(schema: dict[str, Any]) -> str:
    """The cache key of a schema: its canonical serialisation (clients resend equal copies)."""
    try:
        return orjson.dumps(schema, option=orjson.OPT_SORT_KEYS).decode()
    except TypeError:  # integers beyond 64 bits
        return json.dumps(schema, sort_keys=True, separators=(",", ":"))


@lru_cache(maxsize=256)
def _compile(key: str) -> Validator:
    """Check a schema against its meta-schema and build its validator; cached, since building
    costs ~100x a check. Raises ``ValueError`` saying what is wrong with the schema.

    jsonschema-rs, not the pure-Python jsonschema: ~1 µs to validate a small object instead of
    60-85 µs, on the proxy's hot path. It resolves every ``$ref`` while building, so a dangling
    one is a 400 now rather than an error later; ``offline`` forbids fetching remote ones."""
    import jsonschema_rs

    try:
        return jsonschema_rs.validator_for(key, validate_formats=True, offline=True)
    except jsonschema_rs.ValidationError as exc:
        where = _json_path(exc.instance_path)
        raise ValueError(f"{_short(exc.message)} (at {where})") from None
    except jsonschema_rs.ReferencingError as exc:
        raise ValueError(_short(str(exc))) from None


def _validator(schema: dict[str, Any], param: str) -> Validator:
    try:
        return _compile(_key(schema))
    except (ValueError, RecursionError) as exc:
        raise _bad(param, f"not a valid JSON Schema: {exc}") from None


def output_spec(data: dict[str, Any]) -> OutputSpec | None:
    """What to check in the answer to this request body; None when there is nothing to check.

    Raises :class:`StructuredRequestError` for a malformed ``response_format`` or ``tools``,
    or a schema that is not valid JSON Schema: better a clear 400 now than a 502 later."""
    kind: Kind | None = None
    schema: dict[str, Any] | None = None
    strict = False
    name: str | None = None
    validator: Validator | None = None
    fmt = data.get("response_format")
    if fmt is not None:
        if not isinstance(fmt, dict):
            raise _bad("response_format", 'expected an object such as {"type": "json_object"}.')
        typ = fmt.get("type")
        if typ not in ("text", "json_object", "json_schema"):
            raise _bad(
                "response_format.type",
                f"expected 'text', 'json_object' or 'json_schema', got {_show(typ)}.",
            )
        if typ == "json_object":
            kind = "json_object"
        elif typ == "json_schema":
            kind = "json_schema"
            js = fmt.get("json_schema")
            if not isinstance(js, dict):
                raise _bad(
                    "response_format.json_schema",
                    "expected an object with 'name' and 'schema' when type is 'json_schema'.",
                )
            name = js.get("name")
            if not isinstance(name, str) or not _NAME.match(name):
                raise _bad(
                    "response_format.json_schema.name",
                    "expected 1 to 64 letters, digits, '_' or '-'.",
                )
            raw_strict = js.get("strict")
            if raw_strict is not None and not isinstance(raw_strict, bool):
                raise _bad("response_format.json_schema.strict", "expected true or false.")
            strict = bool(raw_strict)
            raw = js.get("schema", _ANY_OBJECT)
            if not isinstance(raw, dict):
                raise _bad("response_format.json_schema.schema", "expected a JSON Schema object.")
            schema = raw
            validator = _validator(schema, "response_format.json_schema.schema")
    tools, strict_tools, tool_validators = _tools(data.get("tools"))
    if kind is None and not tools:
        return None
    return OutputSpec(
        kind, schema, strict, name, tools, frozenset(strict_tools), validator, tool_validators
    )


def _tools(
    raw: Any,
) -> tuple[dict[str, dict[str, Any]], set[str], dict[str, Validator]]:
    tools: dict[str, dict[str, Any]] = {}
    strict: set[str] = set()
    compiled: dict[str, Validator] = {}
    if raw is None:
        return tools, strict, compiled
    if not isinstance(raw, list):
        raise _bad("tools", "expected a list of tools.")
    for i, tool in enumerate(raw):
        at = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise _bad(at, 'expected an object such as {"type": "function", "function": …}.')
        if tool.get("type", "function") != "function":
            continue  # other tool kinds (custom, hosted): nothing declared to validate against
        fn = tool.get("function")
        if not isinstance(fn, dict):
            raise _bad(f"{at}.function", "expected an object with 'name' and 'parameters'.")
        name = fn.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise _bad(f"{at}.function.name", "expected 1 to 64 letters, digits, '_' or '-'.")
        if name in tools:
            raise _bad(f"{at}.function.name", f"the function {name!r} is declared twice.")
        params = fn.get("parameters", _ANY_OBJECT)
        if not isinstance(params, dict):
            raise _bad(f"{at}.function.parameters", "expected a JSON Schema object.")
        if fn.get("strict") is not None and not isinstance(fn.get("strict"), bool):
            raise _bad(f"{at}.function.strict", "expected true or false.")
        tools[name] = params
        compiled[name] = _validator(params, f"{at}.function.parameters")
        if fn.get("strict"):
            strict.add(name)
    return tools, strict, compiled


# --------------------------------------------------------------------------- the answer


def extract_json(text: str) -> str:
    """The text inside one Markdown code fence wrapping the whole of ``text``, else ``text``."""
    m = _FENCE.match(text)
    return m.group(1) if m else text


def _fenced(text: str) -> bool:
    return _FENCE.match(text) is not None


class _NotJSON(ValueError):
    pass


def _parse(text: str) -> Any:
    """Strict JSON (no NaN/Infinity); orjson first, json for its precise error message."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        pass

    def reject(token: str) -> Any:
        raise ValueError(f"{token} is not JSON")

    try:
        return json.loads(text, parse_constant=reject)
    except (ValueError, RecursionError) as exc:
        raise _NotJSON(_short(str(exc))) from None


def _json_path(path: Iterable[Any]) -> str:
    out = "$"
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", part):
            out += f".{part}"
        else:
            out += f"[{json.dumps(part)}]"
    return out


def _short(message: str) -> str:
    return message if len(message) <= _MAX_MESSAGE else message[: _MAX_MESSAGE - 1] + "…"


def _show(value: Any) -> str:
    return (
        _short(json.dumps(value))
        if value is None or isinstance(value, str | int)
        else (type(value).__name__)
    )


def _schema_errors(validator: Validator, value: Any) -> list[str]:
    errors: list[str] = []
    for error in validator.iter_errors(value):
        errors.append(f"{_json_path(error.instance_path)}: {_short(error.message)}")
        if len(errors) >= _MAX_ERRORS:
            break
    return errors


def _content_problems(spec: OutputSpec, content: str) -> list[str]:
    if spec.strict and _fenced(content):
        return ["content: wrapped in a Markdown code fence; send the bare JSON only"]
    text = content if spec.strict else extract_json(content)
    try:
        value = _parse(text)
    except _NotJSON as exc:
        return [f"content: not valid JSON: {exc}"]
    if spec.kind == "json_object" or spec.validator is None:
        if not isinstance(value, dict):
            return [f"content: expected a JSON object, got {_json_type(value)}"]
        return []
    return [f"content {e}" for e in _schema_errors(spec.validator, value)]


def _json_type(value: Any) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return "null" if value is None else type(value).__name__


def _call_problems(spec: OutputSpec, i: int, call: Any) -> list[str]:
    at = f"tool_calls[{i}]"
    if not isinstance(call, dict):
        return [f"{at}: not an object"]
    if call.get("type", "function") != "function":
        return []
    fn = call.get("function")
    if not isinstance(fn, dict):
        return [f"{at}: no 'function'"]
    name = fn.get("name")
    at = f"{at} {name}" if isinstance(name, str) else at
    validator = spec.tool_validators.get(name) if isinstance(name, str) else None
    if validator is None:
        declared = ", ".join(sorted(spec.tools)) or "none"
        return [f"{at}: unknown function {_show(name)} (declared: {declared})"]
    args = fn.get("arguments")
    if not isinstance(args, str):
        return [f"{at}: 'arguments' must be a string of JSON"]
    try:
        value = _parse(args)
    except _NotJSON as exc:
        return [f"{at}: arguments are not valid JSON: {exc}"]
    return [f"{at} arguments {e}" for e in _schema_errors(validator, value)]


def _choice_problems(spec: OutputSpec, choice: Any) -> list[str]:
    if not isinstance(choice, dict):
        return ["choice: not an object"]
    message = choice.get("message")
    if not isinstance(message, dict):
        return ["message: missing"]
    if message.get("refusal") is not None:
        return []
    problems: list[str] = []
    calls = message.get("tool_calls")
    calls = calls if isinstance(calls, list) else []
    for i, call in enumerate(calls):
        problems += _call_problems(spec, i, call)
    content = message.get("content")
    if spec.kind is not None:
        if isinstance(content, str) and (content.strip() or not calls):
            problems += _content_problems(spec, content)
        elif content is None and not calls:
            problems.append("content: empty, expected JSON")
        elif content is not None and not isinstance(content, str):
            problems.append("content: not a string")
    return problems


def violations(spec: OutputSpec, completion: dict[str, Any]) -> list[str]:
    """What is wrong with a ``chat.completion`` object against ``spec``; empty when it is valid.

    Each problem names where it is, so the model can be told: ``content $.age: 'x' is not of
    type 'integer'``, ``tool_calls[0] get_weather arguments $.city: ...``; prefixed with
    ``choices[i]`` when there are several choices. A few µs for a small object.
    """
    choices = completion.get("choices")
    if not isinstance(choices, list) or not choices:
        return ["the answer has no choices"]
    if len(choices) == 1:
        return _choice_problems(spec, choices[0])
    problems = []
    for pos, choice in enumerate(choices):
        index = choice.get("index", pos) if isinstance(choice, dict) else pos
        problems += [f"choices[{index}] {p}" for p in _choice_problems(spec, choice)]
    return problems


def normalize(spec: OutputSpec, completion: dict[str, Any]) -> dict[str, Any]:
    """The completion with an accepted Markdown fence removed from each JSON content (not
    strict only), so the client gets bare JSON; the same object when there is none."""
    if spec.kind is None or spec.strict:
        return completion
    choices = completion.get("choices")
    if not isinstance(choices, list):
        return completion
    out: list[Any] = []
    changed = False
    for choice in choices:
        message = choice.get("message") if isinstance(choice, dict) else None
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str) and _fenced(content):
            assert isinstance(choice, dict) and isinstance(message, dict)
            choice = {**choice, "message": {**message, "content": extract_json(content)}}
            changed = True
        out.append(choice)
    return {**completion, "choices": out} if changed else completion


# --------------------------------------------------------------------------- repair


_LOCATED = re.compile(r"^(?:choices\[(\d+)\] )?(?:tool_calls\[(\d+)\]|content)")


def repair_messages(
    messages: list[Any],
    completion: dict[str, Any],
    problems: list[str],
    spec: OutputSpec | None = None,
) -> list[Any]:
    """The conversation to send again: ``messages``, the invalid reply, and what is wrong.

    Bad tool arguments are answered the way tools answer (a ``tool`` message per call, which
    OpenAI requires after an assistant message with ``tool_calls``), saying what to fix; bad
    content gets a user message listing the errors and asking for the JSON alone (with the
    schema, when ``spec`` is given and it is short: a model without ``response_format``
    support sees it nowhere else). With several choices, the first invalid one is repaired."""
    choices = completion.get("choices")
    choices = choices if isinstance(choices, list) else []
    located = [(_LOCATED.match(p), p) for p in problems]
    indexes = [int(m.group(1)) for m, _ in located if m and m.group(1) is not None]
    wanted = indexes[0] if indexes else None
    choice: dict[str, Any] = {}
    for pos, c in enumerate(choices):
        if isinstance(c, dict) and (wanted is None or c.get("index", pos) == wanted):
            choice = c
            break
    message = choice.get("message")
    message = message if isinstance(message, dict) else {}

    def strip_choice(p: str) -> str:
        return re.sub(r"^choices\[\d+\] ", "", p)

    mine = [
        strip_choice(p)
        for m, p in located
        if wanted is None or (m is not None and m.group(1) == str(wanted))
    ]
    call_errors: dict[int, list[str]] = {}
    other: list[str] = []
    for p in mine:
        m = re.match(r"^tool_calls\[(\d+)\]", p)
        (call_errors.setdefault(int(m.group(1)), []) if m else other).append(p)

    reply: dict[str, Any] = {"role": "assistant", "content": message.get("content")}
    calls = message.get("tool_calls")
    calls = [c for c in calls if isinstance(c, dict)] if isinstance(calls, list) else []
    out = [*messages, reply]
    if calls:
        reply["tool_calls"] = calls
        for i, call in enumerate(calls):
            errs = call_errors.get(i)
            text = (
                "Error: the call was not run: its arguments are invalid:\n"
                + "\n".join(f"- {e}" for e in errs)
                + "\nCall the function again with arguments that match its parameters schema."
                if errs
                else "Not run: another call in the same reply had invalid arguments; "
                "make all the calls again."
            )
            out.append(
                {"role": "tool", "tool_call_id": call.get("id", f"call_{i}"), "content": text}
            )
    if other or not calls:
        out.append({"role": "user", "content": _content_repair(other or mine, spec)})
    return out


def _content_repair(problems: list[str], spec: OutputSpec | None) -> str:
    what = "a JSON object"
    if spec is not None and spec.kind == "json_schema" and spec.schema is not None:
        schema = json.dumps(spec.schema, separators=(",", ":"))
        if len(schema) <= _MAX_SCHEMA_IN_PROMPT:
            what = f"a JSON value that matches this JSON Schema: {schema}"
        else:
            what = "a JSON value that matches the required JSON Schema"
    elif spec is None or spec.kind is None:
        what = "valid JSON"
    lines = "\n".join(f"- {p}" for p in problems) or "- the reply is not valid"
    return (
        f"Your previous reply is invalid:\n{lines}\n"
        f"Reply again with only {what}: no explanation, no Markdown code fence."
    )


# --------------------------------------------------------------------------- streams

_HEAD_SKIP = frozenset({"object", "choices", "usage", "obfuscation"})


def completion_from_chunks(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """One ``chat.completion`` from the ``chat.completion.chunk`` objects of a stream.

    Content and refusal deltas are joined; tool calls are gathered by their ``index``, their
    ``id``/``type`` taken when first sent and ``function.name``/``arguments`` fragments joined;
    the last finish reason and the usage chunk (``choices: []``) are kept. Per-token logprobs
    are joined list by list. Top-level fields (id, created, model, system_fingerprint, ...)
    come from the first chunk that has them."""
    head: dict[str, Any] = {}
    usage: Any = None
    states: dict[int, dict[str, Any]] = {}
    for chunk in chunks:
        if not isinstance(chunk, dict):
            continue
        for k, v in chunk.items():
            if k not in _HEAD_SKIP and v is not None and k not in head:
                head[k] = v
        if chunk.get("usage") is not None:
            usage = chunk["usage"]
        choices = chunk.get("choices")
        for c in choices if isinstance(choices, list) else []:
            if not isinstance(c, dict):
                continue
            index = c.get("index", 0)
            st = states.setdefault(
                index if isinstance(index, int) else 0,
                {"role": "assistant", "content": None, "refusal": None, "calls": {},
                 "logprobs": None, "finish": None},
            )  # fmt: skip
            delta = c.get("delta")
            delta = delta if isinstance(delta, dict) else {}
            if isinstance(delta.get("role"), str):
                st["role"] = delta["role"]
            for name in ("content", "refusal"):
                if isinstance(delta.get(name), str):
                    st[name] = (st[name] or "") + delta[name]
            calls = delta.get("tool_calls")
            for call in calls if isinstance(calls, list) else []:
                if isinstance(call, dict):
                    _add_call(st["calls"], call)
            if isinstance(c.get("logprobs"), dict):
                st["logprobs"] = _join_logprobs(st["logprobs"], c["logprobs"])
            if c.get("finish_reason") is not None:
                st["finish"] = c["finish_reason"]
    out_choices = []
    for index in sorted(states):
        st = states[index]
        message: dict[str, Any] = {
            "role": st["role"],
            "content": st["content"],
            "refusal": st["refusal"],
        }
        if st["calls"]:
            message["tool_calls"] = [st["calls"][i] for i in sorted(st["calls"])]
        out_choices.append(
            {
                "index": index,
                "message": message,
                "logprobs": st["logprobs"],
                "finish_reason": st["finish"],
            }
        )
    out: dict[str, Any] = {**head, "object": "chat.completion", "choices": out_choices}
    if usage is not None:
        out["usage"] = usage
    return out


def _add_call(calls: dict[int, dict[str, Any]], delta: dict[str, Any]) -> None:
    i = delta.get("index", len(calls))
    call = calls.setdefault(
        i if isinstance(i, int) else len(calls),
        {"id": None, "type": "function", "function": {"name": "", "arguments": ""}},
    )
    if isinstance(delta.get("id"), str) and call["id"] is None:
        call["id"] = delta["id"]
    if isinstance(delta.get("type"), str):
        call["type"] = delta["type"]
    fn = delta.get("function")
    if isinstance(fn, dict):
        for name in ("name", "arguments"):
            if isinstance(fn.get(name), str):
                call["function"][name] += fn[name]


def _join_logprobs(old: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
    out = dict(old or {})
    for k, v in new.items():
        if isinstance(v, list):
            prev = out.get(k)
            out[k] = [*(prev if isinstance(prev, list) else []), *v]
        elif k not in out or out[k] is None:
            out[k] = v
    return out


def _split(text: str, pieces: int) -> list[str]:
    size = max(1, -(-len(text) // max(1, pieces)))
    return [text[i : i + size] for i in range(0, len(text), size)]


def chunks_from_completion(completion: dict[str, Any], pieces: int = 8) -> list[dict[str, Any]]:
    """The ``chat.completion.chunk`` objects a stream of ``completion`` would carry, as OpenAI
    sends them: per choice a role chunk, the content (or refusal) in about ``pieces`` deltas,
    each tool call (id, name, then its arguments in pieces), a chunk with the finish reason
    (and the choice's logprobs); then a usage chunk with no choices when the completion has
    usage (drop it when the client did not ask for ``stream_options.include_usage``).
    :func:`completion_from_chunks` of the result equals ``completion``."""
    head = {k: v for k, v in completion.items() if k not in _HEAD_SKIP}
    head["object"] = "chat.completion.chunk"

    def chunk(
        index: int, delta: dict[str, Any], finish: Any = None, logprobs: Any = None
    ) -> dict[str, Any]:
        choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        return {**head, "choices": [choice]}

    out: list[dict[str, Any]] = []
    choices = completion.get("choices")
    for pos, choice in enumerate(choices if isinstance(choices, list) else []):
        if not isinstance(choice, dict):
            continue
        index = choice.get("index", pos)
        message = choice.get("message")
        message = message if isinstance(message, dict) else {}
        content = message.get("content")
        first: dict[str, Any] = {"role": message.get("role", "assistant")}
        first["content"] = "" if isinstance(content, str) else None
        out.append(chunk(index, first))
        for name in ("content", "refusal"):
            text = message.get(name)
            if isinstance(text, str):
                # An empty content is in the role chunk; an empty refusal needs its own.
                parts = _split(text, pieces) or ([""] if name == "refusal" else [])
                out.extend(chunk(index, {name: part}) for part in parts)
        calls = message.get("tool_calls")
        for i, call in enumerate(calls if isinstance(calls, list) else []):
            if not isinstance(call, dict):
                continue
            fn = call.get("function")
            fn = fn if isinstance(fn, dict) else {}
            opening: dict[str, Any] = {"index": i, "type": call.get("type", "function")}
            if call.get("id") is not None:
                opening["id"] = call["id"]
            opening["function"] = {"name": fn.get("name", ""), "arguments": ""}
            out.append(chunk(index, {"tool_calls": [opening]}))
            args = fn.get("arguments")
            for part in _split(args, pieces) if isinstance(args, str) else []:
                out.append(
                    chunk(index, {"tool_calls": [{"index": i, "function": {"arguments": part}}]})
                )
        out.append(chunk(index, {}, choice.get("finish_reason"), choice.get("logprobs")))
    if completion.get("usage") is not None:
        out.append({**head, "choices": [], "usage": completion["usage"]})
    return out
