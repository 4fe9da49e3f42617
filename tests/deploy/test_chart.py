"""The Helm chart, checked by the engines that consume it: helm (lint, template, the values
schema), kubernetes-validate's strict schemas of Kubernetes 1.30 and 1.37, the upstream CRD
schemas (with TypeScript's excess-property check for unknown fields), checkov and trivy; and
by what the chart promises: deterministic rendering without Secrets, the `restricted` Pod
Security Standard, HPA plumbing, a values table that matches values.yaml.

Every engine is installed by `make tools`; each test also shows its engine can fail (a bad
document is refused), so a pass is not an engine that found nothing to check.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT
from tests.deploy.chart import (
    CHART,
    CI_VALUES,
    CORE_GROUPS,
    TOOLS_BIN,
    crd_check,
    documents,
    helm,
    pod_spec,
    render,
    tool,
)

sys.path.insert(0, str(ROOT / "deploy" / "tools"))
import values_table

MINIMAL = CHART / "ci" / "minimal.yaml"
PRODUCTION = CHART / "ci" / "production.yaml"
IDS = [p.stem for p in CI_VALUES]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {p.stem: documents(p) for p in CI_VALUES}


def test_the_ci_values_are_the_expected_sets() -> None:
    assert set(IDS) == {"minimal", "production", "keda", "external-secrets", "ingress"}


@pytest.mark.parametrize("values", CI_VALUES, ids=IDS)
def test_helm_lint_strict_and_template(values: Path) -> None:
    lint = helm("lint", "--strict", str(CHART), "-f", str(values))
    assert "1 chart(s) linted, 0 chart(s) failed" in lint.stdout
    assert render(values).stdout.count("\nkind: ") >= 25


def test_production_renders_offline_and_holds_the_ha_pieces(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    kinds = [d["kind"] for d in rendered["production"]]
    for kind in ("HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy",
                 "ServiceMonitor", "StatefulSet", "Job"):  # fmt: skip
        assert kind in kinds, kind
    assert "Secret" not in kinds
    hpas = {
        d["metadata"]["name"]
        for d in rendered["production"]
        if d["kind"] == "HorizontalPodAutoscaler"
    }
    pdbs = {
        d["metadata"]["name"] for d in rendered["production"] if d["kind"] == "PodDisruptionBudget"
    }
    assert hpas == pdbs and len(hpas) == 5  # every multi-replica service has both


# -- determinism and secrets -------------------------------------------------------------------


@pytest.mark.parametrize("values", CI_VALUES, ids=IDS)
def test_rendering_twice_gives_the_same_bytes_and_no_secret(values: Path) -> None:
    first, second = render(values).stdout, render(values).stdout
    assert first == second
    assert not [d for d in yaml.safe_load_all(first) if d and d["kind"] == "Secret"]


def test_templates_use_nothing_that_differs_between_renders() -> None:
    text = "\n".join(p.read_text() for p in (CHART / "templates").rglob("*") if p.is_file())
    for word in ("lookup", "randAlpha", "randAlphaNum", "randNumeric", "genCA", "genPrivateKey",
                 "genSelfSignedCert", "uuidv4", "now", "randBytes"):  # fmt: skip
        assert not re.search(rf"\b{word}\b", text), word


def test_every_credential_is_a_mounted_file_from_the_one_secret(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    for doc in rendered["production"]:
        spec = pod_spec(doc)
        if spec is None:
            continue
        for c in spec["containers"]:
            for e in c.get("env", []):
                if "valueFrom" in e:  # only MLflow's backend store (scan-skips.yaml)
                    assert e["name"] == "MLFLOW_BACKEND_STORE_URI", (doc["metadata"]["name"], e)
                elif e["name"].endswith("_FILE"):
                    assert e["value"].startswith("/var/run/secrets/llmops/"), e
        for v in spec.get("volumes", []):
            for src in v.get("projected", {}).get("sources", []):
                assert src["secret"]["name"] == "llmops-secrets"


# -- the values schema -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("bogus=1", "Additional property bogus is not allowed"),
        ("services.rag.replica=2", "services.rag: Additional property replica is not allowed"),
        ("services.rag.replicas=many", "services.rag.replicas: Invalid type"),
        ("services.rag.port=70000", "services.rag.port: Must be less than or equal to 65535"),
        ("environment=prod", "environment: environment must be one of the following"),
        ("migrations.hook=flux", "migrations.hook: migrations.hook must be one of the following"),
        ("images.llmops.digest=latest", "images.llmops.digest: Does not match pattern"),
        ("networkPolicy.enabled=maybe", "networkPolicy.enabled: Invalid type"),
        (
            "services.feedback.kind=DaemonSet",
            "services.feedback.kind: services.feedback.kind must be one of",
        ),
        ("services.rag.secretEnv.api_key=x", "services.rag.secretEnv: Does not match pattern"),
        ("serviceMonitor.interval=15", "serviceMonitor.interval: Invalid type"),
    ],
)
def test_the_schema_refuses_bad_values(override: str, message: str) -> None:
    r = render(MINIMAL, override, check=False)
    assert r.returncode == 1, r.stdout[:500]
    assert message in r.stderr, r.stderr


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["secrets.existingSecret="], "secrets.existingSecret is required"),
        (["qdrant.url="], "qdrant.url is required"),
        (["services.rag.keda.enabled=true", "services.rag.autoscaling.enabled=true"],
         "services.rag: autoscaling and keda are both enabled"),
        (["services.rag.autoscaling.enabled=true"],
         "services.rag.autoscaling.podsMetric needs prometheusAdapter.enabled"),
        (["services.feedback.enabled=false"], "a service calls feedback, which is not enabled"),
        (["services.mlflow.enabled=false"], "mlflow.externalUrl is required"),
        (["networkPolicy.enabled=true"],
         "networkPolicy.external.database needs cidrs or selectors: feedback calls it"),
    ],
)  # fmt: skip
def test_inconsistent_values_fail_with_the_fix(overrides: list[str], message: str) -> None:
    r = render(MINIMAL, *overrides, check=False)
    assert r.returncode == 1 and message in r.stderr, r.stderr


def test_every_value_is_documented_and_the_readme_table_matches() -> None:
    values = (CHART / "values.yaml").read_text()
    rows, missing = values_table.parse(values)
    assert missing == [], f"values without a `# --` comment: {missing}"
    assert len(rows) > 300
    readme = (CHART / "README.md").read_text()
    assert readme == values_table.readme_with_table(readme, values), (
        "the README's values table is stale: python deploy/tools/values_table.py"
    )
    # Every top-level key of values.yaml is in the schema, and the other way round.
    schema = json.loads((CHART / "values.schema.json").read_text())
    tops = set(yaml.safe_load(values))
    assert tops == set(schema["properties"]) - {"global"}


# -- strict Kubernetes schemas -----------------------------------------------------------------


def _kubernetes_validate(path: Path, version: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool(TOOLS_BIN / "kubernetes-validate"), "--strict", "-k", version, str(path)],
        capture_output=True, text=True,
    )  # fmt: skip


@pytest.mark.parametrize("version", ["1.30.0", "1.37.0"])
def test_core_kinds_validate_strictly(
    rendered: dict[str, list[dict[str, Any]]], version: str, tmp_path: Path
) -> None:
    for name, docs in rendered.items():
        core = [d for d in docs if d["apiVersion"] in CORE_GROUPS]
        assert len(core) == len(docs) - sum(d["apiVersion"] not in CORE_GROUPS for d in docs)
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump_all(core))
        r = _kubernetes_validate(path, version)
        passed = [line for line in r.stdout.splitlines() if " passed for resource " in line]
        assert r.returncode == 0 and len(passed) == len(core), f"{name}:\n{r.stdout}\n{r.stderr}"
    # The same engine refuses an unknown field and a wrong type.
    deployment = next(d for d in rendered["minimal"] if d["kind"] == "Deployment")
    unknown, wrong = copy.deepcopy(deployment), copy.deepcopy(deployment)
    unknown["spec"]["template"]["spec"]["containers"][0]["readOnlyRootFileSystem"] = True
    wrong["spec"]["replicas"] = "two"
    for bad, word in ((unknown, "readOnlyRootFileSystem"), (wrong, "'two' is not of type")):
        path = tmp_path / "bad.yaml"
        path.write_text(yaml.safe_dump(bad))
        r = _kubernetes_validate(path, version)
        assert r.returncode != 0 and word in r.stdout + r.stderr, r.stdout


def test_custom_resources_validate_against_their_crds(
    rendered: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    custom = [d for docs in rendered.values() for d in docs if d["apiVersion"] not in CORE_GROUPS]
    kinds = {d["kind"] for d in custom}
    assert kinds == {"ServiceMonitor", "PrometheusRule", "ScaledObject", "ExternalSecret"}, kinds
    out = crd_check(custom, tmp_path)
    assert out["errors"] == [] and len(out["checked"]) == len(custom), out
    # An unknown field deep in a spec, a wrong enum, an unknown kind: each refused.
    monitor = copy.deepcopy(next(d for d in custom if d["kind"] == "ServiceMonitor"))
    monitor["spec"]["endpoints"][0]["scrapeEvery"] = "15s"
    scaled = copy.deepcopy(next(d for d in custom if d["kind"] == "ScaledObject"))
    scaled["spec"]["minReplicaCount"] = "two"
    rule = copy.deepcopy(next(d for d in custom if d["kind"] == "PrometheusRule"))
    rule["spec"]["groups"][1]["rules"][0]["expression"] = "up == 0"
    unknown = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}
    out = crd_check([monitor, scaled, rule, unknown], tmp_path)
    text = "\n".join(out["errors"])
    assert "'\"scrapeEvery\"' does not exist" in text, text
    assert "'\"expression\"' does not exist" in text, text
    assert "minReplicaCount" in text and "no schema for example.com/v1 Widget" in text, text


# -- Pod Security Standard `restricted` --------------------------------------------------------

_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
            "projected", "secret"}  # fmt: skip


def restricted_violations(doc: dict[str, Any]) -> list[str]:
    """What in a pod spec breaks the `restricted` Pod Security Standard (baseline included),
    or our own rules on top (read-only root, no token, resources)."""
    spec = pod_spec(doc)
    assert spec is not None
    out = []
    psc = spec.get("securityContext", {})
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(key):
            out.append(key)
    for v in spec.get("volumes", []):
        kinds = set(v) - {"name"}
        if not kinds <= _VOLUMES:
            out.append(f"volume {v['name']}: {kinds}")
    if spec.get("automountServiceAccountToken") is not False:
        out.append("automountServiceAccountToken is not false")
    for c in spec.get("initContainers", []) + spec["containers"]:
        sc = c.get("securityContext", {})
        name = c["name"]
        if sc.get("privileged"):
            out.append(f"{name}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"{name}: allowPrivilegeEscalation is not false")
        if sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is not True:
            out.append(f"{name}: runAsNonRoot")
        if sc.get("runAsUser", psc.get("runAsUser")) in (0, None):
            out.append(f"{name}: runAsUser")
        seccomp = sc.get("seccompProfile", psc.get("seccompProfile", {})).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            out.append(f"{name}: seccomp {seccomp}")
        caps = sc.get("capabilities", {})
        if "ALL" not in caps.get("drop", []) or set(caps.get("add", [])) - {"NET_BIND_SERVICE"}:
            out.append(f"{name}: capabilities {caps}")
        if sc.get("readOnlyRootFilesystem") is not True:
            out.append(f"{name}: root filesystem is writable")
        for port in c.get("ports", []):
            if port.get("hostPort"):
                out.append(f"{name}: hostPort")
        res = c.get("resources", {})
        if not (res.get("requests", {}).get("memory") and res.get("limits", {}).get("memory")
                and res.get("requests", {}).get("cpu")):  # fmt: skip
            out.append(f"{name}: resources {res}")
    return out


def test_every_pod_meets_the_restricted_standard(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    pods = 0
    for name, docs in rendered.items():
        for doc in docs:
            if pod_spec(doc) is not None:
                pods += 1
                assert restricted_violations(doc) == [], (name, doc["metadata"]["name"])
    assert pods >= 40
    # The check itself fails a pod that breaks the standard.
    bad = copy.deepcopy(next(d for d in rendered["minimal"] if d["kind"] == "Deployment"))
    spec = bad["spec"]["template"]["spec"]
    spec["hostNetwork"] = True
    spec["volumes"].append({"name": "host", "hostPath": {"path": "/"}})
    spec["containers"][0]["securityContext"] = {"capabilities": {"add": ["SYS_ADMIN"]}}
    spec["securityContext"].pop("runAsNonRoot")
    found = restricted_violations(bad)
    assert len(found) >= 6, found


def test_every_service_account_and_pod_has_no_token_and_its_own_account(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    docs = rendered["production"]
    accounts = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ServiceAccount"}
    assert all(a["automountServiceAccountToken"] is False for a in accounts.values())
    for doc in docs:
        if doc["kind"] in ("Deployment", "StatefulSet", "Job"):
            assert pod_spec(doc)["serviceAccountName"] in accounts  # type: ignore[index]


# -- workloads: probes, stopping, scaling, config ----------------------------------------------


def test_workloads_probe_stop_and_scale_as_the_services_need(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    shutdown = values["shutdown"]
    docs = rendered["production"]
    workloads = [d for d in docs if d["kind"] in ("Deployment", "StatefulSet")]
    assert {
        d["kind"] for d in workloads if d["metadata"]["name"].endswith(("-feedback", "-rag"))
    } == {"StatefulSet"}
    for w in workloads:
        spec = w["spec"]["template"]["spec"]
        c = spec["containers"][0]
        assert {"startupProbe", "readinessProbe", "livenessProbe"} <= set(c), w["metadata"]["name"]
        assert spec["terminationGracePeriodSeconds"] >= (
            shutdown["preStopSeconds"] + shutdown["delaySeconds"] + shutdown["gracefulSeconds"] + 10
        )
        assert c["lifecycle"]["preStop"]["sleep"]["seconds"] == shutdown["preStopSeconds"]
        name = w["metadata"]["name"]
        if not name.endswith("-mlflow"):
            assert "replicas" not in w["spec"]  # the HPA owns it
        assert spec.get("topologySpreadConstraints") or name.endswith("-mlflow")
        assert "checksum/env" in w["spec"]["template"]["metadata"]["annotations"]
        if w["kind"] == "StatefulSet":
            assert w["spec"]["persistentVolumeClaimRetentionPolicy"]["whenScaled"] == "Retain"
            assert w["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    # The proxy's routing file is a directory mount (hot reload), never a subPath.
    proxy = next(w for w in workloads if w["metadata"]["name"].endswith("-llm-proxy"))
    mounts = proxy["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
    routing = next(m for m in mounts if m["name"] == "routing")
    assert "subPath" not in routing and routing["mountPath"] == "/etc/llmops/routing"
    # Every Pods metric an HPA asks for is served by a rule the chart renders.
    adapter = next(
        d
        for d in docs
        if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-prometheus-adapter")
    )
    rules = yaml.safe_load(adapter["data"]["config.yaml"])["rules"]
    served = {r["name"]["as"] for r in rules}
    for hpa in (d for d in docs if d["kind"] == "HorizontalPodAutoscaler"):
        for m in hpa["spec"]["metrics"]:
            if m["type"] == "Pods":
                assert m["pods"]["metric"]["name"] in served
    # The prompt's Job runs after the sync (an in-chart MLflow is up by then), gated.
    sync = next(d for d in docs if d["kind"] == "Job" and d["metadata"]["name"].endswith("sync"))
    assert sync["metadata"]["annotations"]["argocd.argoproj.io/hook"] == "PostSync"
    assert sync["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"
    assert sync["spec"]["template"]["spec"]["containers"][0]["command"][-4:] == [
        "--version", "3", "--to", "production",
    ]  # fmt: skip
    # The migration Jobs are hooks of both kinds, before everything else.
    jobs = [d for d in docs if d["kind"] == "Job" and "-migrations-" in d["metadata"]["name"]]
    assert {j["metadata"]["name"].rsplit("-migrations-", 1)[1] for j in jobs} == {
        "feedback",
        "llm-proxy",
    }
    for j in jobs:
        a = j["metadata"]["annotations"]
        assert a["helm.sh/hook"] == "pre-install,pre-upgrade"
        assert a["argocd.argoproj.io/hook"] == "PreSync"
        assert a["argocd.argoproj.io/hook-delete-policy"] == "BeforeHookCreation"


def test_changing_a_setting_rolls_the_pods_and_changing_routing_does_not() -> None:
    def annotations(*sets: str) -> dict[str, str]:
        docs = documents(MINIMAL, *sets)
        return {
            d["metadata"]["name"]: d["spec"]["template"]["metadata"]["annotations"]["checksum/env"]
            for d in docs
            if d["kind"] in ("Deployment", "StatefulSet")
        }

    base = annotations()
    changed = annotations("services.rag.env.TOP_K=8")
    assert [n for n in base if base[n] != changed[n]] == ["llmops-rag"]
    assert annotations("routing.aliases.other.deployments[0].deployment=local") == base


# -- checkov and trivy -------------------------------------------------------------------------


def _skips() -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = yaml.safe_load(
        (ROOT / "deploy/helm/scan-skips.yaml").read_text()
    )
    ids = [(e["tool"], e["id"]) for e in entries]
    assert len(ids) == len(set(ids)), "a skip is listed twice"
    assert all(e["reason"].strip() for e in entries)
    return entries


def _covered(entry: dict[str, Any], tool_name: str, check: str, resource: str, values: str) -> bool:
    return (
        entry["tool"] == tool_name
        and entry["id"] == check
        and values in entry.get("values", IDS)
        and any(re.search(p, resource) for p in entry["resources"])
    )


def test_checkov_and_trivy_find_nothing_but_the_listed_skips(
    rendered: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    for name, docs in rendered.items():
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump_all(docs))
    total = sum(len(d) for d in rendered.values())
    templates = sum(
        pod_spec(d) is not None and d["kind"] != "Pod" for docs in rendered.values() for d in docs
    )
    findings: list[tuple[str, str, str, str]] = []

    checkov = subprocess.run(
        [tool(TOOLS_BIN / "checkov"), "-d", str(tmp_path), "--framework", "kubernetes",
         "--skip-download", "--quiet", "--compact", "-o", "json"],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    report = json.loads(checkov.stdout)
    summary = report["summary"]
    # It ran over every document (a scan of nothing passes too).
    # (checkov counts each pod template as a resource of its own, beside its workload)
    assert summary["resource_count"] == total + templates and summary["passed"] > 15 * total, (
        summary
    )
    assert summary["parsing_errors"] == 0
    for f in report["results"]["failed_checks"]:
        findings.append(("checkov", f["check_id"], f["resource"], Path(f["file_path"]).stem))

    trivy_env = {**os.environ, "TRIVY_CACHE_DIR": str(tmp_path / ".cache")}
    trivy = subprocess.run(
        [tool(TOOLS_BIN / "trivy"), "config", "--skip-check-update", "--skip-version-check",
         "--disable-telemetry", "--quiet", "-f", "json", str(tmp_path)],
        capture_output=True, text=True, env=trivy_env,
    )  # fmt: skip
    assert trivy.returncode == 0, trivy.stderr
    results = json.loads(trivy.stdout)["Results"]
    assert {Path(r["Target"]).stem for r in results} == set(rendered)
    successes = sum(r["MisconfSummary"]["Successes"] for r in results)
    assert successes > 50, successes
    for r in results:
        for m in r.get("Misconfigurations") or []:
            if m["Status"] == "FAIL":
                findings.append(("trivy", m["ID"], m["Message"], Path(r["Target"]).stem))

    skips = _skips()
    uncovered = [f for f in findings if not any(_covered(e, *f) for e in skips)]
    assert uncovered == [], "\n".join(map(str, uncovered))
    stale = [e["id"] for e in skips if not any(_covered(e, *f) for f in findings)]
    assert stale == [], f"skips that matched nothing (remove them): {stale}"
    # And both engines do fail a bad pod.
    bad = copy.deepcopy(next(d for d in rendered["minimal"] if d["kind"] == "Deployment"))
    bad["spec"]["template"]["spec"]["containers"][0]["securityContext"] = {"privileged": True}
    only = tmp_path / "bad"
    only.mkdir()
    (only / "bad.yaml").write_text(yaml.safe_dump(bad))
    out = subprocess.run(
        [tool(TOOLS_BIN / "checkov"), "-d", str(only), "--framework", "kubernetes",
         "--skip-download", "--quiet", "--compact", "-o", "json"],
        capture_output=True, text=True, cwd=only,
    )  # fmt: skip
    assert "CKV_K8S_16" in out.stdout  # privileged containers
    out = subprocess.run(
        [tool(TOOLS_BIN / "trivy"), "config", "--skip-check-update", "--skip-version-check",
         "--disable-telemetry", "--quiet", "-f", "json", str(only)],
        capture_output=True, text=True, env=trivy_env,
    )  # fmt: skip
    assert "KSV-0017" in out.stdout or "KSV017" in out.stdout, out.stdout[:2000]


def test_the_sizing_table_in_the_docs_is_the_production_rendering(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    """docs/deploy.md sums the production requests; this keeps the sum true."""

    def cpu(v: str) -> float:
        return float(v[:-1]) / 1000 if str(v).endswith("m") else float(v)

    def gib(v: str) -> float:
        return float(v[:-2]) * {"Mi": 1 / 1024, "Gi": 1.0}[v[-2:]]

    docs = rendered["production"]
    hpa = {
        d["spec"]["scaleTargetRef"]["name"]: d["spec"]
        for d in docs
        if d["kind"] == "HorizontalPodAutoscaler"
    }
    total = [0.0, 0.0, 0.0, 0.0]
    rows = {}
    for d in docs:
        if d["kind"] not in ("Deployment", "StatefulSet"):
            continue
        name = d["metadata"]["name"]
        r = d["spec"]["template"]["spec"]["containers"][0]["resources"]
        low = hpa[name]["minReplicas"] if name in hpa else d["spec"]["replicas"]
        high = hpa[name]["maxReplicas"] if name in hpa else low
        c, m = cpu(r["requests"]["cpu"]), gib(r["requests"]["memory"])
        total = [total[0] + c * low, total[1] + m * low, total[2] + c * high, total[3] + m * high]
        rows[name.removeprefix("llmops-")] = (
            f"| {name.removeprefix('llmops-')} | {low}\u2013{high} | "
            f"{r['requests']['cpu']} / {r['requests']['memory']} | "
            f"{r['limits']['cpu']} / {r['limits']['memory']} |"
        )
    doc = (ROOT / "docs" / "deploy.md").read_text()
    for row in rows.values():
        assert row in doc, row
    want = f"**{total[0]:g} cpu / {total[1]:g} Gi** | **{total[2]:g} cpu / {total[3]:g} Gi**"
    assert want in doc, want


def test_yamllint_passes_the_sources_and_the_renderings(
    rendered: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    config = ROOT / "deploy" / "helm" / ".yamllint"
    sources = [CHART / "values.yaml", *CI_VALUES, ROOT / "deploy/helm/scan-skips.yaml"]
    lint = [tool(TOOLS_BIN / "yamllint"), "-s", "-f", "parsable"]
    r = subprocess.run(
        [*lint, "-c", str(config), *map(str, sources)], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stdout + r.stderr
    # Rendered: the same rules but line length (image digests, MLflow's allowed hosts).
    rules = yaml.safe_load(config.read_text())
    rules["rules"]["line-length"] = "disable"
    files = []
    for values in CI_VALUES:
        path = tmp_path / values.name
        path.write_text(render(values).stdout)
        files.append(str(path))
    r = subprocess.run([*lint, "-d", json.dumps(rules), *files], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    # It does fail: trailing spaces and a duplicated key.
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: 1 \na: 2\n")
    r = subprocess.run([*lint, "-c", str(config), str(bad)], capture_output=True, text=True)
    assert r.returncode == 1 and "trailing-spaces" in r.stdout and "key-duplicates" in r.stdout


def test_the_chart_runs_the_commands_and_ports_of_the_images_workloads(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    """deploy/docker/workloads.yaml is what the images were proven with: the chart runs those
    commands, on those ports, from the right image."""
    spec = yaml.safe_load((ROOT / "deploy" / "docker" / "workloads.yaml").read_text())["workloads"]
    docs = rendered["minimal"]
    seen = set()
    for doc in docs:
        pod = pod_spec(doc)
        if pod is None or doc["kind"] == "Pod":
            continue
        (c,) = pod["containers"]
        name = c["name"] if c["name"] != "migrate" else "migrations"
        want = spec[name]
        seen.add(name)
        image = "llmops-models" if "-models" in c["image"].split(":")[0] else "llmops"
        assert image == want["image"], name
        if name == "migrations":  # one Job per schema: `llmops db upgrade <schema> --wait N`
            assert c["command"][:3] == want["command"][:3] and c["command"][3] in (
                "feedback",
                "llm-proxy",
            )
            continue
        assert c["command"] == [str(x) for x in want["command"]], name
        assert c["ports"][0]["containerPort"] == want["port"], name
    assert seen == set(spec), seen ^ set(spec)
