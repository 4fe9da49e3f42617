"""The ``llmops`` command line: serve one service, run them all, the demo, key hashing."""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from services.cli.models import models_app
from services.cli.promote import env_diff_cmd, promote_cmd, rollback_cmd
from services.cli.prompts import prompts_app
from services.common.auth import hash_key
from services.common.ports import is_free
from services.common.scopes import SCOPES, parse_key_entry
from services.common.server import SERVICES, serve

app = typer.Typer(
    name="llmops",
    help="llmops-platform: embeddings, retrieval, LLM proxy, feedback and RAG services.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console(stderr=True)


def data_dir() -> Path:
    return Path(os.environ.get("LLMOPS_DATA_DIR", ".llmops"))


def _service_names() -> str:
    return ", ".join(SERVICES)


@app.command("serve")
def serve_cmd(
    service: Annotated[str, typer.Argument(help="Which service to run.")],
    host: Annotated[
        str | None, typer.Option(help="Address to bind; default: <PREFIX>HOST or 127.0.0.1.")
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="Port; default: <PREFIX>PORT or the service's own.")
    ] = None,
    workers: Annotated[
        int | None, typer.Option(min=1, help="Worker processes; default: <PREFIX>WORKERS or 1.")
    ] = None,
) -> None:
    """Run one service under uvicorn; its settings come from its env prefix (e.g. EMBEDDINGS_)."""
    spec = SERVICES.get(service)
    if spec is None:
        console.print(f"[red]unknown service {service!r}[/]; choose one of: {_service_names()}")
        raise typer.Exit(2)
    serve(spec, host=host, port=port, workers=workers)


def dev_api_key(data_dir: Path) -> str:
    """The key for ``llmops up``: $LLMOPS_API_KEY, else one generated once into a 0600 file."""
    key = os.environ.get("LLMOPS_API_KEY")
    if key:
        return key
    path = data_dir / "dev-api-key"
    if path.exists():
        return path.read_text(encoding="utf-8").strip()
    data_dir.mkdir(parents=True, exist_ok=True)
    key = "sk-llmops-" + secrets.token_urlsafe(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(key + "\n")
    return key


def up_environment(key: str, data_dir: Path, host: str, base_port: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "ENV": env.get("ENV", "dev"),
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "PYTHONUNBUFFERED": "1",
            "LLMOPS_DATA_DIR": str(data_dir),
        }
    )
    digest = hash_key(key)
    for spec in SERVICES.values():
        prefix = spec.settings_cls().model_config.get("env_prefix", "")
        env.setdefault(f"{prefix}API_KEY_HASHES", digest)
    # Service-to-service: retrieval calls embeddings with the same local key.
    env.setdefault("RETRIEVAL_EMBEDDINGS_URL", f"http://{host}:{base_port + 1}")
    env.setdefault("RETRIEVAL_EMBEDDINGS_API_KEY", key)
    # Every store and cache lies under LLMOPS_DATA_DIR: Qdrant's files, the SQLite key store and
    # feedback database, the spool, the outbox, the model caches (settings' data_dir).
    # The proxy: the dev key is also its master key; its upstreams are the local services.
    env.setdefault("LLM_PROXY_MASTER_KEY", key)
    env["LLMOPS_LOCAL_UPSTREAM_KEY"] = key
    # The rag service calls the others with the dev key (the proxy's master key too).
    for name, url_var in (
        ("retrieval", "RETRIEVAL"),
        ("llm-proxy", "PROXY"),
        ("feedback", "FEEDBACK"),
    ):
        env.setdefault(
            f"RAG_{url_var}_URL", f"http://{host}:{base_port + SERVICES[name].port - 8000}"
        )
        env.setdefault(f"RAG_{url_var}_API_KEY", key)
    env.setdefault("RAG_MLFLOW_TRACKING_URI", f"http://{host}:{base_port + MLFLOW_OFFSET}")
    if "LLM_PROXY_CONFIG_PATH" not in env:
        path = data_dir / "llm-proxy.yaml"
        write_local_routing(path, host, base_port)
        env["LLM_PROXY_CONFIG_PATH"] = str(path)
    env.pop("LLMOPS_API_KEY", None)
    return env


