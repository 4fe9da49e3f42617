"""argocd/ as Argo CD will read it: every manifest against the upstream CRD schemas (unknown
fields are errors), the Applications the ApplicationSet generates from the environment folders
(rendered here by services/cli/gitops.py, the renderer ``llmops promote`` uses) checked the
same way, the projects' rules against what the applications ask for, the sync waves, and each
environment rendered by the real helm and validated by the strict Kubernetes schemas."""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.cli.gitops import GitopsError, environments, helm_args, render, render_template
from tests.conftest import ROOT
from tests.deploy.chart import CORE_GROUPS, HELM, TOOLS_BIN, crd_check, tool

ARGOCD = ROOT / "argocd"
MANIFEST_DIRS = ("bootstrap", "apps")


def manifests() -> list[tuple[Path, dict[str, Any]]]:
    found = []
    for d in MANIFEST_DIRS:
        for path in sorted((ARGOCD / d).glob("*.yaml")):
            for doc in yaml.safe_load_all(path.read_text()):
                if doc:
                    found.append((path, doc))
    return found


def by_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for _, d in manifests() if d["kind"] == kind}


def wave(doc: dict[str, Any]) -> int:
    return int(doc["metadata"].get("annotations", {}).get("argocd.argoproj.io/sync-wave", "0"))


def test_every_manifest_and_generated_application_validates_against_the_crds(
    tmp_path: Path,
) -> None:
    docs = [d for _, d in manifests()]
    kinds = sorted({d["kind"] for d in docs})
    assert kinds == ["AppProject", "Application", "ApplicationSet"], kinds
    generated = [env.application for env in environments(ROOT).values()]
    assert [a["metadata"]["name"] for a in generated] == ["llmops-production", "llmops-staging"]
    out = crd_check(docs + generated, tmp_path)
    assert out["errors"] == [] and len(out["checked"]) == len(docs) + len(generated), out
    # The same engine refuses an unknown field deep in a spec and a wrong type.
    app = copy.deepcopy(generated[0])
    app["spec"]["syncPolicy"]["automated"]["selfHeals"] = True
    project = copy.deepcopy(by_kind("AppProject")["llmops"])
    project["spec"]["syncWindows"][0]["manualSync"] = "yes"
    out = crd_check([app, project], tmp_path)
    text = "\n".join(out["errors"])
    assert "'\"selfHeals\"' does not exist" in text, text
    assert "manualSync" in text, text


def test_every_yaml_under_argocd_is_checked() -> None:
    """No document escapes the CRD check: every YAML file is a manifest of bootstrap/ or apps/,
    or an environment's version.yaml or values.yaml (Helm values, checked by rendering)."""
    envs = {f"envs/{e}/{f}" for e in environments(ROOT) for f in ("version.yaml", "values.yaml")}
    for path in ARGOCD.rglob("*.y*ml"):
        rel = path.relative_to(ARGOCD).as_posix()
        assert rel.split("/")[0] in MANIFEST_DIRS or rel in envs, rel


def test_the_application_set_never_deletes_and_its_template_is_plain_fields() -> None:
    appset = by_kind("ApplicationSet")["llmops-environments"]
    policy = appset["spec"]["syncPolicy"]
    assert policy == {"applicationsSync": "create-update", "preserveResourcesOnDeletion": True}
    assert appset["spec"]["goTemplateOptions"] == ["missingkey=error"]
    # The renderer refuses what it could not reproduce exactly, and a missing key.
    with pytest.raises(GitopsError, match="unsupported template expression"):
        render_template({"a": "{{ if .x }}y{{ end }}"}, {"x": 1}, "t")
    with pytest.raises(GitopsError, match=r"no entry for key 'chart\.revision'"):
        render_template({"a": "{{ .chart.revision }}"}, {"chart": {}}, "t")
    # Each generated Application: its own namespace, the version file's chart and images.
    for name, env in environments(ROOT).items():
        app = env.application
        spec = app["spec"]
        assert spec["destination"]["namespace"] == f"llmops-{name}"
        chart = next(s for s in spec["sources"] if "chart" in s)
        assert chart["targetRevision"] == env.version["chart"]["version"]
        params = {p["name"]: p["value"] for p in chart["helm"]["parameters"]}
        assert params["images.llmops.digest"] == env.version["images"]["llmops"]["digest"]
        assert params["prompt.version"] == env.version["prompt"]["version"]
        assert all(p.get("forceString") for p in chart["helm"]["parameters"])
        assert "ServerSideApply=true" in spec["syncPolicy"]["syncOptions"]
        assert spec["syncPolicy"]["retry"]["limit"] >= 1


def test_version_files_hold_only_versions_and_values_files_none() -> None:
    """Promotion copies version.yaml only: it must hold every version and nothing else, and
    values.yaml none of them (else a promotion would leave a version behind)."""
    envs = environments(ROOT)
    assert set(envs) == {"staging", "production"}
    for env in envs.values():
        assert set(env.version) == {"chart", "images", "prompt"}
        assert set(env.version["images"]) == {"llmops", "models"}
        for image in env.version["images"].values():
            assert set(image) == {"tag", "digest"} and image["digest"].startswith("sha256:")
            assert len(image["digest"]) == len("sha256:") + 64
        assert set(env.version["prompt"]) == {"name", "version"}
        values = yaml.safe_load((env.folder / "values.yaml").read_text())
        assert "prompt" not in values and values["environment"] == env.name
        for image in values.get("images", {}).values():
            assert set(image) <= {"repository", "pullPolicy"}, image


