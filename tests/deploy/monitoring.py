"""A real Prometheus (Debian's) on loopback, scraping real services with the chart's scrape
settings and evaluating the chart's rules; and the PromQL helpers the monitoring tests share."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from services.cli.monitoring import prometheus_args, prometheus_config
from tests.conftest import free_port
from tests.deploy.chart import NAMESPACE

COMPARISONS = {"==", "!=", ">", "<", ">=", "<="}
SETS = {"and", "or", "unless"}


def prometheus_binary() -> str:
    found = shutil.which("prometheus")
    assert found, "prometheus is missing: run `make tools` (make test does)"
    return found


class Prometheus:
    """``prometheus`` with a static scrape config: one target per service, labelled as the
    chart's ServiceMonitor labels them (``component`` from the Service, plus namespace, pod)."""

    def __init__(
        self,
        root: Path,
        targets: dict[str, str],
        rules: dict[str, Any],
        scrape_interval: str = "1s",
        metrics_path: str = "/metrics",
    ) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        (root / "rules.yaml").write_text(yaml.safe_dump(rules, sort_keys=False))
        # The same scrape config as `llmops up --monitoring`, every second.
        addresses = {name: url.removeprefix("http://") for name, url in targets.items()}
        config = prometheus_config(addresses, ["rules.yaml"], scrape_interval, metrics_path)
        (root / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = (root / "prometheus.log").open("wb")
        self.proc = subprocess.Popen(
            prometheus_args(prometheus_binary(), root, "127.0.0.1", self.port),
            cwd=root, stdout=self._log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.wait(lambda: httpx.get(f"{self.url}/-/ready", timeout=2).status_code == 200, 60)

    def logs(self) -> str:
        return (self.root / "prometheus.log").read_text(errors="replace")

    def wait(self, check: Any, timeout: float, what: str = "prometheus ready") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"prometheus exited:\n{self.logs()}"
            try:
                if check():
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"{what} within {timeout} s:\n{self.logs()[-3000:]}")

    def query(self, expr: str) -> list[dict[str, Any]]:
        r = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10)
        body = r.json()
        assert r.status_code == 200 and body["status"] == "success", f"{expr}: {body}"
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def targets_up(self) -> dict[str, str]:
        r = httpx.get(f"{self.url}/api/v1/targets", timeout=10).json()
        return {t["labels"]["component"]: t["health"] for t in r["data"]["activeTargets"]}

    def alerts(self, name: str) -> list[dict[str, Any]]:
        r = httpx.get(f"{self.url}/api/v1/alerts", timeout=10).json()
        return [a for a in r["data"]["alerts"] if a["labels"]["alertname"] == name]

    def rule_health(self) -> list[tuple[str, str, str]]:
        """(name, health, lastError) of every rule the server evaluated."""
        r = httpx.get(f"{self.url}/api/v1/rules", timeout=10).json()
        return [
            (rule.get("name", ""), rule.get("health", ""), rule.get("lastError", ""))
            for group in r["data"]["groups"]
            for rule in group["rules"]
        ]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def data_parts(expr: str) -> list[str]:
    """The parts of an expression that must return series in a healthy run.

    An alert's condition (``X > 0``, ``A and B``, ``L == R``) is empty while all is well; what
    must exist is what it compares: each operand that reads series (not a number).
    """
    import promql_parser

    def walk(node: Any) -> list[str]:
        op = str(getattr(node, "op", "")).strip()
        if isinstance(node, promql_parser.BinaryExpr) and (
            op in SETS or (op in COMPARISONS and not _returns_bool(node))
        ):
            return [part for side in (node.lhs, node.rhs) for part in walk(side)]
        if isinstance(node, promql_parser.ParenExpr):
            return walk(node.expr)
        if isinstance(node, promql_parser.NumberLiteral) or not _reads_series(node):
            return []
        return [node.prettify()]

    return walk(promql_parser.parse(expr))


def _returns_bool(node: Any) -> bool:
    modifier = getattr(node, "modifier", None)
    return bool(modifier is not None and getattr(modifier, "return_bool", False))


def _reads_series(node: Any) -> bool:
    """Whether an expression selects series (a number or ``vector(1)`` does not)."""
    import promql_parser

    if isinstance(node, promql_parser.VectorSelector | promql_parser.MatrixSelector):
        return True
    children = [getattr(node, a, None) for a in ("expr", "lhs", "rhs")]
    children += list(getattr(node, "args", None) or [])
    return any(c is not None and _reads_series(c) for c in children)


DASHBOARDS = Path(__file__).resolve().parents[2] / "deploy" / "helm" / "llmops" / "dashboards"
# What Grafana puts in place of the template variables (all values of a multi-value one).
VARIABLES = {
    "$__rate_interval": "1m",
    "$namespace": NAMESPACE,
    "$component": ".*",
    "$alias": ".*",
}


def substitute(expr: str) -> str:
    for name, value in VARIABLES.items():
        expr = expr.replace(name, value)
    assert "$" not in expr, f"an unknown template variable in {expr}"
    return expr


def panel_queries() -> list[tuple[str, str, str]]:
    """(dashboard, panel title, expression with variables substituted) of every panel."""
    import json

    out = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        board = json.loads(path.read_text(encoding="utf-8"))
        for panel in board["panels"]:
            for target in panel.get("targets", []):
                out.append((path.stem, panel["title"], substitute(target["expr"])))
    return out