MLFLOW_OFFSET = 10  # `llmops up` runs `mlflow server` on base port + 10 (8010)


def mlflow_command(data_dir: Path, host: str, port: int) -> str:
    """A real ``mlflow server``: SQLite store and artifacts under the data directory, one
    worker, no job runner (in production: a PostgreSQL store, see deploy/)."""
    import shlex

    store = f"sqlite:///{(data_dir / 'mlflow.db').resolve()}"
    artifacts = (data_dir / "mlflow-artifacts").resolve()
    return " ".join(
        shlex.quote(part)
        for part in (
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            store,
            "--default-artifact-root",
            str(artifacts),
            "--host",
            host,
            "--port",
            str(port),
            "--workers",
            "1",
        )
    )


def write_local_routing(path: Path, host: str, base_port: int) -> None:
    """The proxy's routing for ``llmops up``: the local model and the embeddings service."""
    import yaml

    def port(name: str) -> int:
        return base_port + SERVICES[name].port - 8000

    config = {
        "deployments": [
            {
                "name": "local-smollm2",
                "api_base": f"http://{host}:{port('local-llm')}/v1",
                "model": "smollm2-135m-instruct",
                "api_key_env": "LLMOPS_LOCAL_UPSTREAM_KEY",
                "timeout_s": 300,
                "max_retries": 1,
            },
            {
                "name": "local-minilm",
                "api_base": f"http://{host}:{port('embeddings')}/v1",
                "model": "all-MiniLM-L6-v2",
                "mode": "embeddings",
                "api_key_env": "LLMOPS_LOCAL_UPSTREAM_KEY",
            },
        ],
        "aliases": {
            "smollm2": {"deployments": [{"deployment": "local-smollm2"}]},
            "all-MiniLM-L6-v2": {"deployments": [{"deployment": "local-minilm"}]},
        },
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(
        "# Written by `llmops up`; set LLM_PROXY_CONFIG_PATH to use your own.\n"
        + yaml.safe_dump(config, sort_keys=False),
        encoding="utf-8",
    )
    tmp.replace(path)


@app.command("up")
def up_cmd(
    base_port: Annotated[
        int, typer.Option(help="Ports are base+offset: embeddings 8001, ..., rag 8006, mlflow 8010")
    ] = 8000,
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    only: Annotated[list[str] | None, typer.Option(help="Run only these services.")] = None,
    monitoring: Annotated[
        bool,
        typer.Option(
            help="Also run Prometheus (base+1090: 9090) with the chart's rules, when installed."
        ),
    ] = False,
) -> None:
    """Run every service and an MLflow server on embedded defaults; Ctrl-C stops them all."""
    from honcho.manager import Manager
    from honcho.printer import Printer

    names = only or [*SERVICES, "mlflow"]
    unknown = [n for n in names if n not in SERVICES and n != "mlflow"]
    if unknown:
        console.print(
            f"[red]unknown service(s) {unknown}[/]; choose from: {_service_names()}, mlflow"
        )
        raise typer.Exit(2)
    from services.cli.monitoring import PROMETHEUS_OFFSET

    ports = [
        base_port + (MLFLOW_OFFSET if name == "mlflow" else SERVICES[name].port - 8000)
        for name in names
    ] + ([base_port + PROMETHEUS_OFFSET] if monitoring else [])
    taken = [port for port in ports if not is_free(port, host)]
    if taken:
        console.print(
            f"[red]port(s) {', '.join(map(str, taken))} on {host} are in use[/]; stop what "
            "listens there or choose another --base-port"
        )
        raise typer.Exit(2)
    key = dev_api_key(data_dir())
    env = up_environment(key, data_dir().resolve(), host, base_port)
    manager = Manager(Printer(sys.stdout))
    for name in names:
        if name == "mlflow":
            port = base_port + MLFLOW_OFFSET
            cmd = mlflow_command(data_dir(), host, port)
            manager.add_process(
                name, cmd, env={**env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
            )
            console.print(f"[green]mlflow[/] on http://{host}:{port} (prompt and model registry)")
            continue
        spec = SERVICES[name]
        port = base_port + (spec.port - 8000)
        cmd = f"{sys.executable} -m services.cli.main serve {name} --host {host} --port {port}"
        manager.add_process(name, cmd, env=env)
        console.print(f"[green]{name}[/] on http://{host}:{port}")
    if monitoring:
        _add_prometheus(manager, names, host, base_port, env)
    if "LLMOPS_API_KEY" not in os.environ:
        console.print(f"API key: in {data_dir() / 'dev-api-key'} (send as 'Authorization: Bearer')")
    manager.loop()
    raise typer.Exit(manager.returncode or 0)


def _add_prometheus(
    manager: Any, names: list[str], host: str, base_port: int, env: dict[str, str]
) -> None:
    from services.cli.monitoring import PROMETHEUS_OFFSET, RULES, prometheus_command

    targets = {
        name: f"{host}:{base_port + SERVICES[name].port - 8000}"
        for name in names
        if name in SERVICES
    }
    port = base_port + PROMETHEUS_OFFSET
    cmd = prometheus_command(data_dir(), host, port, targets)
    if cmd is None:
        console.print(
            "[yellow]prometheus is not installed[/] (Debian's package `prometheus`; `make tools` "
            "installs it): running without monitoring"
        )
        return
    manager.add_process("prometheus", cmd, env=env)
    rules = (
        "the chart's rules"
        if RULES.is_file()
        else "no rules (deploy/monitoring/rules.yaml missing)"
    )
    console.print(f"[green]prometheus[/] on http://{host}:{port} ({rules}; alerts at /alerts)")


@app.command("ingest")
def ingest_cmd(
    paths: Annotated[list[Path], typer.Argument(help="Files and folders to ingest.")],
    collection: Annotated[str, typer.Option("--collection", "-c")],
    url: Annotated[str | None, typer.Option(help="Retrieval service URL.")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Documents per request.")] = 16,
) -> None:
    """Walk files (.md .txt .html .pdf ...), send them in batches, print what changed."""
    from services.cli.client import ingest

    raise typer.Exit(ingest(paths, collection, url, batch_size))


@app.command("search")
def search_cmd(
    query: Annotated[str, typer.Argument(help="The question.")],
    collection: Annotated[str, typer.Option("--collection", "-c")],
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1)] = 5,
    filter: Annotated[
        list[str] | None, typer.Option("--filter", "-f", help="key=value metadata equality.")
    ] = None,
    url: Annotated[str | None, typer.Option(help="Retrieval service URL.")] = None,
) -> None:
    """Print the chunks nearest to a question, best first."""
    from services.cli.client import search

    raise typer.Exit(search(query, collection, top_k, filter or [], url))


@app.command("ask")
def ask_cmd(
    question: Annotated[str, typer.Argument(help="The question.")],
    collection: Annotated[
        str | None, typer.Option("--collection", "-c", help="Default: rag's own default.")
    ] = None,
    top_k: Annotated[int | None, typer.Option("--top-k", "-k", min=1)] = None,
    stream: Annotated[bool, typer.Option(help="Print the answer as it is written.")] = True,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print rag's whole answer object instead.")
    ] = False,
    url: Annotated[
        str | None, typer.Option(help="rag URL; default $LLMOPS_RAG_URL or :8006.")
    ] = None,
) -> None:
    """Answer a question from a collection through the rag service, then cite its sources."""
    from services.cli.ask import ask

    raise typer.Exit(ask(question, collection, top_k, stream=stream, as_json=as_json, url=url))


