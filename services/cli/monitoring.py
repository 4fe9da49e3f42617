"""``llmops up --monitoring``: a real Prometheus beside the services, scraping them as the
chart's ServiceMonitor does (labels ``namespace`` and ``component``) and evaluating the chart's
rules (deploy/monitoring/rules.yaml), so the alerts and their states can be seen on a laptop."""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path
from typing import Any

import yaml

PROMETHEUS_OFFSET = 1090  # base port + 1090: 9090 by default
# The chart's rules as a plain rule file (generated from the chart; a test keeps them equal).
RULES = Path(__file__).resolve().parents[2] / "deploy" / "monitoring" / "rules.yaml"
NAMESPACE = "llmops"  # the namespace the rule file selects


def prometheus_config(
    targets: dict[str, str],
    rule_files: list[str],
    interval: str = "5s",
    metrics_path: str = "/metrics",
) -> dict[str, Any]:
    """A scrape config with one job per service (service -> host:port), each target labelled
    as the chart's ServiceMonitor labels it: ``namespace``, ``component`` and a ``pod``."""
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": rule_files,
        "scrape_configs": [
            {
                "job_name": name,
                "metrics_path": metrics_path,
                "static_configs": [
                    {
                        "targets": [address],
                        "labels": {"namespace": NAMESPACE, "component": name, "pod": f"{name}-0"},
                    }
                ],
            }
            for name, address in targets.items()
        ],
    }


def prometheus_args(binary: str, root: Path, host: str, port: int) -> list[str]:
    """``prometheus`` on ``host:port`` with its config and data under ``root``."""
    return [
        binary,
        f"--config.file={root / 'prometheus.yml'}",
        f"--storage.tsdb.path={root / 'data'}",
        f"--web.listen-address={host}:{port}",
        "--log.level=warn",
    ]


def prometheus_command(
    data_dir: Path, host: str, port: int, targets: dict[str, str], rules: Path = RULES
) -> str | None:
    """The command line of a Prometheus for ``targets`` (service -> host:port), or None when
    no ``prometheus`` binary is installed (Debian's package; ``make tools`` installs it)."""
    binary = shutil.which("prometheus")
    if binary is None:
        return None
    root = (data_dir / "prometheus").resolve()
    root.mkdir(parents=True, exist_ok=True)
    config = prometheus_config(targets, [str(rules)] if rules.is_file() else [])
    (root / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return shlex.join(prometheus_args(binary, root, host, port))
