"""No Kubernetes cluster runs on our machines: a real HTTP server answering the few API calls
``llmops promote`` makes (an Argo CD Application, the Deployments and StatefulSets of a
namespace) from a scripted state, behind a bearer token, and a kubeconfig that points at it."""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import free_port

TOKEN = "scripted-cluster-token"


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code,
            "reason": reason, "message": message}  # fmt: skip


def application(name: str, images: list[str], *, sync: str = "Synced", health: str = "Healthy",
                phase: str | None = "Succeeded", message: str = "") -> dict[str, Any]:  # fmt: skip
    """An Argo CD Application object as the API returns it (the status fields we read)."""
    status: dict[str, Any] = {
        "sync": {"status": sync, "revisions": ["0123456789abcdef"]},
        "health": {"status": health, **({"message": message} if message else {})},
        "summary": {"images": images},
    }
    if phase:
        status["operationState"] = {"phase": phase, "message": message or "successfully synced"}
    meta = {"name": name, "namespace": "argocd"}
    return {"apiVersion": "argoproj.io/v1alpha1", "kind": "Application", "metadata": meta,
            "spec": {}, "status": status}  # fmt: skip


def deployment(name: str, replicas: int = 2, ready: int | None = None, generation: int = 3,
               observed: int | None = None) -> dict[str, Any]:  # fmt: skip
    ready = replicas if ready is None else ready
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "generation": generation},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}},
                              "spec": {"containers": [{"name": "c", "image": "x"}]}}},
        "status": {"replicas": replicas, "updatedReplicas": replicas, "readyReplicas": ready,
                   "availableReplicas": ready,
                   "observedGeneration": generation if observed is None else observed},
    }  # fmt: skip


def statefulset(
    name: str, replicas: int = 2, *, current: str = "r2", update: str = "r2"
) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": name, "generation": 2},
        "spec": {"replicas": replicas, "serviceName": name,
                 "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}},
                              "spec": {"containers": [{"name": "c", "image": "x"}]}}},
        "status": {"replicas": replicas, "updatedReplicas": replicas, "readyReplicas": replicas,
                   "availableReplicas": replicas, "observedGeneration": 2,
                   "currentRevision": current, "updateRevision": update},
    }  # fmt: skip


class FakeKubernetes:
    """The state a test scripts: ``applications[name]``, ``deployments[namespace]``,
    ``statefulsets[namespace]``; ``requests`` records each path asked for."""

    def __init__(self) -> None:
        self.applications: dict[str, dict[str, Any]] = {}
        self.deployments: dict[str, list[dict[str, Any]]] = {}
        self.statefulsets: dict[str, list[dict[str, Any]]] = {}
        self.requests: list[str] = []
        self.port = free_port()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, code: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                fake.requests.append(path)
                if self.headers.get("authorization") != f"Bearer {TOKEN}":
                    self._send(401, _status(401, "Unauthorized", "Unauthorized"))
                    return
                parts = path.strip("/").split("/")
                # /apis/argoproj.io/v1alpha1/namespaces/argocd/applications/<name>
                if parts[:3] == ["apis", "argoproj.io", "v1alpha1"] and parts[5:6] == [
                    "applications"
                ]:
                    app = fake.applications.get(parts[6] if len(parts) > 6 else "")
                    if app is None or parts[4] != "argocd":
                        self._send(404, _status(404, "NotFound", "applications not found"))
                    else:
                        self._send(200, copy.deepcopy(app))
                    return
                # /apis/apps/v1/namespaces/<ns>/deployments | statefulsets
                if parts[:3] == ["apis", "apps", "v1"] and len(parts) == 6:
                    store = {"deployments": fake.deployments, "statefulsets": fake.statefulsets}
                    if parts[5] in store:
                        items = store[parts[5]].get(parts[4], [])
                        kind = "DeploymentList" if parts[5] == "deployments" else "StatefulSetList"
                        self._send(200, {"apiVersion": "apps/v1", "kind": kind,
                                         "metadata": {}, "items": items})  # fmt: skip
                        return
                self._send(404, _status(404, "NotFound", f"{path} not found"))

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def kubeconfig(self, path: Path, server: str | None = None) -> Path:
        """A kubeconfig for this server (or ``server``, e.g. a closed port), token auth."""
        doc = {
            "apiVersion": "v1", "kind": "Config", "current-context": "scripted",
            "clusters": [{"name": "scripted", "cluster": {"server": server or self.url}}],
            "users": [{"name": "promoter", "user": {"token": TOKEN}}],
            "contexts": [{"name": "scripted",
                          "context": {"cluster": "scripted", "user": "promoter"}}],
        }  # fmt: skip
        path.write_text(yaml.safe_dump(doc), encoding="utf-8")
        return path


@contextmanager
def fake_kubernetes() -> Iterator[FakeKubernetes]:
    fake = FakeKubernetes()
    fake.thread.start()
    try:
        yield fake
    finally:
        fake.server.shutdown()
        fake.server.server_close()
