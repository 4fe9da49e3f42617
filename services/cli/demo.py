"""``llmops demo`` (``make demo``): the platform's main job on embedded defaults, offline.

Embeddings through the OpenAI SDK, then the project's own README and docs ingested into the
retrieval service (local Qdrant) and searched, then chat completions through the LLM proxy from
the local model (SmolLM2-135M-Instruct), with a virtual key made for the occasion; those two
exchanges are then recorded in the feedback service with a thumbs-up and a correction, and
turned into KTO and DPO dataset rows.

It starts the services the way an operator would (``llmops up``, under honcho), talks to them
only through their public APIs with the official ``openai`` SDK, prints what came back, and
stops everything. Later issues grow it into the full RAG loop.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from rich.console import Console
from rich.table import Table

from services.common.ports import free_base_port
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
    """A base port whose service ports (base+1...) are all free on loopback, outside the
    kernel's ephemeral range (so no outgoing connection takes one before the service binds)."""
    from services.cli.main import MLFLOW_OFFSET

    offsets = [spec.port - 8000 for spec in SERVICES.values()] + [MLFLOW_OFFSET]
    return free_base_port(offsets)


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


BIND_ATTEMPTS = 3


def _bound(base: int) -> bool:
    """Every service of `llmops up` answers on its port (liveness: bound, maybe still loading)."""
    from services.cli.main import MLFLOW_OFFSET

    urls = [f"http://127.0.0.1:{base + spec.port - 8000}/healthz" for spec in SERVICES.values()]
    urls.append(f"http://127.0.0.1:{base + MLFLOW_OFFSET}/health")
    try:
        return all(httpx.get(u, timeout=2).status_code == 200 for u in urls)
    except httpx.HTTPError:
        return False


