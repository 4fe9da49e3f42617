"""``llmops promote``, ``llmops rollback`` and ``llmops env-diff`` as real processes on a Git
copy of argocd/ and the chart: the cluster is a scripted Kubernetes API server (no cluster runs
here), the error budget a real Prometheus, the prompt gate a real ``mlflow server``, the diff the
real helm. A promotion writes only the target's version file, and only when nothing blocks."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from mlflow import MlflowClient

from tests.conftest import ROOT, clean_env, free_port
from tests.deploy.chart import HELM, tool
from tests.deploy.monitoring import Prometheus
from tests.fakes.kubernetes import (
    FakeKubernetes,
    application,
    deployment,
    fake_kubernetes,
    statefulset,
)

LLMOPS = [sys.executable, "-m", "services.cli.main"]
STAGING, PRODUCTION = "llmops-staging", "llmops-production"


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True
    ).stdout


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """The repository's argocd/ and chart in a Git repository of their own."""
    repo = tmp_path / "repo"
    shutil.copytree(ROOT / "argocd", repo / "argocd")
    shutil.copytree(ROOT / "deploy/helm/llmops", repo / "deploy/helm/llmops")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "-c", "user.email=t@example.com", "-c", "user.name=t", "add", ".")
    git(repo, "-c", "user.email=t@example.com", "-c", "user.name=t", "commit", "-qm", "envs")
    return repo


def version(repo: Path, env: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((repo / f"argocd/envs/{env}/version.yaml").read_text())
    return doc


def images(v: dict[str, Any]) -> list[str]:
    return [f"ghcr.io/llmops-platform/{n}@{i['digest']}" for n, i in v["images"].items()]


def healthy(fake: FakeKubernetes, repo: Path, env: str = "staging") -> None:
    ns = f"llmops-{env}"
    fake.applications[f"llmops-{env}"] = application(f"llmops-{env}", images(version(repo, env)))
    fake.deployments[ns] = [deployment(f"{ns}-embeddings"), deployment(f"{ns}-retrieval")]
    fake.statefulsets[ns] = [statefulset(f"{ns}-rag"), statefulset(f"{ns}-feedback")]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[FakeKubernetes, Path]]:
    with fake_kubernetes() as fake:
        yield fake, fake.kubeconfig(tmp_path / "kubeconfig")


