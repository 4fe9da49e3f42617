"""``llmops check``: is a release serving? (the chart's ``helm test`` pod runs it).

Every readiness URL must answer 200 within the wait, then one question goes through rag and
must come back answered. Prints one line per check, exits 1 naming what failed.
"""

from __future__ import annotations

import time

import httpx
from rich.console import Console

from services.cli.client import api_key, error_message

console = Console(width=120)


def _ready(client: httpx.Client, url: str, deadline: float) -> tuple[bool, str]:
    last = "no answer"
    while True:
        try:
            r = client.get(url)
            if r.status_code == 200:
                return True, "ready"
            last = f"{r.status_code}: {error_message(r)}"
        except httpx.HTTPError as exc:
            last = f"{type(exc).__name__}: {exc}"
        if time.monotonic() >= deadline:
            return False, last
        time.sleep(2)


def check(ready: list[str], ask: str | None, question: str, wait_s: float) -> int:
    """0 when every URL is ready and the ask is answered; 1 with the reasons otherwise."""
    deadline = time.monotonic() + wait_s
    failed = 0
    key = api_key()
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    with httpx.Client(timeout=10, headers=headers) as client:
        for url in ready:
            ok, why = _ready(client, url, deadline)
            failed += not ok
            console.print(f"{'[green]ok[/]' if ok else '[red]FAIL[/]'}  {url}  {why}")
        if ask and not failed:
            try:
                r = client.post(
                    f"{ask.rstrip('/')}/v1/ask", json={"question": question}, timeout=120
                )
            except httpx.HTTPError as exc:
                console.print(f"[red]FAIL[/]  ask {ask}: {type(exc).__name__}: {exc}")
                return 1
            body = (
                r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
            )
            if r.status_code != 200 or not body.get("answer"):
                console.print(f"[red]FAIL[/]  ask {ask}: {r.status_code}: {error_message(r)}")
                return 1
            degraded = ", ".join(body.get("degraded") or []) or "none"
            console.print(
                f"[green]ok[/]  ask {ask}: answered ({len(body['answer'])} chars, "
                f"degraded: {degraded})"
            )
    return 1 if failed else 0
