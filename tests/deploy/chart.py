"""The chart and the engines that check it: rendering with the real helm binary, and the
installs `make tools` made (.tools: helm, kubectl, the CRD models, checkov, trivy,
kubernetes-validate). A missing engine fails the test, never skips it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import ROOT

CHART = ROOT / "deploy" / "helm" / "llmops"
CI_VALUES = sorted(CHART.glob("ci/*.yaml"))
TOOLS = ROOT / ".tools"
HELM = TOOLS / "bin" / "helm"
TOOLS_BIN = TOOLS / "venv" / "bin"
NODE_DIR = TOOLS / "node"
RELEASE, NAMESPACE = "llmops", "llmops"
CORE_GROUPS = ("v1", "apps/v1", "batch/v1", "policy/v1", "autoscaling/v2", "networking.k8s.io/v1")


def tool(path: Path) -> str:
    assert path.exists(), f"{path} is missing: run `make tools` (make test does)"
    return str(path)


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([tool(HELM), *args], capture_output=True, text=True)
    if check:
        assert r.returncode == 0, f"helm {' '.join(args)}:\n{r.stdout}\n{r.stderr}"
    return r


def render(values: Path | str, *sets: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """`helm template` as Argo CD runs it (no cluster, no lookup)."""
    args = ["template", RELEASE, str(CHART), "-n", NAMESPACE, "-f", str(values)]
    for s in sets:
        args += ["--set", s]
    return helm(*args, check=check)


def documents(values: Path | str, *sets: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(render(values, *sets).stdout) if d]


def values_name(path: Path) -> str:
    return path.stem


def pod_spec(doc: dict[str, Any]) -> dict[str, Any] | None:
    """The pod spec of a workload document (Deployment, StatefulSet, Job, Pod), else None."""
    if doc["kind"] == "Pod":
        spec: dict[str, Any] = doc["spec"]
        return spec
    if doc["kind"] in ("Deployment", "StatefulSet", "Job", "DaemonSet"):
        spec = doc["spec"]["template"]["spec"]
        return spec
    return None


PRODUCTION = CHART / "ci" / "production.yaml"


def prometheus_rules(*sets: str, values: Path = PRODUCTION) -> dict[str, Any]:
    """The chart's PrometheusRule as a Prometheus rule file (``{"groups": [...]}``)."""
    docs = [d for d in documents(values, *sets) if d["kind"] == "PrometheusRule"]
    assert len(docs) == 1, f"expected one PrometheusRule from {values.name}, got {len(docs)}"
    return {"groups": docs[0]["spec"]["groups"]}


def promtool() -> str:
    """Debian's promtool, installed by `make tools`; a test fails (never skips) without it."""
    found = shutil.which("promtool")
    assert found, "promtool is missing: run `make tools` (make test does; it installs prometheus)"
    return found


def crd_check(docs: list[dict[str, Any]], tmp_path: Path) -> dict[str, Any]:
    """deploy/tools/crds.mjs over ``docs``: the upstream CRD models' validate() and TypeScript's
    excess-property check; ``{"checked": [...], "errors": [...]}``."""
    path = tmp_path / "crds.json"
    path.write_text(json.dumps(docs))
    r = subprocess.run(
        ["node", "--input-type=module"],
        stdin=(ROOT / "deploy" / "tools" / "crds.mjs").open(), cwd=tool(NODE_DIR),
        env={**os.environ, "LLMOPS_CRD_INPUT": str(path)}, capture_output=True, text=True,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    out: dict[str, Any] = json.loads(r.stdout)
    return out
