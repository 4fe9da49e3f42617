"""The local-llm service as a client sees it (a real process, the official openai SDK), plus
in-process tests of the parts that need no model: stop strings, the cache, the queue."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from fastapi.testclient import TestClient
from openai import AsyncOpenAI, OpenAI

from services.local_llm import generator as gen_mod
from services.local_llm.app import create_app
from services.local_llm.config import LocalLLMSettings
from services.local_llm.generator import (
    CACHE_MARKER,
    Completion,
    ModelInfo,
    SamplingParams,
    Scheduler,
    StopScanner,
    cache_valid,
    load_model,
    write_cache,
)
from tests.conftest import API_KEY, ServiceProcess, assert_error, auth_headers, metric, scrape

MODEL = "smollm2-135m-instruct"
FRANCE = [{"role": "user", "content": "What is the capital of France?"}]
LONG = [{"role": "user", "content": "Count from 1 to 500, separated by commas."}]


# --------------------------------------------------------------------------- real service


@pytest.fixture(scope="module")
def llm(local_llm: ServiceProcess) -> ServiceProcess:
    """The service on its defaults with key auth: conftest's session-wide process (started with
    ``service_factory``), shared with the proxy's smoke test so the model loads once per run.
    The converted model is cached under the repo's .llmops/cache/local-llm, so only the first
    run ever pays for the GGUF conversion."""
    return local_llm


@pytest.fixture(scope="module")
def client(llm: ServiceProcess) -> Iterator[OpenAI]:
    with OpenAI(base_url=f"{llm.url}/v1", api_key=API_KEY, max_retries=0, timeout=120) as c:
        yield c


def test_models_lists_the_served_model(client: OpenAI) -> None:
    models = client.models.list().data
    assert [m.id for m in models] == [MODEL]
    extra = models[0].model_extra or {}
    assert extra["context_length"] == 8192
    assert extra["max_output_tokens"] == 512
    assert client.models.retrieve(MODEL).id == MODEL


def test_greedy_answer_and_usage(client: OpenAI) -> None:
    res = client.chat.completions.create(model=MODEL, messages=FRANCE, temperature=0, max_tokens=24)
    assert res.object == "chat.completion"
    assert res.id.startswith("chatcmpl-")
    assert res.model == MODEL
    choice = res.choices[0]
    assert choice.message.role == "assistant"
    assert "Paris" in (choice.message.content or "")
    assert choice.finish_reason == "stop"
    usage = res.usage
    assert usage is not None
    assert usage.prompt_tokens > 0 and usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_stream_matches_non_stream_and_ends_with_usage(client: OpenAI) -> None:
    plain = client.chat.completions.create(model=MODEL, messages=FRANCE, max_tokens=24)
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=FRANCE,
            max_tokens=24,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    deltas = [
        c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content
    ]
    assert len(deltas) > 1, "the answer came in one piece, not streamed"
    assert "".join(deltas) == plain.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop" and not any(finishes[:-1])
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.completion_tokens == plain.usage.completion_tokens
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens


def test_stream_raw_sse_format(llm: ServiceProcess) -> None:
    body = {"model": MODEL, "messages": FRANCE, "max_tokens": 3, "stream": True}
    with httpx.stream(
        "POST", f"{llm.url}/v1/chat/completions", json=body, headers=auth_headers(), timeout=60
    ) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["x-accel-buffering"] == "no"
        lines = [line for line in r.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    payloads = [json.loads(line[6:]) for line in lines[:-1]]
    assert all("usage" not in p for p in payloads), "usage sent without include_usage"
    assert payloads[-1]["choices"][0]["finish_reason"] == "length"


def test_max_tokens_cuts_with_length(client: OpenAI) -> None:
    res = client.chat.completions.create(model=MODEL, messages=LONG, max_tokens=5)
    assert res.choices[0].finish_reason == "length"
    assert res.usage is not None and res.usage.completion_tokens == 5
    # max_completion_tokens is the current name of the same limit.
    res = client.chat.completions.create(model=MODEL, messages=LONG, max_completion_tokens=3)
    assert res.choices[0].finish_reason == "length"
    assert res.usage is not None and res.usage.completion_tokens == 3


def test_stop_string_cuts_the_text(client: OpenAI) -> None:
    full = client.chat.completions.create(model=MODEL, messages=LONG, max_tokens=16)
    text = full.choices[0].message.content or ""
    stop = text[len(text) // 2 :][:3]
    assert stop.strip(), text
    cut = text[: text.index(stop)]
    res = client.chat.completions.create(model=MODEL, messages=LONG, max_tokens=16, stop=[stop])
    assert res.choices[0].message.content == cut
    assert res.choices[0].finish_reason == "stop"
    assert res.usage is not None and res.usage.completion_tokens < 16
    streamed = client.chat.completions.create(
        model=MODEL,
        messages=LONG,
        max_tokens=16,
        stop=stop,
        stream=True,
    )
    pieces = []
    reason = None
    for chunk in streamed:
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
            reason = chunk.choices[0].finish_reason or reason
    assert "".join(pieces) == cut
    assert reason == "stop"


def test_seeded_sampling_repeats(client: OpenAI) -> None:
    def sample() -> str:
        res = client.chat.completions.create(
            model=MODEL,
            messages=FRANCE,
            temperature=1.0,
            top_p=0.95,
            seed=1234,
            max_tokens=8,
        )
        return res.choices[0].message.content or ""

    assert sample() == sample()


def test_async_clients_queue_and_all_complete(llm: ServiceProcess) -> None:
    async def run() -> list[Any]:
        async with AsyncOpenAI(base_url=f"{llm.url}/v1", api_key=API_KEY, max_retries=0) as c:
            calls = [
                c.chat.completions.create(
                    model=MODEL,
                    messages=[{"role": "user", "content": f"Say the number {i}."}],
                    max_tokens=4,
                )
                for i in range(3)
            ]
            return list(await asyncio.gather(*calls))

    results = asyncio.run(run())
    assert len(results) == 3
    for res in results:
        assert res.usage.completion_tokens <= 4
        assert res.choices[0].finish_reason in ("stop", "length")


def test_unknown_openai_fields_are_ignored(llm: ServiceProcess) -> None:
    body = {
        "model": MODEL,
        "messages": [
            {"role": "developer", "content": "Answer briefly."},
            {"role": "user", "content": [{"type": "text", "text": "Capital of France?"}]},
        ],
        "max_tokens": 2,
        "n": 1,
        "presence_penalty": 0.5,
        "logit_bias": {},
        "tools": [],
        "parallel_tool_calls": False,
        "response_format": {"type": "text"},
        "some_future_field": {"x": 1},
    }
    r = httpx.post(f"{llm.url}/v1/chat/completions", json=body, headers=auth_headers(), timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] <= 2


def test_wrong_model_is_404(client: OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-4o", messages=FRANCE, max_tokens=2)
    err = info.value.body
    assert isinstance(err, dict)
    assert err["code"] == "model_not_found"
    assert MODEL in err["message"]


BAD_BODIES: list[tuple[str, Any, str | None]] = [
    ("missing messages", {"model": MODEL}, "invalid_value"),
    ("missing model", {"messages": FRANCE}, "invalid_value"),
    ("empty messages", {"model": MODEL, "messages": []}, "empty_messages"),
    ("bad role", {"model": MODEL, "messages": [{"role": "robot", "content": "x"}]}, None),
    ("n > 1", {"model": MODEL, "messages": FRANCE, "n": 2}, "unsupported_value"),
    ("max_tokens 0", {"model": MODEL, "messages": FRANCE, "max_tokens": 0}, "invalid_value"),
    ("max_tokens over limit", {"model": MODEL, "messages": FRANCE, "max_tokens": 513}, None),
    ("temperature > 2", {"model": MODEL, "messages": FRANCE, "temperature": 3}, None),
    (
        "image content",
        {
            "model": MODEL,
            "messages": [
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}
            ],
        },
        "unsupported_content",
    ),
    ("not JSON", b"{not json", None),
    ("not an object", [1, 2], None),
]


@pytest.mark.parametrize(("case", "body", "code"), BAD_BODIES, ids=[c[0] for c in BAD_BODIES])
def test_bad_body_is_400_json(llm: ServiceProcess, case: str, body: Any, code: str | None) -> None:
    url = f"{llm.url}/v1/chat/completions"
    headers = {**auth_headers(), "Content-Type": "application/json"}
    if isinstance(body, bytes):
        r = httpx.post(url, content=body, headers=headers)
    else:
        r = httpx.post(url, json=body, headers=headers)
    err = assert_error(r, 400, code)
    assert err["type"] == "invalid_request_error"


def test_n_above_one_explains(llm: ServiceProcess) -> None:
    body = {"model": MODEL, "messages": FRANCE, "n": 3}
    r = httpx.post(f"{llm.url}/v1/chat/completions", json=body, headers=auth_headers())
    err = assert_error(r, 400, "unsupported_value")
    assert err["param"] == "n" and "one choice" in err["message"]


def test_prompt_over_context_is_400(llm: ServiceProcess) -> None:
    url = f"{llm.url}/v1/chat/completions"
    huge = {"model": MODEL, "messages": [{"role": "user", "content": "word " * 9000}]}
    err = assert_error(
        httpx.post(url, json=huge, headers=auth_headers(), timeout=60),
        400,
        "context_length_exceeded",
    )
    assert "8192" in err["message"]
    # Fits alone, but not with the completion it asks for.
    near = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "word " * 7900}],
        "max_tokens": 500,
    }
    assert_error(
        httpx.post(url, json=near, headers=auth_headers(), timeout=60),
        400,
        "context_length_exceeded",
    )


def test_missing_or_wrong_key_is_401(llm: ServiceProcess) -> None:
    body = {"model": MODEL, "messages": FRANCE, "max_tokens": 2}
    r = httpx.post(f"{llm.url}/v1/chat/completions", json=body)
    assert_error(r, 401, "missing_api_key")
    with (
        OpenAI(base_url=f"{llm.url}/v1", api_key="sk-wrong", max_retries=0) as bad,
        pytest.raises(openai.AuthenticationError),
    ):
        bad.chat.completions.create(model=MODEL, messages=FRANCE, max_tokens=2)
    assert httpx.get(f"{llm.url}/readyz").status_code == 200


def test_disconnect_cancels_generation(llm: ServiceProcess) -> None:
    name = "llmops_local_llm_completions_total"
    before = metric(scrape(llm), name, finish_reason="cancelled")
    body = {"model": MODEL, "messages": LONG, "max_tokens": 500, "stream": True}
    with httpx.stream(
        "POST", f"{llm.url}/v1/chat/completions", json=body, headers=auth_headers(), timeout=60
    ) as r:
        for line in r.iter_lines():
            if '"content":"' in line and '"content":""' not in line:
                break  # the first real delta: hang up now
    deadline = time.monotonic() + 120
    while metric(scrape(llm), name, finish_reason="cancelled") <= before:
        assert time.monotonic() < deadline, "the generation was not cancelled"
        time.sleep(0.2)
    # The worker is free again: the next request is served.
    r2 = httpx.post(
        f"{llm.url}/v1/chat/completions",
        json={"model": MODEL, "messages": FRANCE, "max_tokens": 2},
        headers=auth_headers(),
        timeout=60,
    )
    assert r2.status_code == 200


def test_metrics_count_tokens_and_latency(llm: ServiceProcess, client: OpenAI) -> None:
    before = scrape(llm)
    res = client.chat.completions.create(model=MODEL, messages=FRANCE, max_tokens=3)
    after = scrape(llm)
    assert res.usage is not None

    def delta(name: str) -> float:
        return metric(after, name) - metric(before, name)

    assert delta("llmops_local_llm_prompt_tokens_total") == res.usage.prompt_tokens
    assert delta("llmops_local_llm_generated_tokens_total") == res.usage.completion_tokens
    assert delta("llmops_local_llm_time_to_first_token_seconds_count") == 1
    assert delta("llmops_local_llm_generation_seconds_count") == 1
    assert "llmops_local_llm_queue_depth" in after


# --------------------------------------------------------------------------- in-process


def test_stop_scanner_holds_back_partial_stops_and_characters() -> None:
    s = StopScanner(["END", "\n\n"])
    assert s.feed("Hello E") == "Hello "  # "E" may start "END"
    assert s.feed("Hello EN") == ""
    assert s.feed("Hello ENx") == "ENx"  # it did not
    assert s.feed("Hello ENx caf\ufffd") == " caf"  # half a UTF-8 character waits
    assert s.feed("Hello ENx café\n") == "é"
    assert s.feed("Hello ENx café\n\nmore") == ""
    assert s.stopped and s.text == "Hello ENx café"
    assert s.feed("Hello ENx café\n\nmore and more") == ""

    s = StopScanner(["b", "abc"])
    assert s.feed("xxabc") == "xx"  # the earliest stop wins, whichever is listed first
    assert s.text == "xx"

    s = StopScanner([])
    assert s.feed("ab\ufffd") == "ab"
    assert s.feed("ab\ufffd", final=True) == "\ufffd"


def _settings(**kw: Any) -> LocalLLMSettings:
    return LocalLLMSettings(env="dev", auth_disabled=True, **kw)


class _FakeModel:
    def __init__(self, origin: str) -> None:
        self.origin = origin

    def save_pretrained(self, path: str) -> None:
        Path(path, "config.json").write_text("{}")
        Path(path, "model.safetensors").write_bytes(b"w" * 1000)


class _FakeTokenizer:
    def save_pretrained(self, path: str) -> None:
        Path(path, "tokenizer.json").write_text("{}")


@pytest.fixture
def fake_loaders(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    calls = {"gguf": 0, "dir": 0, "dir_fail": 0}

    def load_gguf(source: Any, timings: dict[str, float]) -> tuple[Any, Any]:
        calls["gguf"] += 1
        return _FakeTokenizer(), _FakeModel("gguf")

    def load_dir(path: Path) -> tuple[Any, Any]:
        calls["dir"] += 1
        if calls["dir_fail"]:
            raise OSError("unreadable weights")
        assert (path / "model.safetensors").stat().st_size == 1000
        return _FakeTokenizer(), _FakeModel("cache")

    monkeypatch.setattr(gen_mod, "_load_gguf", load_gguf)
    monkeypatch.setattr(gen_mod, "_load_dir", load_dir)
    return calls


def test_cache_is_written_once_reused_and_rebuilt_when_broken(
    tmp_path: Path, fake_loaders: dict[str, int]
) -> None:
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    cache = tmp_path / "cache"
    settings = _settings(model_dir=tmp_path, gguf_file="m.gguf", cache_dir=cache)

    first = load_model(settings)
    assert first.origin == "gguf" and fake_loaders["gguf"] == 1
    (entry,) = list(cache.iterdir())  # one entry, no temporary directory left behind
    assert entry.name.startswith("m-")
    marker = json.loads((entry / CACHE_MARKER).read_text())
    assert marker["files"]["model.safetensors"] == 1000

    second = load_model(settings)
    assert second.origin == "cache" and fake_loaders["gguf"] == 1

    # A truncated weights file (a crash mid-copy, a full disk) is detected and rebuilt.
    (entry / "model.safetensors").write_bytes(b"w" * 10)
    third = load_model(settings)
    assert third.origin == "gguf" and fake_loaders["gguf"] == 2
    assert cache_valid(entry, marker["key"])

    # A cache that validates but fails to load is also rebuilt, and serving goes on.
    fake_loaders["dir_fail"] = 1
    fourth = load_model(settings)
    assert fourth.origin == "gguf" and fake_loaders["gguf"] == 3
    assert cache_valid(entry, marker["key"])

    # Without a marker (an old or foreign directory) the entry is not trusted.
    (entry / CACHE_MARKER).unlink()
    assert not cache_valid(entry, marker["key"])


def test_write_cache_is_atomic_and_cleans_up(tmp_path: Path) -> None:
    entry = tmp_path / "cache" / "m-abc"

    def failing(path: Path) -> None:
        (path / "config.json").write_text("{}")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_cache(entry, "m-abc", failing)
    assert list((tmp_path / "cache").iterdir()) == []

    def ok(path: Path) -> None:
        (path / "config.json").write_text("{}")

    write_cache(entry, "m-abc", ok)
    assert cache_valid(entry, "m-abc")
    assert not cache_valid(entry, "m-other")
    # A second writer finishing later keeps the valid entry and drops its own copy.
    write_cache(entry, "m-abc", ok)
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["m-abc"]


def test_stale_temporary_directories_are_removed(
    tmp_path: Path, fake_loaders: dict[str, int]
) -> None:
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    cache = tmp_path / "cache"
    dead = cache / ".tmp-999999999-x"
    dead.mkdir(parents=True)
    mine = cache / f".tmp-{os.getpid()}-y"
    mine.mkdir()
    # Another conversion of the same file (older file, other transformers) is outdated; a
    # conversion of another file is not.
    outdated, other = cache / "m-0000", cache / "n-0000"
    write_cache(outdated, "m-0000", lambda p: None, source=str(tmp_path / "m.gguf"))
    write_cache(other, "n-0000", lambda p: None, source=str(tmp_path / "n.gguf"))
    settings = _settings(model_dir=tmp_path, gguf_file="m.gguf", cache_dir=cache)
    load_model(settings)
    assert not dead.exists()
    assert mine.exists()
    assert not outdated.exists()
    assert other.exists()


class _FakeGenerator:
    """Stands in for the model: each generation blocks until released (or cancelled)."""

    def __init__(self) -> None:
        self.info = ModelInfo(MODEL, 8192, "fake", {})
        self.started = threading.Event()
        self.release = threading.Event()

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        return [1, 2, 3]

    def generate(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        cancel: threading.Event,
        emit: Callable[[str], None] | None = None,
        on_first: Callable[[], None] = lambda: None,
    ) -> Completion:
        self.started.set()
        on_first()
        while not (self.release.is_set() or cancel.is_set()):
            time.sleep(0.01)
        reason = "cancelled" if cancel.is_set() else "stop"
        if emit is not None:
            emit("ok")
        return Completion("ok", reason, len(prompt_ids), 1)


def test_queue_full_is_429_with_retry_after() -> None:
    async def scenario() -> tuple[httpx.Response, httpx.Response, httpx.Response]:
        settings = LocalLLMSettings(env="dev", auth_disabled=True, max_queue=1)
        app = create_app(settings)
        fake = _FakeGenerator()
        scheduler = Scheduler(fake, app.state.metrics, max_queue=1)
        scheduler.start()
        app.state.generator, app.state.scheduler, app.state.loaded_at = fake, scheduler, 0
        body = {"model": MODEL, "messages": FRANCE}
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            running = asyncio.create_task(c.post("/v1/chat/completions", json=body))
            await asyncio.to_thread(fake.started.wait, 10)
            waiting = asyncio.create_task(c.post("/v1/chat/completions", json=body))
            for _ in range(1000):  # until the second request waits in the queue
                if scheduler.depth == 2:
                    break
                await asyncio.sleep(0.01)
            refused = await c.post("/v1/chat/completions", json=body)
            fake.release.set()
            done = await running, await waiting
        await scheduler.stop()
        return refused, *done

    refused, first, second = asyncio.run(scenario())
    err = assert_error(refused, 429, "queue_full")
    assert err["type"] == "rate_limit_error"
    assert int(refused.headers["retry-after"]) >= 1
    assert first.status_code == 200 and second.status_code == 200


def test_loading_is_503_with_retry_after() -> None:
    app = create_app(LocalLLMSettings(env="dev", auth_disabled=True))
    c = TestClient(app)  # no lifespan: the model never starts loading
    r = c.post("/v1/chat/completions", json={"model": MODEL, "messages": FRANCE})
    assert_error(r, 503, "model_loading")
    assert r.headers["retry-after"]


def test_load_failure_is_reported(tmp_path: Path) -> None:
    settings = LocalLLMSettings(env="dev", auth_disabled=True, model_dir=tmp_path / "missing")
    with TestClient(create_app(settings)) as c:
        deadline = time.monotonic() + 60
        while (r := c.get("/readyz")).status_code == 503 and "loading" in r.text:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert r.status_code == 503 and "failed to load" in r.json()["error"]["message"]
        r = c.post("/v1/chat/completions", json={"model": MODEL, "messages": FRANCE})
        assert_error(r, 503, "model_load_failed")
