"""``llmops promote``, ``llmops rollback`` and ``llmops env-diff``: the one motion that changes
what an environment runs. Promotion checks that the source environment is healthy (its Argo CD
Application synced, healthy, idle and running the images its version file names; its rollouts
complete; its error budget not burning at the page rate; the prompt gate), then copies the
version file, writes the rendered diff and a pull request body. A rollback is the same motion
from the target's own Git history. Whatever cannot be checked is said, never passed silently.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, NoReturn

import httpx
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from services.cli.gitops import (
    CHART,
    Environment,
    GitopsError,
    chart_version,
    environment,
    environments,
    find_helm,
    load_yaml,
    manifest_diff,
    render,
    with_version,
)

out = Console()
err = Console(stderr=True)

PR_BODY_LIMIT = 60_000  # GitHub refuses bodies over 65,536 characters
Status = Literal["ok", "blocked", "unchecked"]


@dataclass(frozen=True)
class Check:
    """One thing a promotion looked at: ok, blocked (stops it) or unchecked (said, not passed)."""

    name: str
    status: Status
    detail: str


# -- the cluster: Argo CD's Application and the rollouts, through the Kubernetes API ------------


def kube_api(kubeconfig: str | None, context: str | None) -> Any:
    """An ApiClient from the kubeconfig (KUBECONFIG or ~/.kube/config), failing fast."""
    from kubernetes import client, config

    cfg = client.Configuration()
    config.load_kube_config(config_file=kubeconfig, context=context, client_configuration=cfg)
    cfg.retries = 1
    return client.ApiClient(cfg)


def _api_reason(exc: Exception) -> str:
    status = getattr(exc, "status", None)
    if status:
        return f"HTTP {status} {getattr(exc, 'reason', '')}".strip()
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def application_checks(app: dict[str, Any], env: Environment) -> list[Check]:
    """What Argo CD says of the environment's Application (argo-cd's status fields)."""
    name = f"Application {env.app_name}"
    status = app.get("status") or {}
    checks = []
    sync = (status.get("sync") or {}).get("status", "Unknown")
    checks.append(
        Check(f"{name} sync", "ok" if sync == "Synced" else "blocked", f"sync status {sync}")
    )
    health = status.get("health") or {}
    h = health.get("status", "Unknown")
    why = f" ({health['message']})" if health.get("message") else ""
    checks.append(
        Check(f"{name} health", "ok" if h == "Healthy" else "blocked", f"health {h}{why}")
    )
    op = status.get("operationState") or {}
    phase = op.get("phase")
    if phase in ("Running", "Terminating"):
        checks.append(Check(f"{name} operation", "blocked", "a sync is in progress"))
    elif phase in ("Failed", "Error"):
        msg = op.get("message", "")
        checks.append(Check(f"{name} operation", "blocked", f"its last sync {phase}: {msg}"))
    else:
        checks.append(Check(f"{name} operation", "ok", f"last sync {phase or 'none'}"))
    running = (status.get("summary") or {}).get("images") or []
    for image, spec in sorted((env.version.get("images") or {}).items()):
        digest = (spec or {}).get("digest")
        if not digest:
            checks.append(Check(f"image {image}", "unchecked", "no digest in the version file"))
            continue
        ok = any(str(r).endswith(f"@{digest}") for r in running)
        detail = f"runs {digest[:19]}…" if ok else f"does not run {digest} (runs: {running})"
        checks.append(Check(f"image {image}", "ok" if ok else "blocked", detail))
    return checks


def _replicas(obj: Any) -> tuple[int, int, int, int, int]:
    spec, st = obj.spec, obj.status
    want = spec.replicas if spec.replicas is not None else 1
    return (
        want,
        st.updated_replicas or 0,
        st.ready_replicas or 0,
        st.observed_generation or 0,
        obj.metadata.generation or 0,
    )


def rollout_checks(deployments: list[Any], statefulsets: list[Any], namespace: str) -> list[Check]:
    """``kubectl rollout status`` for every Deployment and StatefulSet of the namespace."""
    if not deployments and not statefulsets:
        return [Check("rollouts", "blocked", f"no Deployments or StatefulSets in {namespace}")]
    checks = []
    for kind, items in (("Deployment", deployments), ("StatefulSet", statefulsets)):
        for obj in items:
            want, updated, ready, observed, generation = _replicas(obj)
            name = f"{kind} {obj.metadata.name}"
            problems = []
            if observed < generation:
                problems.append("its controller has not seen the latest spec")
            if updated < want:
                problems.append(f"{updated}/{want} replicas updated")
            if ready < want:
                problems.append(f"{ready}/{want} ready")
            if kind == "Deployment" and (obj.status.available_replicas or 0) < want:
                problems.append(f"{obj.status.available_replicas or 0}/{want} available")
            if kind == "StatefulSet" and obj.status.current_revision != obj.status.update_revision:
                problems.append("pods of the previous revision remain")
            if problems:
                checks.append(Check(name, "blocked", "rollout incomplete: " + ", ".join(problems)))
            else:
                checks.append(Check(name, "ok", f"{ready}/{want} ready, rolled out"))
    return checks


def cluster_checks(
    env: Environment, kubeconfig: str | None, context: str | None, argocd_ns: str
) -> list[Check]:
    """The Application and the rollouts; an unreachable cluster blocks (nothing is known)."""
    from kubernetes import client
    from kubernetes.config import ConfigException

    try:
        api = kube_api(kubeconfig, context)
    except (ConfigException, OSError) as exc:
        return [Check("cluster", "blocked", f"no usable kubeconfig: {exc}")]
    where = api.configuration.host
    try:
        app = client.CustomObjectsApi(api).get_namespaced_custom_object(
            "argoproj.io", "v1alpha1", argocd_ns, "applications", env.app_name, _request_timeout=15
        )
    except client.ApiException as exc:
        if exc.status == 404:
            return [Check("cluster", "blocked", f"no Application {env.app_name} in {argocd_ns}")]
        return [Check("cluster", "blocked", f"{where}: {_api_reason(exc)}")]
    except Exception as exc:  # urllib3's connection errors: the cluster is unreachable
        return [Check("cluster", "blocked", f"cannot reach the cluster at {where}: {exc}")]
    checks = [Check("cluster", "ok", f"reached {where}")]
    checks += application_checks(app, env)
    apps = client.AppsV1Api(api)
    try:
        deps = apps.list_namespaced_deployment(env.namespace, _request_timeout=15).items
        sts = apps.list_namespaced_stateful_set(env.namespace, _request_timeout=15).items
    except Exception as exc:
        return [*checks, Check("rollouts", "blocked", f"cannot list workloads: {_api_reason(exc)}")]
    return checks + rollout_checks(deps, sts, env.namespace)


# -- Prometheus: the error budget's burn rate, as the page alerts compute it --------------------


@dataclass(frozen=True)
class PageTier:
    """The fastest burn-rate tier of the chart's PrometheusRule: it pages when the budget burns
    ``factor`` times too fast over both windows, with alerts of ``severity``."""

    severity: str
    long: str
    short: str
    factor: float


def page_tier(chart: Path, values_file: Path) -> PageTier:
    """Read from the environment's values, else the chart's: the tier its alerts use."""
    for source in (values_file, chart / "values.yaml"):
        values = load_yaml(source) or {}
        tiers = ((values.get("prometheusRule") or {}).get("slo") or {}).get("burnRates")
        if tiers:
            t = tiers[0]
            return PageTier(str(t["severity"]), str(t["long"]), str(t["short"]), float(t["factor"]))
    raise GitopsError(f"no prometheusRule.slo.burnRates in {values_file} or {chart}/values.yaml")


def _burn_query(window: str, namespace: str) -> str:
    sel = f'{{namespace="{namespace}"}}'
    return (
        f"max by (slo) (llmops:slo_errors_per_request:ratio_rate{window}{sel} "
        f"/ on (namespace, slo) group_left () (1 - llmops:slo_objective:ratio{sel}))"
    )


def burn_checks(prometheus_url: str | None, namespace: str, tier: PageTier) -> list[Check]:
    """Each SLO's burn over the page tier's two windows below its factor, and no alert of the
    paging severity firing."""
    if not prometheus_url:
        return [
            Check("error budget", "unchecked", "no Prometheus URL (--prometheus-url): not checked")
        ]
    windows = (tier.long, tier.short)
    queries = {w: _burn_query(w, namespace) for w in windows}
    queries["alerts"] = (
        f'ALERTS{{alertstate="firing",severity="{tier.severity}",namespace="{namespace}"}}'
    )
    results: dict[str, list[dict[str, Any]]] = {}
    try:
        with httpx.Client(base_url=prometheus_url, timeout=10) as http:
            for key, q in queries.items():
                r = http.get("/api/v1/query", params={"query": q})
                r.raise_for_status()
                results[key] = r.json()["data"]["result"]
    except (httpx.HTTPError, KeyError, ValueError) as exc:
        return [Check("error budget", "unchecked", f"Prometheus at {prometheus_url}: {exc}")]
    checks = []
    rates: dict[str, dict[str, float]] = {}
    for w in windows:
        for s in results[w]:
            rates.setdefault(s["metric"].get("slo", "?"), {})[w] = float(s["value"][1])
    if not rates:
        checks.append(
            Check("error budget", "unchecked", f"no SLO series for {namespace} (no traffic yet?)")
        )
    for slo, by_window in sorted(rates.items()):
        long, short = (by_window.get(w, float("nan")) for w in windows)
        paging = long > tier.factor and short > tier.factor
        detail = (
            f"burn {long:.2f}x over {tier.long}, {short:.2f}x over {tier.short} "
            f"(page at {tier.factor:g}x)"
        )
        checks.append(Check(f"SLO {slo}", "blocked" if paging else "ok", detail))
    firing = sorted({a["metric"].get("alertname", "?") for a in results["alerts"]})
    checks.append(
        Check(
            "page alerts",
            "blocked" if firing else "ok",
            f"firing: {', '.join(firing)}" if firing else "none firing",
        )
    )
    return checks


# -- the prompt: the eval gate against what the target serves -----------------------------------


def prompt_checks(
    source: Environment, target: Environment, tracking_uri: str | None
) -> list[Check]:
    """A changed prompt version must pass the eval against the target's (the same gate the
    target's prompt-sync hook runs at sync time)."""
    new, old = source.version.get("prompt") or {}, target.version.get("prompt") or {}
    if new == old:
        return [Check("prompt", "ok", f"unchanged ({new.get('name')}/{new.get('version')})")]
    name, version = str(new.get("name", "")), str(new.get("version", ""))
    if not tracking_uri:
        return [
            Check(
                "prompt gate",
                "unchecked",
                f"{name}/{version}: no MLflow (--tracking-uri): not checked here; the "
                f"prompt-sync hook runs the gate when {target.name} syncs",
            )
        ]
    from services.cli.evaluate import eval_gate
    from services.cli.prompts import CLIError, connect

    alias = target.name
    try:
        allowed, why = eval_gate(connect(tracking_uri), name, version, alias)
    except CLIError as exc:
        return [Check("prompt gate", "unchecked", f"{tracking_uri}: {exc.message}")]
    except Exception as exc:
        return [Check("prompt gate", "unchecked", f"{tracking_uri}: {type(exc).__name__}: {exc}")]
    return [Check("prompt gate", "ok" if allowed else "blocked", f"{name}/{version}: {why}")]


