"""Turn a document (Markdown, HTML, PDF or plain text) into blocks that keep their headings.

A block is a paragraph-level piece of text with the path of headings above it; the chunker
packs blocks into chunks and never lets a chunk cross a heading.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass

CONTENT_TYPES = {
    "text/markdown": "markdown",
    "text/x-markdown": "markdown",
    "text/plain": "text",
    "text/html": "html",
    "application/xhtml+xml": "html",
    "application/pdf": "pdf",
}
EXTENSIONS = {
    ".md": "text/markdown",
    ".markdown": "text/markdown",
    ".txt": "text/plain",
    ".text": "text/plain",
    ".rst": "text/plain",
    ".html": "text/html",
    ".htm": "text/html",
    ".pdf": "application/pdf",
}


class LoadError(ValueError):
    """The document cannot be read; the message says why (reported per document)."""


@dataclass(frozen=True)
class Block:
    headings: tuple[str, ...]
    text: str


_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_FENCE = re.compile(r"^(```|~~~)")
_MAX_TERM = 100  # characters of a definition term kept as a heading (long signatures)


def _paragraphs(text: str) -> list[str]:
    return [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]


def load_markdown(text: str) -> list[Block]:
    blocks: list[Block] = []
    path: list[tuple[int, str]] = []
    buf: list[str] = []
    in_fence = False

    def flush() -> None:
        heads = tuple(h for _, h in path)
        for para in _paragraphs("\n".join(buf)):
            blocks.append(Block(heads, para))
        buf.clear()

    for line in text.splitlines():
        if _FENCE.match(line.strip()):
            in_fence = not in_fence
            buf.append(line)
            continue
        m = None if in_fence else _HEADING.match(line)
        if m:
            flush()
            level = len(m.group(1))
            path = [(lvl, h) for lvl, h in path if lvl < level]
            path.append((level, m.group(2)))
        else:
            buf.append(line)
    flush()
    return blocks


def load_text(text: str) -> list[Block]:
    return [Block((), p) for p in _paragraphs(text)]


def load_html(raw: str) -> list[Block]:
    """Blocks under their heading path. A definition list's term (``<dt>``: a glossary entry,
    an API signature in Sphinx's pages) heads its definition like a sub-heading, one level
    deeper per nested list, so a function's description carries its signature; permalink
    anchors (Sphinx's pilcrows) are dropped."""
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(raw, "html.parser")
    for tag in soup(["script", "style", "noscript", "nav", "footer", "template"]):
        tag.decompose()
    for tag in soup.select("a.headerlink"):
        tag.decompose()
    blocks: list[Block] = []
    path: list[tuple[int, str]] = []
    title = soup.title.get_text(" ", strip=True) if soup.title else ""
    body = soup.body or soup
    for el in body.find_all(
        ["h1", "h2", "h3", "h4", "h5", "h6", "dt", "p", "li", "pre", "td", "blockquote"]
    ):
        name = el.name or ""
        text = el.get_text(" ", strip=True)
        if not text:
            continue
        if el.find_parent(["li", "td", "blockquote", "pre"]) is not None:
            continue  # its text is part of the enclosing block already
        depth = len(el.find_parents("dd"))  # inside how many definitions
        if name == "dt":  # a signature's parts are adjacent spans: join them as they stand
            term = re.sub(r"\s+", " ", el.get_text("", strip=True))
            term = term if len(term) <= _MAX_TERM else term[: _MAX_TERM - 1] + "…"
            path = [(lvl, h) for lvl, h in path if lvl < 7 + depth]
            path.append((7 + depth, term))
            continue
        if name.startswith("h") and len(name) == 2:
            level = int(name[1])
            path = [(lvl, h) for lvl, h in path if lvl < level]
            path.append((level, re.sub(r"\s+", " ", text)))
            continue
        path = [(lvl, h) for lvl, h in path if lvl <= 6 + depth]  # left a definition
        heads = tuple(h for _, h in path) or ((title,) if title else ())
        blocks.append(Block(heads, re.sub(r"[ \t]+", " ", text)))
    return blocks


def load_pdf(data: bytes) -> list[Block]:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(io.BytesIO(data))
        pages = [page.extract_text() or "" for page in reader.pages]
    except (PdfReadError, ValueError, KeyError, OSError) as exc:
        raise LoadError(f"not a readable PDF: {exc}") from exc
    blocks: list[Block] = []
    for number, text in enumerate(pages, start=1):
        for para in _paragraphs(text):
            blocks.append(Block((f"page {number}",), re.sub(r"\s+", " ", para)))
    return blocks


def load(content: bytes | str, content_type: str) -> list[Block]:
    kind = CONTENT_TYPES.get(content_type.split(";")[0].strip().lower())
    if kind is None:
        raise LoadError(
            f"unsupported content_type {content_type!r}; use one of {', '.join(CONTENT_TYPES)}"
        )
    if kind == "pdf":
        if isinstance(content, str):
            raise LoadError("a PDF must be sent as content_base64")
        blocks = load_pdf(content)
    else:
        if isinstance(content, bytes):
            try:
                content = content.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise LoadError(f"content is not UTF-8 text: {exc}") from exc
        blocks = {"markdown": load_markdown, "html": load_html, "text": load_text}[kind](content)
    if not blocks:
        raise LoadError("the document has no text")
    return blocks
