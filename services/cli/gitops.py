"""The environments as Argo CD sees them: the ApplicationSet in argocd/apps/ turns each
``argocd/envs/<env>/version.yaml`` into an Application, and this module does the same from the
files (so ``llmops promote`` and the tests see exactly what Argo CD will), then renders an
Application's chart with the real ``helm template`` the way Argo CD runs it.

The ApplicationSet's template may use only plain field references (``{{ .chart.version }}``):
anything else is refused here, so this renderer never silently differs from Argo CD's.
"""

from __future__ import annotations

import difflib
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

APPSET = Path("argocd/apps/llmops-environments.yaml")
CHART = Path("deploy/helm/llmops")
VERSION_FILE = "version.yaml"
_EXPR = re.compile(r"\{\{(.*?)\}\}")
_FIELD = re.compile(r"^-?\s*\.([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)\s*-?$")
_NORMALIZE = re.compile(r"[^a-zA-Z0-9-]")


class GitopsError(Exception):
    """A repository or rendering problem, as one line: exit code 1 (failed) or 2 (usage)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


@dataclass(frozen=True)
class Environment:
    """One folder of argocd/envs/: its name, version file and the Application made from it."""

    name: str
    folder: Path
    version: dict[str, Any]
    application: dict[str, Any]

    @property
    def version_file(self) -> Path:
        return self.folder / VERSION_FILE

    @property
    def namespace(self) -> str:
        return str(self.application["spec"]["destination"]["namespace"])

    @property
    def app_name(self) -> str:
        return str(self.application["metadata"]["name"])


def load_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise GitopsError(f"cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise GitopsError(f"{path} is not valid YAML: {exc}") from None


def application_set(root: Path) -> dict[str, Any]:
    doc = load_yaml(root / APPSET)
    if not isinstance(doc, dict) or doc.get("kind") != "ApplicationSet":
        raise GitopsError(f"{root / APPSET} is not an ApplicationSet")
    return doc


def _git_files(appset: dict[str, Any]) -> list[str]:
    """The path globs of the ApplicationSet's one git files generator."""
    spec = appset["spec"]
    if not spec.get("goTemplate") or "missingkey=error" not in spec.get("goTemplateOptions", []):
        raise GitopsError("the ApplicationSet must use goTemplate with missingkey=error")
    gens = spec.get("generators", [])
    if len(gens) != 1 or set(gens[0]) != {"git"} or "files" not in gens[0]["git"]:
        raise GitopsError("the ApplicationSet must have exactly one git files generator")
    return [str(f["path"]) for f in gens[0]["git"]["files"]]


def path_params(relative: Path) -> dict[str, Any]:
    """The ``path`` parameters Argo CD's git files generator gives a file (goTemplate)."""
    folder = relative.parent
    return {
        "path": {
            "path": folder.as_posix(),
            "basename": folder.name,
            "filename": relative.name,
            "basenameNormalized": _NORMALIZE.sub("-", folder.name),
            "filenameNormalized": _NORMALIZE.sub("-", relative.name),
            "segments": list(folder.parts),
        }
    }


def _lookup(params: dict[str, Any], dotted: str, where: str) -> str:
    node: Any = params
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise GitopsError(f"{where}: map has no entry for key {dotted!r} (missingkey=error)")
        node = node[part]
    if isinstance(node, bool):
        return "true" if node else "false"
    if isinstance(node, dict | list) or node is None:
        raise GitopsError(f"{where}: {dotted!r} is not a scalar")
    return str(node)


def render_template(node: Any, params: dict[str, Any], where: str) -> Any:
    """The ApplicationSet template with each ``{{ .field }}`` filled from ``params``."""
    if isinstance(node, dict):
        return {k: render_template(v, params, where) for k, v in node.items()}
    if isinstance(node, list):
        return [render_template(v, params, where) for v in node]
    if not isinstance(node, str):
        return node

    def field(m: re.Match[str]) -> str:
        ref = _FIELD.match(m.group(1))
        if ref is None:
            raise GitopsError(f"unsupported template expression {m.group(0)!r}: fields only")
        return _lookup(params, ref.group(1), where)

    return _EXPR.sub(field, node)


