"""Check the public retrieval eval set (eval/python-docs.jsonl) against its corpus.

The corpus is Python 3.11's own HTML documentation from Debian's ``python3-doc`` package
(see corpus.txt). Every document is loaded with the platform's HTML loader, exactly as
ingestion would read it, and every question is verified:

* ids are unique, the type is one of keyword / conceptual / multi, the fields are present;
* every expected document is listed in corpus.txt and exists on disk;
* ``source`` is the first expected document;
* every expected passage occurs (case-insensitive, whitespace-collapsed) inside one block of
  at least one expected document, and is distinctive: it occurs in at most
  ``MAX_PASSAGE_BLOCKS`` blocks of the whole corpus;
* a multi question names at least two passages;
* no document is expected by more than ``MAX_PER_DOCUMENT`` questions.

``check()`` returns the problems (an empty list when the set is valid), so a test can call it;
its ``loader`` argument lets the same set be verified against another HTML loader.

Run it from the repository root::

    .venv/bin/python eval/python-docs/check.py

It prints a summary and exits non-zero when anything is wrong.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
if str(REPO) not in sys.path:  # run as a script: make `services` importable
    sys.path.insert(0, str(REPO))

from services.retrieval.loaders import Block, load  # noqa: E402

CORPUS_ROOT = Path("/usr/share/doc/python3-doc/html")
CORPUS_FILE = HERE / "corpus.txt"
DATASET = HERE.parent / "python-docs.jsonl"

TYPES = ("keyword", "conceptual", "multi")
REQUIRED = (
    "id",
    "question",
    "type",
    "expected_documents",
    "expected_passages",
    "expected_facts",
    "source",
)
MAX_PASSAGE_BLOCKS = 5  # a phrase found in more blocks than this does not point at a passage
MAX_PER_DOCUMENT = 4  # questions naming one document

Loader = Callable[[str], list[Block]]


@dataclass
class Summary:
    """What check() saw, for the printed summary."""

    documents: int = 0
    corpus_bytes: int = 0
    questions: int = 0
    types: dict[str, int] = field(default_factory=dict)
    documents_covered: int = 0


def normalize(text: str) -> str:
    """Lower-cased, with every run of whitespace collapsed to one space."""
    return " ".join(text.split()).lower()


def read_corpus(corpus_file: Path) -> list[str]:
    """Document ids of corpus.txt, in order: non-empty lines that are not `#` comments."""
    docs: list[str] = []
    for line in corpus_file.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            docs.append(line)
    return docs


def _html_loader(text: str) -> list[Block]:
    return load(text, "text/html")


def load_blocks(
    corpus_root: Path, docs: Sequence[str], loader: Loader = _html_loader
) -> dict[str, list[str]]:
    """Each existing document's blocks as normalized text (missing documents are left out)."""
    out: dict[str, list[str]] = {}
    for doc in docs:
        path = corpus_root / doc
        if path.is_file():
            out[doc] = [normalize(b.text) for b in loader(path.read_text(encoding="utf-8"))]
    return out


