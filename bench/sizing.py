"""Sizing: replicas and CPU requests per service for a given load, from the benchmarks' figures.

    .venv/bin/python bench/sizing.py --rag RAG.json --retrieval RETRIEVAL.json \
        --proxy PROXY.json [--asks-per-s 10 50 200 1000] [--docs-per-hour 20000] \
        [--chunks-per-doc 10] [--gateway-rps 0]

Each ``*.json`` file holds the last line a benchmark printed (``bench/X.py ... | tail -n 1 >
X.json``). Nothing is measured here: the figures are

- CPU per ask of each service (core-ms), from ``bench/rag.py`` at concurrency 16
  (``cpu_ms_per_ask_c16``): the whole ask through the real services, over the fake upstream,
  so the model's own compute is not in it;
- CPU per ingested chunk, from ``bench/retrieval.py``'s ingest through the services
  (``ingest_chunks_per_s`` of default-sized chunks, 200 tokens, with the whole ``cores`` of the
  machine counted against embeddings: an upper bound, retrieval's own share included);
- requests/s of one proxy worker on one core, from ``bench/proxy.py`` (``rps_ours``), for
  traffic that calls the gateway directly (``--gateway-rps``).

A service needs ``load x CPU per unit`` cores; a replica is given its CPU request and is kept at
``--target-util`` of it (headroom for bursts, a replica lost, the machine drift the benchmarks
show), and every service keeps at least ``--min-replicas`` for availability. The last line is a
JSON object; the table before it is what docs/benchmarks.md shows.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

SERVICES = ("rag", "retrieval", "embeddings", "llm-proxy", "feedback")
# The CPU request per replica the sizing assumes (cores), as the chart's production values set
# them (argocd/envs/production/values.yaml): embeddings computes on 2 threads.
REQUEST = {"rag": 0.5, "retrieval": 0.5, "embeddings": 2.0, "llm-proxy": 0.5, "feedback": 0.25}
# bench/rag.py names the proxy "proxy".
RAG_NAME = {"llm-proxy": "proxy"}


def last_json(path: Path) -> dict[str, Any]:
    lines = [ln for ln in path.read_text().splitlines() if ln.strip().startswith("{")]
    if not lines:
        raise SystemExit(f"{path}: no JSON line (save a benchmark's last line there)")
    data: dict[str, Any] = json.loads(lines[-1])
    return data


def size(
    rag: dict[str, Any],
    retrieval: dict[str, Any],
    proxy: dict[str, Any],
    asks: float,
    docs_per_hour: float,
    chunks_per_doc: float,
    gateway_rps: float,
    target: float,
    min_replicas: int,
) -> dict[str, Any]:
    per_ask = rag.get("cpu_ms_per_ask_c16")
    if not per_ask:
        raise SystemExit("the rag figures lack cpu_ms_per_ask_c16 (run bench/rag.py with load)")
    chunk_ms = 1000.0 * float(retrieval.get("cores") or 2) / float(retrieval["ingest_chunks_per_s"])
    chunks_per_s = docs_per_hour * chunks_per_doc / 3600.0
    rps_core = float(proxy["rps_ours"])
    out: dict[str, Any] = {}
    for svc in SERVICES:
        ask_ms = float(per_ask.get(RAG_NAME.get(svc, svc)) or 0.0)
        cores = asks * ask_ms / 1000.0
        if svc == "embeddings":
            cores += chunks_per_s * chunk_ms / 1000.0
        if svc == "llm-proxy":
            cores += gateway_rps / rps_core
        replicas = max(min_replicas, math.ceil(cores / (REQUEST[svc] * target)))
        out[svc] = {
            "cpu_ms_per_ask": round(ask_ms, 2),
            "cores_needed": round(cores, 2),
            "replicas": replicas,
            "cpu_request": REQUEST[svc],
        }
    out["_inputs"] = {
        "asks_per_s": asks,
        "docs_per_hour": docs_per_hour,
        "chunks_per_doc": chunks_per_doc,
        "gateway_rps": gateway_rps,
        "target_util": target,
        "embeddings_cpu_ms_per_chunk": round(chunk_ms, 2),
        "proxy_rps_per_core": rps_core,
    }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rag", type=Path, required=True)
    parser.add_argument("--retrieval", type=Path, required=True)
    parser.add_argument("--proxy", type=Path, required=True)
    parser.add_argument("--asks-per-s", type=float, nargs="+", default=[10.0, 50.0, 200.0, 1000.0])
    parser.add_argument("--docs-per-hour", type=float, default=20000.0)
    parser.add_argument("--chunks-per-doc", type=float, default=10.0)
    parser.add_argument("--gateway-rps", type=float, default=0.0)
    parser.add_argument("--target-util", type=float, default=0.6)
    parser.add_argument("--min-replicas", type=int, default=2)
    args = parser.parse_args()
    rag, ret, proxy = last_json(args.rag), last_json(args.retrieval), last_json(args.proxy)
    plans = {}
    for a in args.asks_per_s:
        plans[str(a)] = size(
            rag, ret, proxy, a, args.docs_per_hour, args.chunks_per_doc, args.gateway_rps,
            args.target_util, args.min_replicas,
        )  # fmt: skip
    head = " | ".join(f"{a} asks/s" for a in plans)
    print(f"| service (CPU request) | CPU per ask | {head} |")
    print("| --- | --- | " + " | ".join("---" for _ in plans) + " |")
    for svc in SERVICES:
        first = next(iter(plans.values()))[svc]
        cells = " | ".join(
            f"{p[svc]['replicas']} ({p[svc]['cores_needed']} cores)" for p in plans.values()
        )
        print(f"| {svc} ({first['cpu_request']:g}) | {first['cpu_ms_per_ask']} ms | {cells} |")
    print(json.dumps(plans))


if __name__ == "__main__":
    main()