def run(repo: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    e = clean_env(**{"LLMOPS_HELM": tool(HELM), "COLUMNS": "200", **env})
    e.pop("KUBECONFIG", None)
    e.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run(
        [*LLMOPS, *args, "--root", str(repo)], cwd=ROOT, env=e,
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_a_healthy_staging_is_promoted_with_its_diff_and_pr_body(
    repo: Path, cluster: tuple[FakeKubernetes, Path], tmp_path: Path
) -> None:
    fake, kubeconfig = cluster
    healthy(fake, repo)
    staging_text = (repo / "argocd/envs/staging/version.yaml").read_text()
    diff, body = tmp_path / "env.diff", tmp_path / "pr.md"
    r = run(
        repo, "promote", "staging", "production", "--kubeconfig", str(kubeconfig),
        "--diff-file", str(diff), "--pr-body-file", str(body),
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    # Only the version file moved, byte for byte.
    assert (repo / "argocd/envs/production/version.yaml").read_text() == staging_text
    assert git(repo, "status", "--porcelain").split() == [
        "M", "argocd/envs/production/version.yaml",
    ]  # fmt: skip
    # It asked the API for the staging Application and its rollouts.
    assert "/apis/argoproj.io/v1alpha1/namespaces/argocd/applications/llmops-staging" in (
        fake.requests
    )
    assert f"/apis/apps/v1/namespaces/{STAGING}/statefulsets" in fake.requests
    # The rendered diff is production before and after: new digests, the prompt hook's version.
    d = diff.read_text()
    new = version(repo, "staging")["images"]["llmops"]["digest"]
    assert f"+          image: ghcr.io/llmops-platform/llmops@{new}" in d
    assert '-            - "1"' in d and '+            - "2"' in d  # prompt-sync --version
    text = body.read_text()
    assert "## Promote staging to production" in text
    assert "| `images.llmops.digest` |" in text and "| `prompt.version` | `1` | `2` |" in text
    assert "| Application llmops-staging health | ✅ ok | health Healthy |" in text
    # What it could not check is said, in the table and in the PR.
    assert "error budget | ⚠️ unchecked | no Prometheus URL" in text
    assert "prompt gate | ⚠️ unchecked" in text and "**Not checked (2):**" in text
    assert "unchecked" in r.stderr and "Traceback" not in r.stderr


def broken(kind: str, fake: FakeKubernetes, repo: Path) -> None:
    healthy(fake, repo)
    app = fake.applications["llmops-staging"]["status"]
    if kind == "out-of-sync":
        app["sync"]["status"] = "OutOfSync"
    elif kind == "degraded":
        app["health"] = {"status": "Degraded", "message": "rag: CrashLoopBackOff"}
    elif kind == "sync-running":
        app["operationState"] = {"phase": "Running", "message": "waiting for PostSync hooks"}
    elif kind == "sync-failed":
        app["operationState"] = {"phase": "Failed", "message": "prompt-sync: refused"}
    elif kind == "other-images":
        app["summary"]["images"] = images(version(repo, "production"))
    elif kind == "rollout":
        fake.deployments[STAGING][0] = deployment(f"{STAGING}-embeddings", replicas=2, ready=1)
    elif kind == "generation":
        fake.deployments[STAGING][1] = deployment(f"{STAGING}-retrieval", observed=2)
    elif kind == "statefulset-revision":
        fake.statefulsets[STAGING][0] = statefulset(f"{STAGING}-rag", current="r1")
    elif kind == "no-application":
        del fake.applications["llmops-staging"]
    elif kind == "no-workloads":
        fake.deployments[STAGING], fake.statefulsets[STAGING] = [], []


BLOCKS = {
    "out-of-sync": "sync status OutOfSync",
    "degraded": "health Degraded (rag: CrashLoopBackOff)",
    "sync-running": "a sync is in progress",
    "sync-failed": "its last sync Failed: prompt-sync: refused",
    "other-images": "does not run sha256:",
    "rollout": "rollout incomplete: 1/2 ready, 1/2 available",
    "generation": "its controller has not seen the latest spec",
    "statefulset-revision": "pods of the previous revision remain",
    "no-application": "no Application llmops-staging in argocd",
    "no-workloads": f"no Deployments or StatefulSets in {STAGING}",
}


@pytest.mark.parametrize("kind", list(BLOCKS))
def test_an_unhealthy_staging_blocks_and_writes_nothing(
    kind: str, repo: Path, cluster: tuple[FakeKubernetes, Path], tmp_path: Path
) -> None:
    fake, kubeconfig = cluster
    broken(kind, fake, repo)
    body = tmp_path / "pr.md"
    r = run(
        repo, "promote", "staging", "production", "--kubeconfig", str(kubeconfig),
        "--pr-body-file", str(body),
    )  # fmt: skip
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Promote staging to production blocked" in r.stderr
    assert BLOCKS[kind] in " ".join(r.stderr.split()), r.stderr
    assert git(repo, "status", "--porcelain") == "" and not body.exists()


def test_an_unreachable_cluster_or_refused_token_blocks(repo: Path, tmp_path: Path) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    with fake_kubernetes() as fake:
        kubeconfig = fake.kubeconfig(tmp_path / "closed", server=closed)
        r = run(repo, "promote", "staging", "production", "--kubeconfig", str(kubeconfig))
        assert r.returncode == 1 and f"cannot reach the cluster at {closed}" in r.stderr
        bad = tmp_path / "bad-token"
        bad.write_text(kubeconfig.read_text().replace(closed, fake.url).replace("scripted-", "x"))
        r = run(repo, "promote", "staging", "production", "--kubeconfig", str(bad))
        assert r.returncode == 1 and "HTTP 401 Unauthorized" in r.stderr
        r = run(repo, "promote", "staging", "production", "--kubeconfig", str(tmp_path / "none"))
        assert r.returncode == 1 and "no usable kubeconfig" in r.stderr
    assert git(repo, "status", "--porcelain") == ""


def burn_rules(burn_1h: float, burn_5m: float, alert: bool) -> dict[str, Any]:
    """Recording rules standing in for the chart's SLO series of llmops-staging."""
    labels = {"namespace": STAGING, "slo": "ask-availability"}
    rules: list[dict[str, Any]] = [
        {"record": "llmops:slo_objective:ratio", "expr": "vector(0.995)", "labels": labels},
        {"record": "llmops:slo_errors_per_request:ratio_rate1h",
         "expr": f"vector({burn_1h * 0.005})", "labels": labels},
        {"record": "llmops:slo_errors_per_request:ratio_rate5m",
         "expr": f"vector({burn_5m * 0.005})", "labels": labels},
    ]  # fmt: skip
    if alert:
        rules.append({"alert": "RagAskAvailabilityBudgetBurn", "expr": "vector(1)",
                      "labels": {"severity": "critical", "namespace": STAGING}})  # fmt: skip
    return {"groups": [{"name": "scripted", "interval": "1s", "rules": rules}]}


def test_the_error_budget_from_a_real_prometheus(
    repo: Path, cluster: tuple[FakeKubernetes, Path], tmp_path: Path
) -> None:
    fake, kubeconfig = cluster
    healthy(fake, repo)
    prom = Prometheus(tmp_path / "prom", {}, burn_rules(20.0, 2.0, alert=False))
    try:
        prom.wait(lambda: prom.query("llmops:slo_errors_per_request:ratio_rate5m"), 30, "rules")
        args = ["promote", "staging", "production", "--kubeconfig", str(kubeconfig), "--dry-run"]
        # Fast over 1h but not over 5m: the page does not fire (both windows must), so it passes.
        r = run(repo, *args, "--prometheus-url", prom.url)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "burn 20.00x over 1h, 2.00x over 5m (page at 14.4x)" in r.stderr
        assert r.stdout.startswith("## Promote staging to production")  # no file: the PR body
        assert "dry run" in r.stderr and git(repo, "status", "--porcelain") == ""

        (tmp_path / "prom/rules.yaml").write_text(yaml.safe_dump(burn_rules(20.0, 30.0, True)))
        prom.proc.send_signal(signal.SIGHUP)  # Prometheus reloads its rules
        prom.wait(lambda: prom.query('ALERTS{alertstate="firing"}'), 30, "the page alert")
        r = run(repo, *args, "--prometheus-url", prom.url)
        assert r.returncode == 1
        flat = " ".join(r.stderr.split())
        assert "SLO ask-availability: burn 20.00x over 1h, 30.00x over 5m" in flat
        assert "page alerts: firing: RagAskAvailabilityBudgetBurn" in flat
    finally:
        prom.stop()
    # Prometheus gone: stated as not checked, never a pass and never a crash.
    r = run(repo, *args, "--prometheus-url", prom.url)
    assert r.returncode == 0 and "error budget" in r.stderr and "unchecked" in r.stderr


def test_the_prompt_gate_against_what_production_serves(
    repo: Path, cluster: tuple[FakeKubernetes, Path], registry_url: str
) -> None:
    """A changed prompt version needs a passing eval against production's (a real MLflow)."""
    fake, kubeconfig = cluster
    name = f"promote-{uuid.uuid4().hex[:8]}"
    for env in ("staging", "production"):
        path = repo / f"argocd/envs/{env}/version.yaml"
        path.write_text(path.read_text().replace("name: rag-answer", f"name: {name}"))
    healthy(fake, repo)
    c = MlflowClient(tracking_uri=registry_url, registry_uri=registry_url)
    c.register_prompt(name, "a {{ question }} {{ context }}")
    c.register_prompt(name, "b {{ question }} {{ context }}")
    c.set_prompt_alias(name, "production", 1)
    r = run(
        repo, "promote", "staging", "production", "--kubeconfig", str(kubeconfig),
        "--tracking-uri", registry_url, "--dry-run",
    )  # fmt: skip
    assert r.returncode == 1
    flat = " ".join(r.stderr.split())
    assert f"prompt gate: {name}/2: no eval of version 2 against version 1" in flat


def test_rollback_puts_back_the_previous_version_file(
    repo: Path, cluster: tuple[FakeKubernetes, Path], tmp_path: Path
) -> None:
    fake, kubeconfig = cluster
    healthy(fake, repo)
    before = (repo / "argocd/envs/production/version.yaml").read_text()
    first = git(repo, "rev-parse", "--short", "HEAD").strip()
    assert (
        run(repo, "promote", "staging", "production", "--kubeconfig", str(kubeconfig)).returncode
        == 0
    )
    git(repo, "-c", "user.email=t@example.com", "-c", "user.name=t", "commit", "-qam", "promote")
    # Production went bad after the merge: the rollback reports it and goes ahead anyway.
    fake.applications["llmops-production"] = application(
        "llmops-production", images(version(repo, "production")), health="Degraded"
    )
    fake.deployments[PRODUCTION] = [deployment(f"{PRODUCTION}-rag", ready=0)]
    body, diff = tmp_path / "pr.md", tmp_path / "env.diff"
    r = run(
        repo, "rollback", "production", "--kubeconfig", str(kubeconfig),
        "--pr-body-file", str(body), "--diff-file", str(diff),
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert (repo / "argocd/envs/production/version.yaml").read_text() == before
    assert f"## Roll back production to {first}" in body.read_text()
    assert "health Degraded" in body.read_text() and "⚠️ unchecked" in body.read_text()
    assert '+            - "1"' in diff.read_text()
    # The same motion with an explicit revision, and a revision that has no such file.
    r = run(repo, "rollback", "production", "--to", "HEAD", "--dry-run")
    assert r.returncode == 0 and "unchecked" in r.stderr  # no cluster: stated
    r = run(repo, "rollback", "production", "--to", "no-such-rev")
    assert r.returncode == 1 and "does not exist at no-such-rev" in r.stderr


def test_usage_errors_exit_2_with_one_line(repo: Path) -> None:
    r = run(repo, "promote", "staging", "qa")
    assert r.returncode == 2 and "no environment 'qa' under argocd/envs/" in r.stderr
    assert "(there are: production, staging)" in r.stderr
    r = run(repo, "promote", "staging", "staging")
    assert r.returncode == 2 and "same environment" in r.stderr
    no_helm = f"{Path(sys.executable).parent}:/usr/bin:/bin"
    r = run(repo, "promote", "staging", "production", "--helm", "/nonexistent", LLMOPS_HELM="",
            PATH=no_helm)  # fmt: skip
    assert r.returncode == 2 and "helm is not installed: run `make tools`" in r.stderr


def test_env_diff_renders_each_environment_against_a_base(repo: Path, tmp_path: Path) -> None:
    values = repo / "argocd/envs/staging/values.yaml"
    values.write_text(values.read_text().replace("replicas: 2\n", "replicas: 3\n", 1))
    out = tmp_path / "comment.md"
    r = run(repo, "env-diff", "--base", "HEAD", "--out", str(out))
    assert r.returncode == 0, r.stderr
    text = out.read_text()
    assert "### production: no change" in text
    assert "### staging: +1 -1 lines" in text and "+  replicas: 3" in text
    assert os.path.getsize(out) < 65_536