def read_dataset(dataset: Path) -> tuple[list[dict[str, object]], list[str]]:
    rows: list[dict[str, object]] = []
    problems: list[str] = []
    for number, line in enumerate(dataset.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(f"line {number}: not JSON: {exc}")
            continue
        if not isinstance(row, dict):
            problems.append(f"line {number}: not a JSON object")
            continue
        rows.append(row)
    return rows, problems


def _strings(value: object) -> list[str] | None:
    """The value as a non-empty list of non-empty strings, or None."""
    if not isinstance(value, list) or not value:
        return None
    if not all(isinstance(v, str) and v.strip() for v in value):
        return None
    return [str(v) for v in value]


def _count_blocks(phrase: str, blocks: dict[str, list[str]]) -> int:
    return sum(phrase in block for doc_blocks in blocks.values() for block in doc_blocks)


def check(
    corpus_root: Path,
    corpus_file: Path,
    dataset: Path,
    loader: Loader = _html_loader,
    summary: Summary | None = None,
) -> list[str]:
    """Every problem of the dataset against the corpus (empty when all is well).

    ``loader`` turns a page's HTML into blocks (the platform's loader by default);
    ``summary``, when given, is filled with counts.
    """
    problems: list[str] = []
    docs = read_corpus(corpus_file)
    for doc, n in Counter(docs).items():
        if n > 1:
            problems.append(f"corpus: {doc} listed {n} times")
    for doc in docs:
        if not (corpus_root / doc).is_file():
            problems.append(f"corpus: {doc} does not exist under {corpus_root}")
    blocks = load_blocks(corpus_root, docs, loader)
    corpus = set(docs)

    rows, read_problems = read_dataset(dataset)
    problems += read_problems
    ids: Counter[str] = Counter()
    types: Counter[str] = Counter()
    per_doc: Counter[str] = Counter()
    for index, row in enumerate(rows, start=1):
        qid = row.get("id")
        where = f"question {qid if isinstance(qid, str) else '#' + str(index)}"
        missing = [name for name in REQUIRED if name not in row]
        if missing:
            problems.append(f"{where}: missing {', '.join(missing)}")
            continue
        if not isinstance(qid, str) or not qid.strip():
            problems.append(f"{where}: id must be a non-empty string")
        else:
            ids[qid] += 1
        question = row["question"]
        if not isinstance(question, str) or not question.strip():
            problems.append(f"{where}: question must be a non-empty string")
        qtype = row["type"]
        if qtype not in TYPES:
            problems.append(f"{where}: type {qtype!r} is not one of {', '.join(TYPES)}")
        else:
            types[str(qtype)] += 1
        expected = _strings(row["expected_documents"])
        passages = _strings(row["expected_passages"])
        facts = _strings(row["expected_facts"])
        if expected is None:
            problems.append(f"{where}: expected_documents must be a non-empty list of strings")
            continue
        if passages is None:
            problems.append(f"{where}: expected_passages must be a non-empty list of strings")
            continue
        if facts is None:
            problems.append(f"{where}: expected_facts must be a non-empty list of strings")
        if row.get("source") != expected[0]:
            problems.append(f"{where}: source {row.get('source')!r} is not {expected[0]!r}")
        if qtype == "multi" and len(passages) < 2:
            problems.append(f"{where}: a multi question needs two or more expected passages")
        for doc in dict.fromkeys(expected):
            per_doc[doc] += 1
            if doc not in corpus:
                problems.append(f"{where}: expected document {doc} is not in the corpus")
            elif doc not in blocks:
                problems.append(f"{where}: expected document {doc} is missing on disk")
        for passage in passages:
            phrase = normalize(passage)
            if not any(phrase in block for doc in expected for block in blocks.get(doc, [])):
                problems.append(f"{where}: passage {passage!r} is in none of {expected}")
                continue
            found = _count_blocks(phrase, blocks)
            if found > MAX_PASSAGE_BLOCKS:
                problems.append(
                    f"{where}: passage {passage!r} is not distinctive "
                    f"({found} blocks in the corpus, at most {MAX_PASSAGE_BLOCKS})"
                )
    for qid, n in ids.items():
        if n > 1:
            problems.append(f"id {qid!r} is used {n} times")
    for doc, n in per_doc.items():
        if n > MAX_PER_DOCUMENT:
            problems.append(f"{doc} is named by {n} questions (at most {MAX_PER_DOCUMENT})")
    if summary is not None:
        summary.documents = len(docs)
        summary.corpus_bytes = sum((corpus_root / doc).stat().st_size for doc in blocks)
        summary.questions = len(rows)
        summary.types = {t: types[t] for t in TYPES}
        summary.documents_covered = len(per_doc)
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--corpus-root", type=Path, default=CORPUS_ROOT)
    parser.add_argument("--corpus-file", type=Path, default=CORPUS_FILE)
    parser.add_argument("--dataset", type=Path, default=DATASET)
    args = parser.parse_args(argv)
    if not args.corpus_root.is_dir():
        print(f"{args.corpus_root} not found: install Debian's python3-doc", file=sys.stderr)
        return 2
    summary = Summary()
    problems = check(args.corpus_root, args.corpus_file, args.dataset, summary=summary)
    for problem in problems:
        print(f"PROBLEM {problem}")
    types = ", ".join(f"{t} {n}" for t, n in summary.types.items())
    print(
        f"corpus: {summary.documents} documents, {summary.corpus_bytes / 1e6:.1f} MB; "
        f"questions: {summary.questions} ({types}); "
        f"documents covered: {summary.documents_covered}; problems: {len(problems)}"
    )
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
