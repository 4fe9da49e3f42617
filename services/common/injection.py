"""Prompt-injection heuristics: phrases that try to override a model's instructions.

Heuristics, not a classifier: each names one tactic and needs the words of that tactic together
("ignore" with "previous" with "instructions"), so documentation that says "ignore the previous
value" or "print the prompt string" does not trip them. A rephrased, translated or spelled-out
attack gets through; a match is a signal to flag or count, not proof.

It runs on every request of the proxy and on every retrieved chunk of the rag service, so no
pattern scans the whole text: each heuristic has anchor words, found with ``str.find`` in the
lowercased text, and its pattern runs only in a window around each of them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_ROLE = r"(?:system|assistant|user|developer|human|instructions?|response)"
# More anchors than this in one text: one search of the whole text instead of one per window.
_MAX_WINDOWS = 24


@dataclass(frozen=True, slots=True)
class _Rule:
    anchors: tuple[str, ...]  # lowercase; those starting with a letter, at a word start
    before: int  # how far before an anchor a match may start (0: the match starts there)
    after: int  # how far after an anchor's start a match may end
    pattern: re.Pattern[str] | None  # on the lowercased text, in the window
    near: tuple[str, ...] = ()  # one of these must be in the window before the pattern runs
    # Instead of a pattern: the anchor's word matched here, and one of ``near`` before it in
    # the same sentence (literal tests only: a regex spanning both is slow).
    word: re.Pattern[str] | None = None


_RULES: dict[str, _Rule] = {
    "ignore_previous_instructions": _Rule(
        ("ignore", "disregard", "forget", "override", "bypass", "skip", "drop"),
        0,
        140,
        re.compile(
            r"\b(?:ignore|disregard|forget|override|bypass|skip|drop)\s+"
            r"(?:(?:all|any|every|each|of|the|your|my|these|those|its|previous|prior|above|"
            r"preceding|earlier|foregoing|original|initial|system|safety|developer)\s+){1,5}"
            r"(?:instructions?|rules|prompts?|directions|guidelines|directives|commands|orders|"
            r"guardrails|restrictions|messages|context|programming)\b"
            r"|\b(?:ignore|disregard|forget)\s+(?:everything|all(?: of it| that)?|what)\s+"
            r"(?:above|before|prior|(?:you(?:'ve| have| were)? (?:been )?)?(?:told|said|"
            r"instructed|given))"
        ),
    ),
    # A jailbreak word, with a role phrase before it in the same sentence.
    "jailbreak_role": _Rule(
        (
            "dan",
            "do anything",
            "developer mode",
            "god mode",
            "jailbr",
            "unrestricted",
            "unfiltered",
            "uncensored",
            "evil",
            "no ",
            "without",
        ),
        100,
        0,
        None,
        (
            "you are now",
            "you're now",
            "from now on",
            "act as",
            "acting as",
            "pretend",
            "role-play",
            "roleplay",
            "imagine you",
            "you will",
            "become",
            "switch to",
            "enter",
            "enable",
            "activate",
        ),
        re.compile(
            r"(?:dan\b|do anything now|developer mode|god mode|jailbr|unrestricted|unfiltered|"
            r"uncensored|evil\b|no (?:restrictions|rules|limits|filters|guidelines|boundaries|"
            r"ethics|morals)\b|without (?:any )?(?:restrictions|rules|limits|filters|guidelines|"
            r"censorship|ethics|morals)\b)"
        ),
    ),
    "jailbreak_mode": _Rule(
        ("mode",),
        14,
        32,
        re.compile(
            r"\b(?:dan|developer|jailbreak|god|unrestricted) mode (?:is )?(?:now )?"
            r"(?:enabled|activated|on)\b"
        ),
    ),
    "reveal_system_prompt": _Rule(
        ("prompt", "instruction", "system message", "directive", "above", "rules"),
        90,
        40,
        re.compile(
            r"\b(?:reveal|print|show|display|output|repeat|recite|leak|dump|expose|disclose|"
            r"write out|spell out|tell me|give me|share|paste|copy|translate)\s+"
            r"(?:(?:me|us|back|out|all|of|the|your|its|entire|full|exact|whole|complete|"
            r"verbatim)\s+)*"
            r"(?:system prompt|system message|system instructions|initial (?:instructions|prompt)|"
            r"hidden (?:instructions|prompt)|original (?:instructions|prompt)|"
            r"(?:secret|internal|developer|confidential) (?:instructions|prompt)|pre-?prompt|"
            r"instructions (?:you were|you've been|you have been) given|"
            r"(?:words|text|instructions) above)"
            r"|\bwhat (?:were|are|was|is) your (?:exact |original |initial |system |hidden )?"
            r"(?:instructions|system prompt|directives|rules|prompt)\b"
        ),
        (
            "reveal",
            "print",
            "show",
            "display",
            "output",
            "repeat",
            "recite",
            "leak",
            "dump",
            "expose",
            "disclose",
            "write out",
            "spell out",
            "tell me",
            "give me",
            "share",
            "paste",
            "copy",
            "translate",
            "what",
        ),
    ),
    "role_marker": _Rule(
        ("<|", "inst]", "sys>>", "</s>", "##", "system", "assistant"),
        12,
        48,
        re.compile(
            # A turn opened (a marker naming a role), or one closed and the next opened: a
            # tokenizer's docs naming <|endoftext|> alone do not count.
            r"<\|(?:im_start|start_header_id)\|>\s*" + _ROLE + r"\b"
            r"|<\|(?:system|user|assistant)\|>"
            r"|<\|(?:im_end|eot_id|endoftext|end|end_header_id|eom_id)\|>\s*<\|"
            r"|\[/?inst\]|<</?sys>>"
            r"|</s>\s*(?:<s>)?\s*(?:\[inst\]|<\|?|#+\s*)?" + _ROLE + r"\b"
            # Alpaca/Vicuna turns; not "### Response:" or "### User:", API docs' headings too.
            r"|(?:^|\n)[ \t]*#{2,}[ \t]*(?:system|assistant|human|instructions?)[ \t]*:"
            r"|(?:^|\n)[ \t]*(?:system|assistant)[ \t]*:[ \t]*(?:you |ignore|new |from now|"
            r"forget|disregard|the user)"
        ),
        ("<|", "inst]", "sys>>", "</s>", "#", ":"),
    ),
    "new_instructions": _Rule(
        ("instruction", "directive", "orders", "your new", "your real", "your true", "your actual"),
        40,
        60,
        re.compile(
            r"\b(?:new|updated|real|actual|revised|override|overriding|secret|hidden|"
            r"additional) (?:system )?(?:instructions?|directives?|orders)\s*:"
            r"|\byour (?:new|real|true|actual) (?:task|instructions?|role|goal|purpose|"
            r"objective) (?:is|are)\b"
        ),
        (
            "new",
            "updated",
            "real",
            "actual",
            "revised",
            "overrid",
            "secret",
            "hidden",
            "additional",
            "true",
        ),
    ),
    "hide_from_user": _Rule(
        ("the user",),
        50,
        8,
        re.compile(
            r"\b(?:do not|don't|never|must not|mustn't) (?:tell|inform|mention (?:this|it) to|"
            r"reveal (?:this|it) to|let|show (?:this|it) to|alert|warn|notify) the user\b"
            r"|\bwithout (?:telling|informing|alerting|notifying|warning) the user\b"
        ),
        ("not", "n't", "never", "without"),
    ),
    "encoded_payload": _Rule(
        ("decode", "base64", "rot13", "unscramble"),
        0,
        110,
        re.compile(
            r"\b(?:decode|base64-?decode|unscramble|rot13)\b[^.\n]{0,60}?\b(?:and|then)\s+"
            r"(?:follow|execute|run|obey|do|perform|carry out)\b"
        ),
    ),
}

HEURISTICS: tuple[str, ...] = tuple(_RULES)


def _matches(rule: _Rule, lowered: str) -> bool:
    windows = 0
    for anchor in rule.anchors:
        at = lowered.find(anchor)
        while at != -1:
            if at == 0 or not (anchor[0].isalpha() and lowered[at - 1].isalpha()):
                windows += 1
                if windows > _MAX_WINDOWS and rule.pattern is not None:
                    return rule.pattern.search(lowered) is not None
                if _window_matches(rule, lowered, at):
                    return True
            at = lowered.find(anchor, at + 1)
    return False


def _window_matches(rule: _Rule, lowered: str, at: int) -> bool:
    if rule.word is not None:
        if rule.word.match(lowered, at) is None:
            return False
        before = lowered[max(0, at - rule.before) : at]
        sentence = before[max(before.rfind("."), before.rfind("\n")) + 1 :]
        return any(n in sentence for n in rule.near)
    assert rule.pattern is not None
    end = min(len(lowered), at + rule.after)
    if rule.before == 0:
        return rule.pattern.match(lowered, at, end) is not None
    start = max(0, at - rule.before)
    if rule.near and not any(n in lowered[start:end] for n in rule.near):
        return False
    return rule.pattern.search(lowered, start, end) is not None


def find_injection(text: str) -> list[str]:
    """The names of the heuristics ``text`` matches, in :data:`HEURISTICS` order (empty: none)."""
    if not text:
        return []
    lowered = text.lower()
    return [name for name, rule in _RULES.items() if _matches(rule, lowered)]