# -- the motion ---------------------------------------------------------------------------------


def _changes(before: dict[str, Any], after: dict[str, Any], prefix: str = "") -> list[str]:
    lines = []
    for key in sorted(set(before) | set(after)):
        a, b = before.get(key), after.get(key)
        path = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            lines += _changes(a, b, f"{path}.")
        elif a != b:
            lines.append(f"| `{path}` | `{a}` | `{b}` |")
    return lines


def diff_size(diff: str) -> str:
    lines = diff.splitlines()
    adds = sum(ln.startswith("+") and not ln.startswith("+++") for ln in lines)
    dels = sum(ln.startswith("-") and not ln.startswith("---") for ln in lines)
    return f"+{adds} -{dels} lines"


def checks_table(checks: list[Check]) -> Table:
    table = Table("check", "result", "detail", title="checks")
    colour = {"ok": "green", "blocked": "red", "unchecked": "yellow"}
    for c in checks:
        table.add_row(escape(c.name), f"[{colour[c.status]}]{c.status}[/]", escape(c.detail))
    return table


def pr_body(
    title: str, why: str, target: Environment, after: Environment, checks: list[Check], diff: str
) -> str:
    mark = {"ok": "✅ ok", "blocked": "⛔ blocked", "unchecked": "⚠️ unchecked"}
    lines = [f"## {title}", "", why, "", "### What changes in " + target.name, ""]
    changes = _changes(target.version, after.version)
    lines += ["| key | now | after |", "| --- | --- | --- |", *changes] if changes else ["none"]
    lines += ["", "### Checks", "", "| check | result | detail |", "| --- | --- | --- |"]
    lines += [f"| {c.name} | {mark[c.status]} | {c.detail} |" for c in checks]
    unchecked = [c for c in checks if c.status == "unchecked"]
    if unchecked:
        lines += ["", f"**Not checked ({len(unchecked)}):** review these by hand before merging."]
    lines += ["", f"### Rendered manifests of {target.app_name}: {diff_size(diff)}", ""]
    shown = diff if len(diff) < PR_BODY_LIMIT // 2 else diff[: PR_BODY_LIMIT // 2] + "\n…(cut)\n"
    lines += ["<details><summary>diff</summary>", "", "```diff", shown, "```", "</details>"]
    return "\n".join(lines) + "\n"


