"""Citations: the ``[n]`` markers of an answer, mapped to the chunks the prompt numbered."""

from __future__ import annotations

import re
from typing import Any

_MARKER = re.compile(r"\[(\d{1,3})\]")


def number_contexts(
    chunks: list[dict[str, Any]], max_chars: int
) -> tuple[str, list[dict[str, Any]]]:
    """The context block of the prompt (``[1] text``, best chunks first) within ``max_chars``,
    and the chunks that made it in, in marker order. Where a chunk came from stays out of the
    prompt (small models copy it into the answer); the citations carry it instead."""
    parts: list[str] = []
    used: list[dict[str, Any]] = []
    total = 0
    for chunk in chunks:
        heading = " > ".join(chunk.get("headings", [])[-1:])
        text = (chunk.get("text") or "").strip()
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
            }
        )
    return citations, invalid
