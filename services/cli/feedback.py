"""Client side of ``llmops feedback export``: stream a dataset from the feedback service to a
file, with a progress bar. The file appears only when the export is complete (written to a
temporary name and renamed), so a broken connection never leaves half a dataset behind."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from services.cli.client import error_message, service_client

err = Console(stderr=True)


def feedback_client(url: str | None) -> httpx.Client:
    return service_client(
        url, "LLMOPS_FEEDBACK_URL", "http://127.0.0.1:8005", httpx.Timeout(30, read=600)
    )


def export(url: str | None, fmt: str, out: Path, filters: dict[str, Any]) -> int:
    params = {k: v for k, v in filters.items() if v is not None}
    tmp = out.with_name(out.name + ".partial")
    rows = 0
    try:
        with (
            feedback_client(url) as client,
            client.stream("GET", f"/v1/exports/{fmt}", params=params) as r,
        ):
            if r.status_code != 200:
                r.read()
                err.print(f"[red]export refused:[/] {error_message(r)}")
                return 1
            candidates = r.headers.get("x-candidate-count", "?")
            out.parent.mkdir(parents=True, exist_ok=True)
            with (
                tmp.open("wb") as fh,
                Progress(
                    SpinnerColumn(),
                    TextColumn("[bold]{task.description}"),
                    TextColumn("{task.completed} rows"),
                    TimeElapsedColumn(),
                    console=err,
                    transient=False,
                ) as progress,
            ):
                task = progress.add_task(f"{fmt} export ({candidates} candidates)", total=None)
                for line in r.iter_lines():
                    if not line:
                        continue
                    fh.write(line.encode() + b"\n")
                    rows += 1
                    if rows % 200 == 0:
                        progress.update(task, completed=rows)
                progress.update(task, completed=rows)
                fh.flush()
                os.fsync(fh.fileno())
    except httpx.HTTPError as exc:
        tmp.unlink(missing_ok=True)
        err.print(f"[red]export failed:[/] {type(exc).__name__}: {exc}; nothing was written")
        return 1
    tmp.replace(out)
    err.print(f"wrote {rows} {fmt} rows to {out}")
    return 0
