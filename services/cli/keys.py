"""Client side of ``llmops keys``: the proxy's admin API over HTTP, with the master key."""

from __future__ import annotations

import os
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from services.cli.client import api_key, error_message

console = Console()
err = Console(stderr=True)


def master_key() -> str | None:
    return os.environ.get("LLMOPS_MASTER_KEY") or os.environ.get("LLM_PROXY_MASTER_KEY")


def admin_client(url: str | None, key: str | None) -> httpx.Client:
    base = url or os.environ.get("LLMOPS_PROXY_URL", "http://127.0.0.1:8003")
    key = key or master_key()
    if not key:
        # `llmops up` uses the dev key as master key.
        key = api_key()
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=base, headers=headers, timeout=30)


def _call(client: httpx.Client, method: str, path: str, **kw: Any) -> Any:
    try:
        r = client.request(method, path, **kw)
    except httpx.HTTPError as exc:
        err.print(f"[red]cannot reach the proxy at {client.base_url}[/]: {exc}")
        return None
    if r.status_code >= 400:
        err.print(f"[red]{r.status_code}[/] {error_message(r)}")
        return None
    return r.json()


def create(client: httpx.Client, fields: dict[str, Any]) -> int:
    data = _call(client, "POST", "/admin/keys", json=fields)
    if data is None:
        return 1
    err.print(f"created key [bold]{data['id']}[/]; it is shown once, store it now:")
    print(data["key"])
    return 0


def list_keys(client: httpx.Client, include_revoked: bool) -> int:
    data = _call(client, "GET", "/admin/keys", params={"include_revoked": include_revoked})
    if data is None:
        return 1
    table = Table("id", "name", "key", "aliases", "rpm", "tpm", "budget $", "spent $", "expires")
    if include_revoked:
        table.add_column("revoked")
    for k in data["data"]:
        row = [
            k["id"],
            k["name"] or "",
            k["key_hint"],
            ",".join(k["aliases"]) if k["aliases"] is not None else "*",
            str(k["rpm"] or ""),
            str(k["tpm"] or ""),
            "" if k["max_budget_usd"] is None else f"{k['max_budget_usd']:g}",
            f"{k['spend_usd']:.6f}",
            k["expires_at"] or "",
        ]
        if include_revoked:
            row.append(k["revoked_at"] or "")
        table.add_row(*row)
    console.print(table)
    return 0


def revoke(client: httpx.Client, key_id: str) -> int:
    data = _call(client, "DELETE", f"/admin/keys/{key_id}")
    if data is None:
        return 1
    err.print(f"revoked {data['id']} ({data['key_hint']}) at {data['revoked_at']}")
    return 0
