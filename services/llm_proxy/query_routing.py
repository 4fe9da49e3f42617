"""Query routing: choose a target alias per request, by meaning (``semantic``) or by cost
(``complexity``).

``semantic`` compares the embedding of the last user message with example utterances per route
(embedded once, when the catalog loads) and sends the request to the best route's target, or to
the default target when no route is similar enough: an unknown kind of question goes to the
general model rather than to a specialist. ``complexity`` is a rule with no model call at all
(length, code, math, multi-step wording, several questions) for a "small model first" alias.

This module only decides. Embedding the text (through the proxy's own embeddings alias) and
putting the decision in headers, metrics and traces is the proxy's part. Accuracy and latency of
both strategies on a labelled set: ``eval/routing_quality.py``.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

DEFAULT_ROUTE = "default"
COMPLEX_ROUTE = "complex"

Vector = npt.NDArray[np.floating[Any]]


class _Strict(BaseModel):
    # The catalog's base, repeated: the catalog imports these models, so importing it here
    # would be circular.
    model_config = ConfigDict(extra="forbid", frozen=True)


class Route(_Strict):
    """A named route: requests like its examples go to ``target`` (an alias of the catalog)."""

    name: str = Field(min_length=1, max_length=64)
    target: str = Field(min_length=1)
    examples: list[str] = Field(min_length=1)

    @field_validator("examples")
    @classmethod
    def _non_blank(cls, value: list[str]) -> list[str]:
        if any(not e.strip() for e in value):
            raise ValueError("examples must not be blank")
        return value


class SemanticRouting(_Strict):
    """``strategy: semantic``. A route's score is the cosine similarity of the query to its
    examples, aggregated by ``aggregation``; the best route wins if its score reaches
    ``threshold``, otherwise the request goes to ``default``.

    ``max`` (the nearest example) is the default: on the labelled set it was the more accurate
    (0.850 at threshold 0.2 against 0.842 for ``mean_top3`` at 0.15), and one more example widens
    a route without diluting it. The threshold suits all-MiniLM-L6-v2, whose similarities between
    short texts are low (related questions often score 0.2-0.4): at 0.5 most in-domain queries
    fell to the default. Another embedding model needs its own measurement.
    """

    embedding_alias: str = Field(min_length=1)
    threshold: float = Field(0.2, gt=0, le=1)
    default: str = Field(min_length=1, description="Target alias when no route is similar enough.")
    routes: list[Route] = Field(min_length=1)
    aggregation: Literal["max", "mean_top3"] = "max"

    @model_validator(mode="after")
    def _names(self) -> SemanticRouting:
        names = [r.name for r in self.routes]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"route names must be unique; repeated: {', '.join(dupes)}")
        if DEFAULT_ROUTE in names:
            raise ValueError(f"{DEFAULT_ROUTE!r} is reserved for the default route")
        return self


DEFAULT_KEYWORDS = (
    "step by step",
    "step-by-step",
    "prove",
    "proof",
    "derive",
    "derivation",
    "explain why",
    "analyze",
    "analyse",
    "compare",
    "trade-off",
    "trade-offs",
    "tradeoffs",
    "pros and cons",
    "design a",
    "architecture",
    "optimize",
    "optimise",
    "refactor",
    "debug",
    "implement",
    "algorithm",
    "complexity",
)


class ComplexityRouting(_Strict):
    """``strategy: complexity``. A request goes to ``complex`` when at least ``min_markers``
    markers are found, otherwise to ``default`` (the cheap model). Markers: ``length`` (over
    ``max_chars``), ``code``, ``math``, ``keywords`` (multi-step or reasoning words, whole-word,
    case-insensitive) and ``questions`` (``min_questions`` or more question marks)."""

    default: str = Field(min_length=1, description="The simple (cheap) target alias.")
    complex: str = Field(min_length=1)
    max_chars: int = Field(600, ge=1)
    code: bool = True
    math: bool = True
    keywords: tuple[str, ...] = DEFAULT_KEYWORDS
    min_questions: int = Field(2, ge=1)
    min_markers: int = Field(1, ge=1, le=5)

    @field_validator("keywords")
    @classmethod
    def _non_blank(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if any(not k.strip() for k in value):
            raise ValueError("keywords must not be blank")
        return value


@dataclass(frozen=True, slots=True)
class Decision:
    """Where a request goes and why; ``route`` and ``target`` are bounded by the config, so they
    can label metrics. ``reason`` is for headers, traces and logs."""

    route: str
    target: str
    score: float
    reason: str


def last_user_text(messages: Sequence[Any]) -> str:
    """The text of the last ``user`` message: a string content or its text parts joined by
    newlines (images and other parts ignored); empty if there is none."""
    for message in reversed(messages):
        if not isinstance(message, dict) or message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            return content
        if isinstance(content, list):
            texts = [
                p["text"]
                for p in content
                if isinstance(p, dict)
                and p.get("type", "text") == "text"
                and isinstance(p.get("text"), str)
            ]
            return "\n".join(texts)
        return ""
    return ""


def examples_text(cfg: SemanticRouting) -> list[str]:
    """Every example, route by route in config order: row i of the matrix given to
    :class:`SemanticRouter` must be the embedding of item i."""
    return [example for route in cfg.routes for example in route.examples]


class SemanticRouter:
    """Nearest-route choice over normalised example embeddings; cheap (one matrix-vector product
    over the examples), so it runs on the event loop."""

    def __init__(self, cfg: SemanticRouting, examples: Vector) -> None:
        matrix = np.asarray(examples, dtype=np.float32)
        expected = sum(len(r.examples) for r in cfg.routes)
        if matrix.ndim != 2 or matrix.shape[0] != expected:
            raise ValueError(
                f"expected a matrix of {expected} example embeddings, got shape {matrix.shape}"
            )
        norms = np.linalg.norm(matrix, axis=1, keepdims=True)
        if not np.all(np.isfinite(norms)) or np.any(norms == 0):
            raise ValueError("example embeddings must be finite and non-zero")
        self.cfg = cfg
        self.dimension = int(matrix.shape[1])
        self._matrix = np.ascontiguousarray(matrix / norms)
        bounds = np.cumsum([0] + [len(r.examples) for r in cfg.routes])
        self._starts = bounds[:-1]
        self._segments = [(int(a), int(b)) for a, b in itertools.pairwise(bounds)]

    def scores(self, vector: Vector) -> npt.NDArray[np.float32]:
        """One aggregated similarity per route, in config order."""
        query = np.asarray(vector, dtype=np.float32).reshape(-1)
        if query.shape[0] != self.dimension:
            raise ValueError(f"expected a vector of {self.dimension} values, got {query.shape[0]}")
        norm = float(np.linalg.norm(query))
        if not np.isfinite(norm) or norm == 0:
            raise ValueError("the query embedding must be finite and non-zero")
        sims = self._matrix @ (query / norm)
        if self.cfg.aggregation == "max":
            return np.maximum.reduceat(sims, self._starts)
        out = np.empty(len(self._segments), dtype=np.float32)
        for i, (a, b) in enumerate(self._segments):
            seg = sims[a:b]
            k = min(3, seg.shape[0])
            out[i] = np.partition(seg, seg.shape[0] - k)[-k:].mean()
        return out

    def choose(self, vector: Vector) -> Decision:
        """The best route, or the default one when its score is under the threshold. Ties go
        to the route listed first."""
        scores = self.scores(vector)
        best = int(np.argmax(scores))  # first of equal maxima: config order
        score = float(scores[best])
        route = self.cfg.routes[best]
        if score >= self.cfg.threshold:
            return Decision(route.name, route.target, score, f"similar to {route.name}")
        return Decision(
            DEFAULT_ROUTE,
            self.cfg.default,
            score,
            f"below threshold (nearest {route.name})",
        )

    def fallback(self, reason: str) -> Decision:
        """The default route without a score: no user text, or the embedding call failed."""
        return Decision(DEFAULT_ROUTE, self.cfg.default, 0.0, reason)


# Markers are looked up in the set of the text's words, by substring for symbols and phrases, and
# with small regexes run only when a cheap test says they may match: one big alternation took
# milliseconds on a few kilobytes (sre tries every branch at every position).
_WORD = re.compile(r"[a-z][a-z0-9_]*")
_CODE_SNIPPETS = (
    "```", "Traceback (most recent", "=>", "==", "!=", "&&", "||", "::", "()",
    ";\n", "{\n", "}\n", "\n    ", "\n\t",  # C-like line ends, indented lines
)  # fmt: skip
_CODE_SYNTAX_WORDS = frozenset(
    {"def", "class", "import", "from", "function", "const", "let", "var", "fn", "func", "return",
     "select", "public", "private", "static", "include", "await"}
)  # fmt: skip
_CODE_SYNTAX = re.compile(
    r"\bdef \w+\(|\bclass \w+[:({]|^\s*(?:import \w|from \S+ import )|\bfunction\s*\w*\("
    r"|\b(?:const|let|var) \w+ ?=|\bfn \w+[(<]|\bfunc \w+\(|\breturn [^\n]*;"
    r"|\bSELECT\b[^\n]*\bFROM\b|\b(?:public|private|static)\s+\w+[^\n]*[({]|#include\b"
    r"|\bawait \w+\(",
    re.MULTILINE,
)
# A file name (app.py) or a method call (x.f(), after a word character.
_CODE_DOTTED = re.compile(
    r"\.(?<=\w\.)(?:(?:py|js|ts|tsx|go|rs|java|cpp|rb|php|sql|sh|yaml|yml|json|toml)\b|\w+\()"
)
_CODE_ERROR = re.compile(r"[A-Z][a-z]\w*(?:Error|Exception)\b")  # KeyError, NullPointerException
_MATH_SYMBOLS = "∫∑√∏∞≤≥≠≈±\u00d7÷∂∇π"  # \u00d7: the multiplication sign
_MATH_WORDS = frozenset(
    {"integral", "integrate", "derivative", "differentiate", "equation", "equations", "theorem",
     "lemma", "matrix", "determinant", "eigenvalue", "eigenvalues", "probability", "polynomial",
     "inequality", "logarithm", "factorial", "induction"}
)  # fmt: skip
_MATH_PHRASES = ("solve for", "prove that", "show that")
_MATH_LATEX = re.compile(
    r"\\(?:frac|int|sum|sqrt|prod|lim|cdot|infty|alpha|beta|theta|pi|begin)\b"
    r"|\$[^\s$][^$\n]*[^\s$]\$"
)
# 3 * 4, 2^10, 7 - 2 (not 2023-24 nor 3/4/25), 2x + 3; then x^2; then y = 3 (after a "=").
_MATH_EXPR = re.compile(r"\d(?:\s*[+*^\u00d7]\s*\(?\d|\s+[-/]\s+\(?\d|[a-z]\s*[-+]\s*\d)|\^\s*\d")
_MATH_ASSIGN = re.compile(r"(?<![\w.])[a-z]\s*=\s*[-\d(]")
_MARKERS = 5  # length, code, math, keywords, questions


@lru_cache(maxsize=64)
def _keyword_sets(
    keywords: tuple[str, ...],
) -> tuple[frozenset[str], tuple[tuple[str, re.Pattern[str]], ...]]:
    """Plain words for the word set; phrases (or words with punctuation) as a substring to find
    first, then a regex to check that it stands between word boundaries."""
    words = {k.strip().lower() for k in keywords}
    single = frozenset(w for w in words if _WORD.fullmatch(w))
    phrases = tuple((w, re.compile(r"\b" + re.escape(w) + r"\b")) for w in sorted(words - single))
    return single, phrases


def _has_code(text: str, words: set[str]) -> bool:
    if any(s in text for s in _CODE_SNIPPETS):
        return True
    if words & _CODE_SYNTAX_WORDS and _CODE_SYNTAX.search(text):
        return True
    if text.rstrip().endswith((";", "{", "}")) or text.startswith(("    ", "\t")):
        return True
    if ("Error" in text or "Exception" in text) and _CODE_ERROR.search(text):
        return True
    return _CODE_DOTTED.search(text) is not None


def _has_math(text: str, lowered: str, words: set[str]) -> bool:
    if words & _MATH_WORDS or any(c in text for c in _MATH_SYMBOLS):
        return True
    if any(p in lowered for p in _MATH_PHRASES):
        return True
    if ("\\" in text or "$" in text) and _MATH_LATEX.search(text):
        return True
    if "=" in lowered and _MATH_ASSIGN.search(lowered):
        return True
    return _MATH_EXPR.search(lowered) is not None


def complexity_markers(cfg: ComplexityRouting, text: str) -> list[str]:
    """The names of the markers found in ``text``, in a fixed order."""
    found = []
    if len(text) > cfg.max_chars:
        found.append("length")
    # A long paste is judged on its head: the markers are about the kind of request, and the
    # length marker has fired anyway; this keeps the rule fast up to the size limit.
    head = text[: max(cfg.max_chars, 1000)]
    lowered = head.lower()
    words = set(_WORD.findall(lowered))
    if cfg.code and _has_code(head, words):
        found.append("code")
    if cfg.math and _has_math(head, lowered, words):
        found.append("math")
    if cfg.keywords:
        single, phrases = _keyword_sets(cfg.keywords)
        if words & single or any(w in lowered and p.search(lowered) for w, p in phrases):
            found.append("keywords")
    if head.count("?") >= cfg.min_questions:
        found.append("questions")
    return found


def complexity_choice(cfg: ComplexityRouting, messages: Sequence[Any]) -> Decision:
    """``complex`` when enough markers are found in the last user message, else ``default``;
    the score is the share of the five markers found."""
    found = complexity_markers(cfg, last_user_text(messages))
    score = len(found) / _MARKERS
    reason = ",".join(found) if found else "none"
    if len(found) >= cfg.min_markers:
        return Decision(COMPLEX_ROUTE, cfg.complex, score, reason)
    return Decision(DEFAULT_ROUTE, cfg.default, score, reason)
