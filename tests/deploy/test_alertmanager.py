"""deploy/monitoring/alertmanager.yaml under Debian's amtool: it loads, and every alert the
chart renders is routed by its severity (critical pages, warning opens a ticket)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.conftest import ROOT
from tests.deploy.chart import prometheus_rules

CONFIG = ROOT / "deploy" / "monitoring" / "alertmanager.yaml"
RECEIVER = {"critical": "pager", "warning": "tickets"}


def amtool(*args: str) -> subprocess.CompletedProcess[str]:
    found = shutil.which("amtool")
    assert found, "amtool is missing: run `make tools` (make test does)"
    return subprocess.run([found, *args], capture_output=True, text=True, cwd=ROOT)


def test_check_config() -> None:
    r = amtool("check-config", str(CONFIG))
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr
    assert " - 2 receivers" in r.stdout and " - 2 inhibit rules" in r.stdout, r.stdout


def test_check_config_refuses_what_alertmanager_would(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        CONFIG.read_text().replace("group_wait: 10s", "group_wait: 10s\n      pages: on")
    )
    assert amtool("check-config", str(bad)).returncode != 0


def test_every_alert_routes_by_severity() -> None:
    alerts = {
        (rule["alert"], rule["labels"]["severity"])
        for group in prometheus_rules()["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }
    assert len(alerts) >= 15
    for name, severity in sorted(alerts):
        r = amtool(
            "config", "routes", "test", f"--config.file={CONFIG}",
            f"alertname={name}", f"severity={severity}", "namespace=llmops",
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == RECEIVER[severity], (name, severity, r.stdout)