def _start_platform(
    env: dict[str, str], log_path: Path, choose: Callable[[], int] = _free_base_port
) -> tuple[int, subprocess.Popen[bytes]]:
    """``llmops up`` on free ports; when a port was taken before its service bound it (another
    server asked for that very number), start again on other ports rather than fail."""
    for attempt in range(1, BIND_ATTEMPTS + 1):
        base = choose()
        start = log_path.stat().st_size if log_path.exists() else 0
        with log_path.open("ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "services.cli.main", "up", "--base-port", str(base)],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None and not _bound(base):
            time.sleep(0.25)
        if proc.poll() is None:
            return base, proc
        _stop(proc)
        with log_path.open("rb") as log:
            log.seek(start)
            said = log.read().decode(errors="replace").lower()
        # uvicorn's "[Errno 98] address already in use", or `llmops up`'s own check
        if "in use" not in said:
            raise RuntimeError(f"the platform exited early with code {proc.returncode}")
        console.print(f"a port near {base} was taken (attempt {attempt}); trying other ports")
    raise RuntimeError(f"ports stayed taken after {BIND_ATTEMPTS} attempts")


def _stop(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def _chat(base: int, master_key: str, proc: subprocess.Popen[bytes]) -> list[dict[str, Any]]:
    """A virtual key, a chat completion and a streamed one, through the proxy; returns the two
    exchanges as interactions for the feedback service."""
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
    started = time.perf_counter()
    console.print("[bold]streamed:[/] ", end="")
    colours = "Name three colours."
    streamed: list[str] = []
    stream = client.chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": colours}],
        max_tokens=24,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            streamed.append(chunk.choices[0].delta.content)
            console.print(chunk.choices[0].delta.content, end="")
    console.print()
    stream_ms = (time.perf_counter() - started) * 1000
    proxy_metrics = httpx.get(f"{proxy}/metrics", timeout=5).text
    for line in proxy_metrics.splitlines():
        if line.startswith(("llmops_llm_tokens_total", "llmops_llm_requests_total")):
            console.print(f"metrics: {line}")
    common = {
        "model": "smollm2",
        "deployment": raw.headers.get("x-llmops-deployment"),
        "prompt_name": "demo-chat",
        "prompt_version": "1",
        "environment": "dev",
    }
    return [
        {
            "id": "demo-" + secrets.token_hex(6),
            "messages": [{"role": "user", "content": question}],
            "answer": (answer.choices[0].message.content or "").strip(),
            "usage": {
                "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens,
            }
            if usage
            else None,
            **common,
        },
        {
            "id": "demo-" + secrets.token_hex(6),
            "messages": [{"role": "user", "content": colours}],
            "answer": "".join(streamed).strip(),
            "latency_ms": round(stream_ms, 1),
            **common,
        },
    ]


def _feedback(
    base: int, key: str, proc: subprocess.Popen[bytes], interactions: list[dict[str, Any]]
) -> int:
    """Record the two exchanges, a thumbs-up on one and a correction of the other, then show
    the datasets they turn into (KTO and DPO, in TRL's columns) and the stats."""
    url = f"http://127.0.0.1:{base + SERVICES['feedback'].port - 8000}"
    console.rule("[bold]feedback: interactions, a thumbs-up, a correction, datasets[/]")
    _wait_ready(url, proc)
    with httpx.Client(
        base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30
    ) as client:
        for item in interactions:
            r = client.post("/v1/interactions", json=item)
            r.raise_for_status()
            console.print(
                f"interaction {item['id']} recorded ({r.status_code}), trace {r.json()['trace_id']}"
            )
        liked, corrected = interactions
        thumbs = {
            "interaction_id": liked["id"],
            "kind": "thumbs",
            "value": "up",
            "user_id": "demo-user",
            "idempotency_key": f"{liked['id']}-thumbs",
        }
        first = client.post("/v1/feedback", json=thumbs)
        again = client.post("/v1/feedback", json=thumbs)
        first.raise_for_status()
        console.print(
            f"thumbs-up recorded ({first.status_code}); the same request again "
            f"answers {again.status_code} with the same id "
            f"({first.json()['id'] == again.json()['id']}): no duplicate"
        )
        r = client.post(
            "/v1/feedback",
            json={
                "interaction_id": corrected["id"],
                "kind": "correction",
                "value": "Red, green and blue.",
                "user_id": "demo-user",
            },
        )
        r.raise_for_status()
        console.print(f"correction recorded ({r.status_code})")
        bad = client.post(
            "/v1/feedback", json={"interaction_id": liked["id"], "kind": "rating", "value": 9}
        )
        console.print(
            f"bad input is refused with {bad.status_code}: {bad.json()['error']['message']}"
        )
        for fmt in ("kto", "dpo"):
            r = client.get(f"/v1/exports/{fmt}", params={"prompt_name": "demo-chat"})
            r.raise_for_status()
            lines = [ln for ln in r.text.splitlines() if ln]
            if not lines:
                console.print(f"[red]the {fmt} export is empty[/]")
                return 1
            console.print(
                f"[bold]{fmt} export[/] ({len(lines)} rows), first: {lines[0]}", soft_wrap=True
            )
        st = client.get("/v1/feedback/stats", params={"group_by": "prompt_version"}).json()
        for g in st["data"]:
            rate = g["positive_rate"]
            ci = g["ci95"]
            console.print(
                f"stats for prompt version {g['prompt_version']}: {g['interactions']} "
                f"interactions, feedback {g['feedback']}, positive rate "
                + (f"{rate:.2f} (95% CI {ci[0]:.2f}-{ci[1]:.2f})" if rate is not None else "n/a")
            )
    return 0


RAG_QUESTIONS = [
    "Which command runs the whole test suite?",
    "What does the feedback service answer when PostgreSQL is unreachable?",
    "Which small language model answers chat completions when no provider is configured?",
]


def _rag(base: int, key: str, proc: subprocess.Popen[bytes], root: Path) -> int:
    """The whole loop: the default prompt registered and promoted in MLflow, three questions
    answered with citations, a thumbs-up on one, and the eval on the shipped dataset."""
    from services.cli.evaluate import eval_gate, run_eval
    from services.cli.main import MLFLOW_OFFSET
    from services.cli.prompts import connect, promote, push, read_template
    from services.rag.config import BUNDLED_PROMPT

    rag = f"http://127.0.0.1:{base + SERVICES['rag'].port - 8000}"
    feedback = f"http://127.0.0.1:{base + SERVICES['feedback'].port - 8000}"
    mlflow_url = f"http://127.0.0.1:{base + MLFLOW_OFFSET}"
    console.rule("[bold]rag: MLflow prompt registry, answers with citations, feedback, eval[/]")
    _wait_ready(rag, proc)
    deadline = time.monotonic() + 120
    while True:  # mlflow server has no /readyz; /health answers once it serves
        try:
            if httpx.get(f"{mlflow_url}/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError("mlflow server did not start")
        time.sleep(0.3)
    client = connect(mlflow_url)
    push(client, read_template(BUNDLED_PROMPT), "rag-answer", "the bundled default")
    version = str(client.search_prompt_versions("rag-answer", max_results=1)[0].version)
    promote(client, "rag-answer", version, "production", gate=eval_gate)
    console.print(
        f"prompt rag-answer version {version} registered in MLflow and promoted to "
        "production (no earlier version: nothing for the eval gate to compare)"
    )
    headers = {"Authorization": f"Bearer {key}"}
    time.sleep(1.5)  # the rag service sees the alias move within its prompt TTL (1 s here)
    answers = []
    with httpx.Client(base_url=rag, headers=headers, timeout=300) as http:
        for question in RAG_QUESTIONS:
            r = http.post("/v1/ask", json={"question": question, "session_id": "demo"})
            if r.status_code != 200:
                console.print(f"[red]ask failed {r.status_code}: {r.text[:300]}[/]")
                return 1
            data = r.json()
            answers.append(data)
            console.print(f"[bold]Q:[/] {question}")
            console.print(f"[bold]A:[/] {data['answer']}")
            for c in data["citations"]:
                where = " > ".join([c["document_id"], *c["heading_path"]])
                console.print(f"   {c['marker']} {where} (score {c['score']:.3f})")
            if not data["citations"]:
                top = data["contexts"][0] if data["contexts"] else None
                console.print(
                    "   (no citation marker in the answer; best context: "
                    + (
                        f"{top['document_id']} > {' > '.join(top['heading_path'])})"
                        if top
                        else "none)"
                    )
                )
            console.print(
                f"   prompt {data['prompt']['name']} v{data['prompt']['version']} "
                f"({data['prompt']['source']}), {data['latency_ms']:.0f} ms, "
                f"interaction {data['interaction_id']}, trace {data['trace_id']}"
            )
    first = answers[0]["interaction_id"]
    with httpx.Client(base_url=feedback, headers=headers, timeout=30) as fb:
        deadline = time.monotonic() + 30
        while fb.get(f"/v1/interactions/{first}").status_code != 200:
            if time.monotonic() > deadline:
                raise RuntimeError("the interaction did not reach the feedback service")
            time.sleep(0.2)
        r = fb.post(
            "/v1/feedback",
            json={"interaction_id": first, "kind": "thumbs", "value": "up", "user_id": "demo-user"},
        )
        r.raise_for_status()
        stored = fb.get(f"/v1/interactions/{first}").json()
        console.print(
            f"thumbs-up on interaction {first} recorded ({r.status_code}); the "
            f"feedback service holds it with prompt version {stored['prompt_version']} "
            f"and {len(stored['context_ids'])} context ids"
        )
    console.print("[bold]eval[/] of rag-answer@production on eval/platform-docs.jsonl:")
    os.environ["LLMOPS_API_KEY"] = key
    run_eval(
        client,
        dataset=root / "eval" / "platform-docs.jsonl",
        prompt="rag-answer@production",
        against=None,
        url=rag,
        collection=None,
        top_k=None,
        margin=0.05,
    )
    console.rule("[bold]where to look[/]")
    for name, spec in SERVICES.items():
        console.print(f"{name:10} http://127.0.0.1:{base + spec.port - 8000}  (/metrics, /docs)")
    console.print(f"{'mlflow':10} {mlflow_url}  (prompts, eval runs, the rag-app model)")
    return 0


def run_demo() -> int:
    from openai import BadRequestError, OpenAI

    from services.cli.client import ingest, search

    key = "sk-demo-" + secrets.token_urlsafe(16)
    data_dir = Path(tempfile.mkdtemp(prefix="llmops-demo-"))
    env = dict(os.environ, LLMOPS_API_KEY=key, LLMOPS_DATA_DIR=str(data_dir), ENV="dev")
    env.setdefault("HF_HUB_OFFLINE", "1")
    # The converted local model is kept between demos (converting the GGUF takes a while).
    env.setdefault("LOCAL_LLM_CACHE_DIR", str(Path(".llmops/cache/local-llm").resolve()))
    # Short answers and contexts: the local model writes ~10 tokens/s on one core.
    env.update(
        RAG_MAX_TOKENS="48",
        RAG_MAX_CONTEXT_CHARS="1500",
        RAG_TOP_K="3",
        RAG_PROMPT_TTL_S="1",
        RAG_DEFAULT_COLLECTION="docs",
    )
    log_path = data_dir / "platform.log"
    console.rule("[bold]llmops demo[/]")
    console.print(f"starting the platform (llmops up), logs in {log_path}")
    try:
        base, proc = _start_platform(env, log_path)
    except RuntimeError as exc:
        console.print(f"[red]demo failed:[/] {exc}")
        console.print(log_path.read_text(errors="replace")[-4000:])
        return 1
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
            if ingest([Path("README.md"), Path("docs")], "docs", retrieval, 16) != 0:
                return 1
            for question in QUESTIONS:
                if search(question, "docs", 2, [], retrieval) != 0:
                    return 1
        finally:
            os.chdir(cwd)

        if _feedback(base, key, proc, _chat(base, key, proc)) != 0:
            return 1
        if _rag(base, key, proc, root) != 0:
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
