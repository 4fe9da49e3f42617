"""``llmops up --monitoring``: a real Prometheus beside the services, scraping them as the
chart's ServiceMonitor does (labels ``namespace`` and ``component``) and evaluating the chart's
rules (deploy/monitoring/rules.yaml), so the alerts and their states can be seen on a laptop."""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path

import yaml

PROMETHEUS_OFFSET = 1090  # base port + 1090: 9090 by default
# The chart's rules as a plain rule file (generated from the chart; a test keeps them equal).
RULES = Path(__file__).resolve().parents[2] / "deploy" / "monitoring" / "rules.yaml"
NAMESPACE = "llmops"  # the namespace the rule file selects


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
    config = {
        "global": {"scrape_interval": "5s", "evaluation_interval": "5s"},
        "rule_files": [str(rules)] if rules.is_file() else [],
        "scrape_configs": [
            {
                "job_name": name,
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
    path = root / "prometheus.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return shlex.join(
        [
            binary,
            f"--config.file={path}",
            f"--storage.tsdb.path={root / 'data'}",
            f"--web.listen-address={host}:{port}",
            "--log.level=warn",
        ]
    )
