"""Chart to process, end to end: the `minimal` values rendered by helm, and every workload run
as the rendered pod says, as a local process: its container's command and env (the settings
ConfigMap, the container's own env, `$(VAR)` expanded as the kubelet does), the image's ENV and
user, a read-only root filesystem with `/tmp` and `/data` as the pod's volumes, the Secret's
keys and the ConfigMaps' files written where they are mounted. Service names map to this
machine's network address (not loopback, which the services refuse for peers outside
`ENV=dev`) and each Service port to a free one. Each pod must pass its rendered startup probe
within the probe's own budget (periodSeconds x failureThreshold), then its readiness and
liveness probes; the migration Jobs must exit 0 first; then the `helm test` pod's command runs:
every service ready, one ask through rag. This proves that the chart's commands, env names,
ports, paths and probe paths are the code's.

Not run here: Qdrant (no server runs on our machines: its URL gets a real HTTP stand-in that
answers the readiness calls, tests/fakes/qdrant.py, so rag answers without context, which the
values override below asks for), and the cluster's own behaviour (scheduling, volumes, the
NetworkPolicies: tests/deploy/test_network_policy.py).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from tests.conftest import API_KEY, API_KEY_HASH, free_port, fresh_pg_database
from tests.deploy.chart import CHART, documents, pod_spec
from tests.deploy.pods import BAKED, UID, Pod, bake, expand, host_address, image_env
from tests.fakes.qdrant import FakeQdrant
from tests.llm_proxy.conftest import MASTER_KEY, REDIS_URL

MINIMAL = CHART / "ci" / "minimal.yaml"
# Qdrant's stand-in cannot search: rag answers without context (a documented setting).
OVERRIDES = ("services.rag.env.ON_RETRIEVAL_FAILURE=no_context",)
ORDER = ["mlflow", "embeddings", "local-llm", "retrieval", "llm-proxy", "feedback", "rag"]


class ChartCluster:
    """The rendered release's pods as processes; names, ports and mounts remapped."""

    def __init__(self, docs: list[dict[str, Any]], venvs: dict[str, Path], root: Path) -> None:
        self.docs = docs
        self.venvs = venvs
        self.root = root
        self.host = host_address()
        self.configmaps = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
        self.services = {
            d["metadata"]["name"]: d
            for d in docs
            if d["kind"] == "Service" and d["spec"].get("clusterIP") != "None"
        }
        self.ports = {name: free_port() for name in self.services}  # Service -> local port
        self.extra: dict[str, str] = {}  # other names (Qdrant) -> host:port
        self.secret_dir = root / "secret"
        self.secret_dir.mkdir()
        self.pods: dict[str, Pod] = {}
        os.chown(root, UID, UID)

    def secret(self, key: str, value: str) -> None:
        path = self.secret_dir / key
        path.write_text(value + "\n")
        os.chown(path, UID, UID)
        path.chmod(0o440)

    def remap(self, text: str) -> str:
        """Service names and ports as this machine serves them."""
        # A host is a name after "//", "@", "," or at the start, before ":", "/", "," or the end.
        before, after = r"(?:(?<=//)|(?<=@)|(?<=,)|^)", r"(?=[:/,]|$)"
        for name, svc in self.services.items():
            port = svc["spec"]["ports"][0]["port"]
            local = f"{self.host}:{self.ports[name]}"
            host = rf"{before}{re.escape(name)}(?:\.[a-z0-9-]+\.svc(?:\.cluster\.local)?)?"
            text = re.sub(rf"{host}:{port}{after}", local, text)
            text = re.sub(rf"{host}{after}", local, text)
        for name, local in self.extra.items():
            text = re.sub(rf"//{re.escape(name)}:\d+", f"//{local}", text)
        return text

    def workload(self, name: str) -> dict[str, Any]:
        suffix = f"-{name}"
        return next(
            d for d in self.docs
            if pod_spec(d) is not None and d["metadata"]["name"].endswith(suffix)
        )  # fmt: skip

    def mounts(self, spec: dict[str, Any], container: dict[str, Any], data: Path) -> dict[str, str]:
        """Each mountPath and the local directory standing for its volume."""
        out: dict[str, str] = {}
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for m in container.get("volumeMounts", []):
            v = volumes.get(m["name"], {})
            if m["mountPath"] == "/tmp":
                assert "emptyDir" in v
                continue  # the pod's private /tmp (tests/deploy/pods.py)
            if m["name"] == "data":
                out[m["mountPath"]] = str(data)
            elif "projected" in v:
                for src in v["projected"]["sources"]:
                    for item in src["secret"]["items"]:
                        assert (self.secret_dir / item["key"]).exists(), item
                out[m["mountPath"]] = str(self.secret_dir)
            elif "configMap" in v:
                folder = self.root / f"cm-{v['configMap']['name']}"
                folder.mkdir(exist_ok=True)
                out[m["mountPath"]] = str(folder)
            else:
                raise AssertionError(f"a volume this test does not stand in for: {v}")
        # The mounted files, with the paths they name as this pod sees them.
        for m in container.get("volumeMounts", []):
            v = volumes.get(m["name"], {})
            if "configMap" in v:
                for key, value in self.configmaps[v["configMap"]["name"]]["data"].items():
                    for path, folder in sorted(out.items(), key=lambda kv: -len(kv[0])):
                        value = value.replace(path, folder)
                    (Path(out[m["mountPath"]]) / key).write_text(self.remap(value))
        return out

    def start(self, doc: dict[str, Any]) -> tuple[Pod, dict[str, Any]]:
        spec = pod_spec(doc)
        assert spec is not None
        (container,) = spec["containers"]
        assert spec["securityContext"]["runAsUser"] == UID
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        image = "llmops-models" if "-models" in container["image"].split(":")[0] else "llmops"
        venv = self.venvs[image]
        name = doc["metadata"]["name"]
        data = self.root / f"data-{name}"
        data.mkdir()
        os.chown(data, UID, UID)
        mounts = self.mounts(spec, container, data)

        def local(value: str) -> str:
            for path, folder in sorted(mounts.items(), key=lambda kv: -len(kv[0])):
                value = value.replace(path, folder)
            return self.remap(value)

        env = {k: v.replace("/opt/venv", str(venv)) for k, v in image_env(image).items()}
        env["PYTHONPROFILEIMPORTTIME"] = "1"  # the import log: which modules a pod loads
        env["PATH"] = f"{venv}/bin:{os.environ['PATH']}"
        for setting in BAKED.keys() & env.keys():  # baked into the image by its build steps
            env[setting] = str(bake(self.venvs["llmops-models"], setting))
        env["LLMOPS_DATA_DIR"] = local(env["LLMOPS_DATA_DIR"])
        for ref in container.get("envFrom", []):
            env.update(
                {
                    k: local(v)
                    for k, v in self.configmaps[ref["configMapRef"]["name"]]["data"].items()
                }
            )
        for e in container.get("env", []):
            if "value" in e:
                env[e["name"]] = local(e["value"])
            else:
                key = e["valueFrom"]["secretKeyRef"]["key"]
                env[e["name"]] = (self.secret_dir / key).read_text().strip()
        # The container's port is its Service's: the local one.
        svc = next((s for s in self.services if s == name), None)
        port_names = [
            k
            for k in env
            if k.endswith("PORT")
            and env[k] == str(container.get("ports", [{}])[0].get("containerPort"))
        ]
        if svc:
            for k in port_names:
                env[k] = str(self.ports[svc])
        argv = [local(a) for a in expand(container["command"] + container.get("args", []), env)]
        pod = Pod(name, argv, env, data, self.root / f"{name}.log", self.ports.get(name))
        self.pods[name] = pod.start()
        return pod, container

    def probe(self, pod: Pod, probe: dict[str, Any], budget: float | None = None) -> float:
        """Polls a rendered httpGet probe until 200, within its own budget; the seconds taken."""
        assert probe["httpGet"]["port"] == "http"
        url = f"http://{self.host}:{pod.port}{probe['httpGet']['path']}"
        allowed = budget or probe["periodSeconds"] * probe["failureThreshold"]
        started = time.monotonic()
        pod.wait_http(url, timeout=allowed)
        return time.monotonic() - started


