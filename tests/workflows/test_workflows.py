"""The GitHub Actions workflows (.github/workflows/), checked by the engines `make tools` installs
(zizmor's security audits offline, actionlint with shellcheck over every `run:` script,
check-jsonschema's workflow schema), each shown to find a deliberately broken workflow so that a
clean result means something; and what those engines cannot know: every action pinned to the
commit of the release its comment names, every step's inputs that action's own at that release,
least privilege job by job, and commands that name what exists in this repository. A missing
engine fails the test, never skips it."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import yaml

from tests.conftest import ROOT
from tests.deploy.chart import TOOLS_BIN, tool

WORKFLOWS = ROOT / ".github" / "workflows"
EXPECTED = {"ci.yml", "images.yml", "chart.yml", "e2e-kind.yml", "promote.yml", "env-diff.yml"}
FILES = sorted(WORKFLOWS / name for name in EXPECTED)
DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"
VALUES = ROOT / "deploy" / "helm" / "llmops" / "values.yaml"


class Action(NamedTuple):
    """One release of an action: the commit its tag names, its inputs, the required ones."""

    sha: str
    inputs: frozenset[str]
    required: frozenset[str]


def _action(sha: str, inputs: str, required: str = "") -> Action:
    return Action(sha, frozenset(inputs.split()), frozenset(required.split()))


# Read from each action's action.yml at its release tag (`git rev-parse <tag>^{commit}` and
# `git show <tag>:action.yml` in a clone). A step naming a release not here fails
# test_every_step_gives_only_inputs_of_its_action: bump a pin and this table together.
ACTION_INPUTS: dict[tuple[str, str], Action] = {
    ("actions/checkout", "v7.0.1"): _action(
        "3d3c42e5aac5ba805825da76410c181273ba90b1",
        "repository ref token ssh-key ssh-known-hosts ssh-strict ssh-user persist-credentials "
        "path clean filter sparse-checkout sparse-checkout-cone-mode fetch-depth fetch-tags "
        "show-progress lfs submodules set-safe-directory github-server-url "
        "allow-unsafe-pr-checkout",
    ),
    ("actions/setup-python", "v7.0.0"): _action(
        "5fda3b95a4ea91299a34e894583c3862153e4b97",
        "python-version python-version-file cache architecture check-latest token "
        "cache-dependency-path update-environment allow-prereleases freethreaded pip-version",
    ),
    ("actions/cache", "v5.0.5"): _action(
        "27d5ce7f107fe9357f9df03efb73ab90386fccae",
        "path key restore-keys upload-chunk-size enableCrossOsArchive fail-on-cache-miss "
        "lookup-only save-always",
        "path key",
    ),
    ("actions/upload-artifact", "v7.0.0"): _action(
        "bbbca2ddaa5d8feaa63e36b76fdaad77386f024f",
        "name path if-no-files-found retention-days compression-level overwrite "
        "include-hidden-files archive",
        "path",
    ),
    ("hashicorp/setup-terraform", "v4.0.1"): _action(
        "dfe3c3f87815947d99a8997f908cb6525fc44e9e",
        "cli_config_credentials_hostname cli_config_credentials_token terraform_version "
        "terraform_wrapper",
    ),
    ("docker/setup-buildx-action", "v4.3.0"): _action(
        "37fe631027851001ddb9b187196cc803df7f5f0e",
        "version driver driver-opts buildkitd-flags buildkitd-config buildkitd-config-inline use "
        "name endpoint platforms append keep-state cache-binary cleanup",
    ),
    ("docker/login-action", "v4.1.0"): _action(
        "4907a6ddec9925e35a0a9e82d7399ccc52663121",
        "registry username password ecr scope logout registry-auth",
    ),
    ("docker/metadata-action", "v6.2.0"): _action(
        "dc802804100637a589fabce1cb79ff13a1411302",
        "context images tags flavor labels annotations sep-tags sep-labels sep-annotations "
        "bake-target github-token",
    ),
    ("docker/build-push-action", "v7.3.0"): _action(
        "53b7df96c91f9c12dcc8a07bcb9ccacbed38856a",
        "add-hosts allow annotations attests build-args build-contexts builder cache-from "
        "cache-to call cgroup-parent context file labels load network no-cache no-cache-filters "
        "outputs platforms provenance pull push sbom secrets secret-envs secret-files shm-size "
        "ssh tags target ulimit github-token",
    ),
    ("aquasecurity/trivy-action", "v0.36.0"): _action(
        "ed142fd0673e97e23eac54620cfb913e5ce36c25",
        "scan-type image-ref input scan-ref exit-code ignore-unfixed vuln-type severity format "
        "template output skip-dirs skip-files cache-dir timeout ignore-policy hide-progress "
        "list-all-pkgs scanners trivyignores github-pat trivy-config tf-vars "
        "limit-severities-for-sarif docker-host version cache skip-setup-trivy token-setup-trivy",
    ),
    ("sigstore/cosign-installer", "v4.1.2"): _action(
        "6f9f17788090df1f26f669e9d70d6ae9567deba6", "cosign-release install-dir use-sudo"
    ),
    ("helm/kind-action", "v1.14.0"): _action(
        "ef37e7f390d99f746eb8b610417061a60e82a6cc",
        "version config kubeconfig node_image cluster_name wait verbosity kubectl_version "
        "registry registry_image registry_name registry_port registry_enable_delete "
        "install_only ignore_failed_clean cloud_provider",
    ),
}

# The only jobs given a write scope, and which; every other job reads at most.
WRITES = {
    ("images.yml", "publish"): {"packages", "id-token"},
    ("chart.yml", "release"): {"packages"},
    ("promote.yml", "promote"): {"contents", "pull-requests"},
    ("env-diff.yml", "env-diff"): {"pull-requests"},
}
# The only job whose checkout keeps its credentials: it pushes a branch.
PUSHES = {("promote.yml", "promote")}

USES_LINE = re.compile(r"^\s*(?:-\s+)?uses:\s*(?P<ref>\S+)(?P<rest>.*)$")
PINNED = re.compile(
    r"^(?P<action>[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+)(?:/[A-Za-z0-9_./-]+)?@(?P<sha>[0-9a-f]{40})$"
)
VERSION_COMMENT = re.compile(r"^\s+#\s+(?P<version>v\d+\.\d+\.\d+)\s*$")
UNTRUSTED_IN_RUN = re.compile(r"\$\{\{[^}]*\b(?:github\.event\.|inputs\.|github\.head_ref)")


def load(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(path.read_text())
    if True in doc:  # YAML 1.1: the key `on` reads as True
        doc["on"] = doc.pop(True)
    return doc


def jobs(path: Path) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = load(path)["jobs"]
    return found


def steps(path: Path) -> list[tuple[str, dict[str, Any]]]:
    return [(name, step) for name, job in jobs(path).items() for step in job.get("steps", [])]


def pins(path: Path) -> dict[str, str]:
    """`owner/repo[/path]@sha` -> the version its comment names, from the raw lines (YAML drops
    comments); fails on a `uses:` that is neither pinned and commented nor local."""
    found: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        m = USES_LINE.match(line)
        if not m or m["ref"].startswith("./"):
            continue
        where = f"{path.name}:{number}: {line.strip()}"
        assert PINNED.match(m["ref"]), f"{where}: not pinned to a full commit SHA"
        comment = VERSION_COMMENT.match(m["rest"])
        assert comment, f"{where}: no `# vX.Y.Z` comment naming the release of the SHA"
        assert found.setdefault(m["ref"], comment["version"]) == comment["version"], where
    return found


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, capture_output=True, text=True, cwd=ROOT, env=env, timeout=300, check=False
    )


def engine_env() -> dict[str, str]:
    """shellcheck (and the others) from .tools first; no colours in the output parsed."""
    return {**os.environ, "PATH": f"{TOOLS_BIN}{os.pathsep}{os.environ['PATH']}", "NO_COLOR": "1"}


BROKEN = """\
on: pull_request_target
jobs:
  broken:
    runs-on: ubuntu-24.04
    steps:
      - uses: actions/checkout@v4
        with:
          ref: ${{ github.event.pull_request.head.sha }}
      - run: echo "${{ github.event.pull_request.title }}" $UNQUOTED
