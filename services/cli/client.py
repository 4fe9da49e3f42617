"""Client side of ``llmops ingest`` and ``llmops search``: the retrieval API over HTTP."""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from services.retrieval.loaders import EXTENSIONS

console = Console()
err = Console(stderr=True)
_SKIP_DIRS = {".git", ".venv", "node_modules", "__pycache__", ".llmops"}
_BATCH_BYTES = 16 * 1024 * 1024


def api_key() -> str | None:
    """$LLMOPS_API_KEY, else the file $LLMOPS_API_KEY_FILE names (a mounted Secret), else the
    local dev key."""
    key = os.environ.get("LLMOPS_API_KEY")
    if key:
        return key
    if os.environ.get("LLMOPS_API_KEY_FILE"):
        return Path(os.environ["LLMOPS_API_KEY_FILE"]).read_text(encoding="utf-8").strip()
    path = Path(os.environ.get("LLMOPS_DATA_DIR", ".llmops")) / "dev-api-key"
    return path.read_text(encoding="utf-8").strip() if path.exists() else None


def service_client(
    url: str | None, env_var: str, default: str, timeout: float | httpx.Timeout
) -> httpx.Client:
    """A client of one service: ``url``, else ``$env_var``, else ``default``; the local key."""
    key = api_key()
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    base = url or os.environ.get(env_var, default)
    return httpx.Client(base_url=base, headers=headers, timeout=timeout)


def retrieval_client(url: str | None) -> httpx.Client:
    return service_client(url, "LLMOPS_RETRIEVAL_URL", "http://127.0.0.1:8002", 600)


def error_message(r: httpx.Response) -> str:
    """The message of an error answer (every service answers in OpenAI's error shape)."""
    try:
        return str(r.json()["error"]["message"])
    except Exception:
        return f"HTTP {r.status_code}: {r.text[:200]}"


def find_files(paths: list[Path]) -> list[Path]:
    found: list[Path] = []
    for path in paths:
        if path.is_file():
            found.append(path)
        elif path.is_dir():
            for file in sorted(path.rglob("*")):
                if (
                    file.is_file()
                    and file.suffix.lower() in EXTENSIONS
                    and not (_SKIP_DIRS & set(file.relative_to(path).parts[:-1]))
                ):
                    found.append(file)
        else:
            err.print(f"[yellow]skipped {path}: not found[/]")
    return found


def _document(file: Path) -> dict[str, Any]:
    try:
        doc_id = file.resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        doc_id = file.resolve().as_posix()
    content_type = EXTENSIONS.get(file.suffix.lower(), "text/plain")
    meta = {"source": doc_id, "extension": file.suffix.lower().lstrip(".")}
    data = file.read_bytes()
    if content_type == "application/pdf":
        body = {"content_base64": base64.b64encode(data).decode(), "content_type": content_type}
    else:
        body = {"text": data.decode("utf-8", errors="replace"), "content_type": content_type}
    return {"id": doc_id, **body, "metadata": meta}


def ensure_collection(client: httpx.Client, name: str) -> None:
    r = client.get(f"/v1/collections/{name}")
    if r.status_code == 404:
        r = client.post(
            "/v1/collections", json={"name": name, "metadata_fields": {"extension": "keyword"}}
        )
    if r.status_code not in (200, 201):
        raise RuntimeError(error_message(r))


def ingest(paths: list[Path], collection: str, url: str | None, batch_size: int) -> int:
    files = find_files(paths)
    if not files:
        err.print("[red]no files to ingest[/] (looked for " + ", ".join(EXTENSIONS) + ")")
        return 2
    summary = {k: 0 for k in ("added", "unchanged", "replaced", "failed")}
    failures: list[tuple[str, str]] = []
    warnings: list[str] = []  # the service's, e.g. a local collection grown too large
    chunks = 0
    with retrieval_client(url) as client:
        try:
            ensure_collection(client, collection)
        except (RuntimeError, httpx.HTTPError) as exc:
            err.print(f"[red]cannot use collection {collection!r}:[/] {exc}")
            return 1
        progress = Progress(
            TextColumn("ingesting"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            console=err,
        )  # fmt: skip
        with progress:
            task = progress.add_task("ingest", total=len(files))
            batch: list[dict[str, Any]] = []
            size = 0

            def send() -> None:
                nonlocal size, chunks
                r = client.post(
                    f"/v1/collections/{collection}/documents", json={"documents": batch}
                )
                if r.status_code != 200:
                    for doc in batch:
                        summary["failed"] += 1
                        failures.append((doc["id"], error_message(r)))
                else:
                    answer = r.json()
                    for res in answer["results"]:
                        summary[res["status"]] += 1
                        chunks += res["chunks"]
                        if res["status"] == "failed":
                            failures.append((res["id"], res["reason"]))
                    warnings[:] = answer.get("warnings") or []  # the latest batch's counts
                progress.advance(task, len(batch))
                batch.clear()
                size = 0

            for file in files:
                doc = _document(file)
                batch.append(doc)
                size += len(doc.get("text") or doc.get("content_base64") or "")
                if len(batch) >= batch_size or size >= _BATCH_BYTES:
                    send()
            if batch:
                send()
    table = Table(title=f"ingested into '{collection}'")
    for key in summary:
        table.add_column(key)
    table.add_column("chunks")
    table.add_row(*[str(v) for v in summary.values()], str(chunks))
    console.print(table)
    for doc_id, reason in failures:
        console.print(f"[red]failed[/] {doc_id}: {reason}")
    for warning in warnings:
        err.print(f"[yellow]warning: {escape(warning)}[/]")
    return 1 if failures else 0


def _value(raw: str) -> Any:
    if raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    try:
        return int(raw)
    except ValueError:
        return raw


def search(query: str, collection: str, top_k: int, filters: list[str], url: str | None) -> int:
    flt: dict[str, Any] = {}
    for item in filters:
        key, sep, value = item.partition("=")
        if not sep or not key:
            err.print(f"[red]--filter takes key=value, got {item!r}[/]")
            return 2
        flt[key] = _value(value)
    body = {"query": query, "top_k": top_k, "filter": flt or None}
    with retrieval_client(url) as client:
        r = client.post(f"/v1/collections/{collection}/search", json=body)
    if r.status_code != 200:
        err.print(f"[red]search failed:[/] {error_message(r)}")
        return 1
    results = r.json()["results"]
    table = Table(title=f"{query!r} in '{collection}'", show_lines=True)
    for col in ("rank", "score", "document", "section", "text"):
        table.add_column(col)
    for rank, res in enumerate(results, start=1):
        text = " ".join((res.get("text") or "").split())
        table.add_row(
            str(rank), f"{res['score']:.3f}", str(res["doc_id"]),
            " > ".join(res["headings"]), text[:160] + ("…" if len(text) > 160 else ""),
        )  # fmt: skip
    console.print(table)
    if not results:
        console.print("no results")
    return 0
