"""Structure-aware chunking sized in the embedding model's tokens, with a checked limit.

Blocks are grouped by heading section (a chunk never crosses a heading) and packed paragraph by
paragraph up to the budget. A paragraph over the budget is cut into lines, a line into
sentences, a sentence into halves at whitespace, a run without whitespace (a URL, base64, a
minified line) into halves by characters; every piece is *counted* by the model's tokenizer,
never estimated. Consecutive chunks of a section overlap by whole pieces up to ``overlap``
tokens, so a fact cut by a boundary is still found whole.

The invariant: no chunk's embedded text (heading path included) is longer than the cap,
``min(budget, the model's max input - its special tokens)``. The final texts are counted
once more and any over the cap is split again, so a tokenizer whose counts do not add up
over concatenation cannot break it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from itertools import groupby
from typing import Protocol

from services.retrieval.loaders import Block, LoadError

_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[]?[A-Z0-9])")
_HEADING_SEP = " > "
_MAX_ROUNDS = 64  # splitting halves a piece each round: 64 rounds outgrow any document


class TokenCounter(Protocol):
    async def __call__(self, texts: list[str]) -> list[int]:
        """Tokens of each text, without the model's special tokens."""


@dataclass(frozen=True)
class Chunk:
    index: int
    headings: tuple[str, ...]
    text: str
    tokens: int  # of embed_text, counted by the model's tokenizer (special tokens excluded)

    @property
    def embed_text(self) -> str:
        """What is embedded: the heading path gives a short chunk its context."""
        return embed_text(self.headings, self.text)


def embed_text(headings: tuple[str, ...], text: str) -> str:
    if not headings:
        return text
    return _HEADING_SEP.join(headings) + "\n\n" + text


@dataclass
class _Unit:
    text: str
    tokens: int
    sep: str  # joins it to the unit before it


@dataclass
class _Piece:
    key: tuple[int, ...]  # orders the pieces of one text as they stood in it
    text: str
    sep: str
    level: int


