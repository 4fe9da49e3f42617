"""The NetworkPolicies of the production values, as a graph: every call the services make
(each URL the chart gives them, in settings, arguments, the routing file and the Secret's
files) is allowed by the rendered policies, and nothing else is.

A small evaluator of NetworkPolicy semantics (podSelector, namespaceSelector, ipBlock with
except, ports; a pod selected by no policy of a type is open for that type) runs over every
pair of endpoints: the release's pods, the cluster's DNS, the ingress controller, Prometheus,
a pod of another namespace, the external addresses below, on every port that appears.
Providers' and object stores' addresses are not fixed, so the policy can only say "public
addresses, port 443" for the proxy and MLflow: public addresses are compared as one
destination, the internet; private ones (the database, Redis) one by one.
"""

from __future__ import annotations

import ipaddress
import itertools
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from tests.deploy.chart import CHART, NAMESPACE, documents, pod_spec

PRODUCTION = CHART / "ci" / "production.yaml"
# What the Secret would hold (addresses inside production.yaml's CIDRs) and where outside
# hosts resolve: the evaluator needs addresses, the chart only names hosts.
SECRET = {
    "llm-proxy-database-url": "postgresql+psycopg://proxy@10.20.0.5:5432/llmops",
    "feedback-database-url": "postgresql+psycopg://feedback@10.20.0.5:5432/llmops",
    "mlflow-backend-store-uri": "postgresql+psycopg://mlflow@10.20.0.5:5432/mlflow",
    "redis-url": "redis://10.20.1.7:6379/0",
}
RESOLVE = {"api.openai.com": "203.0.113.10"}
POD_NET = "10.244.0.0/16"


@dataclass(frozen=True)
class Endpoint:
    name: str
    namespace: str = ""  # "" for an address outside the cluster
    labels: tuple[tuple[str, str], ...] = ()
    ip: str = ""

    def label_dict(self) -> dict[str, str]:
        return dict(self.labels)


def pod(name: str, namespace: str, labels: dict[str, str], n: int) -> Endpoint:
    return Endpoint(
        name, namespace, tuple(sorted(labels.items())), f"10.244.{n // 250}.{n % 250 + 2}"
    )


def external(ip: str) -> Endpoint:
    return Endpoint(ip, ip=ip)


@dataclass
class Cluster:
    docs: list[dict[str, Any]]
    pods: dict[str, Endpoint] = field(default_factory=dict)

    def policies(self) -> list[dict[str, Any]]:
        return [d for d in self.docs if d["kind"] == "NetworkPolicy"]


