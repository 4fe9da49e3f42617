"""Plain text for the model: the markup of retrieved chunks removed, their words kept.

Retrieval stores chunks as their documents wrote them: Markdown links and images, badges, HTML
left inside Markdown, table pipes and rules. A small model copies that markup into its answer
(issue 16) and spends its context on URLs; what it needs is the text. Only markup is removed:
a bare URL, code, or a ``<placeholder>`` that is not an HTML tag stays as written.
"""

from __future__ import annotations

import html
import re

# Tags of HTML elements, by name: "<module>" or "List<int>" in a technical text are words.
_TAG_NAMES = (
    "a|abbr|b|big|blockquote|body|br|button|caption|center|cite|code|col|colgroup|dd|del|"
    "details|div|dl|dt|em|figcaption|figure|font|footer|form|h[1-6]|head|header|hr|html|i|"
    "iframe|img|input|ins|kbd|label|li|link|main|mark|meta|nav|ol|p|picture|pre|s|samp|"
    "section|small|source|span|strike|strong|sub|summary|sup|svg|table|tbody|td|tfoot|th|"
    "thead|tr|tt|u|ul|var|video"
)
HTML_TAG = re.compile(rf"</?(?:{_TAG_NAMES})(?:\s[^<>]*)?/?>", re.IGNORECASE)
_HTML_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
# A link target: no spaces, one level of parentheses (Wikipedia's "Foo_(bar)"), a title.
_TARGET = r"\((?:[^()\s]|\([^()\s]*\))*(?:\s+\"[^\"]*\")?\)"
# Not after a word or a bracket: handlers[name](request) and m[0][1] are code.
_MD_IMAGE = re.compile(rf"(?<![\w\])])!\[[^\]\n]*\](?:{_TARGET}|\[[^\]\n]*\])")
_MD_LINK = re.compile(rf"(?<![\w\])])\[([^\]\n]*)\](?:{_TARGET}|\[[^\]\n]*\])")
_MD_LINK_DEF = re.compile(r"^\s*\[[^\]\n]+\]:\s*\S+.*$", re.MULTILINE)
_AUTOLINK = re.compile(r"<((?:https?|ftp|mailto):[^<>\s]+)>")
# A bracketed number standing alone (a footnote "[1]"), not an index like argv[1]: the prompt's
# passages are numbered so, and the model would cite it.
_BRACKET_NUMBER = re.compile(r"(?<![\w\])])\[(\d{1,3})\]")
_FENCE = re.compile(r"^\s*(?:```|~~~).*$", re.MULTILINE)
_RULE = re.compile(r"^\s*(?:[-=_*+|:]\s*){3,}$", re.MULTILINE)  # ---, ***, |---|:--:|, +===+
_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+", re.MULTILINE)
_QUOTE = re.compile(r"^\s{0,3}>(?!>)\s?", re.MULTILINE)  # not a REPL's ">>>"
# **bold**, but not the **kwargs of a signature; __dunder__ names are left alone.
_STRONG = re.compile(r"(?<!\S)\*\*(?=[^\s*])((?:(?!\*\*)[^\n])+?)(?<=[^\s*])\*\*(?![\w*])")
_INVISIBLE = re.compile("[\u00b6\u200b\u200c\u200d\ufeff]")  # pilcrows, zero-width spaces
_SPACE = re.compile(r"\s+")


def _table_row(line: str) -> str:
    """``| a | b |`` -> ``a; b``: the cells' text, without the pipes."""
    stripped = line.strip()
    if not (stripped.startswith("|") and stripped.count("|") >= 2):
        return line
    cells = [c.strip() for c in stripped.replace("\\|", "\x00").strip("|").split("|")]
    return "; ".join(c.replace("\x00", "|") for c in cells if c)


def plain_text(text: str) -> str:
    """``text`` without link, image, HTML and table markup, on one line."""
    text = _HTML_COMMENT.sub(" ", text)
    text = _MD_IMAGE.sub(" ", text)
    text = _MD_LINK_DEF.sub(" ", text)
    # Twice: a badge is an image inside a link, and its link is left with empty text.
    text = _MD_LINK.sub(r"\1", _MD_LINK.sub(r"\1", text))
    text = _AUTOLINK.sub(r"\1", text)
    text = HTML_TAG.sub(" ", text)
    text = html.unescape(text)
    text = _FENCE.sub(" ", text)
    text = _RULE.sub(" ", text)
    text = "\n".join(_table_row(line) for line in text.splitlines())
    text = _HEADING.sub("", text)
    text = _QUOTE.sub("", text)
    text = _STRONG.sub(r"\1", text)
    text = _BRACKET_NUMBER.sub(r"(\1)", text)
    text = _INVISIBLE.sub("", text)
    return _SPACE.sub(" ", text).strip()
