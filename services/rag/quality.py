"""Degenerate answers: the failure shapes of small models that no fact check catches.

A 135M model asked over real documents fails in a few recognisable ways (issue 16): it cites
passage after passage (``[5] [6] [7] ... [16]``) or lists them one per line, counts (``3. 4. 5.
6. ...``), loops over a phrase, copies the context's link, image, HTML or table markup, or
writes the prompt's next block (``Question: ...``). :func:`degenerate` names the first such shape
an answer shows, so an eval can count them apart from merely wrong answers.
"""

from __future__ import annotations

import re
from collections import Counter
from itertools import pairwise

from services.rag.markup import HTML_TAG

EMPTY = "empty"
MARKER_RUN = "marker run"
COUNTING_RUN = "counting run"
REPEATED_NGRAM = "repeated n-gram"
MARKUP_COPIED = "markup copied"
PROMPT_COPIED = "prompt copied"
REASONS = (MARKER_RUN, EMPTY, COUNTING_RUN, MARKUP_COPIED, PROMPT_COPIED, REPEATED_NGRAM)

# Thresholds: above what a 1-3 sentence answer with a few citations ever needs.
MARKER_RUN_MIN = 4  # markers in a row: "[1][2][3][4]"
COUNTING_RUN_MIN = 5  # consecutive integers in a row: "3. 4. 5. 6. 7."
NUMBERED_LINES_MIN = 6  # lines numbered 1. to 6.: a list, not a 1-3 sentence answer
NGRAM = 4  # words
NGRAM_REPEATS = 3  # the same 4 words three times: a loop

_MARKER = re.compile(r"\[(\d{1,3})\]")
_MARKER_RUN = re.compile(rf"\[\d{{1,3}}\](?:[\s,;]*\[\d{{1,3}}\]){{{MARKER_RUN_MIN - 1},}}")
_LISTED = re.compile(r"^\s*\[\d{1,3}\]", re.MULTILINE)  # a line that starts with a marker
# Integers separated by nothing but punctuation and spaces ("3. 4. 5.", "1, 2, 3").
_NUMBER_SPAN = re.compile(r"\d+(?:[\s.,;:)\-]+\d+)+")
# "1. The service ...\n2. The port ...\n...": a numbered list past what an answer needs.
_NUMBERED_LINE = re.compile(r"^\s*(\d+)[.)]\s", re.MULTILINE)
_MD_LINK = re.compile(r"!?\[[^\]\n]*\]\([^)\s]*\)")
_MD_IMAGE = re.compile(r"!\[[^\]\n]*\]")
_TABLE_ROW = re.compile(r"^\s*\|.*\|\s*$", re.MULTILINE)
_TABLE_RULE = re.compile(r"^\s*\|?\s*:?-{3,}:?\s*\|", re.MULTILINE)
_WORD = re.compile(r"\w+")
# A block of a RAG prompt opening (on a line or after a marker): the model went on writing
# prompts, not answering.
_PROMPT_BLOCK = re.compile(
    r"(?:^|(?<=\]))\s*(?:Question|Context(?: passages)?|Passages|Rules|Instructions)\s*:",
    re.MULTILINE,
)


def degenerate(answer: str) -> str | None:
    """Why ``answer`` is degenerate (one of :data:`REASONS`), or None when it is not."""
    markers = [int(n) for n in _MARKER.findall(answer)]
    if (
        _MARKER_RUN.search(answer)
        or len(_LISTED.findall(answer)) >= MARKER_RUN_MIN
        or _longest_count(markers) >= COUNTING_RUN_MIN  # "[1] a: [2] b: [3] c: [4] d: [5]"
    ):
        return MARKER_RUN
    if not _WORD.search(_MARKER.sub(" ", answer)):
        return EMPTY
    if (
        any(
            _longest_count([int(n) for n in re.findall(r"\d+", span.group(0))]) >= COUNTING_RUN_MIN
            for span in _NUMBER_SPAN.finditer(answer)
        )
        or _longest_count([int(n) for n in _NUMBERED_LINE.findall(answer)]) >= NUMBERED_LINES_MIN
    ):
        return COUNTING_RUN
    if (
        _MD_LINK.search(answer)
        or _MD_IMAGE.search(answer)
        or HTML_TAG.search(answer)
        or _TABLE_ROW.search(answer)
        or _TABLE_RULE.search(answer)
    ):
        return MARKUP_COPIED
    if _PROMPT_BLOCK.search(answer):
        return PROMPT_COPIED
    words = [w.lower() for w in _WORD.findall(_MARKER.sub(" ", answer))]
    grams = Counter(tuple(words[i : i + NGRAM]) for i in range(len(words) - NGRAM + 1))
    if grams and max(grams.values()) >= NGRAM_REPEATS:
        return REPEATED_NGRAM
    return None


def _longest_count(numbers: list[int]) -> int:
    """The longest stretch of consecutive integers counting up by one."""
    longest = run = min(1, len(numbers))
    for prev, cur in pairwise(numbers):
        run = run + 1 if cur == prev + 1 else 1
        longest = max(longest, run)
    return longest
