"""terraform/ (the platform's bootstrap), checked by the engines that can run here.

Terraform itself formats every file and runs `init -backend=false`, `validate` and `terraform
test` on each module whose providers are all built in (the topology and argocd-apps-values
modules: plan-only runs of their outputs and validations). The modules and examples with real
providers (kubernetes, helm, aws) cannot be initialised here (no registry serves providers), so
their structure is read with python-hcl2: typed and described variables, pinned providers,
modules and charts, the namespaces -> argo-cd -> argocd-apps order, tfvars per topology.
checkov's Terraform checks scan our own resources, and every skip carries its reason.

A missing tool fails the test, never skips it; each engine is also shown to fail on a bad
input, so a pass is not an engine that found nothing to check.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import hcl2
import pytest
import yaml
from hcl2 import SerializationOptions

from tests.conftest import ROOT
from tests.deploy.chart import TOOLS_BIN, tool

TERRAFORM = ROOT / "terraform"
BOOTSTRAP = TERRAFORM / "modules" / "platform-bootstrap"
HCL = SerializationOptions(strip_string_quotes=True, explicit_blocks=False, with_comments=False)
BUILTIN_SOURCES = {"terraform.io/builtin/terraform", "builtin/terraform", "terraform"}
# A constraint that pins a major version: `~> X.Y[.Z]` (not `~> X`, which allows X+1), or exact.
MAJOR_PIN = re.compile(r"^\s*(~>\s*\d+\.\d+(\.\d+)?|=?\s*\d+\.\d+\.\d+)\s*$")
EXACT_VERSION = re.compile(r"^\d+\.\d+\.\d+$")
REGISTRY_SOURCE = re.compile(
    r"^([a-z0-9.-]+\.[a-z]{2,}/)?[A-Za-z0-9_-]+/[A-Za-z0-9_-]+/[A-Za-z0-9_-]+$"
)
VAR_REF = re.compile(r"^\$\{var\.([A-Za-z0-9_]+)\}$")
SECRET_NAME = re.compile(r"password|token|private_key|secret")
SKIP = re.compile(r"#\s*checkov:skip=([A-Z0-9_]+(?:,[A-Z0-9_]+)*)(?::(.*))?$", re.M)
# Each example's tfvars files and the topology each one is for.
TFVARS = {
    "examples/kind": {"kind.tfvars": "kind"},
    "examples/eks": {"eks-small.tfvars": "eks", "eks-ha.tfvars": "eks-ha"},
}


# -- Engines ------------------------------------------------------------------------------------


def terraform_bin() -> str:
    found = shutil.which("terraform")
    assert found, (
        "terraform is not on PATH: install Terraform >= 1.9 (the tests were written against "
        "1.11.4) from https://releases.hashicorp.com/terraform/"
    )
    return found


def terraform(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Terraform with no CLI config, no version check and no TF_* setting of the caller's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TF_")}
    env.update(
        CHECKPOINT_DISABLE="1", TF_CLI_CONFIG_FILE="/dev/null", TF_IN_AUTOMATION="1", TF_INPUT="0"
    )
    r = subprocess.run(
        [terraform_bin(), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=240
    )
    if check:
        assert r.returncode == 0, f"terraform {' '.join(args)} in {cwd}:\n{r.stdout}\n{r.stderr}"
    return r


def checkov(directory: Path) -> dict[str, Any]:
    """checkov's Terraform framework over a directory, offline; its JSON report."""
    r = subprocess.run(
        [
            tool(TOOLS_BIN / "checkov"),
            "-d",
            str(directory),
            "--framework",
            "terraform",
            "--skip-download",
            "--output",
            "json",
            "--quiet",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.stdout.strip(), f"checkov printed no report (rc {r.returncode}):\n{r.stderr}"
    report = json.loads(r.stdout)
    reports = report if isinstance(report, list) else [report]
    found = [x for x in reports if x.get("check_type") == "terraform"]
    assert len(found) == 1, f"no terraform report in checkov's output: {r.stdout[:2000]}"
    result: dict[str, Any] = found[0]
    return result


def copy_terraform(tmp_path: Path) -> Path:
    """terraform/ copied, so `init` leaves no .terraform (or lock file) in the repository."""
    target = tmp_path / "terraform"
    shutil.copytree(
        TERRAFORM,
        target,
        ignore=shutil.ignore_patterns(".terraform", "*.tfstate*", ".terraform.lock.hcl"),
    )
    return target


# -- Reading HCL --------------------------------------------------------------------------------


def load(path: Path) -> dict[str, Any]:
    with path.open() as f:
        data: dict[str, Any] = hcl2.load(f, serialization_options=HCL)
    return data


def config(directory: Path) -> dict[str, list[Any]]:
    """Every top-level block of a module's *.tf files, by block type."""
    merged: dict[str, list[Any]] = {}
    for f in sorted(directory.glob("*.tf")):
        for kind, entries in load(f).items():
            merged.setdefault(kind, []).extend(entries)
    return merged


def labelled(cfg: dict[str, list[Any]], kind: str) -> dict[str, dict[str, Any]]:
    """Blocks with one label (variable, module, output, provider): name => body."""
    return {name: body for entry in cfg.get(kind, []) for name, body in entry.items()}


def resources(cfg: dict[str, list[Any]], kind: str = "resource") -> dict[str, dict[str, Any]]:
    """Blocks with two labels (resource, data): "type.name" => body."""
    return {
        f"{rtype}.{name}": body
        for entry in cfg.get(kind, [])
        for rtype, named in entry.items()
        for name, body in named.items()
    }


def of_type(cfg: dict[str, list[Any]], rtype: str) -> dict[str, dict[str, Any]]:
    return {k.split(".", 1)[1]: v for k, v in resources(cfg).items() if k.split(".")[0] == rtype}


def required_providers(cfg: dict[str, list[Any]]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for block in cfg.get("terraform", []):
        for providers in block.get("required_providers", []):
            found.update(providers)
    return found


def config_dirs() -> list[Path]:
    return sorted({p.parent for p in TERRAFORM.rglob("*.tf") if ".terraform" not in p.parts})


def builtin_only(directory: Path) -> bool:
    """No provider but Terraform's own: every required provider is built in, and every
    resource and data source is terraform_* (terraform_data)."""
    cfg = config(directory)
    providers_builtin = all(
        isinstance(spec, dict) and spec.get("source") in BUILTIN_SOURCES
        for spec in required_providers(cfg).values()
    )
    types = [k.split(".")[0] for kind in ("resource", "data") for k in resources(cfg, kind)]
    return providers_builtin and all(t.startswith("terraform_") for t in types)


def rel(directory: Path) -> str:
    return directory.relative_to(TERRAFORM).as_posix()


BUILTIN = [d for d in config_dirs() if builtin_only(d)]
EXTERNAL = [d for d in config_dirs() if not builtin_only(d)]


def run_blocks(module: Path) -> int:
    return sum(len(load(f).get("run", [])) for f in sorted(module.glob("tests/*.tftest.hcl")))


def resolve(value: Any, variables: dict[str, dict[str, Any]]) -> tuple[Any, str | None]:
    """A literal, or the default of the variable it names (and that variable's name)."""
    m = VAR_REF.match(str(value))
    if m:
        return variables.get(m.group(1), {}).get("default"), m.group(1)
    return value, None


def structure_problems(directory: Path) -> list[str]:
    """What in a module or example with real providers breaks the conventions."""
    cfg = config(directory)
    problems: list[str] = []
    variables = labelled(cfg, "variable")

    for name, body in variables.items():
        if "type" not in body:
            problems.append(f"variable {name}: no type")
        if not str(body.get("description") or "").strip():
            problems.append(f"variable {name}: no description")
        if body.get("sensitive") is True and body.get("default") not in (None, "", [], {}):
            problems.append(f"variable {name}: sensitive, with a default that is not null/empty")
        if SECRET_NAME.search(name) and body.get("sensitive") is not True:
            problems.append(f"variable {name}: looks like a secret but is not sensitive = true")

    versions = directory / "versions.tf"
    declared: dict[str, Any] = {}
    if not versions.exists():
        problems.append("no versions.tf")
    else:
        blocks = load(versions).get("terraform", [])
        if not any(str(b.get("required_version") or "").strip() for b in blocks):
            problems.append("versions.tf: no required_version")
        declared = required_providers({"terraform": blocks})
        if not declared:
            problems.append("versions.tf: no required_providers")
        for provider, spec in declared.items():
            if not isinstance(spec, dict) or not spec.get("source"):
                problems.append(f"provider {provider}: no source")
            elif not MAJOR_PIN.match(str(spec.get("version") or "")):
                problems.append(
                    f"provider {provider}: version {spec.get('version')!r} does not pin a major"
                )

    for kind in ("resource", "data"):
        for key in resources(cfg, kind):
            prefix = key.split("_", 1)[0]
            if prefix != "terraform" and prefix not in declared:
                problems.append(f"{kind} {key}: provider {prefix} not in required_providers")

    for name, body in labelled(cfg, "module").items():
        source = str(body.get("source") or "")
        if source.startswith(("./", "../")):
            if not (directory / source).is_dir():
                problems.append(f"module {name}: {source} does not exist")
        elif REGISTRY_SOURCE.match(source) and not MAJOR_PIN.match(str(body.get("version") or "")):
            problems.append(
                f"module {name}: registry source {source} with version "
                f"{body.get('version')!r}, which does not pin a major"
            )

    for name, body in of_type(cfg, "helm_release").items():
        version, via = resolve(body.get("version"), variables)
        if not EXACT_VERSION.match(str(version or "")):
            problems.append(f"helm_release {name}: version {version!r} is not an exact version")
        if via and not variables[via].get("validation"):
            problems.append(f"helm_release {name}: var.{via} pins the version with no validation")
    return problems


# -- 1. Formatting ------------------------------------------------------------------------------


def test_fmt() -> None:
    r = terraform(
        "fmt", "-check", "-recursive", "-diff", "-no-color", str(TERRAFORM), cwd=ROOT, check=False
    )
    assert r.returncode == 0, (
        f"`terraform fmt -recursive terraform/` would change:\n{r.stdout}{r.stderr}"
    )


def test_fmt_refuses_misformatting(tmp_path: Path) -> None:
    (tmp_path / "bad.tf").write_text('variable "x" {\ntype=string\n}\n')
    r = terraform(
        "fmt",
        "-check",
        "-recursive",
        "-diff",
        "-no-color",
        str(tmp_path),
        cwd=tmp_path,
        check=False,
    )
    assert r.returncode != 0 and "bad.tf" in r.stdout, r.stdout + r.stderr


# -- 2. Modules with built-in providers only: validate and terraform test -----------------------


def test_builtin_modules_found() -> None:
    names = [rel(d) for d in BUILTIN]
    assert names, "no module with only built-in providers under terraform/"
    assert "modules/topology" in names, names
    assert "modules/argocd-apps-values" in names, names
    assert not {rel(d) for d in EXTERNAL} & set(names)


@pytest.mark.parametrize("module", BUILTIN, ids=rel)
def test_builtin_module_validates_and_tests(module: Path, tmp_path: Path) -> None:
    work = copy_terraform(tmp_path) / rel(module)
    terraform("init", "-backend=false", "-input=false", "-no-color", cwd=work)

    result = json.loads(terraform("validate", "-json", "-no-color", cwd=work).stdout)
    assert result["valid"] is True, result["diagnostics"]
    assert result["error_count"] == 0 and result["warning_count"] == 0, result["diagnostics"]

    runs = run_blocks(module)
    assert runs > 0, f"{rel(module)}: no `run` block in tests/*.tftest.hcl"
    r = terraform("test", "-no-color", cwd=work, check=False)
    assert r.returncode == 0, f"terraform test in {rel(module)}:\n{r.stdout}\n{r.stderr}"
    m = re.search(r"Success! (\d+) passed, 0 failed\.", r.stdout)
    assert m, f"no success line in terraform test's output:\n{r.stdout}"
    assert int(m.group(1)) == runs, f"{m.group(1)} runs passed, {runs} run blocks:\n{r.stdout}"


def test_terraform_test_fails_on_a_wrong_module(tmp_path: Path) -> None:
    """The topology module's runs see a changed namespace naming (llmops-E is the contract with
    the ApplicationSet)."""
    work = copy_terraform(tmp_path) / "modules" / "topology"
    main = work / "main.tf"
    text = main.read_text()
    assert '"llmops-${e}"' in text
    main.write_text(text.replace('"llmops-${e}"', '"app-${e}"'))
    terraform("init", "-backend=false", "-input=false", "-no-color", cwd=work)
    r = terraform("test", "-no-color", cwd=work, check=False)
    assert r.returncode != 0, r.stdout
    assert re.search(r"Failure! \d+ passed, [1-9]\d* failed", r.stdout), r.stdout


# -- 3. Modules and examples with real providers: structure -----------------------------------


def test_external_modules_found() -> None:
    assert {rel(d) for d in EXTERNAL} >= {
        "modules/platform-bootstrap",
        "examples/kind",
        "examples/eks",
    }


@pytest.mark.parametrize("directory", EXTERNAL, ids=rel)
def test_structure(directory: Path) -> None:
    assert structure_problems(directory) == []


def test_structure_check_catches_problems(tmp_path: Path) -> None:
    (tmp_path / "versions.tf").write_text(
        "terraform {\n  required_providers {\n"
        '    helm = { source = "hashicorp/helm", version = ">= 2.0" }\n'
        "  }\n}\n"
    )
    (tmp_path / "main.tf").write_text(
        'variable "untyped" {}\n'
        'variable "token" {\n  type = string\n  description = "x"\n  default = "abc"\n}\n'
        'module "eks" {\n  source = "terraform-aws-modules/eks/aws"\n}\n'
        'resource "helm_release" "x" {\n  chart = "argo-cd"\n  version = "~> 9.0"\n}\n'
        'resource "kubernetes_namespace_v1" "x" {}\n'
    )
    problems = "\n".join(structure_problems(tmp_path))
    for expected in (
        "versions.tf: no required_version",
        "provider helm: version '>= 2.0' does not pin a major",
        "variable untyped: no type",
        "variable untyped: no description",
        "variable token: looks like a secret but is not sensitive",
        "module eks: registry source",
        "helm_release x: version '~> 9.0' is not an exact version",
        "provider kubernetes not in required_providers",
    ):
        assert expected in problems, problems


def test_bootstrap_order() -> None:
    """namespaces -> argo-cd -> argocd-apps, by explicit depends_on; the root application is a
    Helm release, not a kubernetes_manifest (which needs the CRDs at plan time)."""
    cfg = config(BOOTSTRAP)
    releases = of_type(cfg, "helm_release")
    by_chart = {body["chart"]: name for name, body in releases.items()}
    assert set(by_chart) == {"argo-cd", "argocd-apps"}, by_chart
    argocd, apps = releases[by_chart["argo-cd"]], releases[by_chart["argocd-apps"]]

    namespaces = of_type(cfg, "kubernetes_namespace_v1")
    assert namespaces, "no kubernetes_namespace_v1"
    for name, body in namespaces.items():
        assert f"${{kubernetes_namespace_v1.{name}}}" in argocd.get("depends_on", []), argocd
        assert body["for_each"] == "${module.topology.namespaces}"
    assert f"${{helm_release.{by_chart['argo-cd']}}}" in apps.get("depends_on", []), apps
    assert argocd.get("wait") is True and apps.get("wait") is True
    assert not argocd.get("create_namespace") and not apps.get("create_namespace")

    variables = labelled(cfg, "variable")
    for release in (argocd, apps):
        assert (
            resolve(release["repository"], variables)[0] == "https://argoproj.github.io/argo-helm"
        )
    assert not of_type(cfg, "kubernetes_manifest")

    modules = labelled(cfg, "module")
    assert modules["topology"]["source"] == "../topology"
    assert modules["argocd_apps_values"]["source"] == "../argocd-apps-values"


def test_bootstrap_repository_secret() -> None:
    """Argo CD's repository Secret exists only when credentials are given, and is labelled as
    one; the credentials are sensitive variables with no default."""
    cfg = config(BOOTSTRAP)
    secrets = of_type(cfg, "kubernetes_secret_v1")
    assert list(secrets) == ["git_repository"], secrets
    secret = secrets["git_repository"]
    assert "count" in secret and "git_credentials" in secret["count"], secret
    labels = secret["metadata"][0]["labels"]
    assert labels["argocd.argoproj.io/secret-type"] == "repository"
    assert "kubernetes_namespace_v1.this" in secret["metadata"][0]["namespace"]
    variables = labelled(cfg, "variable")
    for name in ("git_repository_password", "git_repository_ssh_private_key"):
        assert variables[name]["sensitive"] is True and variables[name].get("default") is None


@pytest.mark.parametrize("example", sorted(TFVARS), ids=str)
def test_example_tfvars(example: str) -> None:
    """Each topology has its tfvars file, which sets only declared variables and every variable
    without a default, and the bootstrap gets that topology."""
    directory = TERRAFORM / example
    cfg = config(directory)
    variables = labelled(cfg, "variable")
    platform = labelled(cfg, "module")["platform"]
    assert platform["source"] == "../../modules/platform-bootstrap"
    required = {name for name, body in variables.items() if "default" not in body}
    for filename, topology in TFVARS[example].items():
        path = directory / filename
        assert path.exists(), f"{example}: no {filename}"
        values = {k: v for k, v in load(path).items() if not k.startswith("__")}
        assert set(values) <= set(variables), (
            f"{filename} sets undeclared {set(values) - set(variables)}"
        )
        assert required <= set(values), f"{filename} leaves {required - set(values)} unset"
        m = VAR_REF.match(str(platform["topology"]))
        assert (values[m.group(1)] if m else platform["topology"]) == topology, filename
    extra = {p.name for p in directory.glob("*.tfvars")} - set(TFVARS[example])
    assert not extra, f"{example}: tfvars files with no topology here: {extra}"


@pytest.mark.parametrize("example", sorted(TFVARS), ids=str)
def test_example_bootstrap_documents(example: str) -> None:
    """The examples read argocd/bootstrap/{root,project}.yaml by path: those paths resolve to
    the Application and the AppProject."""
    directory = TERRAFORM / example
    platform = labelled(config(directory), "module")["platform"]
    for variable, kind in (("root_application", "Application"), ("platform_project", "AppProject")):
        m = re.search(r'file\("\$\{path\.root\}/([^"]+)"\)', str(platform[variable]))
        assert m, f'{example}: {variable} is not read with file("${{path.root}}/...")'
        path = (directory / m.group(1)).resolve()
        assert path.is_relative_to(ROOT / "argocd" / "bootstrap"), path
        assert path.exists(), f"{example}: {variable} reads {path}, which does not exist"
        doc = yaml.safe_load(path.read_text())
        assert doc["apiVersion"] == "argoproj.io/v1alpha1" and doc["kind"] == kind, path


# -- 4. checkov -------------------------------------------------------------------------------


def skips() -> list[tuple[str, str, str]]:
    """Every inline `#checkov:skip=ID: reason` under terraform/: (file, check id, reason)."""
    found = []
    for path in sorted(TERRAFORM.rglob("*.tf")):
        for m in SKIP.finditer(path.read_text()):
            for check_id in m.group(1).split(","):
                found.append(
                    (path.relative_to(ROOT).as_posix(), check_id, (m.group(2) or "").strip())
                )
    return found


def test_checkov() -> None:
    report = checkov(TERRAFORM)
    summary = report["summary"]
    failed = report.get("results", {}).get("failed_checks", [])
    assert summary["failed"] == 0 and not failed, "\n".join(
        f"{c['check_id']} {c['resource']} {c['file_path']}:{c['file_line_range']} {c['check_name']}"
        for c in failed
    )
    # Something was scanned: a scanner that found nothing to check is a false pass.
    assert summary["resource_count"] > 0, summary
    assert summary["passed"] + summary["failed"] > 0, summary
    assert summary["parsing_errors"] == 0, summary

    found = skips()
    listing = "\n".join(f"{f}: {check_id}: {reason}" for f, check_id, reason in found)
    for f, check_id, reason in found:
        assert len(reason) >= 20, f"{f}: checkov skip of {check_id} without a reason:\n{listing}"
    assert summary["skipped"] == len(found), (
        f"checkov skipped {summary['skipped']} checks, the inline skips are:\n{listing}"
    )


def test_checkov_fails_a_bad_resource(tmp_path: Path) -> None:
    (tmp_path / "main.tf").write_text(
        'resource "kubernetes_secret_v1" "x" {\n'
        '  metadata {\n    name      = "x"\n    namespace = "default"\n  }\n}\n'
    )
    report = checkov(tmp_path)
    assert report["summary"]["failed"] > 0, report["summary"]
    assert {c["check_id"] for c in report["results"]["failed_checks"]} >= {"CKV_K8S_21"}