@app.command("demo")
def demo_cmd() -> None:
    """Start the platform on embedded defaults, exercise it with the OpenAI SDK, stop it."""
    from services.cli.demo import run_demo

    raise typer.Exit(run_demo())


@app.command("check")
def check_cmd(
    ready: Annotated[
        list[str], typer.Option("--ready", help="A readiness URL that must answer 200.")
    ],
    ask: Annotated[
        str | None, typer.Option(help="rag's base URL: one question must be answered.")
    ] = None,
    question: Annotated[str, typer.Option(help="The question asked.")] = "What is this?",
    wait: Annotated[float, typer.Option(min=0, help="Seconds to wait for readiness.")] = 120,
) -> None:
    """Check a release: every service ready, then one ask through rag (the chart's helm test).

    The key comes from $LLMOPS_API_KEY or the file $LLMOPS_API_KEY_FILE names.
    """
    from services.cli.check import check

    raise typer.Exit(check(ready, ask, question, wait))


@app.command("hash-key")
def hash_key_cmd(
    key: Annotated[
        str | None, typer.Argument(help="The key; read from stdin when omitted.")
    ] = None,
    scopes: Annotated[
        str | None,
        typer.Option(
            help=f"Comma-separated scopes the key may use ({', '.join(SCOPES)}); "
            "default: every scope."
        ),
    ] = None,
) -> None:
    """Print the SHA-256 digest to put in <SERVICE>_API_KEY_HASHES (keys are never stored),
    with the key's scopes when given (``<digest>:ask+search``)."""
    value = key if key is not None else sys.stdin.readline()
    value = value.strip()
    if not value:
        console.print("[red]empty key[/]")
        raise typer.Exit(2)
    entry = hash_key(value)
    if scopes is not None:
        entry += ":" + "+".join(s.strip() for s in scopes.split(",") if s.strip())
        try:
            parse_key_entry(entry)
        except ValueError as exc:
            console.print(f"[red]{exc}[/]")
            raise typer.Exit(2) from None
    print(entry)


