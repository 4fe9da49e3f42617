"""The text around the model: contexts without markup, the answer as shown (markers that name
nothing removed, runs collapsed, streamed alike), and the degenerate-answer detector. Pure
functions: the answers below are the shapes SmolLM2 wrote over real documents (issue 16)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.rag.citations import ShownStream, number_contexts, shown_answer
from services.rag.config import BUNDLED_PROMPT
from services.rag.markup import plain_text
from services.rag.quality import (
    COUNTING_RUN,
    EMPTY,
    MARKER_RUN,
    MARKUP_COPIED,
    PROMPT_COPIED,
    REPEATED_NGRAM,
    degenerate,
)
from services.rag.registry import ResolvedPrompt

# --------------------------------------------------------------------------- contexts


@pytest.mark.parametrize(
    ("raw", "plain"),
    [
        ("See the [QuickStart](https://www.python-httpx.org/quickstart/).", "See the QuickStart."),
        ("[![Test Suite](https://x/badge.svg)](https://x/actions) HTTPX", "HTTPX"),
        ('<p align="center"><strong>HTTPX</strong> <em>- a client</em></p>', "HTTPX - a client"),
        ('![logo](img/a.png "The logo") Install it.', "Install it."),
        ("[wiki](https://en.wikipedia.org/wiki/Foo_(bar)) ok", "wiki ok"),
        ("Read [the guide][guide].\n\n[guide]: https://example.org/guide", "Read the guide."),
        (
            "| setting | default |\n| --- | :---: |\n| `RAG_TOP_K` | 4 |",
            "setting; default `RAG_TOP_K`; 4",
        ),
        (
            "## Installation\n\n```shell\n$ pip install httpx\n```",
            "Installation $ pip install httpx",
        ),
        ("a &amp; b &lt;module&gt; x\u00a0\u00a0y ¶", "a & b <module> x y"),
        (
            "Footnote [1] and argv[1], m[0][1], handlers[name](request)",
            "Footnote (1) and argv[1], m[0][1], handlers[name](request)",
        ),
        (
            "f(*args, **kwargs) and **bold** and __init__",
            "f(*args, **kwargs) and bold and __init__",
        ),
        (">>> import httpx\n> quoted <!-- hidden --> text", ">>> import httpx quoted text"),
        (
            "Visit <https://example.org> or https://example.com/x",
            "Visit https://example.org or https://example.com/x",
        ),
        ("List<int> and `x | y` and cat a | grep b", "List<int> and `x | y` and cat a | grep b"),
    ],
)
def test_plain_text_keeps_the_words_and_drops_the_markup(raw: str, plain: str) -> None:
    assert plain_text(raw) == plain


def test_contexts_are_plain_and_a_chunk_without_text_gets_no_number() -> None:
    chunks = [
        {"id": "a", "text": "[![badge](https://x/b.svg)](https://x)", "headings": ["Top"]},
        {
            "id": "b",
            "text": "Install with [pip](https://pip.pypa.io): `pip install x`",
            "headings": ["## Setup"],
        },
        {"id": "c", "text": "| key | value |\n|---|---|\n| port | 8006 |", "headings": []},
    ]
    context, used = number_contexts(chunks, 6000)
    assert [c["id"] for c in used] == ["b", "c"]
    assert context == "[1] Setup: Install with pip: `pip install x`\n\n[2] key; value port; 8006"


# --------------------------------------------------------------------------- the shown answer


@pytest.mark.parametrize(
    ("answer", "shown"),
    [
        (
            "Returned within 30 days [1]. Digital goods are not [1][7].",
            "Returned within 30 days [1]. Digital goods are not [1].",
        ),
        (
            "It is dumps [2] [5] [6] [7] [8] [9] [10] [11] [12] [13] [14] [15] [16].",
            "It is dumps [2].",
        ),
        ("Use add_subparsers() [3] [3], [1] [3].", "Use add_subparsers() [3][1]."),
        ("Returned [7] within 30 days [9].", "Returned within 30 days."),
        ("[7] Returned within 30 days [8], even opened", "Returned within 30 days, even opened"),
        ("[1]\n\n[2]\n\n[3]\n\n[4]\n\n[5]\n\n[6]", "[1][2][3][4]"),
        ("[5] [6] [7]", ""),
        ("Plain text, no markers.", "Plain text, no markers."),
        ("Response [200 OK] and list[0] and [12345]", "Response [200 OK] and list[0] and [12345]"),
    ],
)
def test_shown_answer_drops_invalid_markers_and_collapses_runs(answer: str, shown: str) -> None:
    assert shown_answer(answer, 4) == shown


# Answers made of the pieces that matter (markers, digits, blanks, punctuation, words), cut
# anywhere: the model's tokens and the proxy's chunks fall where they will.
_PIECE = st.lists(
    st.sampled_from(["[", "]", "1", "4", "7", "12", " ", "\n", ",", ".", "a", "word", "_"]),
    max_size=6,
).map("".join)


@settings(max_examples=300, deadline=None)
@given(pieces=st.lists(_PIECE, max_size=25), contexts=st.integers(0, 5))
def test_a_streamed_answer_is_shown_as_the_whole_would_be(pieces: list[str], contexts: int) -> None:
    stream = ShownStream(contexts)
    sent = [stream.feed(p) for p in pieces] + [stream.close()]
    assert "".join(sent) == shown_answer("".join(pieces), contexts)


def test_a_stream_holds_back_only_what_a_marker_run_may_change() -> None:
    stream = ShownStream(2)
    assert stream.feed("Use add_subparsers()") == "Use add_subparsers()"
    assert stream.feed(" [1") == ""  # may become [1], [12] or [1]-something
    assert stream.feed("] [9] [2]") == ""  # a run: not over yet
    assert stream.feed(". It") == " [1][2]. It"
    assert stream.close() == ""


# --------------------------------------------------------------------------- degenerate


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ("[1]\n\n[2]\n\n[3]\n\n[4]\n\n[5]\n\n[6]", MARKER_RUN),
        ("It is dumps [5] [6] [7] [8] [9] [10] [11] [12]", MARKER_RUN),
        ("[1] Exceptions\n[2] Basic Usage\n[3] Changes to JSON\n[4] Changes to JSON", MARKER_RUN),
        ("", EMPTY),
        ("  [1] . ", EMPTY),
        ("The steps are 3. 4. 5. 6. 7. 8. 9.", COUNTING_RUN),
        ("1. The service.\n2. The port.\n3. The server.\n4. A.\n5. B.\n6. C.", COUNTING_RUN),
        (
            "1. [1] Using it: [2] Using subprocess.run: [3] Replacing: [4] Arguments: [5]",
            MARKER_RUN,
        ),
        ("It captures [1] Question: Which argument of subprocess.run captures", PROMPT_COPIED),
        ("1, 2, 3, 4, 5, 6", COUNTING_RUN),
        ("See the [QuickStart](https://www.python-httpx.org/quickstart/) [1].", MARKUP_COPIED),
        ('<img src="https://x/logo.png" alt="HTTPX"> HTTPX is a client.', MARKUP_COPIED),
        ("| setting | default |\n| --- | --- |", MARKUP_COPIED),
        ("Use pip [1].\n\nQuestion: How do I install HTTPX?", PROMPT_COPIED),
        ("Rules:\n- Use only the information in the context passages", PROMPT_COPIED),
        (
            "The main purpose of this method is to create a parser. The main purpose of this "
            "method is to create a parser. The main purpose of this method is to create",
            REPEATED_NGRAM,
        ),
    ],
)
def test_degenerate_answers_are_named(answer: str, reason: str) -> None:
    assert degenerate(answer) == reason


@pytest.mark.parametrize(
    "answer",
    [
        "json.dumps() serializes obj to a JSON formatted str [1].",
        "Sub-commands are created with the add_subparsers() method [1][2].",
        "Install it with pip install httpx[http2] [1].",
        "The rag service listens on port 8006 [2]; retrieval on 8002 [3].",
        "Python 3.11.2 is in Debian 12, released 2023-06-10 [1].",
        "Steps: 1. install it, 2. configure it, 3. run it [1].",
        "1. Install it [1].\n2. Configure it [2].\n3. Run it [1].",
        "Cite [1], then [2], then [3], then [4].",
        "It returns a list[str] and accepts <module> names [1][2][3].",
        "I don't know.",
        "The question says nothing: the context does not contain the answer.",
    ],
)
def test_ordinary_answers_are_not_degenerate(answer: str) -> None:
    assert degenerate(answer) is None


def test_the_bundled_prompt_fills_its_two_variables() -> None:
    """The bundled prompt (version 2 of issue 16, promoted through the eval gate): the two
    variables the pipeline fills, and markers like [1]."""
    bundled = BUNDLED_PROMPT.read_text(encoding="utf-8")
    text = ResolvedPrompt("rag-answer", "2", bundled, "registry", ()).render(
        context="[1] json.dumps: serialize obj.", question="Which function serializes?"
    )
    assert "[1] json.dumps: serialize obj." in text and "Which function serializes?" in text
    assert "{{" not in text and "like [1]" in bundled
