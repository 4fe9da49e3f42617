"""Structure-aware chunking sized in the embedding model's tokens.

Blocks are grouped by heading section (a chunk never crosses a heading), packed paragraph by
paragraph up to the budget; a paragraph over the budget is split into sentences, a sentence
over it into word windows. Consecutive chunks of a section overlap by whole sentences or
paragraphs up to ``overlap`` tokens, so a fact cut by a boundary is still found whole.
"""

from __future__ import annotations

import math
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from itertools import groupby

from services.retrieval.loaders import Block

TokenCounter = Callable[[list[str]], Awaitable[list[int]]]

_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[]?[A-Z0-9])")


@dataclass(frozen=True)
class Chunk:
    index: int
    headings: tuple[str, ...]
    text: str
    tokens: int

    @property
    def embed_text(self) -> str:
        """What is embedded: the heading path gives a short chunk its context."""
        if not self.headings:
            return self.text
        return " > ".join(self.headings) + "\n\n" + self.text


@dataclass
class _Unit:
    text: str
    tokens: int
    sep: str  # joins it to the unit before it


def _split_words(text: str, tokens: int, budget: int) -> list[str]:
    words = text.split()
    pieces = max(2, math.ceil(tokens / (budget * 0.8)))
    size = max(1, math.ceil(len(words) / pieces))
    return [" ".join(words[i : i + size]) for i in range(0, len(words), size)]


async def chunk_blocks(
    blocks: list[Block], count: TokenCounter, budget: int, overlap: int
) -> list[Chunk]:
    sections = [
        (heads, [b.text for b in group])
        for heads, group in groupby(blocks, key=lambda b: b.headings)
    ]
    heading_texts = [" > ".join(h) for h, _ in sections]
    paragraphs = [p for _, paras in sections for p in paras]
    counts = await count(heading_texts + paragraphs)
    head_tokens, para_tokens = counts[: len(sections)], counts[len(sections) :]

    # Paragraphs over the budget become sentences (one more count for all of them).
    long = [i for i, n in enumerate(para_tokens) if n > budget]
    sentences = {i: [s for s in _SENTENCE.split(paragraphs[i]) if s.strip()] for i in long}
    flat = [s for i in long for s in sentences[i]]
    sentence_tokens = iter(await count(flat)) if flat else iter(())

    chunks: list[Chunk] = []
    p = 0
    for (heads, paras), htok in zip(sections, head_tokens, strict=True):
        room = max(16, budget - (htok + 2 if heads else 0))
        units: list[_Unit] = []
        for _ in paras:
            if p in sentences:
                for k, sentence in enumerate(sentences[p]):
                    n = next(sentence_tokens)
                    sep = "\n\n" if k == 0 else " "
                    if n > room:
                        for j, piece in enumerate(_split_words(sentence, n, room)):
                            est = math.ceil(n * len(piece.split()) / max(1, len(sentence.split())))
                            units.append(_Unit(piece, est, sep if j == 0 else " "))
                    else:
                        units.append(_Unit(sentence, n, sep))
            else:
                units.append(_Unit(paragraphs[p], para_tokens[p], "\n\n"))
            p += 1
        for text, tokens in _pack(units, room, overlap):
            chunks.append(Chunk(len(chunks), heads, text, tokens))
    return chunks


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
