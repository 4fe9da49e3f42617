"""Starting and stopping the platform's services as their own processes, for the benchmarks."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from services.common import ports

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A free loopback port outside the kernel's ephemeral range (the services' own picker)."""
    return ports.free_port()


def start(service: str, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    """``llmops serve SERVICE`` on a free loopback port with ``env``; returns once it is ready.

    Logging, metrics, tracing and auth stay on, as in production. ``ENV=dev`` unless ``env``
    says otherwise: every service of a benchmark is on this one machine, which production
    settings refuse (loopback URLs, embedded Qdrant).
    """
    port = free_port()
    ambient = ("EMBEDDINGS_", "RETRIEVAL_", "PROMETHEUS_", "LLMOPS_")
    base = {k: v for k, v in os.environ.items() if not k.startswith(ambient)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli.main", "serve", service, "--port", str(port)],
        cwd=ROOT,
        env={**base, "ENV": "dev", **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"{service} did not become ready")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def stop_group(proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    """SIGTERM to the process group of a service started in its own session (its children
    too), then SIGKILL if it has not gone within ``timeout``."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@dataclass(frozen=True)
class ProcStat:
    """What the benchmarks read of one process in ``/proc/PID/stat``."""

    pid: int
    comm: str
    ppid: int
    session: int
    cpu_ticks: int  # utime + stime


def processes() -> Iterator[ProcStat]:
    """Every process still there while ``/proc`` is read (one that exits meanwhile is skipped)."""
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as fh:
                raw = fh.read()
        except OSError:
            continue
        comm = raw[raw.index("(") + 1 : raw.rindex(")")]
        fields = raw[raw.rindex(")") + 2 :].split()
        yield ProcStat(
            int(entry.name), comm, int(fields[1]), int(fields[3]), int(fields[11]) + int(fields[12])
        )
