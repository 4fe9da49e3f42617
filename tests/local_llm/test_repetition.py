"""Repetition controls of the local model: what each does to the logits (in-process, on made-up
scores), and the real service with them: loops stopped, greedy still deterministic, OpenAI's
fields and the extensions taken per request over the server's settings."""

from __future__ import annotations

import math
from itertools import pairwise
from typing import Any

import httpx
import orjson
import pytest
import torch

from services.local_llm.config import LocalLLMSettings
from services.local_llm.generator import RepetitionControl, SamplingParams
from services.rag.quality import COUNTING_RUN, degenerate
from tests.conftest import ServiceProcess, assert_error, auth_headers

MODEL = "smollm2-135m-instruct"
VOCAB = 12
PROMPT = [5, 5, 5, 9]


def _apply(generated: list[int], **params: Any) -> torch.Tensor:
    control = RepetitionControl(torch, len(PROMPT), SamplingParams(max_new_tokens=8, **params))
    scores = torch.linspace(-3, 3, VOCAB).unsqueeze(0)  # token t: -3 + 6t/11, some negative
    out: torch.Tensor = control(torch.tensor([PROMPT + generated]), scores)
    return out[0]


BASE = torch.linspace(-3, 3, VOCAB)


def test_the_prompt_does_not_count() -> None:
    """Token 5 fills the prompt: a RAG answer must stay free to copy its context."""
    for params in (
        {"frequency_penalty": 1.0, "presence_penalty": 1.0},
        {"repetition_penalty": 1.5},
        {"no_repeat_ngram_size": 2},
    ):
        assert torch.equal(_apply([], **params), BASE)
        assert torch.equal(_apply([1], **params)[5], BASE[5])


def test_openai_frequency_and_presence_penalties() -> None:
    out = _apply([7, 7, 3], frequency_penalty=0.5, presence_penalty=0.25)
    assert out[7].item() == pytest.approx(BASE[7].item() - 2 * 0.5 - 0.25)
    assert out[3].item() == pytest.approx(BASE[3].item() - 0.5 - 0.25)
    untouched = [t for t in range(VOCAB) if t not in (3, 7)]
    assert torch.equal(out[untouched], BASE[untouched])


def test_repetition_penalty_pushes_both_signs_down() -> None:
    out = _apply([1, 10], repetition_penalty=2.0)
    assert BASE[1] < 0 and out[1].item() == pytest.approx(BASE[1].item() * 2)
    assert BASE[10] > 0 and out[10].item() == pytest.approx(BASE[10].item() / 2)


def test_no_repeat_ngram_forbids_the_token_that_would_repeat_one() -> None:
    # The completion holds (1, 2, 3) and ends with (1, 2): a 3 next would repeat it.
    out = _apply([1, 2, 3, 4, 1, 2], no_repeat_ngram_size=3)
    assert out[3].item() == -math.inf
    assert torch.equal(out[torch.arange(VOCAB) != 3], BASE[torch.arange(VOCAB) != 3])
    assert torch.equal(_apply([1, 2, 3, 4, 1], no_repeat_ngram_size=3), BASE)


def test_one_control_follows_a_whole_generation() -> None:
    """As transformers calls it, one step after another: n-grams indexed once, never missed."""
    control = RepetitionControl(torch, len(PROMPT), SamplingParams(8, no_repeat_ngram_size=2))
    tokens: list[int] = []
    for step in [4, 6, 4, 8, 6, 4]:
        scores = control(torch.tensor([PROMPT + tokens]), BASE.clone().unsqueeze(0))[0]
        banned = {t for t in range(VOCAB) if scores[t] == -math.inf}
        expected = {b for a, b in pairwise(tokens) if a == tokens[-1]}
        assert banned == expected
        tokens.append(step)


def test_settings_refuse_a_one_token_ngram() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        LocalLLMSettings(no_repeat_ngram_size=1, auth_disabled=True, env="dev")


# --------------------------------------------------------------------------- real service

# A prompt the model loops on with no control: "1. 1\n2. 2\n3. 3\n..." until max_tokens, the
# counting run it also falls into over real documents (and "[1]\n[2]\n[3]...").
LOOP = [{"role": "user", "content": "Count from 1 to 500, separated by commas."}]
OFF = {"no_repeat_ngram_size": 0, "repetition_penalty": 1.0, "frequency_penalty": 0}


def _chat(llm: ServiceProcess, **body: Any) -> httpx.Response:
    body = {"model": MODEL, "max_tokens": 48, "temperature": 0, **body}
    return httpx.post(
        f"{llm.url}/v1/chat/completions", json=body, headers=auth_headers(), timeout=300
    )


def _text(r: httpx.Response) -> str:
    assert r.status_code == 200, r.text
    text: str = r.json()["choices"][0]["message"]["content"]
    return text


def test_the_server_default_stops_a_loop_and_a_request_can_turn_it_off(
    local_llm: ServiceProcess,
) -> None:
    looping = _text(_chat(local_llm, messages=LOOP, **OFF))
    assert degenerate(looping) == COUNTING_RUN, looping
    controlled = _text(_chat(local_llm, messages=LOOP))  # the server's defaults
    assert degenerate(controlled) is None, controlled
    # Greedy decoding stays deterministic with the controls on, streamed or not.
    assert _text(_chat(local_llm, messages=LOOP)) == controlled
    streamed = []
    with httpx.stream(
        "POST",
        f"{local_llm.url}/v1/chat/completions",
        json={"model": MODEL, "messages": LOOP, "max_tokens": 48, "stream": True},
        headers=auth_headers(),
        timeout=300,
    ) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                for choice in orjson.loads(line[6:])["choices"]:
                    streamed.append(choice["delta"].get("content") or "")
    assert "".join(streamed) == controlled


def test_openai_penalties_are_taken_per_request(local_llm: ServiceProcess) -> None:
    plain = _text(_chat(local_llm, messages=LOOP, **OFF))
    penalized = _text(_chat(local_llm, messages=LOOP, **{**OFF, "frequency_penalty": 2.0}))
    assert penalized != plain


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("no_repeat_ngram_size", 1),
        ("no_repeat_ngram_size", -1),
        ("repetition_penalty", 0.5),
        ("frequency_penalty", 2.5),
        ("presence_penalty", "0.5"),
    ],
)
def test_bad_repetition_values_are_400(local_llm: ServiceProcess, field: str, value: Any) -> None:
    err = assert_error(_chat(local_llm, messages=LOOP, **{field: value}), 400)
    assert err["param"] == field or field in err["message"]