def _chart_note(chart: Path, envs: list[Environment]) -> list[Check]:
    have = chart_version(chart)
    checks = []
    for env in envs:
        want = str((env.version.get("chart") or {}).get("version", ""))
        if want != have:
            checks.append(
                Check(
                    f"chart for {env.name}",
                    "unchecked",
                    f"names chart {want}; rendered with {chart} ({have}): the diff may differ",
                )
            )
    return checks


def move(
    root: Path,
    target: Environment,
    version_text: str,
    checks: list[Check],
    *,
    title: str,
    why: str,
    helm: str,
    chart: Path,
    diff_file: Path | None,
    pr_body_file: Path | None,
    dry_run: bool,
) -> int:
    """Write the version file, the rendered diff and the PR body unless a check blocks."""
    after = with_version(target, root, version_text)
    checks = [*checks, *_chart_note(chart, [target, after])]
    err.print(checks_table(checks))
    blocked = [c for c in checks if c.status == "blocked"]
    if blocked:
        err.print(
            f"[red]{escape(title)} blocked[/]: "
            + "; ".join(f"{c.name}: {c.detail}" for c in blocked),
            highlight=False,
        )
        return 1
    diff = manifest_diff(
        render(target, root, helm=helm, chart=chart),
        render(after, root, helm=helm, chart=chart),
        f"{target.app_name} (now)",
        f"{target.app_name} (after)",
    )
    body = pr_body(title, why, target, after, checks, diff)
    if diff_file:
        diff_file.write_text(diff, encoding="utf-8")
    if pr_body_file:
        pr_body_file.write_text(body, encoding="utf-8")
    else:
        sys.stdout.write(body)  # the PR body on stdout, the table and verdict on stderr
    if target.version_file.read_text(encoding="utf-8") == version_text:
        err.print(f"{target.name} already runs this version file: nothing to change")
        return 0
    if dry_run:
        err.print(f"dry run: {target.version_file} not written")
        return 0
    target.version_file.write_text(version_text, encoding="utf-8")
    unchecked = sum(c.status == "unchecked" for c in checks)
    err.print(
        f"{escape(title)}: wrote {target.version_file.relative_to(root)}"
        + (f" ([yellow]{unchecked} not checked[/]: see the table)" if unchecked else ""),
        highlight=False,
    )
    return 0