"""


def test_the_workflows_are_the_six_expected() -> None:
    found = {p.name for p in WORKFLOWS.iterdir() if p.suffix in (".yml", ".yaml")}
    assert found == EXPECTED, "a workflow added or removed: update EXPECTED and the tables"


def test_zizmor_reports_nothing_and_audits_every_workflow(tmp_path: Path) -> None:
    zizmor = tool(TOOLS_BIN / "zizmor")
    r = run(zizmor, "--offline", "--persona", "regular", "--format", "json", str(WORKFLOWS),
            env=engine_env())  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads(r.stdout) == [], r.stdout
    audited = {Path(p).name for p in re.findall(r"completed (\S+\.ya?ml)", r.stderr)}
    assert audited == EXPECTED, f"zizmor audited {sorted(audited)}:\n{r.stderr}"

    # The same engine, on a workflow with the faults the six must not have.
    broken = tmp_path / "broken.yml"
    broken.write_text(BROKEN)
    r = run(zizmor, "--offline", "--format", "json", str(broken), env=engine_env())
    assert r.returncode != 0, r.stdout + r.stderr
    idents = {finding["ident"] for finding in json.loads(r.stdout)}
    assert {"unpinned-uses", "template-injection", "dangerous-triggers"} <= idents, idents


def test_actionlint_with_shellcheck_reports_nothing_on_every_workflow(tmp_path: Path) -> None:
    actionlint, shellcheck = tool(TOOLS_BIN / "actionlint"), tool(TOOLS_BIN / "shellcheck")
    files = [str(p) for p in FILES]
    r = run(actionlint, "-verbose", "-shellcheck", shellcheck, "-format", "{{json .}}", *files,
            env=engine_env())  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads(r.stdout) == [], r.stdout
    # Not anchored on the "verbose: " prefix: actionlint lints files in parallel and its
    # goroutines' verbose lines can interleave ("verbose: verbose: Rule ...\nLinting x.yml").
    linted = {Path(p).name for p in re.findall(r"Linting (\S+\.ya?ml)", r.stderr)}
    assert linted == EXPECTED, r.stderr
    assert "shellcheck" not in " ".join(re.findall(r'Rule "[^"]+" was disabled.*', r.stderr))

    broken = tmp_path / "broken.yml"
    broken.write_text(BROKEN)
    r = run(actionlint, "-shellcheck", shellcheck, "-format", "{{json .}}", str(broken),
            env=engine_env())  # fmt: skip
    assert r.returncode != 0, r.stdout + r.stderr
    kinds = {error["kind"] for error in json.loads(r.stdout)}
    assert {"shellcheck", "expression"} <= kinds, r.stdout


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_the_workflow_schema_accepts_it(path: Path) -> None:
    r = run(tool(TOOLS_BIN / "check-jsonschema"), "--builtin-schema", "vendor.github-workflows",
            str(path))  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr


def test_the_workflow_schema_refuses_a_broken_workflow(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yml"
    broken.write_text(BROKEN.replace("steps:", "stepz:"))
    r = run(tool(TOOLS_BIN / "check-jsonschema"), "--builtin-schema", "vendor.github-workflows",
            str(broken))  # fmt: skip
    assert r.returncode != 0, r.stdout + r.stderr


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_every_action_is_pinned_to_a_commit_with_its_version(path: Path) -> None:
    found = pins(path)
    used = {step["uses"] for _, step in steps(path) if "uses" in step}
    assert used == {u for u in used if u.startswith("./")} | set(found), (used, found)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_every_step_gives_only_inputs_of_its_action(path: Path) -> None:
    versions = pins(path)
    for job, step in steps(path):
        if "uses" not in step or step["uses"].startswith("./"):
            continue
        ref = step["uses"]
        pinned = PINNED.match(ref)
        assert pinned, f"{path.name} job {job}: {ref} is not pinned"
        name, sha = pinned["action"], pinned["sha"]
        where = f"{path.name} job {job}: {ref} # {versions[ref]}"
        action = ACTION_INPUTS.get((name, versions[ref]))
        assert action, f"{where}: not in ACTION_INPUTS (read its action.yml at that tag)"
        assert sha == action.sha, f"{where}: the tag names {action.sha}"
        given = set(step.get("with") or {})
        assert given <= action.inputs, f"{where}: unknown inputs {sorted(given - action.inputs)}"
        assert action.required <= given, f"{where}: missing {sorted(action.required - given)}"


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_least_privilege_timeouts_and_no_untrusted_input_in_scripts(path: Path) -> None:
    text = path.read_text()
    doc = load(path)
    assert text.startswith("# "), "start with a comment: what it does and when it runs"
    assert doc.get("permissions") in ({}, {"contents": "read"}), doc.get("permissions")
    triggers = [doc["on"]] if isinstance(doc["on"], str) else doc["on"]
    assert not {"pull_request_target", "workflow_run"} & set(triggers), triggers
    for name, job in jobs(path).items():
        where = f"{path.name} job {name}"
        assert isinstance(job.get("timeout-minutes"), int), f"{where}: no timeout-minutes"
        perms = job.get("permissions")
        assert isinstance(perms, dict), f"{where}: permissions not set per job"
        writes = {scope for scope, level in perms.items() if level == "write"}
        assert writes <= WRITES.get((path.name, name), set()), f"{where}: writes {writes}"
        for step in job.get("steps", []):
            script = step.get("run", "")
            assert not UNTRUSTED_IN_RUN.search(script), f"{where}: pass it through env:\n{script}"
            if step.get("uses", "").startswith("actions/checkout@"):
                keep = (step.get("with") or {}).get("persist-credentials", True)
                if (path.name, name) in PUSHES:
                    assert keep is True, f"{where}: this job pushes"
                else:
                    assert keep is False, f"{where}: set persist-credentials: false"


def test_ci_runs_make_test_with_its_services() -> None:
    ci = jobs(WORKFLOWS / "ci.yml")
    assert set(ci) == {"test", "pip-audit"}, set(ci)
    job = ci["test"]
    scripts = "\n".join(step.get("run", "") for step in job["steps"])
    assert re.search(r"\bmake test\b", scripts), scripts
    assert re.search(r"^test:", (ROOT / "Makefile").read_text(), re.M)
    assert {s["image"] for s in job["services"].values()} == {"postgres:15", "redis:7"}
    ports = {p for s in job["services"].values() for p in s["ports"]}
    assert ports == {"5432:5432", "6379:6379"}
    assert job["services"]["postgres"]["env"]["POSTGRES_HOST_AUTH_METHOD"] == "trust"
    # pip-audit runs there only, strict (here it would skip every package and pass).
    audit = "\n".join(step.get("run", "") for step in ci["pip-audit"]["steps"])
    assert "pip-audit==" in audit and "--strict" in audit
    for lock in re.findall(r"requirements/\S+\.txt", audit):
        assert (ROOT / lock).is_file(), lock


def test_make_targets_named_exist() -> None:
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][\w-]*):", makefile, re.M))
    for path in FILES:
        for _, step in steps(path):
            for line in step.get("run", "").splitlines():
                m = re.match(r"\s*(?:sudo .*\s)?make ((?:[a-z][\w-]* ?)+)", line)
                named = set(m[1].split()) if m else set()
                assert named <= targets, f"{path.name}: {line.strip()}"


def test_the_paths_named_exist() -> None:
    for path in FILES:
        text = path.read_text()
        for ref in set(re.findall(r"\b(?:deploy|tests|requirements|argocd)/[\w./*-]*\w\**", text)):
            if "$" in ref:
                continue
            assert list(ROOT.glob(ref)), f"{path.name}: {ref} names nothing in the repository"
    assert "$(TOOLS)/bin/helm" in (ROOT / "Makefile").read_text()  # the .tools/bin/helm used


def test_the_dockerfile_targets_and_build_args_named_exist() -> None:
    dockerfile = DOCKERFILE.read_text()
    stages = set(re.findall(r"^FROM \S+ AS (\S+)$", dockerfile, re.M))
    args = set(re.findall(r"^ARG (\w+)", dockerfile, re.M))
    named: set[str] = set()
    for path in FILES:
        for job in jobs(path).values():
            named |= set(job.get("strategy", {}).get("matrix", {}).get("image", []))
            for step in job.get("steps", []):
                if step.get("uses", "").startswith("docker/build-push-action@"):
                    given = step["with"]
                    assert given["file"] == "deploy/docker/Dockerfile"
                    if "${{" not in given["target"]:
                        named.add(given["target"])
                    for line in str(given.get("build-args", "")).splitlines():
                        arg = line.strip().split("=", 1)[0]
                        assert not arg or arg.startswith("${{") or arg in args, (path.name, arg)
    assert named == {"llmops", "llmops-models"} <= stages, (named, stages)


def test_the_chart_values_set_exist() -> None:
    values = yaml.safe_load(VALUES.read_text())
    text = (WORKFLOWS / "e2e-kind.yml").read_text()
    keys = re.findall(r'--set "?([\w.-]+)=', text)
    assert {"images.llmops.repository", "images.models.repository"} <= set(keys)
    for key in keys:
        node: Any = values
        for part in key.split("."):
            assert isinstance(node, dict) and part in node, f"{key}: not in values.yaml"
            node = node[part]
    assert values["services"]["rag"]["port"] == 8006  # the port-forward and ask
    assert (ROOT / "deploy" / "helm" / "llmops" / "ci" / "minimal.yaml").is_file()


def test_images_push_and_sign_only_on_push() -> None:
    build, publish = jobs(WORKFLOWS / "images.yml").values()
    (built,) = [s for s in build["steps"] if s.get("uses", "").startswith("docker/build-push")]
    assert built["with"]["push"] is False and built["with"]["load"] is True
    assert publish["if"] == "github.event_name == 'push'"
    assert "id-token" not in build["permissions"]
    (pushed,) = [s for s in publish["steps"] if s.get("uses", "").startswith("docker/build-push")]
    assert pushed["with"]["push"] is True and pushed["with"]["sbom"] is True
    assert pushed["with"]["provenance"] == "mode=max"
    scripts = "\n".join(s.get("run", "") for s in publish["steps"])
    assert 'cosign sign --yes "${IMAGE}@${DIGEST}"' in scripts
