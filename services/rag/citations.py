"""Citations: the ``[n]`` markers of an answer, mapped to the chunks the prompt numbered, and the
answer as shown: markers that name no chunk removed, runs of markers collapsed."""

from __future__ import annotations

import re
from typing import Any

from services.rag.fencing import fence
from services.rag.markup import plain_text

_MARKER = re.compile(r"\[(\d{1,3})\]")
# Markers side by side ("[1] [2]", "[1], [1]"), with the blanks before them on the same line.
_GROUP = re.compile(r"(?P<pre>[ \t]*)(?P<group>\[\d{1,3}\](?:[\s,]*\[\d{1,3}\])*)")
# Where the pipeline notes what it found in a retrieved chunk (prompt_injection:<heuristic>).
FLAGS = "_flags"
# What may still become part of a group: trailing blanks and commas, markers, a partial marker.
_OPEN_TAIL = re.compile(r"(?:[\s,]*\[\d{1,3}\])*[\s,]*(?:\[\d{0,3})?\Z")


def number_contexts(
    chunks: list[dict[str, Any]], max_chars: int, fence_lines: tuple[str, ...] = ()
) -> tuple[str, list[dict[str, Any]]]:
    """The context block of the prompt (``[1] text``, best chunks first) within ``max_chars``,
    and the chunks that made it in, in marker order. Where a chunk came from stays out of the
    prompt (small models copy it into the answer); the citations carry it instead. The text is
    :func:`plain_text`: markup the model would copy is dropped, and a chunk left with no text
    (a row of badges) gets no number. It is also :func:`fence`-d: chat-template markers and the
    template's own ``fence_lines`` in a chunk are neutralised, so retrieved text stays data."""
    parts: list[str] = []
    used: list[dict[str, Any]] = []
    total = 0
    for chunk in chunks:
        text = fence(plain_text(chunk.get("text") or ""), fence_lines)
        if not text:
            continue
        heading = fence(plain_text(" > ".join(chunk.get("headings", [])[-1:])), fence_lines)
        block = (
            f"[{len(used) + 1}] {heading + ': ' if heading and heading not in text else ''}{text}"
        )
        if used and total + len(block) > max_chars:
            break
        parts.append(block[:max_chars])
        used.append(chunk)
        total += len(block)
    return "\n\n".join(parts), used


def cite(answer: str, used: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[int]]:
    """Citations for the valid markers (first appearance order, each once) and the invalid ones
    (numbers no retrieved chunk has): a citation never points outside what was retrieved."""
    citations: list[dict[str, Any]] = []
    invalid: list[int] = []
    seen: set[int] = set()
    for match in _MARKER.finditer(answer):
        n = int(match.group(1))
        if n in seen:
            continue
        seen.add(n)
        if not 1 <= n <= len(used):
            invalid.append(n)
            continue
        chunk = used[n - 1]
        citations.append(
            {
                "marker": f"[{n}]",
                "chunk_id": chunk.get("id"),
                "document_id": chunk.get("doc_id"),
                "heading_path": list(chunk.get("headings", [])),
                "chunk_index": chunk.get("chunk_index"),
                "score": chunk.get("score"),
                "flags": list(chunk.get(FLAGS, ())),
            }
        )
    return citations, invalid


def shown_answer(answer: str, contexts: int) -> str:
    """The answer as shown to people: each run of markers becomes its valid markers, each once,
    side by side (with 3 contexts, ``[2] [7] [2]`` -> ``[2]`` and ``[1], [3]`` -> ``[1][3]``);
    a run with none is removed, with the blank before it. One marker glued to a word
    (``argv[1]``) is left as written: it may be code. The invalid markers stay reported apart
    (``invalid_citations``, from the model's own text)."""

    def one(m: re.Match[str]) -> str:
        numbers = [int(x) for x in _MARKER.findall(m.group("group"))]
        before = m.string[m.start() - 1 : m.start()]
        if len(numbers) == 1 and not m.group("pre") and (before.isalnum() or before == "_"):
            return m.group(0)  # argv[1], list[0]: an index in code, whatever it names
        seen: list[int] = []
        for n in numbers:
            if 1 <= n <= contexts and n not in seen:
                seen.append(n)
        if seen:
            return m.group("pre") + "".join(f"[{n}]" for n in seen)
        after = m.string[m.end() : m.end() + 1]
        # "returned [7] within" -> "returned within"; "returned [7]." -> "returned."
        return " " if m.group("pre") and (after.isalnum() or after == "_") else ""

    return _GROUP.sub(one, answer).strip()


class ShownStream:
    """:func:`shown_answer` for an answer that arrives in pieces: what :meth:`feed` and
    :meth:`close` return, joined, is ``shown_answer`` of the whole.

    Markers, and the blanks and commas between them, are held back until the next other
    character settles the run they belong to; everything before is final. Held text is a few
    characters, a run of markers at most, so a stream stays a stream.
    """

    def __init__(self, contexts: int) -> None:
        self.contexts = contexts
        self.raw = ""
        self.sent = ""

    def feed(self, piece: str) -> str:
        self.raw += piece
        match = _OPEN_TAIL.search(self.raw)
        settled = self.raw[: match.start()] if match else self.raw
        return self._advance(shown_answer(settled, self.contexts))

    def close(self) -> str:
        return self._advance(shown_answer(self.raw, self.contexts))

    def _advance(self, shown: str) -> str:
        if not shown.startswith(self.sent):  # cannot happen (tested); never send a contradiction
            return ""
        piece = shown[len(self.sent) :]
        self.sent = shown
        return piece