def git(root: Path, *args: str) -> str:
    r = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True)
    if r.returncode != 0:
        raise GitopsError(f"git {' '.join(args)}: {r.stderr.strip()}")
    return r.stdout


def previous_version(root: Path, env: Environment, revision: str | None) -> tuple[str, str]:
    """The env's version file at ``revision``, else as it was before its last change."""
    rel = env.version_file.relative_to(root).as_posix()
    if revision is None:
        last = git(root, "log", "-n", "1", "--format=%H", "--", rel).strip()
        if not last:
            raise GitopsError(f"{rel} has no Git history to roll back to")
        revision = f"{last}^"
    try:
        text = git(root, "show", f"{revision}:{rel}")
    except GitopsError:
        raise GitopsError(f"{rel} does not exist at {revision}: nothing to roll back to") from None
    return git(root, "rev-parse", "--short", revision).strip(), text


# -- commands -----------------------------------------------------------------------------------

Root = Annotated[Path, typer.Option("--root", help="The repository (argocd/ and the chart).")]
Kubeconfig = Annotated[
    str | None, typer.Option("--kubeconfig", envvar="KUBECONFIG", help="Cluster credentials.")
]
Context = Annotated[str | None, typer.Option("--context", help="kubeconfig context.")]
ArgoNs = Annotated[str, typer.Option("--argocd-namespace", help="Where the Applications are.")]
PromUrl = Annotated[
    str | None,
    typer.Option("--prometheus-url", envvar="LLMOPS_PROMETHEUS_URL", help="Prometheus to ask."),
]
MlflowUri = Annotated[
    str | None,
    typer.Option("--tracking-uri", envvar="MLFLOW_TRACKING_URI", help="MLflow for the gate."),
]
DiffFile = Annotated[Path | None, typer.Option("--diff-file", help="Write the rendered diff.")]
BodyFile = Annotated[Path | None, typer.Option("--pr-body-file", help="Write the PR body.")]
Helm = Annotated[str | None, typer.Option("--helm", help="helm binary; default: make tools'.")]
DryRun = Annotated[bool, typer.Option("--dry-run", help="Check and render; write nothing.")]


