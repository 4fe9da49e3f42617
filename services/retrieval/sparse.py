"""BM25 sparse vectors: the lexical half of hybrid search.

Dense embeddings find paraphrases but miss rare exact terms (``check_returncode``,
``--no-deps``, ``ENOENT``); BM25 finds those. A chunk's vector holds, per term, BM25's
saturated term frequency ``tf * (k1 + 1) / (tf + k1 * (1 - b + b * len / avg_len))``; a query's
vector holds 1.0 per distinct term. The IDF half is Qdrant's: the collection's sparse vector is
created with ``modifier: idf``, so Qdrant weighs each query term by its inverse document
frequency over the collection as it stands, and nothing here has to track corpus statistics.

Terms: words lower-cased and stemmed (Snowball English, as Qdrant's own BM25 model does), minus
English stop words; an identifier is kept whole as well as cut into its parts, so
``os.path.join`` matches the query ``os.path.join`` exactly and the query "path join" loosely,
and ``FileNotFoundError`` matches "file not found". A term's index is a 31-bit hash of it:
stable across processes and versions, so chunks and queries agree without a vocabulary.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections import Counter

from qdrant_client.models import SparseVector

# Part of the content hash: a change here re-ingests documents whose chunks it would change.
VERSION = "bm25-1"

_WORD = re.compile(r"[A-Za-z0-9_]+(?:[.\-][A-Za-z0-9_]+)*")
_PART = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|[0-9]+")
_STOP_WORDS = """
a about above after again against all am an and any are as at be because been before being
below between both but by can could did do does doing down during each few for from further had
has have having he her here hers herself him himself his how i if in into is it its itself just
me more most my myself no nor not now of off on once only or other our ours ourselves out over
own same she should so some such than that the their theirs them themselves then there these
they this those through to too under until up very was we were what when where which while who
whom why will with would you your yours yourself yourselves
"""
_STOP = frozenset(_STOP_WORDS.split())


@functools.cache
def _stemmer() -> object:
    import snowballstemmer

    return snowballstemmer.stemmer("english")


@functools.lru_cache(maxsize=65536)
def _stem(word: str) -> str:
    stem: str = _stemmer().stemWord(word)  # type: ignore[attr-defined]
    return stem


def terms(text: str) -> list[str]:
    """The terms of a text, in order, repeated as often as they occur."""
    out: list[str] = []
    for match in _WORD.finditer(text):
        out.extend(_word_terms(match.group(0)))
    return out


@functools.lru_cache(maxsize=65536)
def _word_terms(word: str) -> tuple[str, ...]:
    parts = [p for piece in re.split(r"[._\-]+", word) for p in _PART.findall(piece)]
    out = [word.lower()] if len(parts) > 1 else []  # an identifier whole, unstemmed
    for part in parts:
        low = part.lower()
        if low in _STOP or (len(low) < 2 and not low.isdigit()):
            continue
        out.append(_stem(low))
    return tuple(out)


@functools.lru_cache(maxsize=65536)
def term_index(term: str) -> int:
    return int.from_bytes(hashlib.blake2b(term.encode(), digest_size=4).digest(), "little") >> 1


class BM25:
    """Chunk and query vectors; ``avg_len`` is the typical chunk length in terms."""

    def __init__(self, avg_len: float, k1: float = 1.2, b: float = 0.75) -> None:
        self.avg_len = avg_len
        self.k1 = k1
        self.b = b

    def document(self, text: str) -> SparseVector:
        found = terms(text)
        if not found:
            return SparseVector(indices=[], values=[])
        norm = self.k1 * (1 - self.b + self.b * len(found) / self.avg_len)
        weights: dict[int, float] = {}
        for term, tf in Counter(found).items():
            index = term_index(term)
            weights[index] = weights.get(index, 0.0) + tf * (self.k1 + 1) / (tf + norm)
        return SparseVector(indices=list(weights), values=list(weights.values()))

    @staticmethod
    def query(text: str) -> SparseVector:
        indices = sorted({term_index(t) for t in terms(text)})
        return SparseVector(indices=indices, values=[1.0] * len(indices))