keys_app = typer.Typer(
    help="Virtual keys of the LLM proxy (needs the master key: $LLMOPS_MASTER_KEY).",
    no_args_is_help=True,
)
app.add_typer(keys_app, name="keys")
app.command("promote")(promote_cmd)
app.command("rollback")(rollback_cmd)
app.command("env-diff")(env_diff_cmd)
ProxyURL = Annotated[
    str | None, typer.Option("--url", help="Proxy URL; default $LLMOPS_PROXY_URL or :8003.")
]
MasterKey = Annotated[
    str | None,
    typer.Option("--master-key", help="Default: $LLMOPS_MASTER_KEY.", show_default=False),
]


@keys_app.command("create")
def keys_create(
    name: Annotated[str | None, typer.Option(help="A label for people.")] = None,
    alias: Annotated[
        list[str] | None, typer.Option("--alias", "-a", help="Allowed model alias (repeat).")
    ] = None,
    rpm: Annotated[int | None, typer.Option(min=1, help="Requests per minute.")] = None,
    tpm: Annotated[int | None, typer.Option(min=1, help="Tokens per minute.")] = None,
    budget: Annotated[float | None, typer.Option(min=0, help="Max budget in USD.")] = None,
    expires_in: Annotated[float | None, typer.Option(min=1, help="Seconds until expiry.")] = None,
    url: ProxyURL = None,
    master_key: MasterKey = None,
) -> None:
    """Create a key and print it once (on stdout, so it can be captured)."""
    from services.cli import keys

    fields = {
        "name": name,
        "aliases": alias or None,
        "rpm": rpm,
        "tpm": tpm,
        "max_budget_usd": budget,
        "expires_in_s": expires_in,
    }
    with keys.admin_client(url, master_key) as client:
        raise typer.Exit(keys.create(client, {k: v for k, v in fields.items() if v is not None}))


@keys_app.command("list")
def keys_list(
    include_revoked: Annotated[bool, typer.Option("--all", help="Show revoked keys too.")] = False,
    url: ProxyURL = None,
    master_key: MasterKey = None,
) -> None:
    """List keys with their limits and spend (never the keys themselves)."""
    from services.cli import keys

    with keys.admin_client(url, master_key) as client:
        raise typer.Exit(keys.list_keys(client, include_revoked))


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id (from `llmops keys list`).")],
    url: ProxyURL = None,
    master_key: MasterKey = None,
) -> None:
    """Revoke a key: refused everywhere within the proxy's key cache TTL."""
    from services.cli import keys

    with keys.admin_client(url, master_key) as client:
        raise typer.Exit(keys.revoke(client, key_id))


