"""``llmops demo`` (``make demo``): the platform's main job on embedded defaults, offline.

Embeddings through the OpenAI SDK, then the project's own README and docs ingested into the
retrieval service (local Qdrant) and searched, then chat completions through the LLM proxy from
the local model (SmolLM2-135M-Instruct), with a virtual key made for the occasion.

It starts the services the way an operator would (``llmops up``, under honcho), talks to them
only through their public APIs with the official ``openai`` SDK, prints what came back, and
stops everything. Later issues grow it into the full RAG loop.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from rich.console import Console
from rich.table import Table

from services.common.server import SERVICES

console = Console()

DOCS = [
    "Qdrant stores the chunk vectors and answers nearest-neighbour searches.",
    "The LLM proxy retries failed upstream calls and falls back to another model.",
    "Grafana dashboards show request rates, errors and latency for every service.",
    "Feedback from users becomes preference data for fine-tuning.",
]
QUESTION = "Which component keeps the embeddings and finds similar ones?"
QUESTIONS = [
    "How do I run the test suite?",
    "What happens when the embedding queue is full?",
    "How does the benchmark compare the service with the model?",
]


def _free_base_port() -> int:
    """A base port whose service ports (base+1...) are all free on loopback."""
    offsets = [spec.port - 8000 for spec in SERVICES.values()]
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1] - max(offsets)
        if base < 1024:
            continue
        ok = True
        for off in offsets:
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", base + off))
                except OSError:
                    ok = False
                    break
        if ok:
            return int(base)
    raise RuntimeError("no free ports on 127.0.0.1")


def _wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 300) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"the platform exited early with code {proc.returncode}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return time.monotonic() - start
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise TimeoutError(f"{url} was not ready after {timeout:.0f}s")


def _stop(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def _chat(base: int, master_key: str, proc: subprocess.Popen[bytes]) -> int:
    """A virtual key, a chat completion and a streamed one, through the proxy."""
    from openai import OpenAI

    proxy = f"http://127.0.0.1:{base + SERVICES['llm-proxy'].port - 8000}"
    local = f"http://127.0.0.1:{base + SERVICES['local-llm'].port - 8000}"
    console.rule("[bold]llm-proxy: chat with the local model through a virtual key[/]")
    _wait_ready(proxy, proc)
    waited = _wait_ready(local, proc)
    console.print(f"proxy at {proxy}; local model ready after {waited:.1f}s more")
    r = httpx.post(
        f"{proxy}/admin/keys",
        headers={"Authorization": f"Bearer {master_key}"},
        json={"name": "demo", "aliases": ["smollm2"], "rpm": 60, "max_budget_usd": 1.0},
        timeout=30,
    )
    r.raise_for_status()
    created = r.json()
    console.print(f"virtual key {created['key_hint']} (aliases {created['aliases']}, rpm 60)")
    client = OpenAI(base_url=f"{proxy}/v1", api_key=created["key"], max_retries=0)
    console.print(f"models this key may use: {[m.id for m in client.models.list()]}")
    question = "What is the capital of France?"
    raw = client.chat.completions.with_raw_response.create(
        model="smollm2",
        messages=[{"role": "user", "content": question}],
        max_tokens=32,
        temperature=0,
    )
    answer = raw.parse()
    usage = answer.usage
    console.print(f"[bold]Q:[/] {question}")
    console.print(f"[bold]A:[/] {(answer.choices[0].message.content or '').strip()}")
    if usage is not None:
        console.print(
            f"{usage.prompt_tokens} prompt + {usage.completion_tokens} completion tokens, "
            f"served by {raw.headers.get('x-llmops-deployment')}, "
            f"proxy overhead {raw.headers.get('x-llmops-overhead-ms')} ms"
        )
    console.print("[bold]streamed:[/] ", end="")
    stream = client.chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": "Name three colours."}],
        max_tokens=24,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            console.print(chunk.choices[0].delta.content, end="")
    console.print()
    proxy_metrics = httpx.get(f"{proxy}/metrics", timeout=5).text
    for line in proxy_metrics.splitlines():
        if line.startswith(("llmops_llm_tokens_total", "llmops_llm_requests_total")):
            console.print(f"metrics: {line}")
    return 0


def run_demo() -> int:
    from openai import BadRequestError, OpenAI

    from services.cli.client import ingest, search

    base = _free_base_port()
    key = "sk-demo-" + secrets.token_urlsafe(16)
    data_dir = Path(tempfile.mkdtemp(prefix="llmops-demo-"))
    env = dict(os.environ, LLMOPS_API_KEY=key, LLMOPS_DATA_DIR=str(data_dir), ENV="dev")
    env.setdefault("HF_HUB_OFFLINE", "1")
    # The converted local model is kept between demos (converting the GGUF takes a while).
    env.setdefault("LOCAL_LLM_CACHE_DIR", str(Path(".llmops/cache/local-llm").resolve()))
    log_path = data_dir / "platform.log"
    console.rule("[bold]llmops demo[/]")
    console.print(f"starting the platform (llmops up), logs in {log_path}")
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.cli.main", "up", "--base-port", str(base)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{base + SERVICES['embeddings'].port - 8000}"
    try:
        waited = _wait_ready(url, proc)
        console.print(f"embeddings ready at {url} after {waited:.1f}s")
        client = OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)

        models = client.models.list().data
        model = models[0].id
        extra = models[0].model_extra or {}
        console.print(
            f"model [bold]{model}[/]: {extra.get('dimensions')} dimensions, "
            f"{extra.get('max_input_tokens')} max input tokens, backend {extra.get('backend')}"
        )

        single = client.embeddings.create(model=model, input="Hello, platform!")
        vec = np.asarray(single.data[0].embedding)
        console.print(
            f"single text -> {vec.shape[0]} floats, norm {np.linalg.norm(vec):.4f}, "
            f"{single.usage.prompt_tokens} tokens, first values {np.round(vec[:4], 4).tolist()}"
        )

        batch = client.embeddings.create(model=model, input=DOCS, encoding_format="float")
        console.print(
            f"batch of {len(DOCS)} -> {len(batch.data)} vectors, {batch.usage.prompt_tokens} tokens"
        )

        query = client.embeddings.create(model=model, input=QUESTION)  # SDK default: base64
        q = np.asarray(query.data[0].embedding)
        docs = np.asarray([d.embedding for d in batch.data])
        scores = docs @ q
        table = Table(title=f"similarity to: {QUESTION!r}")
        table.add_column("rank")
        table.add_column("cosine")
        table.add_column("document")
        for rank, i in enumerate(np.argsort(-scores), start=1):
            table.add_row(str(rank), f"{scores[i]:.3f}", DOCS[i])
        console.print(table)
        best = int(np.argmax(scores))
        if best != 0:
            console.print("[red]unexpected ranking: the Qdrant sentence should be first[/]")
            return 1

        try:
            client.embeddings.create(model=model, input="")
        except BadRequestError as exc:
            console.print(f"bad input is refused with {exc.status_code}: {exc.message}")

        retrieval = f"http://127.0.0.1:{base + SERVICES['retrieval'].port - 8000}"
        _wait_ready(retrieval, proc)
        console.rule("[bold]retrieval: ingest the project's docs, then search them[/]")
        os.environ["LLMOPS_API_KEY"] = key
        root = Path(__file__).resolve().parents[2]
        cwd = Path.cwd()
        os.chdir(root)  # document ids are paths relative to the repository
        try:
            if ingest([Path("README.md"), Path("docs")], "demo", retrieval, 16) != 0:
                return 1
            for question in QUESTIONS:
                if search(question, "demo", 2, [], retrieval) != 0:
                    return 1
        finally:
            os.chdir(cwd)

        if _chat(base, key, proc) != 0:
            return 1

        metrics = httpx.get(f"{url}/metrics", timeout=5).text
        for line in metrics.splitlines():
            if line.startswith(
                ("llmops_embeddings_texts_total", "llmops_embeddings_batch_size_count")
            ):
                console.print(f"metrics: {line}")
        console.print("[green]demo finished[/]: `llmops up` runs the same platform and keeps it up")
        return 0
    except Exception as exc:
        console.print(f"[red]demo failed:[/] {exc}")
        console.print(log_path.read_text(errors="replace")[-4000:])
        return 1
    finally:
        code = _stop(proc)
        # honcho exits 130 after Ctrl-C (SIGINT): that is the clean stop.
        console.print("platform stopped" if code in (0, 130) else f"platform exited with {code}")