@contextlib.contextmanager
def _reported() -> Iterator[None]:
    try:
        yield
    except GitopsError as exc:
        _fail(exc.message, exc.code)


def _fail(message: str, code: int) -> NoReturn:
    err.print(f"[red]error[/]: {escape(' '.join(message.split()))}", highlight=False)
    raise typer.Exit(code)


def promote_cmd(
    source: Annotated[str, typer.Argument(help="The environment that has the change.")],
    target: Annotated[str, typer.Argument(help="The environment to give it to.")],
    root: Root = Path("."),
    kubeconfig: Kubeconfig = None,
    context: Context = None,
    argocd_namespace: ArgoNs = "argocd",
    prometheus_url: PromUrl = None,
    tracking_uri: MlflowUri = None,
    diff_file: DiffFile = None,
    pr_body_file: BodyFile = None,
    helm: Helm = None,
    dry_run: DryRun = False,
) -> None:
    """Check SOURCE is healthy, then copy its version file to TARGET with the rendered diff
    and a pull request body. Exit 1 when a check blocks (nothing is written)."""
    with _reported():
        if source == target:
            raise GitopsError("source and target are the same environment", 2)
        src, dst = environment(root, source), environment(root, target)
        helm_bin = find_helm(root, helm)
        checks = cluster_checks(src, kubeconfig, context, argocd_namespace)
        tier = page_tier(root / CHART, src.folder / "values.yaml")
        checks += burn_checks(prometheus_url, src.namespace, tier)
        checks += prompt_checks(src, dst, tracking_uri)
        code = move(
            root,
            dst,
            src.version_file.read_text(encoding="utf-8"),
            checks,
            title=f"Promote {source} to {target}",
            why=f"{target} gets what {source} runs, checked healthy in {source} first.",
            helm=helm_bin,
            chart=root / CHART,
            diff_file=diff_file,
            pr_body_file=pr_body_file,
            dry_run=dry_run,
        )
    raise typer.Exit(code)


