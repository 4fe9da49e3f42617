"""``llmops prompts`` as a real process against a real ``mlflow server``: push, list, show,
diff, promote, rollback, and one clear line (never a traceback) for every error."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from mlflow import MlflowClient

from services.cli.prompts import CLIError, promote, rollback, sync
from tests.cli.mlflow_cli import command, failed, ok, run_all, runner
from tests.conftest import ROOT, free_port
from tests.deploy.chart import CHART, NAMESPACE, PRODUCTION, RELEASE, helm
from tests.rag.conftest import mlflow_env

PROMPTS = command("services.cli.prompts", "prompts_app", "llmops prompts")
V1 = "Answer {{ question }} from:\n{{ context }}\n"
V2 = "Answer {{ question }} only from:\n{{ context }}\nCite passages like [1].\n"


def argv(*args: str) -> list[str]:
    return [*PROMPTS, *args]


run = runner(PROMPTS, timeout=120)


def unique() -> str:
    return f"cli-{uuid.uuid4().hex[:10]}"


def client(url: str) -> MlflowClient:
    return MlflowClient(tracking_uri=url, registry_uri=url)


def test_push_promote_show_diff_list_rollback(registry_url: str, tmp_path: Path) -> None:
    env = mlflow_env(MLFLOW_TRACKING_URI=registry_url)
    name = unique()
    (tmp_path / "v1.txt").write_text(V1)
    (tmp_path / "v2.txt").write_text(V2)

    r = ok(run("push", str(tmp_path / "v1.txt"), "--name", name, "-m", "first", env=env))
    assert r.stdout == "1\n" and "registered" in r.stderr
    r = ok(run("push", str(tmp_path / "v1.txt"), "--name", name, env=env))
    assert r.stdout == "1\n" and "identical to version 1" in r.stderr
    r = ok(run("push", str(tmp_path / "v2.txt"), "--name", name, "-m", "cite", env=env))
    assert r.stdout == "2\n"

    client(registry_url).set_prompt_alias(name, "staging", 1)  # promote's history keeps it
    r = ok(
        run(
            "promote",
            name,
            "--version",
            "2",
            "--to",
            "staging",
            "--force",
            "--reason",
            "cites",
            env=env,
        )
    )  # no eval ran: the gate is overridden
    assert "was 1" in r.stderr

    latest, pinned, aliased, diff, listing = run_all(
        argv("show", name),
        argv("show", f"{name}/1"),
        argv("show", f"{name}@staging"),
        argv("diff", name, "1", "@staging"),
        argv("list"),
        env=env,
    )
    assert ok(latest).stdout == V2 and "version   2" in latest.stderr
    assert ok(pinned).stdout == V1 and "message   first" in pinned.stderr
    assert ok(aliased).stdout == V2 and "aliases   staging" in aliased.stderr
    assert "llmops.promote_reason=cites" in aliased.stderr
    assert "+Cite passages like [1]." in ok(diff).stdout
    assert f"--- {name}/1 (1)" in diff.stdout and f"+++ {name}/2 (@staging)" in diff.stdout
    row = next(line for line in ok(listing).stdout.splitlines() if name in line)
    assert "staging→2" in row and " 2 " in row

    r = ok(run("rollback", name, "--to", "staging", env=env))
    assert "2 -> 1" in r.stderr
    assert client(registry_url).get_prompt_version_by_alias(name, "staging").version == 1


def test_promote_history_and_the_gate_hook(registry_url: str) -> None:
    """The operations behind the commands, with a real client: how rollback walks the history,
    and how a gate (the eval gate, later) refuses or is overridden."""
    c = client(registry_url)
    name = unique()
    for text in ("a {{ question }}", "b {{ question }}", "c {{ question }}"):
        c.register_prompt(name, text)
    c.set_prompt_alias(name, "production", 1)  # set outside the CLI: still reachable
    assert promote(c, name, "2", "production") == 0
    assert promote(c, name, "3", "production", reason="better recall") == 0
    history = c.get_prompt(name).tags["llmops.alias_history.production"]
    assert json.loads(history) == ["1", "2", "3"]
    tags = c.get_prompt_version(name, 3).tags
    assert tags["llmops.promote_reason"] == "better recall" and tags["llmops.promoted_by"]
    assert "llmops.promoted_to.production" in tags

    assert rollback(c, name, "production") == 0
    assert rollback(c, name, "production") == 0
    assert c.get_prompt_version_by_alias(name, "production").version == 1
    with pytest.raises(CLIError, match="no earlier version"):
        rollback(c, name, "production")

    asked: list[tuple[str, str, str]] = []

    def gate(_: MlflowClient, n: str, v: str, alias: str) -> tuple[bool, str]:
        asked.append((n, v, alias))
        return False, "no passing eval for this version"

    with pytest.raises(CLIError, match="refused: no passing eval") as refused:
        promote(c, name, "3", "production", gate=gate)
    assert refused.value.code == 1 and asked == [(name, "3", "production")]
    assert c.get_prompt_version_by_alias(name, "production").version == 1
    assert promote(c, name, "3", "production", gate=gate, force=True, reason="hotfix") == 0
    assert c.get_prompt_version_by_alias(name, "production").version == 3
    assert c.get_prompt_version(name, 3).tags["llmops.promote_reason"] == "hotfix"


def test_sync_follows_the_declared_version_through_the_gate(registry_url: str) -> None:
    """What the chart's prompt-sync hook does on each Argo CD sync: nothing when the alias
    already serves the declared version, the gate for a new one, no gate for a way back."""
    c = client(registry_url)
    name = unique()
    for text in ("a {{ question }}", "b {{ question }}", "c {{ question }}"):
        c.register_prompt(name, text)
    asked: list[str] = []

    def gate(_: MlflowClient, n: str, v: str, alias: str) -> tuple[bool, str]:
        asked.append(v)
        return v != "3", "version 3 lost to production in its eval"

    assert sync(c, name, "1", "production", gate=gate) == 0
    assert sync(c, name, "2", "production", gate=gate) == 0
    assert sync(c, name, "2", "production", gate=gate) == 0  # declared again: no-op
    assert asked == ["1", "2"]
    with pytest.raises(CLIError, match="refused: version 3 lost"):
        sync(c, name, "3", "production", gate=gate)
    assert c.get_prompt_version_by_alias(name, "production").version == 2
    assert sync(c, name, "1", "production", gate=gate) == 0  # a rollback: served before
    assert asked == ["1", "2", "3"]
    assert c.get_prompt_version_by_alias(name, "production").version == 1
    assert json.loads(c.get_prompt(name).tags["llmops.alias_history.production"]) == ["1"]
    tags = c.get_prompt_version(name, 1).tags
    assert tags["llmops.promote_reason"] == "back to version 1 (was 2)"


def _hook_job(name: str, version: str) -> dict[str, Any]:
    """The chart's prompt-sync Job for production, as helm renders it."""
    out = helm("template", RELEASE, str(CHART), "-n", NAMESPACE, "-f", str(PRODUCTION),
               "--set-string", f"prompt.name={name},prompt.version={version}").stdout  # fmt: skip
    docs = [d for d in yaml.safe_load_all(out) if d]
    job: dict[str, Any] = next(
        d for d in docs if d["kind"] == "Job" and d["metadata"]["name"].endswith("prompt-sync")
    )
    return job


