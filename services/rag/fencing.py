"""Retrieved text fenced as data: a passage cannot end its own passage or open a chat turn.

The prompt shows the passages between the template's own lines (``Numbered passages from the
documentation:`` ... ``{{ context }}`` ... ``Answer this question from the passages:``), each
one line starting with its ``[n]``. :func:`~services.rag.markup.plain_text` already makes a
chunk one line and turns a standalone ``[n]`` into ``(n)``, so a chunk cannot start a passage of
its own; what is left to neutralise here:

* chat-template markers a tokenizer may read as special tokens or a model as a turn
  (``<|im_start|>system``, ``<|eot_id|>``, ``[INST]``, ``<<SYS>>``, ``### System:``): rewritten
  as plain words in parentheses, so the text stays readable and no turn starts;
* the template's own lines around the context: quoted, so a document that writes "Answer this
  question from the passages: ..." reads as a quotation inside a passage, not as the prompt.

Detection is separate (:func:`services.common.injection.find_injection`, in the pipeline): a
flagged chunk is still answered from, and counted, logged and marked in the response.
"""

from __future__ import annotations

import re
from functools import lru_cache

# <|im_start|>, <|eot_id|>, <|system|>, and DeepSeek's with fullwidth bars (U+FF5C): any name.
_SPECIAL_TOKEN = re.compile(r"<[|\uff5c]\s*([A-Za-z_][\w.\-\u2581]{0,40})\s*[|\uff5c]>")
_INST = re.compile(r"\[\s*(/?)\s*INST\s*\]", re.IGNORECASE)
_SYS = re.compile(r"<<\s*(/?)\s*SYS\s*>>", re.IGNORECASE)
_ROLE_HEADER = re.compile(
    r"#{1,6}[ \t]*(system|assistant|user|human|developer|instructions?|response)[ \t]*:",
    re.IGNORECASE,
)
_VARIABLE = re.compile(r"\{\{\s*[A-Za-z_][\w.]*\s*\}\}")
# Shorter template lines ("Answer:") are everyday words in documentation: not worth quoting.
_MIN_FENCE_LINE = 16


@lru_cache(maxsize=32)
def fence_lines(template: str) -> tuple[str, ...]:
    """The template's lines next to ``{{ context }}``: the last one before it and the first one
    after it (the fence's opening and closing), without variables, long enough to be specific."""
    marker = re.search(r"\{\{\s*context\s*\}\}", template)
    if marker is None:
        return ()
    before = [line.strip() for line in template[: marker.start()].splitlines() if line.strip()]
    after = [line.strip() for line in template[marker.end() :].splitlines() if line.strip()]
    out = []
    for lines in (before[-1:], after[:1]):
        for line in lines:
            text = _VARIABLE.split(line)[0].strip()
            if len(text) >= _MIN_FENCE_LINE:
                out.append(text)
    return tuple(out)


@lru_cache(maxsize=32)
def _fence_pattern(lines: tuple[str, ...]) -> re.Pattern[str] | None:
    if not lines:
        return None
    # Blanks as the chunk has them (plain_text made every run of them one space).
    parts = [r"\s+".join(re.escape(word) for word in line.split()) for line in lines]
    return re.compile("|".join(parts), re.IGNORECASE)


def fence(text: str, lines: tuple[str, ...] = ()) -> str:
    """``text`` (a chunk's plain text) with chat-template markers made plain words and the
    template's own fence ``lines`` quoted."""
    if "<" in text:
        text = _SPECIAL_TOKEN.sub(r"(\1)", text)
        text = _SYS.sub(r"(\1SYS)", text)
    if "[" in text:
        text = _INST.sub(r"(\1INST)", text)
    if "#" in text:
        text = _ROLE_HEADER.sub(r"\1:", text)
    pattern = _fence_pattern(lines)
    if pattern is not None:
        text = pattern.sub(lambda m: f'"{m.group(0)}"', text)
    return text