def _application(appset: dict[str, Any], version: Any, relative: Path) -> dict[str, Any]:
    if not isinstance(version, dict):
        raise GitopsError(f"{relative} must be a mapping")
    params = {**version, **path_params(relative)}
    app = render_template(appset["spec"]["template"], params, str(relative))
    app = {"apiVersion": appset["apiVersion"], "kind": "Application", **app}
    app["metadata"].setdefault("namespace", appset["metadata"]["namespace"])
    return app


def environments(root: Path) -> dict[str, Environment]:
    """Every environment the ApplicationSet generates, by folder name, in path order."""
    appset = application_set(root)
    found: dict[str, Environment] = {}
    for pattern in _git_files(appset):
        for file in sorted(root.glob(pattern)):
            version = load_yaml(file)
            app = _application(appset, version, file.relative_to(root))
            found[file.parent.name] = Environment(file.parent.name, file.parent, version, app)
    return found


def environment(root: Path, name: str) -> Environment:
    envs = environments(root)
    if name not in envs:
        known = ", ".join(envs) or "none"
        raise GitopsError(f"no environment {name!r} under argocd/envs/ (there are: {known})", 2)
    return envs[name]


def with_version(env: Environment, root: Path, version_text: str) -> Environment:
    """``env`` as it would be with another version file (what a promotion makes of it)."""
    try:
        version = yaml.safe_load(version_text)
    except yaml.YAMLError as exc:
        raise GitopsError(f"the version file for {env.name} is not valid YAML: {exc}") from None
    app = _application(application_set(root), version, env.version_file.relative_to(root))
    return Environment(env.name, env.folder, version, app)


def find_helm(root: Path, given: str | None = None) -> str:
    """--helm, else $LLMOPS_HELM, else the one `make tools` installs, else helm on PATH."""
    for candidate in (given, os.environ.get("LLMOPS_HELM"), str(root / ".tools/bin/helm")):
        if candidate and Path(candidate).is_file():
            return candidate
    found = shutil.which("helm")
    if found is None:
        raise GitopsError("helm is not installed: run `make tools` or pass --helm PATH", 2)
    return found


def _escape_set(value: str) -> str:
    return value.replace("\\", "\\\\").replace(",", "\\,")


def helm_args(env: Environment, root: Path, chart: Path) -> list[str]:
    """``helm template`` arguments equal to what Argo CD runs for the Application's sources."""
    spec = env.application["spec"]
    sources = spec.get("sources") or [spec["source"]]
    refs = {s["ref"]: root for s in sources if "ref" in s}
    charts = [s for s in sources if "chart" in s]
    if len(charts) != 1:
        raise GitopsError(f"{env.app_name}: expected one chart source, found {len(charts)}")
    helm = charts[0].get("helm", {})
    args = ["template", helm.get("releaseName", env.app_name), str(chart)]
    args += ["--namespace", env.namespace]
    for vf in helm.get("valueFiles", []):
        ref, _, rest = vf.partition("/")
        if not ref.startswith("$") or ref[1:] not in refs:
            raise GitopsError(f"{env.app_name}: value file {vf} names no ref source")
        args += ["--values", str(refs[ref[1:]] / rest)]
    for p in helm.get("parameters", []):
        flag = "--set-string" if p.get("forceString") else "--set"
        args += [flag, f"{p['name']}={_escape_set(str(p['value']))}"]
    return args


def render(env: Environment, root: Path, *, helm: str, chart: Path | None = None) -> str:
    """The environment's manifests, rendered by the real helm as Argo CD renders them."""
    args = helm_args(env, root, chart or root / CHART)
    r = subprocess.run([helm, *args], capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        raise GitopsError(f"helm template of {env.app_name} failed: {r.stderr.strip()}")
    return r.stdout


def chart_version(chart: Path) -> str:
    doc = load_yaml(chart / "Chart.yaml")
    return str(doc.get("version", ""))


def manifest_diff(before: str, after: str, a: str, b: str) -> str:
    """A unified diff of two renderings (empty: no change)."""
    return "".join(
        difflib.unified_diff(
            before.splitlines(keepends=True), after.splitlines(keepends=True), a, b, n=3
        )
    )