def test_the_chart_hook_job_runs_as_its_manifest_says(registry_url: str) -> None:
    """The prompt-sync Job's command and env, run as a process against a real MLflow (the
    cluster's MLflow URL swapped for the test's): a first version goes in, then a version with
    no passing eval against production's is refused with exit 1 and the alias stays."""
    c = client(registry_url)
    name = unique()
    for text in ("a {{ question }} {{ context }}", "b {{ question }} {{ context }}"):
        c.register_prompt(name, text)
    for version, code in (("1", 0), ("2", 1)):
        container = _hook_job(name, version)["spec"]["template"]["spec"]["containers"][0]
        assert container["command"][0] == "llmops"
        env = {e["name"]: e["value"] for e in container["env"]}
        assert env["MLFLOW_TRACKING_URI"].startswith("http://llmops-mlflow:")
        env = {**mlflow_env(), **env, "MLFLOW_TRACKING_URI": registry_url, "HOME": str(ROOT)}
        r = subprocess.run(
            [sys.executable, "-m", "services.cli.main", *container["command"][1:]],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert r.returncode == code, r.stdout + r.stderr
    assert "no eval of version 2 against version 1" in " ".join(r.stderr.split())
    assert c.get_prompt_version_by_alias(name, "production").version == 1


def test_usage_errors_are_one_line_exit_2(tmp_path: Path) -> None:
    (tmp_path / "empty.txt").write_text(" \n")
    (tmp_path / "p.txt").write_text(V1)
    failed(run("list"), 2, "pass --tracking-uri")
    failed(run("push", str(tmp_path / "p.txt"), "--name", "x"), 2, "set MLFLOW_TRACKING_URI")
    env = mlflow_env(MLFLOW_TRACKING_URI="http://127.0.0.1:9")
    failed(run("push", str(tmp_path / "empty.txt"), "--name", "x", env=env), 2, "is empty")
    failed(run("push", str(tmp_path / "nope.txt"), "--name", "x", env=env), 2, "cannot read")
    r = run("promote", "x", "--version", "1", "--to", "production", "--force", env=env)
    failed(r, 2, "--force needs --reason")


def test_registry_errors_are_one_line_exit_1(registry_url: str) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    name = unique()
    client(registry_url).register_prompt(name, V1)
    client(registry_url).set_prompt_alias(name, "production", 1)
    unknown, unreachable, no_alias, no_history = run_all(
        argv("show", unique(), "--tracking-uri", registry_url),
        argv("list", "--tracking-uri", down),
        argv("diff", name, "1", "@staging", "--tracking-uri", registry_url),
        argv("rollback", name, "--to", "production", "--tracking-uri", registry_url),
        env=mlflow_env(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0"),  # the user's setting wins
    )
    failed(unknown, 1, "does not exist; push it")
    failed(unreachable, 1, f"cannot reach the MLflow registry at {down}: [Errno 111]")
    failed(no_alias, 1, f"no version of prompt '{name}' has alias 'staging'")
    failed(no_history, 1, "no earlier version")