def test_projects_allow_exactly_what_their_applications_use() -> None:
    projects = by_kind("AppProject")
    apps = [*by_kind("Application").values()] + [e.application for e in environments(ROOT).values()]
    for app in apps:
        project = projects[app["spec"]["project"]]["spec"]
        sources = app["spec"].get("sources") or [app["spec"]["source"]]
        for s in sources:
            assert s["repoURL"] in project["sourceRepos"], (app["metadata"]["name"], s)
        dest = app["spec"]["destination"]
        assert {"server": dest["server"], "namespace": dest["namespace"]} in project[
            "destinations"
        ], app["metadata"]["name"]
    llmops = projects["llmops"]["spec"]
    assert llmops["clusterResourceWhitelist"] == []  # the chart creates nothing cluster-wide
    # Production syncs only in working hours; by hand at any time.
    windows = llmops["syncWindows"]
    assert windows and all(w["kind"] == "deny" for w in windows)
    assert all(w["applications"] == ["llmops-production"] for w in windows)
    assert all(w["manualSync"] is True and w["timeZone"] for w in windows)


def test_every_kind_the_chart_renders_is_allowed_by_the_llmops_project() -> None:
    allowed = {
        (r["group"], r["kind"])
        for r in by_kind("AppProject")["llmops"]["spec"]["namespaceResourceWhitelist"]
    }
    helm = tool(HELM)
    for env in environments(ROOT).values():
        docs = [d for d in yaml.safe_load_all(render(env, ROOT, helm=helm)) if d]
        for d in docs:
            group = d["apiVersion"].rpartition("/")[0]
            assert (group, d["kind"]) in allowed, (env.name, d["kind"], d["metadata"]["name"])


def test_sync_waves_put_crds_and_operators_first() -> None:
    apps, projects = by_kind("Application"), by_kind("AppProject")
    appset = by_kind("ApplicationSet")["llmops-environments"]
    crd_providers = ("kube-prometheus-stack", "external-secrets")
    assert max(wave(apps[n]) for n in crd_providers) < wave(apps["prometheus-adapter"])
    assert wave(apps["prometheus-adapter"]) < wave(apps["qdrant"]) < wave(appset)
    assert wave(projects["llmops"]) < wave(appset)
    # The root syncs argocd/apps/, which holds every one of them.
    root = apps["llmops-root"]
    assert root["spec"]["source"]["path"] == "argocd/apps"
    in_apps = {d["metadata"]["name"] for p, d in manifests() if p.parent.name == "apps"}
    assert in_apps == {
        "llmops", "kube-prometheus-stack", "prometheus-adapter", "external-secrets", "qdrant",
        "llmops-environments",
    }  # fmt: skip
    # CRDs this large need server-side apply.
    for name in crd_providers:
        assert "ServerSideApply=true" in apps[name]["spec"]["syncPolicy"]["syncOptions"]


@pytest.mark.parametrize("env", ["staging", "production"])
def test_each_environment_renders_and_validates_strictly(env: str, tmp_path: Path) -> None:
    """What Argo CD will apply: helm with the Application's own arguments, then the strict
    Kubernetes 1.30 schemas for the core kinds and the CRDs for the rest."""
    e = environments(ROOT)[env]
    args = helm_args(e, ROOT, ROOT / "deploy/helm/llmops")
    assert f"images.llmops.digest={e.version['images']['llmops']['digest']}" in args
    docs = [d for d in yaml.safe_load_all(render(e, ROOT, helm=tool(HELM))) if d]
    core = [d for d in docs if d["apiVersion"] in CORE_GROUPS]
    path = tmp_path / "core.yaml"
    path.write_text(yaml.safe_dump_all(core))
    r = subprocess.run(
        [tool(TOOLS_BIN / "kubernetes-validate"), "--strict", "-k", "1.30.0", str(path)],
        capture_output=True, text=True,
    )  # fmt: skip
    passed = [ln for ln in r.stdout.splitlines() if " passed for resource " in ln]
    assert r.returncode == 0 and len(passed) == len(core), r.stdout + r.stderr
    custom = [d for d in docs if d["apiVersion"] not in CORE_GROUPS]
    out = crd_check(custom, tmp_path)
    assert out["errors"] == [] and len(out["checked"]) == len(custom), out
    # The prompt hook Job names the declared version and the environment's alias.
    job = next(d for d in docs if d["kind"] == "Job" and d["metadata"]["name"].endswith("sync"))
    cmd = job["spec"]["template"]["spec"]["containers"][0]["command"]
    assert cmd[:3] == ["llmops", "prompts", "sync"]
    assert cmd[cmd.index("--version") + 1] == e.version["prompt"]["version"]
    assert cmd[cmd.index("--to") + 1] == env
    assert job["metadata"]["annotations"]["argocd.argoproj.io/hook"] == "PostSync"
    images = {
        c["image"] for d in docs if d["kind"] in ("Deployment", "StatefulSet")
        for c in d["spec"]["template"]["spec"]["containers"]
    }  # fmt: skip
    digests = {i["digest"] for i in e.version["images"].values()}
    assert {i.rpartition("@")[2] for i in images} == digests, images


def test_the_adapter_serves_the_rules_the_chart_renders() -> None:
    """prometheus-adapter mounts rules only from its own namespace: its Application carries
    the chart's rules inline, and they must be the same ones."""
    adapter = by_kind("Application")["prometheus-adapter"]["spec"]["source"]["helm"]
    inline = adapter["valuesObject"]["rules"]["custom"]
    env = environments(ROOT)["production"]
    docs = [d for d in yaml.safe_load_all(render(env, ROOT, helm=tool(HELM))) if d]
    cm = next(d for d in docs if d["metadata"]["name"].endswith("-prometheus-adapter"))
    assert yaml.safe_load(cm["data"]["config.yaml"])["rules"] == inline