db_app = typer.Typer(
    help="Schema migrations of the services that keep rows in SQL (feedback, llm-proxy).",
    no_args_is_help=True,
)
app.add_typer(db_app, name="db")
DB_SERVICES = ("feedback", "llm-proxy")
DbService = Annotated[
    str, typer.Argument(help="feedback, llm-proxy or all (each has its own version table).")
]
DbURL = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        help="Default: the service's own setting (FEEDBACK_DATABASE_URL, "
        "LLM_PROXY_DATABASE_URL, or their _FILE variants).",
        show_default=False,
    ),
]


def _db_targets(service: str) -> list[str]:
    if service == "all":
        return list(DB_SERVICES)
    if service not in DB_SERVICES:
        console.print(f"[red]{service!r} keeps no SQL[/]; choose feedback, llm-proxy or all")
        raise typer.Exit(2)
    return [service]


@db_app.command("upgrade")
def db_upgrade(
    service: DbService = "all",
    revision: Annotated[str, typer.Option(help="Target revision.")] = "head",
    database_url: DbURL = None,
    wait: Annotated[
        float, typer.Option(min=0, help="Seconds to wait for the database to answer.")
    ] = 60,
) -> None:
    """Migrate the database(s) to the latest schema (the chart's migration Job runs this).

    Needs only the database URL; waits for the database, exits 1 with the reason when it
    cannot, and only says "at revision" once it checked it. Safe to run twice or at once
    (PostgreSQL advisory locks).
    """
    from services.cli.db import upgrade

    raise typer.Exit(upgrade(_db_targets(service), revision, database_url, wait))


@db_app.command("current")
def db_current(service: DbService = "all", database_url: DbURL = None) -> None:
    """Print the schema revision each database is at."""
    from services.cli.db import current

    raise typer.Exit(current(_db_targets(service), database_url))


app.add_typer(prompts_app, name="prompts")
app.add_typer(models_app, name="models")


eval_app = typer.Typer(
    help="Evaluate: a prompt version through the whole pipeline (`llmops eval --dataset F "
    "--prompt P`), or retrieval alone (`llmops eval retrieval`).",
    invoke_without_command=True,
    no_args_is_help=False,
)
app.add_typer(eval_app, name="eval")


@eval_app.callback()
def eval_cmd(
    ctx: typer.Context,
    dataset: Annotated[
        Path | None, typer.Option("--dataset", "-d", help="JSONL questions.")
    ] = None,
    prompt: Annotated[
        str | None,
        typer.Option("--prompt", "-p", help="The candidate: NAME@ALIAS or NAME/VERSION."),
    ] = None,
    against: Annotated[
        str | None, typer.Option("--against", help="The baseline, e.g. NAME@production.")
    ] = None,
    url: Annotated[
        str | None, typer.Option(help="rag URL; default $LLMOPS_RAG_URL or :8006.")
    ] = None,
    collection: Annotated[str | None, typer.Option(help="Collection to ask.")] = None,
    top_k: Annotated[int | None, typer.Option(min=1)] = None,
    margin: Annotated[
        float | None, typer.Option(help="Gate margin; default $LLMOPS_GATE_MARGIN or 0.05.")
    ] = None,
    fail_on_gate: Annotated[
        bool, typer.Option(help="Exit 1 when the candidate fails the gate (for CI).")
    ] = False,
    tracking_uri: Annotated[
        str | None,
        typer.Option("--tracking-uri", envvar="MLFLOW_TRACKING_URI", show_default=False),
    ] = None,
) -> None:
    """Run a prompt version through the real pipeline on a dataset; log the run to MLflow."""
    if ctx.invoked_subcommand is not None:
        return
    if dataset is None or prompt is None:
        console.print("[red]error:[/] `llmops eval` needs --dataset and --prompt (or a subcommand)")
        raise typer.Exit(2)
    from services.cli.evaluate import margin_from_env, run_eval
    from services.cli.prompts import _reported, connect
    from services.rag.evaluation import gate_passes

    with _reported(tracking_uri):
        result = run_eval(
            connect(tracking_uri),
            dataset=dataset,
            prompt=prompt,
            against=against,
            url=url,
            collection=collection,
            top_k=top_k,
            margin=margin if margin is not None else margin_from_env(),
        )
    diff = result["diff"]
    if fail_on_gate and diff is not None:
        ok = gate_passes(diff["score"], margin if margin is not None else margin_from_env())
        raise typer.Exit(0 if ok else 1)
    raise typer.Exit(0)


