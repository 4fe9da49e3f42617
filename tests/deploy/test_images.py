"""The two images, proven as far as our machines can: hadolint, the lean install set, and every
workload's command run as the image would run it (tests/deploy/pods.py).

The ``llmops`` image's services and Job run from an install of requirements/llmops.txt alone
(no torch: the dependency closure is checked, and torch cannot be imported), with ENV=production
(every replica-unsafe default refused), their peers reached through this machine's network
address, PostgreSQL and Redis real, secrets from mounted files. Qdrant has no server that runs
here: its place is taken by a real HTTP server that answers its REST API (tests/fakes/qdrant.py).
The ``llmops-models`` services likewise run from an install of requirements/models.txt.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
import yaml

from tests.conftest import (
    API_KEY,
    API_KEY_HASH,
    ROOT,
    auth_headers,
    free_port,
    fresh_pg_database,
)
from tests.deploy.pods import (
    LOCAL_LLM_CACHE,
    UID,
    Pod,
    bake_local_llm,
    expand,
    host_address,
    image_env,
    secret_file,
    workloads,
)
from tests.fakes.qdrant import FakeQdrant
from tests.llm_proxy.conftest import MASTER_KEY, REDIS_URL, FakeUpstream


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


# -- every workload, as a pod ------------------------------------------------------------------


class Cluster:
    """The pods of one release, and what they share: a data volume per pod, mounted secrets."""

    def __init__(
        self, venvs: dict[str, Path], root: Path, database_url: str, mlflow_url: str
    ) -> None:
        self.venvs = venvs
        self.database_url = database_url  # the platform's PostgreSQL (feedback, llm-proxy)
        self.mlflow_url = mlflow_url  # MLflow's own (its tables are not ours)
        self.root = root
        self.host = host_address()
        self.pods: dict[str, Pod] = {}
        self.secrets = root / "secrets"
        self.secrets.mkdir()
        os.chown(root, UID, UID)

    def secret(self, name: str, value: str) -> str:
        """A file as a mounted Secret key is (readable by the pod's user), its path."""
        return str(secret_file(self.secrets, name, value))

    def env(self, name: str, **extra: str) -> dict[str, str]:
        spec = workloads()[name]
        image = spec["image"]
        venv = self.venvs[image]
        data = self.root / name
        data.mkdir(exist_ok=True)
        os.chown(data, UID, UID)
        env = {
            k: v.replace("/opt/venv", str(venv)).replace("/data", str(data))
            for k, v in image_env(image).items()
        }
        env["PATH"] = f"{venv}/bin:{os.environ['PATH']}"  # the image's PATH, then the base's
        if "LOCAL_LLM_CACHE_DIR" in env:
            env["LOCAL_LLM_CACHE_DIR"] = str(LOCAL_LLM_CACHE)  # baked by the image's build step
        env.update({"ENV": "production", "PYTHONPROFILEIMPORTTIME": "1", **extra})
        return env

    def start(self, name: str, wait: str | None = "/readyz", **extra: str) -> Pod:
        spec = workloads()[name]
        port = free_port()
        env = self.env(name, **extra)
        prefix = name.upper().replace("-", "_")
        env.setdefault(f"{prefix}_PORT", str(port))
        argv = expand(spec["command"], env)
        pod = Pod(name, argv, env, Path(env["LLMOPS_DATA_DIR"]), self.root / f"{name}.log", port)
        self.pods[name] = pod.start()
        if wait:
            pod.wait_http(f"http://{self.host}:{port}{wait}")
        return pod

    def url(self, name: str) -> str:
        return f"http://{self.host}:{self.pods[name].port}"


@pytest.fixture(scope="module")
def cluster(lean: Path, models: Path) -> Iterator[Cluster]:
    # /dev/shm stays writable in the namespace: it stands for the pods' volumes.
    root = Path(tempfile.mkdtemp(prefix="llmops-pods-", dir="/dev/shm"))
    with fresh_pg_database("llmops_pods") as db, fresh_pg_database("llmops_pods_mlflow") as mdb:
        c = Cluster({"llmops": lean, "llmops-models": models}, root, db, mdb)
        try:
            yield c
        finally:
            for pod in c.pods.values():
                pod.stop()
            shutil.rmtree(root, ignore_errors=True)


def test_the_migration_job_then_every_workload_serves_as_a_pod(
    cluster: Cluster, tmp_path: Path
) -> None:
    c = cluster
    db = c.database_url
    db_file = c.secret("database-url", db)

    # 1. The Job: only the database URL (from a mounted file), no routing file, no key.
    job = c.start(
        "migrations",
        wait=None,
        FEEDBACK_DATABASE_URL_FILE=db_file,
        LLM_PROXY_DATABASE_URL_FILE=db_file,
    )
    assert job.wait() == 0, job.logs()
    assert "feedback: at revision 0001 (postgresql)" in job.logs()
    assert "llm-proxy: at revision 0001 (postgresql)" in job.logs()

    # 2. MLflow (the in-chart tracking server) on PostgreSQL, artifacts on its volume.
    mlflow_port = free_port()
    mlflow = c.start(
        "mlflow",
        wait=None,
        MLFLOW_PORT=str(mlflow_port),
        MLFLOW_BACKEND_STORE_URI=c.mlflow_url,
        MLFLOW_ARTIFACTS_DESTINATION=str(c.root / "mlflow" / "artifacts"),
        MLFLOW_ALLOWED_HOSTS=f"{c.host}:{mlflow_port}",
        MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false",
    )
    mlflow.port = mlflow_port
    mlflow.wait_http(f"http://{c.host}:{mlflow_port}/health")

    # 3. The models image's embeddings, and Qdrant's stand-in.
    c.start("embeddings", EMBEDDINGS_API_KEY_HASHES=API_KEY_HASH)
    qdrant = FakeQdrant(host="0.0.0.0")
    fake_llm = FakeUpstream("pods", tmp_path)
    try:
        c.start(
            "retrieval",
            RETRIEVAL_API_KEY_HASHES=API_KEY_HASH,
            RETRIEVAL_QDRANT_URL=f"http://{c.host}:{qdrant.port}",
            RETRIEVAL_EMBEDDINGS_URL=c.url("embeddings"),
            RETRIEVAL_EMBEDDINGS_API_KEY_FILE=c.secret("embeddings-key", API_KEY),
        )
        routing = c.root / "llm-proxy" / "routing.yaml"
        routing.parent.mkdir(exist_ok=True)
        routing.write_text(yaml.safe_dump({
            "deployments": [{"name": "fake", "api_base": fake_llm.api_base, "model": "fake"}],
            "aliases": {"smollm2": {"deployments": [{"deployment": "fake"}]}},
        }))  # fmt: skip
        c.start(
            "llm-proxy",
            LLM_PROXY_CONFIG_PATH=str(routing),
            LLM_PROXY_MASTER_KEY_FILE=c.secret("master-key", MASTER_KEY),
            LLM_PROXY_DATABASE_URL_FILE=db_file,
            LLM_PROXY_REDIS_URL_FILE=c.secret("redis-url", REDIS_URL),
        )
        c.start(
            "feedback", FEEDBACK_API_KEY_HASHES=API_KEY_HASH, FEEDBACK_DATABASE_URL_FILE=db_file
        )
        key = httpx.post(
            f"{c.url('llm-proxy')}/admin/keys",
            json={"name": "rag", "aliases": ["smollm2"]},
            headers={"Authorization": f"Bearer {MASTER_KEY}"},
        ).json()["key"]
        rag = c.start(
            "rag",
            RAG_API_KEY_HASHES=API_KEY_HASH,
            RAG_RETRIEVAL_URL=c.url("retrieval"),
            RAG_RETRIEVAL_API_KEY_FILE=c.secret("retrieval-key", API_KEY),
            RAG_PROXY_URL=c.url("llm-proxy"),
            RAG_PROXY_API_KEY_FILE=c.secret("proxy-key", key),
            RAG_FEEDBACK_URL=c.url("feedback"),
            RAG_FEEDBACK_API_KEY_FILE=c.secret("feedback-key", API_KEY),
            RAG_MLFLOW_TRACKING_URI=f"http://{c.host}:{mlflow_port}",
            RAG_ON_RETRIEVAL_FAILURE="no_context",  # Qdrant's stand-in cannot search
        )

        # Traffic through the pods: an ask goes rag -> retrieval (degraded) -> proxy (keys in
        # PostgreSQL, limits in Redis) -> the model, and its interaction rag -> feedback.
        r = httpx.post(
            f"{c.url('rag')}/v1/ask", json={"question": "Are pods read-only?"},
            headers=auth_headers(), timeout=60,
        )  # fmt: skip
        assert r.status_code == 200, r.text
        assert r.json()["degraded"][0] == "retrieval_unavailable"
        interaction = r.json()["interaction_id"]
        deadline = time.monotonic() + 30
        while True:
            with psycopg.connect(db.replace("+psycopg", ""), autocommit=True) as conn:
                row = conn.execute("SELECT id FROM interactions WHERE id = %s", (interaction,))
                if row.fetchone():
                    break
            assert time.monotonic() < deadline, c.pods["feedback"].logs()[-3000:]
            time.sleep(0.3)
    finally:
        for name in ("rag", "feedback", "llm-proxy", "retrieval", "embeddings", "mlflow"):
            pod = c.pods.get(name)
            if pod is not None:
                assert pod.stop() in (0, -15), pod.logs()[-3000:]
        qdrant.stop()
        fake_llm.stop()

    # The services' own processes never imported the CLI (nor typer): `python -m services.X`.
    for name in ("retrieval", "llm-proxy", "feedback", "rag"):
        log = c.pods[name].logs()
        assert "| services.common.server" in log, log[:2000]  # the import log is there
        assert "| services.cli" not in log and "| typer" not in log, name
        assert "Read-only file system" not in log, log[-3000:]
    # The outbox was emptied before rag exited: nothing is left on its volume.
    assert not list((rag.cwd / "rag-outbox").glob("*.spool"))


def test_local_llm_runs_from_the_baked_model_on_a_read_only_root(cluster: Cluster) -> None:
    """The image converts the GGUF at build time (its `prepare` step, run here the same way);
    the pod then only reads it."""
    bake_local_llm(cluster.venvs["llmops-models"])
    pod = cluster.start("local-llm", ENV="dev", LOCAL_LLM_API_KEY_HASHES=API_KEY_HASH)
    ready = httpx.get(f"{cluster.url('local-llm')}/readyz").json()
    assert ready["model"] == "smollm2-135m-instruct"
    assert "origin" not in ready
    log = pod.logs()
    assert '"origin": "cache"' in log or '"origin":"cache"' in log, log[-3000:]
    assert pod.stop() in (0, -15)