def _split(text: str, level: int) -> tuple[list[tuple[str, str]], int]:
    """One cut of an over-long text: (part, separator) pairs and the level the parts are at.

    Levels: 0 lines, 1 sentences, 2 halves at whitespace, 3 halves by characters. A level that
    finds nothing to cut falls through to the next, so the result has at least two parts.
    """
    if level <= 0:
        lines = [line for line in text.split("\n") if line.strip()]
        if len(lines) > 1:
            return [(line, "\n") for line in lines], 1
    if level <= 1:
        sentences = [s for s in _SENTENCE.split(text) if s.strip()]
        if len(sentences) > 1:
            return [(s, " ") for s in sentences], 2
    if level <= 2:
        words = text.split()
        if len(words) > 1:
            # Halve by characters, at a word boundary, so each half is about the same size.
            total, seen, cut = len(text), 0, 1
            for i, word in enumerate(words[:-1], start=1):
                seen += len(word) + 1
                cut = i
                if seen >= total / 2:
                    break
            return [(" ".join(words[:cut]), " "), (" ".join(words[cut:]), " ")], 2
    middle = max(1, len(text) // 2)
    return [(text[:middle], ""), (text[middle:], "")], 3


async def _fit(
    texts: list[tuple[str, str]], room: int, count: TokenCounter, known: list[int] | None = None
) -> list[list[_Unit]]:
    """Each (text, separator) as units of at most ``room`` tokens, in order, every one counted.

    All the pieces of one round are counted in one call, so a document costs a handful of
    calls to the tokenizer however many pieces it has. ``known`` are counts already made.
    """
    done: list[list[tuple[tuple[int, ...], _Unit]]] = [[] for _ in texts]
    pending = [_Piece((i,), t, sep, 0) for i, (t, sep) in enumerate(texts)]
    counts = known
    for _ in range(_MAX_ROUNDS):
        if not pending:
            break
        if counts is None:
            counts = await count([p.text for p in pending])
        following: list[_Piece] = []
        for piece, n in zip(pending, counts, strict=True):
            if n <= room or len(piece.text) <= 1:  # one character cannot be cut: _checked says
                done[piece.key[0]].append((piece.key, _Unit(piece.text, n, piece.sep)))
                continue
            parts, level = _split(piece.text, piece.level)
            for j, (part, sep) in enumerate(parts):
                following.append(_Piece((*piece.key, j), part, piece.sep if j == 0 else sep, level))
        pending, counts = following, None
    if pending:
        raise LoadError("a text of this document could not be cut under the token budget")
    return [[unit for _, unit in sorted(units, key=lambda u: u[0])] for units in done]


async def _headings(
    paths: list[tuple[str, ...]], counts: list[int], count: TokenCounter, cap: int
) -> list[tuple[tuple[str, ...], int]]:
    """Each section's heading path and its tokens (``counts``: of the paths as given), kept to
    at most half the cap: outer headings are dropped first, then the innermost one is cut."""
    paths, counts = list(paths), list(counts)
    limit = cap // 2
    for _ in range(_MAX_ROUNDS):
        over = [i for i, (h, n) in enumerate(zip(paths, counts, strict=True)) if h and n > limit]
        if not over:
            break
        for i in over:  # the last character of a heading: no heading rather than none at all
            if len(paths[i]) == 1 and len(paths[i][0]) <= 1:
                paths[i], counts[i] = (), 0
        over = [i for i in over if paths[i]]
        for i in over:
            heads = paths[i]
            if len(heads) > 1:
                paths[i] = heads[1:]
            else:
                cut = heads[0][: len(heads[0]) // 2]
                paths[i] = (cut,) if cut else ()
        again = await count([_HEADING_SEP.join(paths[i]) for i in over])
        for i, n in zip(over, again, strict=True):
            counts[i] = n
    return [(h, n if h else 0) for h, n in zip(paths, counts, strict=True)]


async def chunk_blocks(
    blocks: list[Block], count: TokenCounter, budget: int, overlap: int, max_input: int
) -> list[Chunk]:
    """Chunks whose embedded text is at most ``min(budget, max_input)`` tokens (``max_input``:
    what the model accepts, special tokens excluded)."""
    cap = min(budget, max_input)
    sections = [
        (heads, [b.text for b in group])
        for heads, group in groupby(blocks, key=lambda b: b.headings)
    ]
    paths = [heads for heads, _ in sections]
    paragraphs = [(p, "\n\n") for _, paras in sections for p in paras]
    # Headings and paragraphs in one call to the tokenizer.
    first = await count([_HEADING_SEP.join(h) for h in paths] + [p for p, _ in paragraphs])
    headings = await _headings(paths, first[: len(paths)], count, cap)
    para_tokens = first[len(paths) :]

    # One fitting pass for all the sections that share a room size (almost always one).
    rooms = [max(1, cap - (htok + 2 if heads else 0)) for heads, htok in headings]
    units_of: list[list[_Unit]] = [[] for _ in paragraphs]
    owner = [s for s, (_, paras) in enumerate(sections) for _ in paras]
    for room in sorted(set(rooms)):
        idx = [i for i in range(len(paragraphs)) if rooms[owner[i]] == room]
        fitted = await _fit(
            [paragraphs[i] for i in idx], room, count, [para_tokens[i] for i in idx]
        )
        for i, units in zip(idx, fitted, strict=True):
            units_of[i] = units

    drafts: list[tuple[tuple[str, ...], str, int]] = []
    p = 0
    for (heads, htok), (_, paras), room in zip(headings, sections, rooms, strict=True):
        units = [u for i in range(p, p + len(paras)) for u in units_of[i]]
        p += len(paras)
        for text, _ in _pack(units, room, overlap):
            drafts.append((heads, text, htok))
    return await _checked(drafts, count, cap)


async def _checked(
    drafts: list[tuple[tuple[str, ...], str, int]], count: TokenCounter, cap: int
) -> list[Chunk]:
    """Count the final embedded texts; split again any over the cap, until none is.

    Only a tokenizer whose counts do not add up when pieces are joined (a word cut in two by
    the character split is one example) gets here: the text is packed again in a smaller room,
    and a text that would come out whole again is halved instead, so every round makes it
    shorter and the loop ends.
    """
    for _ in range(_MAX_ROUNDS):
        real = await count([embed_text(h, t) for h, t, _ in drafts])
        over = {i for i, n in enumerate(real) if n > cap}
        if not over:
            return [
                Chunk(i, heads, text, n)
                for i, ((heads, text, _), n) in enumerate(zip(drafts, real, strict=True))
            ]
        again: list[tuple[tuple[str, ...], str, int]] = []
        for i, (heads, text, htok) in enumerate(drafts):
            if i not in over:
                again.append((heads, text, htok))
                continue
            if len(text) <= 1:
                raise LoadError(
                    f"a character of this document is {real[i]} tokens with its headings, "
                    f"more than the {cap} the chunks may hold"
                )
            room = max(1, cap - (htok + 2 if heads else 0) - (real[i] - cap))
            (units,) = await _fit([(text, "")], room, count)
            texts = [t for t, _ in _pack(units, room, 0)]
            if texts == [text]:
                texts = [part for part, _ in _split(text, 2)[0]]
            again.extend((heads, t, htok) for t in texts)
        drafts = again
    raise LoadError("the chunks of this document could not be brought under the token cap")


def _pack(units: list[_Unit], room: int, overlap: int) -> list[tuple[str, int]]:
    out: list[tuple[str, int]] = []
    current: list[_Unit] = []
    fresh = 0  # units in `current` not already emitted in a previous chunk

    def emit() -> None:
        text = current[0].text + "".join(u.sep + u.text for u in current[1:])
        out.append((text, sum(u.tokens for u in current)))

    for unit in units:
        size = sum(u.tokens for u in current)
        if current and fresh and size + unit.tokens > room:
            emit()
            carried: list[_Unit] = []
            total = 0
            for prev in reversed(current):
                if total + prev.tokens > overlap or total + prev.tokens + unit.tokens > room:
                    break
                carried.insert(0, prev)
                total += prev.tokens
            current = carried
            fresh = 0
        current.append(unit)
        fresh += 1
    if current and fresh:
        emit()
    return out
