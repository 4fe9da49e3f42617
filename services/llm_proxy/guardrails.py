"""Guardrails: checks on the request (``pre_call``) and on the answer (``post_call``).

Rails are named in the routing file, listed per alias, and a virtual key may replace the list
(``metadata.guardrails``). Each rail's action is ``block`` (the caller gets a 400 naming the
rail), ``redact`` (the matched text is replaced by a placeholder and the call goes on) or
``flag`` (the call goes on; the rail is counted and named in ``x-llmops-guardrails`` and on the
trace). They are regular expressions and checksums, not a model: microseconds per message, so
they can stay on by default (the latency LiteLLM users complain of comes from calling out).

Streams: ``block`` and ``flag`` rails check the answer as it streams (``check``: the stream
ends with an error event before the chunk that completes a match; the text before it was sent),
or the whole answer first (``buffer``: nothing unchecked is sent). A ``redact`` rail on the
answer always buffers: text already sent cannot be taken back.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from services.common.injection import find_injection
from services.common.pii import ENTITIES, find_pii, redact

Stage = Literal["pre_call", "post_call"]
Action = Literal["block", "redact", "flag"]
Entity = Literal["email", "phone", "credit_card", "iban", "ip_address", "secret"]
Role = Literal["system", "developer", "user", "assistant", "tool"]
ALL_ROLES: tuple[Role, ...] = ("system", "developer", "user", "assistant", "tool")
# A match is never longer than this (the longest is a PEM key's header or an IBAN with
# spaces): a streamed answer is re-scanned from this far before the new text, not from 0.
_OVERLAP = 256


class _Rail(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    stages: tuple[Stage, ...] = Field(("pre_call",), min_length=1)
    action: Action = "block"
    roles: tuple[Role, ...] = Field(
        ALL_ROLES, min_length=1, description="Request messages of these roles are checked."
    )


class PiiRail(_Rail):
    """Emails, phone numbers, cards (Luhn), IBANs (mod 97), IP addresses, keys and tokens."""

    type: Literal["pii"]
    stages: tuple[Stage, ...] = Field(("pre_call", "post_call"), min_length=1)
    action: Action = "redact"
    entities: tuple[Entity, ...] = Field(tuple(ENTITIES), min_length=1)  # type: ignore[arg-type]


class SizeRail(_Rail):
    """Input size: characters over every message, and the message count."""

    type: Literal["size"]
    max_chars: int | None = Field(None, ge=1)
    max_messages: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _sensible(self) -> SizeRail:
        if self.max_chars is None and self.max_messages is None:
            raise ValueError("a size rail needs max_chars or max_messages")
        if self.action != "block" or self.stages != ("pre_call",):
            raise ValueError("a size rail blocks requests: action block, stages [pre_call]")
        return self


class DenyListRail(_Rail):
    """Terms or phrases (whole words, any case) that must not pass."""

    type: Literal["deny_list"]
    terms: tuple[str, ...] = Field(min_length=1)
    roles: tuple[Role, ...] = Field(("user",), min_length=1)

    @model_validator(mode="after")
    def _terms(self) -> DenyListRail:
        if any(not t.strip() for t in self.terms):
            raise ValueError("deny_list terms must not be empty")
        return self


class InjectionRail(_Rail):
    """Prompt-injection heuristics on user input (role/turn markers, 'ignore previous ...')."""

    type: Literal["prompt_injection"]
    action: Action = "flag"
    roles: tuple[Role, ...] = Field(("user", "tool"), min_length=1)

    @model_validator(mode="after")
    def _no_redact(self) -> InjectionRail:
        if self.action == "redact":
            raise ValueError("a prompt_injection rail blocks or flags; it cannot redact")
        return self


GuardrailSpec = Annotated[
    PiiRail | SizeRail | DenyListRail | InjectionRail, Field(discriminator="type")
]


@dataclass(frozen=True, slots=True)
class Hit:
    """A rail that acted. ``detail`` says what matched by kind and count, never the text."""

    rail: str
    type: str
    action: str
    stage: str
    detail: str

    @property
    def label(self) -> str:
        return f"{self.rail}:{self.action}"


class GuardrailBlocked(Exception):
    def __init__(self, hit: Hit) -> None:
        super().__init__(hit.detail)
        self.hit = hit

    @property
    def message(self) -> str:
        where = "request" if self.hit.stage == "pre_call" else "answer"
        return f"The {where} was blocked by the guardrail '{self.hit.rail}': {self.hit.detail}."


def _terms_pattern(terms: Iterable[str]) -> re.Pattern[str]:
    alternatives = sorted((re.escape(t.strip()) for t in terms), key=len, reverse=True)
    return re.compile(r"(?<!\w)(?:" + "|".join(alternatives) + r")(?!\w)", re.IGNORECASE)


def _counts(kinds: Iterable[str]) -> str:
    seen: dict[str, int] = {}
    for k in kinds:
        seen[k] = seen.get(k, 0) + 1
    return ", ".join(f"{k} x{n}" if n > 1 else k for k, n in seen.items())


class _Compiled:
    """One rail ready to run: the spec plus whatever it precompiles."""

    def __init__(self, name: str, spec: PiiRail | SizeRail | DenyListRail | InjectionRail) -> None:
        self.name = name
        self.spec = spec
        self.roles = frozenset(spec.roles)
        self.terms = _terms_pattern(spec.terms) if isinstance(spec, DenyListRail) else None

    def hit(self, stage: str, detail: str) -> Hit:
        return Hit(self.name, self.spec.type, self.spec.action, stage, detail)

    def scan(self, text: str, stage: str) -> tuple[str, Hit | None]:
        """Check one text; returns it (redacted if the action says so) and the hit, if any."""
        spec = self.spec
        if isinstance(spec, PiiRail):
            if spec.action == "redact":
                out, found = redact(text, spec.entities)
                if not found:
                    return text, None
                return out, self.hit(stage, _counts(f.entity for f in found))
            found = find_pii(text, spec.entities)
            return text, self.hit(stage, _counts(f.entity for f in found)) if found else None
        if self.terms is not None:
            matches = [m.group(0).lower() for m in self.terms.finditer(text)]
            if not matches:
                return text, None
            if spec.action == "redact":
                text = self.terms.sub("[REDACTED]", text)
            return text, self.hit(stage, "denied term: " + _counts(matches))
        if isinstance(spec, InjectionRail):
            found_names = find_injection(text)
            return text, self.hit(stage, "prompt injection: " + ", ".join(found_names)) if (
                found_names
            ) else None
        return text, None


def _texts(message: dict[str, Any]) -> Iterator[tuple[dict[str, Any] | list[Any], Any]]:
    """(container, key) of every text in a message: its string content or its text parts."""
    content = message.get("content")
    if isinstance(content, str):
        yield message, "content"
    elif isinstance(content, list):
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                yield part, "text"


class Rails:
    """The rails of one alias (or of a key's override), split by stage."""

    def __init__(self, rails: Sequence[tuple[str, Any]]) -> None:
        compiled = [_Compiled(name, spec) for name, spec in rails]
        self.names = tuple(name for name, _ in rails)
        self.pre = [c for c in compiled if "pre_call" in c.spec.stages]
        self.post = [c for c in compiled if "post_call" in c.spec.stages]
        # Text already sent cannot be redacted: an answer with such a rail is buffered.
        self.post_redacts = any(c.spec.action == "redact" for c in self.post)

    def check_request(self, messages: list[Any]) -> list[Hit]:
        """Run the pre-call rails over ``messages``, redacting in place; raise on a block."""
        hits: list[Hit] = []
        for rail in self.pre:
            spec = rail.spec
            if isinstance(spec, SizeRail):
                hit = _size(rail, spec, messages)
                if hit is not None:
                    raise GuardrailBlocked(hit)
                continue
            found: list[Hit] = []
            for m in messages:
                if not isinstance(m, dict) or m.get("role") not in rail.roles:
                    continue
                for container, key in _texts(m):
                    text, hit = rail.scan(container[key], "pre_call")
                    if hit is not None:
                        if spec.action == "block":
                            raise GuardrailBlocked(hit)
                        container[key] = text
                        found.append(hit)
            if found:
                hits.append(rail.hit("pre_call", "; ".join(h.detail for h in found)))
        return hits

    def check_answer(self, text: str) -> tuple[str, list[Hit]]:
        """Run the post-call rails over an answer's text; raise on a block."""
        hits: list[Hit] = []
        for rail in self.post:
            text, hit = rail.scan(text, "post_call")
            if hit is not None:
                if rail.spec.action == "block":
                    raise GuardrailBlocked(hit)
                hits.append(hit)
        return text, hits

    def check_completion(self, completion: dict[str, Any]) -> list[Hit]:
        """Post-call rails over every choice of a chat completion (content redacted in place)."""
        hits: list[Hit] = []
        for choice in completion.get("choices") or ():
            message = choice.get("message") if isinstance(choice, dict) else None
            if isinstance(message, dict) and isinstance(message.get("content"), str):
                message["content"], found = self.check_answer(message["content"])
                hits.extend(found)
        return hits

    def stream_checker(self) -> StreamChecker:
        return StreamChecker(
            [r for r in self.post if r.spec.action == "block"],
            [r for r in self.post if r.spec.action == "flag"],
        )


def _size(rail: _Compiled, spec: SizeRail, messages: list[Any]) -> Hit | None:
    if spec.max_messages is not None and len(messages) > spec.max_messages:
        return rail.hit(
            "pre_call", f"{len(messages)} messages, more than the limit of {spec.max_messages}"
        )
    if spec.max_chars is not None:
        total = sum(len(c[k]) for m in messages if isinstance(m, dict) for c, k in _texts(m))
        if total > spec.max_chars:
            return rail.hit(
                "pre_call", f"{total} characters, more than the limit of {spec.max_chars}"
            )
    return None


class StreamChecker:
    """The post-call rails of a streamed answer: ``block`` rails scan each delta with a short
    overlap (linear in the answer's length, not quadratic), ``flag`` rails the whole answer
    once it has ended (redact rails never stream: their answers are buffered)."""

    def __init__(self, block: list[_Compiled], flag: list[_Compiled]) -> None:
        self.rails = block
        self.flag = flag
        self.parts: list[str] = []
        self.text = ""
        self.scanned = 0

    def flags(self) -> list[Hit]:
        """The flag rails' hits on the whole answer; call once, when it has ended."""
        if not self.flag:
            return []
        text = self.text if self.rails else "".join(self.parts)
        return [h for r in self.flag if (h := r.scan(text, "post_call")[1]) is not None]

    def feed(self, delta: str) -> None:
        if not delta:
            return
        if not self.rails:
            if self.flag:
                self.parts.append(delta)
            return
        self.text += delta
        start = max(0, self.scanned - _OVERLAP)
        window = self.text[start:]
        for rail in self.rails:
            _, hit = rail.scan(window, "post_call")
            if hit is not None:
                raise GuardrailBlocked(hit)
        self.scanned = len(self.text)


def resolve(
    defined: dict[str, Any], names: Sequence[str], cache: dict[tuple[str, ...], Rails]
) -> Rails:
    """The compiled rails for a list of names, compiled once per list (per catalog)."""
    key = tuple(names)
    rails = cache.get(key)
    if rails is None:
        missing = [n for n in names if n not in defined]
        if missing:
            raise KeyError(", ".join(missing))
        rails = Rails([(n, defined[n]) for n in names])
        cache[key] = rails
    return rails
