"""Sequential latency client for ``bench/proxy.py``, run as its own process.

    python bench/_load.py latency --spec '<json>'

The spec names a reference target (``direct``, straight to the upstream) and one proxy target,
each ``{"url": ..., "headers": {...}, "body": {...}}``. Requests go one at a time over one
keep-alive connection per target, alternating reference/proxy (the order flips every pair so
neither side always goes first). Prints one JSON object with the latencies in milliseconds.

Mode ``latency`` times whole non-streaming requests; mode ``ttft`` sends streaming requests and
times the first content token (the first SSE event whose delta has non-empty ``content``), then
drains the stream.

A target's ``"vary_seed": true`` gives each of its requests another ``seed`` (so a response
cache always misses), and ``"count_header": NAME`` counts the values of that response header.
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import time
from typing import Any
from urllib.parse import urlsplit


class Target:
    def __init__(self, spec: dict[str, Any]) -> None:
        parts = urlsplit(spec["url"])
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.path = parts.path + (f"?{parts.query}" if parts.query else "")
        self.headers = {"Content-Type": "application/json", **spec.get("headers", {})}
        self.body = json.dumps(spec["body"]).encode()
        self.seeds = 0 if spec.get("vary_seed") else None
        self.header_samples: list[float] = []
        self.header_name: str | None = spec.get("overhead_header")
        self.count_header: str | None = spec.get("count_header")
        self.counted: dict[str, int] = {}
        self.errors = 0
        self.conn = self._connect()

    def _connect(self) -> http.client.HTTPConnection:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
        conn.connect()
        return conn

    def _send(self) -> http.client.HTTPResponse:
        body = self.body
        if self.seeds is not None:
            self.seeds += 1
            body = body[:-1] + b', "seed": ' + str(self.seeds).encode() + b"}"
        try:
            self.conn.request("POST", self.path, body=body, headers=self.headers)
            return self.conn.getresponse()
        except (http.client.HTTPException, OSError):
            self.conn.close()
            self.conn = self._connect()
            self.conn.request("POST", self.path, body=body, headers=self.headers)
            return self.conn.getresponse()

    def _note(self, resp: http.client.HTTPResponse) -> None:
        if resp.status != 200:
            self.errors += 1
        if self.header_name:
            value = resp.getheader(self.header_name)
            if value is not None:
                self.header_samples.append(float(value))
        if self.count_header:
            seen = resp.getheader(self.count_header) or "none"
            self.counted[seen] = self.counted.get(seen, 0) + 1

    def request(self) -> float:
        start = time.perf_counter()
        resp = self._send()
        resp.read()
        elapsed = time.perf_counter() - start
        self._note(resp)
        return elapsed * 1000.0

    def first_token(self) -> float:
        start = time.perf_counter()
        resp = self._send()
        first: float | None = None
        while True:
            line = resp.readline()
            if not line:
                break
            if first is None and line.startswith(b"data: {"):
                event = json.loads(line[6:])
                choices = event.get("choices") or [{}]
                if (choices[0].get("delta") or {}).get("content"):
                    first = time.perf_counter() - start
        self._note(resp)
        if first is None:
            self.errors += 1
            first = time.perf_counter() - start
        return first * 1000.0


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def summary(values: list[float]) -> dict[str, float]:
    return {
        "p50": round(percentile(values, 0.50), 3),
        "p90": round(percentile(values, 0.90), 3),
        "p99": round(percentile(values, 0.99), 3),
        "mean": round(sum(values) / len(values), 3) if values else float("nan"),
    }


def run(mode: str, spec: dict[str, Any]) -> dict[str, Any]:
    ref = Target(spec["direct"])
    proxy = Target(spec["proxy"])
    n = int(spec["n"])
    warmup = int(spec.get("warmup", 20))
    measure = Target.request if mode == "latency" else Target.first_token
    for _ in range(warmup):
        measure(ref)
        measure(proxy)
    ref.errors = proxy.errors = 0
    proxy.header_samples.clear()
    proxy.counted.clear()
    ref_ms: list[float] = []
    proxy_ms: list[float] = []
    paired: list[float] = []
    for i in range(n):
        if i % 2:
            a = measure(ref)
            b = measure(proxy)
        else:
            b = measure(proxy)
            a = measure(ref)
        ref_ms.append(a)
        proxy_ms.append(b)
        paired.append(b - a)
    out: dict[str, Any] = {
        "n": n,
        "direct_ms": summary(ref_ms),
        "proxy_ms": summary(proxy_ms),
        "paired_diff_ms": summary(paired),
        "errors_direct": ref.errors,
        "errors_proxy": proxy.errors,
    }
    if proxy.header_samples:
        out["proxy_header_ms"] = summary(proxy.header_samples)
    if proxy.count_header:
        out["proxy_header_counts"] = proxy.counted
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["latency", "ttft"])
    parser.add_argument("--spec", required=True, help="JSON: direct, proxy, n, warmup")
    args = parser.parse_args()
    result = run(args.mode, json.loads(args.spec))
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