def rollback_cmd(
    target: Annotated[str, typer.Argument(help="The environment to roll back.")],
    to: Annotated[
        str | None,
        typer.Option(
            "--to", help="Git revision of the version file; default: before its last change."
        ),
    ] = None,
    root: Root = Path("."),
    kubeconfig: Kubeconfig = None,
    context: Context = None,
    argocd_namespace: ArgoNs = "argocd",
    diff_file: DiffFile = None,
    pr_body_file: BodyFile = None,
    helm: Helm = None,
    dry_run: DryRun = False,
) -> None:
    """Put back TARGET's version file as it was (the promotion backwards): its own history is
    the source, so no other environment is checked; TARGET's state is reported, not a gate."""
    with _reported():
        dst = environment(root, target)
        helm_bin = find_helm(root, helm)
        revision, text = previous_version(root, dst, to)
        state = cluster_checks(dst, kubeconfig, context, argocd_namespace)
        checks = [Check(c.name, "ok" if c.status == "ok" else "unchecked", c.detail) for c in state]
        code = move(
            root,
            dst,
            text,
            checks,
            title=f"Roll back {target} to {revision}",
            why=f"{target}'s version file as it was at {revision}; its state now is below.",
            helm=helm_bin,
            chart=root / CHART,
            diff_file=diff_file,
            pr_body_file=pr_body_file,
            dry_run=dry_run,
        )
    raise typer.Exit(code)


def env_diff_cmd(
    base: Annotated[str, typer.Option("--base", help="Git revision to compare with.")] = "HEAD",
    root: Root = Path("."),
    out_file: Annotated[Path | None, typer.Option("--out", help="Write the markdown here.")] = None,
    helm: Helm = None,
) -> None:
    """The rendered-manifest diff of every environment between --base and the work tree (what
    a pull request changes in each), as markdown for a PR comment."""
    with _reported():
        helm_bin = find_helm(root, helm)
        sections = ["## Rendered changes per environment", ""]
        with tempfile.TemporaryDirectory() as tmp:
            present = git(root, "ls-tree", "--name-only", base, "--", "argocd", str(CHART))
            paths = present.split()
            if paths:
                archive = subprocess.run(
                    ["git", "-C", str(root), "archive", base, *paths], capture_output=True
                )
                if archive.returncode != 0:
                    raise GitopsError(f"git archive {base}: {archive.stderr.decode().strip()}")
                subprocess.run(["tar", "-x", "-C", tmp], input=archive.stdout, check=True)
            old = environments(Path(tmp)) if "argocd" in paths else {}
            new = environments(root)
            for name in sorted(set(old) | set(new)):
                a = render(old[name], Path(tmp), helm=helm_bin) if name in old else ""
                b = render(new[name], root, helm=helm_bin) if name in new else ""
                d = manifest_diff(a, b, f"{name} ({base})", f"{name} (this change)")
                head = f"### {name}: " + (diff_size(d) if d else "no change")
                sections.append(head)
                if d:
                    sections += ["<details><summary>diff</summary>", "", "```diff", d, "```"]
                    sections += ["</details>"]
                sections.append("")
                out.print(head.removeprefix("### "), highlight=False)
        text = "\n".join(sections)
        if len(text) > PR_BODY_LIMIT:
            text = text[:PR_BODY_LIMIT] + "\n…(cut: run `llmops env-diff` for all of it)\n"
        if out_file:
            out_file.write_text(text, encoding="utf-8")
        else:
            sys.stdout.write(text)
