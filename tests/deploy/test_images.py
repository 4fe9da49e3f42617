"""The two images, proven as far as our machines can: hadolint on the Dockerfile, the final
stages (numeric user, pinned base, no pip), the workloads' commands against the docs, and the
lean install set (requirements/llmops.txt alone: no torch, the dependency closure checked).

Every workload's command is run as the image would run it (tests/deploy/pods.py: the image's
install, ENV and user, a read-only root) by the chart's end-to-end test,
tests/deploy/test_chart_processes.py, from the chart's rendering of deploy/docker/workloads.yaml.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT
from tests.deploy.pods import UID, image_env, workloads


def test_hadolint_checks_the_dockerfile_and_would_fail_a_bad_one(tmp_path: Path) -> None:
    """`make lint` runs hadolint on the Dockerfile; this shows it really checks something."""
    hadolint = [str(ROOT / ".venv" / "bin" / "hadolint"), "--no-color", "--config"]
    hadolint.append(str(ROOT / "deploy" / "docker" / "hadolint.yaml"))
    good = subprocess.run([*hadolint, str(ROOT / "deploy/docker/Dockerfile")], capture_output=True)
    assert good.returncode == 0, good.stdout
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN pip install fastapi\nUSER root\n")
    out = subprocess.run([*hadolint, str(bad)], capture_output=True, text=True)
    assert out.returncode == 1
    assert {"DL3006", "DL3013", "DL3042", "DL3002"} <= set(out.stdout.replace(":", " ").split())


def test_dockerfile_final_stages_are_non_root_pinned_and_without_pip() -> None:
    text = (ROOT / "deploy/docker/Dockerfile").read_text()
    assert "@sha256:" in text.split("ARG PYTHON_IMAGE=", 1)[1].splitlines()[0]
    for target in ("llmops", "llmops-models"):
        env = image_env(target)
        assert env["LLMOPS_HOST"] == "0.0.0.0" and env["LLMOPS_DATA_DIR"] == "/data"
        assert env["PATH"].startswith("/opt/venv/bin:")
    # The last USER of the file (the llmops-models stage) and of the runtime stage: numeric.
    users = [line.split()[1] for line in text.splitlines() if line.startswith("USER ")]
    assert users[-1] == f"{UID}:{UID}" and users[0] == f"{UID}:{UID}"
    assert "rm -rf /usr/local/lib/python3.11/site-packages/pip*" in text
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert ignore[ignore.index("*") :][:1] == ["*"]  # everything out, then what is needed


def test_every_workload_command_is_in_the_docs_table() -> None:
    doc = (ROOT / "docs" / "architecture.md").read_text()
    doc = doc.split("### Workloads and images", 1)[1].split("\n### ", 1)[0]
    for name, spec in workloads().items():
        row = next((line for line in doc.splitlines() if line.startswith(f"| {name} |")), None)
        assert row is not None, f"docs/architecture.md has no row for {name}"
        assert f"`{' '.join(map(str, spec['command']))}`" in row, row
        assert f"`{spec['image']}`" in row, row


# -- the llmops image's install set -------------------------------------------------------------


def test_the_llmops_install_has_no_torch(lean: Path) -> None:
    python = str(lean / "bin" / "python")
    names = subprocess.run(
        [python, "-c", "import importlib.metadata as m; print(*sorted("
         "d.metadata['Name'].lower() for d in m.distributions()))"],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert "fastapi" in names and "mlflow" in names and "qdrant-client" in names
    heavy = [n for n in names if n in {"torch", "triton", "sentence-transformers", "transformers"}]
    assert heavy == [] and not [n for n in names if n.startswith("nvidia")]
    r = subprocess.run([python, "-c", "import torch"], capture_output=True, text=True)
    assert r.returncode == 1 and "No module named 'torch'" in r.stderr
    # What the image imports: each service, the CLI and the migrations.
    mods = "services.rag.app services.llm_proxy.app services.feedback.app services.retrieval.app"
    code = f"import {', '.join([*mods.split(), 'services.cli.main', 'services.feedback.db'])}"
    r = subprocess.run([python, "-c", code], capture_output=True, text=True, cwd="/")
    assert r.returncode == 0, r.stderr


# -- licences of what the images ship -----------------------------------------------------------

# Permissive licences, as pip-licenses reports them (SPDX ids and trove classifier names).
PERMISSIVE = {
    "MIT", "MIT License", "MIT-0", "MIT-CMU", "BSD License", "BSD-2-Clause", "BSD-3-Clause",
    "3-Clause BSD License", "0BSD", "Apache-2.0", "Apache Software License", "Apache 2.0 License",
    "LLVM-exception", "ISC", "ISC License (ISCL)", "Python Software Foundation License",
    "PSF-2.0", "CNRI-Python", "Zlib", "CC0-1.0", "BSL-1.0",
}  # fmt: skip
# Outside that list, each with the reason it may ship anyway. Nothing else may.
REVIEWED = {
    "psycopg": "LGPL-3.0: imported unmodified as a library, which the LGPL allows in any image",
    "psycopg-binary": "LGPL-3.0: psycopg's C build, shipped unmodified as published",
    "certifi": "MPL-2.0, file-level copyleft: its CA bundle ships unmodified",
    "orjson": "MPL-2.0 in part (file-level copyleft): the wheel ships unmodified",
    "tqdm": "MPL-2.0 in part (file-level copyleft): shipped unmodified",
    "huey": "no licence metadata; its LICENSE file is MIT",
    "skops": "no licence metadata ('OSI Approved' only); its LICENSE file is MIT",
}
_PARTS = re.compile(r"\s+(?:AND|OR|WITH)\s+|[;()]")


def licence_problems(rows: list[dict[str, str]]) -> list[str]:
    """The packages whose licence has a part outside PERMISSIVE and is not REVIEWED."""
    bad = []
    for row in rows:
        whole = row["License"]
        parts = {whole} if whole in PERMISSIVE else {p.strip() for p in _PARTS.split(whole)} - {""}
        if parts - PERMISSIVE and row["Name"].lower() not in REVIEWED:
            bad.append(f"{row['Name']} {row['Version']}: {row['License']}")
    return bad


def licences(venv: Path) -> list[dict[str, str]]:
    r = subprocess.run(
        [str(Path(sys.executable).parent / "pip-licenses"), "--python", str(venv / "bin/python"),
         "--from", "mixed", "--format", "json", "--with-system"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    rows: list[dict[str, str]] = json.loads(r.stdout)
    return rows


def test_the_images_ship_only_allowed_licences(lean: Path, models: Path) -> None:
    """The runtime closure of both images (their lock files, installed as the Dockerfile does):
    every licence permissive, or reviewed with its reason."""
    seen: set[str] = set()
    for venv in (lean, models):
        rows = licences(venv)
        dists = list((venv / "lib").glob("python3*/site-packages/*.dist-info"))
        assert len(rows) == len(dists) > 50, (len(rows), len(dists))  # it read them all
        assert licence_problems(rows) == [], venv.name
        seen |= {r["Name"].lower() for r in rows}
    assert set(REVIEWED) <= seen, f"stale reviews: {set(REVIEWED) - seen}"
    assert {"torch", "mlflow", "psycopg"} <= seen
    # The policy refuses copyleft and unknown licences.
    rows = [
        {"Name": "gplthing", "Version": "1", "License": "GPL-3.0-or-later"},
        {"Name": "mystery", "Version": "1", "License": "UNKNOWN"},
        {"Name": "dual", "Version": "1", "License": "MIT OR AGPL-3.0"},
    ]
    assert len(licence_problems(rows)) == 3