def _selects(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    if selector is None:
        return True
    assert set(selector) <= {"matchLabels"}, selector  # the chart uses matchLabels only
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def _peer_matches(peer: dict[str, Any], ep: Endpoint, policy_ns: str) -> bool:
    if "ipBlock" in peer:
        if not ep.ip or ep.namespace:  # pod addresses lie in POD_NET, which the except lists hold
            addr = ipaddress.ip_address(ep.ip) if ep.ip else None
        else:
            addr = ipaddress.ip_address(ep.ip)
        if addr is None:
            return False
        block = peer["ipBlock"]
        return addr in ipaddress.ip_network(block["cidr"]) and not any(
            addr in ipaddress.ip_network(e) for e in block.get("except", [])
        )
    if not ep.namespace:
        return False
    if "namespaceSelector" in peer:
        ns_labels = {"kubernetes.io/metadata.name": ep.namespace}
        if not _selects(peer["namespaceSelector"], ns_labels):
            return False
    elif ep.namespace != policy_ns:
        return False
    return _selects(peer.get("podSelector"), ep.label_dict())


def _ports_match(ports: list[dict[str, Any]] | None, port: int, proto: str) -> bool:
    if not ports:
        return True
    return any(p.get("port") in (None, port) and p.get("protocol", "TCP") == proto for p in ports)


def allowed(
    policies: list[dict[str, Any]], src: Endpoint, dst: Endpoint, port: int, proto: str
) -> bool:
    def side(ep: Endpoint, kind: str, other: Endpoint, key: str) -> bool:
        if not ep.namespace:
            return True  # outside the cluster: no policy applies
        chosen = [
            p for p in policies
            if p["metadata"]["namespace"] == ep.namespace
            and kind in p["spec"]["policyTypes"]
            and _selects(p["spec"]["podSelector"], ep.label_dict())
        ]  # fmt: skip
        if not chosen:
            return True
        for p in chosen:
            for rule in p["spec"].get(kind.lower(), []) or []:
                peers = rule.get(key)
                if (
                    peers is None
                    or any(_peer_matches(x, other, p["metadata"]["namespace"]) for x in peers)
                ) and _ports_match(rule.get("ports"), port, proto):
                    return True
        return False

    return side(src, "Egress", dst, "to") and side(dst, "Ingress", src, "from")


def _urls(text: str) -> list[str]:
    return re.findall(r"[a-z][a-z0-9+]*://[^\s'\",]+", text)


def test_the_policies_allow_exactly_the_calls_the_services_make() -> None:
    docs = documents(PRODUCTION)
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    assert len(policies) >= 8
    services = {
        d["metadata"]["name"]: d
        for d in docs
        if d["kind"] == "Service" and d["spec"].get("clusterIP") != "None"
    }
    configmaps = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}

    # The endpoints: one pod per workload of the release, and the world around it.
    pods: dict[str, Endpoint] = {}
    workloads = [d for d in docs if pod_spec(d) is not None]
    for n, w in enumerate(workloads):
        labels = (
            w["metadata"]["labels"]
            if w["kind"] == "Pod"
            else w["spec"]["template"]["metadata"]["labels"]
        )
        pods[w["metadata"]["name"]] = pod(w["metadata"]["name"], NAMESPACE, labels, n)
    dns = pod("kube-dns", "kube-system", {"k8s-app": "kube-dns"}, 900)
    ingress = pod(
        "ingress-nginx", "ingress-nginx", {"app.kubernetes.io/name": "ingress-nginx"}, 901
    )
    prometheus = pod("prometheus", "monitoring", {"app.kubernetes.io/name": "prometheus"}, 902)
    qdrant = pod("qdrant-0", "qdrant", {"app.kubernetes.io/name": "qdrant"}, 903)
    stranger = pod("stranger", "default", {"app": "other"}, 904)
    world = [dns, ingress, prometheus, qdrant, stranger]
    ips = {ip: external(ip) for ip in ["10.20.0.5", "10.20.1.7", *RESOLVE.values(), "198.51.100.9"]}

    def target(url: str) -> tuple[Endpoint, int] | None:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = (
            parts.port or {"https": 443, "http": 80}[parts.scheme]
            if parts.scheme in ("http", "https")
            else parts.port
        )
        assert port, url
        if host in services:
            svc = services[host]
            sel = svc["spec"]["selector"]
            dst = next(
                p
                for p in pods.values()
                if _selects({"matchLabels": sel}, p.label_dict()) and not p.name.endswith("-test")
            )
            return dst, port
        if host == "qdrant.qdrant.svc":
            return qdrant, port
        if host in RESOLVE:
            return ips[RESOLVE[host]], port
        return ips[host], port

    # The calls: every URL in each workload's settings, arguments, mounted files.
    expected: set[tuple[str, str, int, str]] = set()
    for w in workloads:
        src = pods[w["metadata"]["name"]]
        spec = pod_spec(w)
        assert spec is not None
        texts: list[str] = []
        for c in spec["containers"]:
            texts += [str(a) for a in c.get("command", []) + c.get("args", [])]
            for e in c.get("env", []):
                if "value" in e:
                    texts.append(e["value"])
                    key = e["value"].rsplit("/", 1)[-1]
                    if e["name"].endswith("_FILE") and key in SECRET:
                        texts.append(SECRET[key])
                else:
                    texts.append(SECRET[e["valueFrom"]["secretKeyRef"]["key"]])
            for ref in c.get("envFrom", []):
                texts += list(configmaps[ref["configMapRef"]["name"]]["data"].values())
        for v in spec.get("volumes", []):
            if "configMap" in v:
                texts += list(configmaps[v["configMap"]["name"]]["data"].values())
        for url in {u for t in texts for u in _urls(t)}:
            found = target(url)
            assert found, url
            expected.add((src.name, found[0].name, found[1], "TCP"))
        # DNS for every pod of the release; Prometheus and (for exposed ones) the ingress
        # controller to every service's port.
        expected |= {(src.name, dns.name, 53, "UDP"), (src.name, dns.name, 53, "TCP")}
    for svc in services.values():
        dst, port = target(f"http://{svc['metadata']['name']}:{svc['spec']['ports'][0]['port']}")  # type: ignore[misc]
        expected.add((prometheus.name, dst.name, port, "TCP"))
        if svc["metadata"]["name"].endswith(("-rag", "-llm-proxy")):
            expected.add((ingress.name, dst.name, port, "TCP"))

    # Some of it, spelled out (so the derivation above cannot hide a missing edge).
    names = {p.name.removeprefix("llmops-").removeprefix("llmops-"): p.name for p in pods.values()}
    calls = [("rag", "retrieval", 8002), ("rag", "llm-proxy", 8003), ("rag", "feedback", 8005),
             ("rag", "mlflow", 5000), ("retrieval", "embeddings", 8001)]  # fmt: skip
    for src, dst, port in calls:
        assert (names[src], names[dst], port, "TCP") in expected
    for src in ("llm-proxy", "feedback", "migrations-feedback", "migrations-llm-proxy", "mlflow"):
        assert (names[src], "10.20.0.5", 5432, "TCP") in expected, src
    assert (names["llm-proxy"], "10.20.1.7", 6379, "TCP") in expected
    assert (names["llm-proxy"], "203.0.113.10", 443, "TCP") in expected
    assert (names["retrieval"], "qdrant-0", 6333, "TCP") in expected

    # Every pair, every port seen anywhere, both protocols: allowed exactly when expected.
    endpoints = [*pods.values(), *world, *ips.values()]
    ports = sorted({e[2] for e in expected} | {22, 80, 8080})
    got = set()
    for src, dst in itertools.permutations(endpoints, 2):
        if not src.namespace and not dst.namespace:
            continue
        for port, proto in itertools.product(ports, ("TCP", "UDP")):
            if (src.namespace == NAMESPACE or dst.namespace == NAMESPACE) and allowed(
                policies, src, dst, port, proto
            ):
                got.add((src.name, dst.name, port, proto))

    def coarse(edges: set[tuple[str, str, int, str]]) -> set[tuple[str, str, int, str]]:
        public = {
            ip
            for ip in ips
            if not ipaddress.ip_address(ip).is_private
            or ip.startswith(("203.0.113.", "198.51.100."))
        }
        return {(s, "internet" if d in public else d, p, pr) for s, d, p, pr in edges}

    got, expected = coarse(got), coarse(expected)
    assert got - expected == set(), f"allowed but never called: {sorted(got - expected)}"
    assert expected - got == set(), f"called but refused: {sorted(expected - got)}"