@eval_app.command("retrieval")
def eval_retrieval_cmd(
    dataset: Annotated[
        Path,
        typer.Option(
            "--dataset", "-d", help="JSONL: question, expected_documents, expected_passages, type."
        ),
    ],
    collection: Annotated[str, typer.Option("--collection", "-c", help="The collection searched.")],
    mode: Annotated[
        str | None,
        typer.Option(help="dense, sparse or hybrid; default: the collection's search_mode."),
    ] = None,
    against_collection: Annotated[
        str | None, typer.Option(help="Baseline collection (e.g. another embedder or chunking).")
    ] = None,
    against_mode: Annotated[
        str | None, typer.Option(help="Baseline search mode (on the baseline collection).")
    ] = None,
    url: Annotated[
        str | None, typer.Option(help="Retrieval URL; default $LLMOPS_RETRIEVAL_URL or :8002.")
    ] = None,
    tracking_uri: Annotated[
        str | None,
        typer.Option("--tracking-uri", envvar="MLFLOW_TRACKING_URI", show_default=False),
    ] = None,
) -> None:
    """Score retrieval alone (hit@1/5/10, MRR, nDCG@10 with clustered 95% CIs, per question
    type); with --against-*, the paired difference of two configurations. Logged to MLflow."""
    from services.cli.prompts import _reported, connect
    from services.cli.retrieval_eval import run_retrieval_eval

    for value in (mode, against_mode):
        if value not in (None, "dense", "sparse", "hybrid"):
            console.print(f"[red]error:[/] mode {value!r}: use dense, sparse or hybrid")
            raise typer.Exit(2)
    with _reported(tracking_uri):
        run_retrieval_eval(
            connect(tracking_uri),
            dataset=dataset,
            collection=collection,
            mode=mode,
            against_collection=against_collection,
            against_mode=against_mode,
            url=url,
        )
    raise typer.Exit(0)


feedback_app = typer.Typer(help="The feedback service's data.", no_args_is_help=True)
app.add_typer(feedback_app, name="feedback")


@feedback_app.command("export")
def feedback_export(
    format: Annotated[
        str, typer.Option("--format", "-f", help="sft (messages), kto or dpo (TRL columns).")
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="The JSONL file to write.")],
    since: Annotated[str | None, typer.Option(help="ISO 8601 time, inclusive.")] = None,
    until: Annotated[str | None, typer.Option(help="ISO 8601 time, exclusive.")] = None,
    prompt_name: Annotated[str | None, typer.Option()] = None,
    prompt_version: Annotated[str | None, typer.Option()] = None,
    model: Annotated[str | None, typer.Option(help="Model alias.")] = None,
    environment: Annotated[str | None, typer.Option()] = None,
    rating: Annotated[int | None, typer.Option(min=1, max=5)] = None,
    label: Annotated[str | None, typer.Option()] = None,
    url: Annotated[
        str | None, typer.Option(help="Feedback URL; default $LLMOPS_FEEDBACK_URL or :8005.")
    ] = None,
) -> None:
    """Stream a training dataset (JSONL) from the feedback service into a file."""
    from services.cli.feedback import export

    if format not in ("sft", "kto", "dpo"):
        console.print(f"[red]unknown format {format!r}[/]; choose sft, kto or dpo")
        raise typer.Exit(2)
    filters = {
        "since": since,
        "until": until,
        "prompt_name": prompt_name,
        "prompt_version": prompt_version,
        "model": model,
        "environment": environment,
        "rating": rating,
        "label": label,
    }
    raise typer.Exit(export(url, format, output, filters))


def main(argv: list[str] | None = None) -> None:
    app(args=argv)


if __name__ == "__main__":
    main()
