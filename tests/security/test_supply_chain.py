"""Supply chain, in ``make test``: bandit over services/ (no medium or high finding without a
written reason), detect-secrets against the committed, audited ``.secrets.baseline``. Each
engine is also shown to fail on a bad sample, so a pass is not an engine that scanned nothing.
The images' licences are checked where their installs are made (tests/deploy/test_images.py)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.conftest import ROOT

BIN = Path(sys.executable).parent
NOSEC = re.compile(r"#\s*nosec\b(.*)$")
REASON = re.compile(r"^\s*# bandit (B\d{3}) \(.+\): \S.+$")


def tool(name: str) -> str:
    path = BIN / name
    assert path.exists(), f"{path} is missing: run `make setup` (make test does)"
    return str(path)


def bandit(*targets: str) -> dict[str, Any]:
    r = subprocess.run(
        [tool("bandit"), "-q", "-r", "-ll", "-f", "json", *targets],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    out: dict[str, Any] = json.loads(r.stdout)
    return out


def test_bandit_finds_nothing_unreasoned_in_services(tmp_path: Path) -> None:
    report = bandit("services")
    findings = [
        f"{r['filename']}:{r['line_number']} {r['test_id']} {r['issue_text']}"
        for r in report["results"]
    ]
    assert findings == [], "\n".join(findings)
    totals = report["metrics"]["_totals"]
    assert totals["loc"] > 10_000, totals  # it read the services, not an empty tree
    # Every `# nosec` names its test and has the reason on the line above it.
    suppressed = 0
    for path in sorted((ROOT / "services").rglob("*.py")):
        lines = path.read_text(encoding="utf-8").splitlines()
        for n, line in enumerate(lines):
            m = NOSEC.search(line)
            if m is None:
                continue
            suppressed += 1
            ids = re.findall(r"B\d{3}", m.group(1))
            where = f"{path.relative_to(ROOT)}:{n + 1}"
            assert len(ids) == 1, f"{where}: a nosec names exactly one bandit test"
            reason = REASON.match(lines[n - 1])
            assert reason and reason.group(1) == ids[0], (
                f"{where}: put `# bandit {ids[0]} (what it flags): why it is safe` above it"
            )
    assert totals["skipped_tests"] == suppressed, totals
    # The engine fails a bad sample.
    bad = tmp_path / "bad.py"
    bad.write_text("import subprocess\n\ndef run(cmd):\n    subprocess.call(cmd, shell=True)\n")
    found = {r["test_id"] for r in bandit(str(bad))["results"]}
    assert "B602" in found, found


def tracked_files() -> list[str]:
    out = subprocess.run(["git", "ls-files"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, "run the suite from a Git checkout (detect-secrets scans it)"
    # The baseline holds the hashes of what it allows: not itself a place to look.
    return [f for f in out.stdout.splitlines() if (ROOT / f).is_file() and f != ".secrets.baseline"]


def test_no_secret_outside_the_audited_baseline(tmp_path: Path) -> None:
    baseline = json.loads((ROOT / ".secrets.baseline").read_text())
    unaudited = [
        f"{f}:{r['line_number']} {r['type']}"
        for f, rs in baseline["results"].items()
        for r in rs
        if r.get("is_secret") is not False
    ]
    assert unaudited == [], f"audit these (`detect-secrets audit .secrets.baseline`): {unaudited}"
    # The hook updates line numbers in the baseline it is given: give it a copy.
    copy = tmp_path / "baseline.json"
    shutil.copy(ROOT / ".secrets.baseline", copy)
    files = tracked_files()
    assert len(files) > 300, len(files)
    r = subprocess.run(
        [tool("detect-secrets-hook"), "--baseline", str(copy), *files],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    # Exit 3 alone: audited findings moved to other lines (the hook rewrote the copy); that is
    # no new secret. Exit 1, or its report, is.
    assert r.returncode in (0, 3) and "Potential secrets" not in r.stdout, (
        f"{r.stdout}\n{r.stderr}\nA new secret-like string: remove it, or if it is not a "
        "secret, `detect-secrets scan --baseline .secrets.baseline` and audit it."
    )
    # The engine fails a bad sample (built here, so this file holds no key).
    leaked = tmp_path / "leak.py"
    leaked.write_text(f'AWS_KEY = "{"AKIA" + "IOSFODNN7" + "EXAMPLE"}"\n')
    r = subprocess.run(
        [tool("detect-secrets-hook"), "--baseline", str(copy), str(leaked)],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert r.returncode == 1 and "AWS Access Key" in r.stdout, r.stdout