def test_the_evaluator_refuses_what_a_default_deny_refuses() -> None:
    deny = yaml.safe_load(f"""
metadata: {{name: deny, namespace: {NAMESPACE}}}
spec: {{podSelector: {{}}, policyTypes: [Ingress, Egress]}}
""")
    a = pod("a", NAMESPACE, {"x": "1"}, 1)
    b = pod("b", NAMESPACE, {"x": "2"}, 2)
    assert allowed([], a, b, 80, "TCP")
    assert not allowed([deny], a, b, 80, "TCP")
    assert not allowed([deny], a, external("203.0.113.1"), 443, "TCP")
    assert allowed([deny], external("203.0.113.1"), pod("c", "other", {}, 3), 443, "TCP")


@pytest.mark.parametrize("values", [PRODUCTION])
def test_every_release_pod_is_under_the_default_deny(values: Any) -> None:
    docs = documents(values)
    deny = next(
        d
        for d in docs
        if d["kind"] == "NetworkPolicy" and d["metadata"]["name"].endswith("-default-deny")
    )
    for w in docs:
        if pod_spec(w) is not None:
            labels = (
                w["metadata"]["labels"]
                if w["kind"] == "Pod"
                else w["spec"]["template"]["metadata"]["labels"]
            )
            assert _selects(deny["spec"]["podSelector"], labels), w["metadata"]["name"]
