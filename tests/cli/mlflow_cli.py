"""Running the MLflow-backed sub-commands (``llmops prompts``, ``llmops models``) as processes,
and checking how they end."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

from tests.conftest import ROOT
from tests.rag.conftest import mlflow_env

Run = Callable[..., subprocess.CompletedProcess[str]]


def command(module: str, app: str, prog: str) -> list[str]:
    """The argv prefix that runs one Typer sub-app on its own (skipping the main CLI)."""
    return [sys.executable, "-c", f"from {module} import {app}; {app}(prog_name={prog!r})"]


def runner(prefix: list[str], timeout: float) -> Run:
    def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*prefix, *args], cwd=ROOT, env=env or mlflow_env(),
                              capture_output=True, text=True, timeout=timeout)  # fmt: skip

    return run


def run_all(
    *commands: list[str], env: dict[str, str], timeout: float = 300
) -> list[subprocess.CompletedProcess[str]]:
    """Independent commands at once: each process spends seconds importing MLflow."""
    pipe = subprocess.PIPE
    procs = [
        subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=pipe, stderr=pipe, text=True)
        for cmd in commands
    ]
    done = []
    for cmd, proc in zip(commands, procs, strict=True):
        stdout, stderr = proc.communicate(timeout=timeout)
        done.append(subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr))
    return done


def ok(r: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert r.returncode == 0, f"exit {r.returncode}\n{r.stdout}\n{r.stderr}"
    assert "Traceback" not in r.stderr
    return r


def failed(r: subprocess.CompletedProcess[str], code: int, text: str) -> None:
    """Exit ``code`` and one line on stderr that says ``text``."""
    assert r.returncode == code, f"exit {r.returncode}\n{r.stdout}\n{r.stderr}"
    assert "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0, r.stderr
    assert r.stderr.startswith("error: ") and text in r.stderr, r.stderr