@pytest.fixture()
def chart_cluster(lean: Path, models: Path) -> Iterator[ChartCluster]:
    docs = documents(MINIMAL, *OVERRIDES)
    root = Path(tempfile.mkdtemp(prefix="llmops-chart-", dir="/dev/shm"))
    c = ChartCluster(docs, {"llmops": lean, "llmops-models": models}, root)
    try:
        yield c
    finally:
        for pod in c.pods.values():
            pod.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.timeout(900)
def test_the_minimal_chart_runs_as_processes_and_answers_an_ask(
    chart_cluster: ChartCluster,
) -> None:
    c = chart_cluster
    kinds = {d["metadata"]["name"]: d["kind"] for d in c.docs if pod_spec(d) is not None}
    assert sum(k in ("Deployment", "StatefulSet") for k in kinds.values()) == len(ORDER)
    qdrant = FakeQdrant(host="0.0.0.0")
    c.extra["qdrant"] = f"{c.host}:{qdrant.port}"
    with fresh_pg_database("llmops_chart") as db, fresh_pg_database("llmops_chart_mlflow") as mdb:
        try:
            for key, value in {
                "api-key-hashes": API_KEY_HASH,
                "service-api-key": API_KEY,
                "proxy-master-key": MASTER_KEY,
                "rag-proxy-key": MASTER_KEY,  # replaced by a virtual key below, before rag starts
                "llm-proxy-database-url": db,
                "feedback-database-url": db,
                "redis-url": REDIS_URL,
                "mlflow-backend-store-uri": mdb,
            }.items():
                c.secret(key, value)

            # 1. The migration Jobs: each exits 0 and says its revision.
            jobs = [d for d in c.docs if d["kind"] == "Job"]
            assert len(jobs) == 2
            for job in jobs:
                pod, _ = c.start(job)
                assert pod.wait(180) == 0, pod.logs()
                assert "at revision 0001 (postgresql)" in pod.logs(), pod.logs()

            # 2. Every workload, in the order a cluster would see them become ready.
            timings: dict[str, float] = {}
            rss: dict[str, int] = {}  # MiB resident after the ask, per pod
            for name in ORDER:
                doc = c.workload(name)
                pod, container = c.start(doc)
                timings[name] = c.probe(pod, container["startupProbe"])
                c.probe(pod, container["readinessProbe"], budget=120)
                c.probe(pod, container["livenessProbe"], budget=10)
                if name == "llm-proxy":  # the virtual key rag gets, made as docs/deploy.md says
                    r = httpx.post(
                        f"http://{c.host}:{pod.port}/admin/keys",
                        json={"name": "rag", "aliases": ["smollm2"]},
                        headers={"Authorization": f"Bearer {MASTER_KEY}"},
                    )
                    assert r.status_code in (200, 201), r.text
                    c.secret("rag-proxy-key", r.json()["key"])

            # 3. The helm test pod: every readiness URL, then one ask through rag.
            test_pod = next(d for d in c.docs if d["kind"] == "Pod")
            assert test_pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
            check, _ = c.start(test_pod)
            assert check.wait(300) == 0, check.logs()
            log = check.logs()
            assert log.count("ok  http://") == len(ORDER), log
            assert "answered" in log and "retrieval_unavailable" in log, log

            # The ask's interaction reached feedback's PostgreSQL through rag's outbox.
            deadline = time.monotonic() + 30
            while True:
                with psycopg.connect(db.replace("+psycopg", ""), autocommit=True) as conn:
                    n = conn.execute("SELECT count(*) FROM interactions").fetchone()
                if n and n[0] >= 1:
                    break
                assert time.monotonic() < deadline, c.pods[
                    c.workload("feedback")["metadata"]["name"]
                ].logs()[-3000:]
                time.sleep(0.3)
            for pod in c.pods.values():
                status = Path(f"/proc/{pod.proc.pid}/status")
                if pod.proc.poll() is None and status.exists():
                    kib = next(
                        int(x.split()[1])
                        for x in status.read_text().splitlines()
                        if x.startswith("VmRSS")
                    )
                    rss[pod.name.removeprefix("llmops-")] = kib // 1024
        finally:
            for pod in reversed(list(c.pods.values())):
                t0 = time.monotonic()
                code = pod.stop()
                print(f"stopped {pod.name}: {code} in {time.monotonic() - t0:.1f} s", flush=True)
                if pod.name in {
                    d["metadata"]["name"]
                    for d in c.docs
                    if d["kind"] in ("Deployment", "StatefulSet")
                }:
                    assert code in (0, -15), pod.logs()[-3000:]
            qdrant.stop()
    for name, pod in c.pods.items():
        assert "Read-only file system" not in pod.logs(), (name, pod.logs()[-3000:])
    # The services' own processes never imported the CLI (nor typer): `python -m services.X`.
    for name in ("retrieval", "llm-proxy", "feedback", "rag"):
        log = c.pods[f"llmops-{name}"].logs()
        assert "| services.common.server" in log, log[:2000]  # the import log is there
        assert "| services.cli" not in log and "| typer" not in log, name
    # local-llm loaded the GGUF the image's build step converted; rag's outbox was emptied
    # before it exited: nothing is left on its volume.
    # embeddings served the ONNX graph the image's build step exported, without importing torch.
    embeddings = c.pods["llmops-embeddings"].logs()
    assert '"backend": "onnx-fp32"' in embeddings or '"backend":"onnx-fp32"' in embeddings
    assert "| torch" not in embeddings and "| sentence_transformers" not in embeddings
    local_llm = c.pods["llmops-local-llm"].logs()
    assert '"origin": "cache"' in local_llm or '"origin":"cache"' in local_llm, local_llm[-3000:]
    assert not list((c.pods["llmops-rag"].cwd / "rag-outbox").glob("*.spool"))
    print(f"startup probe passed after (s): { ({k: round(v, 1) for k, v in timings.items()}) }")
    print(f"resident memory after one ask (MiB): {rss}")
