"""Benchmark: LiteLLM's proxy vs ours, in front of the same fake OpenAI-compatible upstream.

    .venv/bin/python bench/proxy.py [--quick] [--skip-litellm]

Everything runs on this machine: the fake upstream (``tests/fakes/openai_upstream.py``, one
process), LiteLLM's proxy (``litellm --num_workers 1``, installed pinned into its own venv under
``.bench/``), our proxy (``llmops serve llm-proxy --workers 1``, ENV=dev for its SQLite key
store, with a virtual key, Redis-backed shared limits, budgets and metrics on the hot path) and
the load generators, which are separate processes: ``wrk`` for throughput, ``bench/_load.py``
for sequential latency.

With two or more CPUs the proxy under test is pinned to the last CPU and the upstream and load
generators to the others, so the proxies get one core each, like one worker in production.
Throughput runs are interleaved (direct, LiteLLM, ours; order rotated each round) and medians are
reported. Progress goes to stderr; the last line on stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from _services import ROOT, free_port

LITELLM_VERSION = "1.106.10"
BENCH_DIR = ROOT / ".bench"
LITELLM_VENV = BENCH_DIR / "litellm-venv"
FAKE = ROOT / "tests" / "fakes" / "openai_upstream.py"
LOAD = Path(__file__).resolve().parent / "_load.py"
PROMPT = {"messages": [{"role": "user", "content": "Say hello"}], "max_tokens": 16}
NOTES: list[str] = []


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- LiteLLM install


def _venv_python() -> Path:
    return LITELLM_VENV / "bin" / "python"


def litellm_installed_version() -> str | None:
    if not (LITELLM_VENV / "bin" / "litellm").exists():
        return None
    code = (
        "import importlib.metadata as m, fastapi, uvicorn, orjson, backoff, apscheduler;"
        "print(m.version('litellm'))"
    )
    out = subprocess.run([str(_venv_python()), "-c", code], capture_output=True, text=True)
    return out.stdout.strip() if out.returncode == 0 else None


def _pip(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [str(_venv_python()), "-m", "pip", "--disable-pip-version-check", *args]
    return subprocess.run(cmd, capture_output=True, text=True)


def ensure_litellm() -> str:
    """Install ``litellm[proxy]==LITELLM_VERSION`` into its own venv once; returns its version.

    If pip cannot resolve the pinned extra as published (a dependency floor newer than any release
    the index has), the same requirement list is installed with only the unsatisfiable floors
    relaxed, then litellm itself with ``--no-deps``; each relaxation is reported in the notes.
    """
    marker = LITELLM_VENV / "relaxed-install-notes.txt"
    version = litellm_installed_version()
    if version == LITELLM_VERSION:
        if marker.exists():
            NOTES.extend(marker.read_text().splitlines())
        return version
    BENCH_DIR.mkdir(exist_ok=True)
    if not _venv_python().exists():
        log(f"creating {LITELLM_VENV}")
        subprocess.run([sys.executable, "-m", "venv", str(LITELLM_VENV)], check=True)
    log(f"installing litellm[proxy]=={LITELLM_VERSION} (takes a few minutes, once)")
    res = _pip("install", "--quiet", f"litellm[proxy]=={LITELLM_VERSION}")
    marker.unlink(missing_ok=True)
    if res.returncode != 0:
        log("pip could not resolve the pinned extra as published; relaxing unavailable floors")
        _install_litellm_relaxed(res.stderr)
        marker.write_text("".join(f"{note}\n" for note in NOTES))
    version = litellm_installed_version()
    if version != LITELLM_VERSION:
        raise SystemExit(f"litellm install failed (found {version!r}); see pip output above")
    return version


def _install_litellm_relaxed(first_error: str) -> None:
    from packaging.requirements import Requirement

    wheels = BENCH_DIR / "wheels"
    res = _pip("download", "--quiet", "--no-deps", f"litellm=={LITELLM_VERSION}", "-d", str(wheels))
    if res.returncode != 0:
        raise SystemExit(f"cannot download litellm=={LITELLM_VERSION}:\n{res.stderr}")
    wheel = next(wheels.glob(f"litellm-{LITELLM_VERSION}-*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        meta = zf.read(f"litellm-{LITELLM_VERSION}.dist-info/METADATA").decode()
    reqs: dict[str, str] = {}
    for line in meta.splitlines():
        if not line.startswith("Requires-Dist:"):
            continue
        req = Requirement(line.split(":", 1)[1].strip())
        marker = req.marker
        if marker is not None and not (
            marker.evaluate({"extra": "proxy"}) or marker.evaluate({"extra": ""})
        ):
            continue
        req.marker = None
        extras = f"[{','.join(sorted(req.extras))}]" if req.extras else ""
        reqs[req.name.lower()] = f"{req.name}{extras}{req.specifier}"
    error = first_error
    for _ in range(8):
        missing = re.search(r"No matching distribution found for ([^\s]+)", error)
        if missing:
            name = Requirement(missing.group(1)).name.lower()
            if name not in reqs or reqs[name] == name:
                break
            NOTES.append(
                f"litellm install: the index has no release satisfying {reqs[name]!r}; "
                f"installed the newest available {name} instead (litellm itself is the pinned "
                f"{LITELLM_VERSION}, deps from its own metadata)"
            )
            log(NOTES[-1])
            reqs[name] = name
        res = _pip("install", "--quiet", *reqs.values())
        if res.returncode == 0:
            break
        error = res.stderr
    else:
        raise SystemExit(f"cannot install litellm's dependencies:\n{error}")
    if res.returncode != 0:
        raise SystemExit(f"cannot install litellm's dependencies:\n{res.stderr}")
    res = _pip("install", "--quiet", "--no-deps", str(wheel))
    if res.returncode != 0:
        raise SystemExit(f"cannot install {wheel.name}:\n{res.stderr}")


# ----------------------------------------------------------------------------- processes


def cpu_sets(pin: bool) -> tuple[set[int] | None, set[int] | None]:
    """(CPUs for the proxy under test, CPUs for upstream + load generators), or no pinning."""
    cpus = sorted(os.sched_getaffinity(0))
    if not pin or len(cpus) < 2:
        return None, None
    return {cpus[-1]}, set(cpus[:-1])


def spawn(
    cmd: list[str], env: dict[str, str], log_path: Path, cpus: set[int] | None
) -> subprocess.Popen[bytes]:
    fh = open(log_path, "wb")  # noqa: SIM115 - handed to the child, closed when we exit

    def preexec() -> None:
        os.setsid()
        if cpus:
            os.sched_setaffinity(0, cpus)

    return subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT, preexec_fn=preexec
    )


def wait_ready(url: str, proc: subprocess.Popen[bytes], log_path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-4000:]
            raise SystemExit(f"{url} exited with {proc.returncode} before ready:\n{tail}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.25)
    tail = log_path.read_text(errors="replace")[-4000:]
    raise SystemExit(f"{url} not ready after {timeout:.0f}s:\n{tail}")


def terminate(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def base_env() -> dict[str, str]:
    drop = ("LLM_PROXY_", "LITELLM_", "DATABASE_URL", "PROMETHEUS_", "LLMOPS_", "OPENAI_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def rss_kb(pid: int, total: bool = False) -> int:
    """VmRSS of ``pid`` or, if it has children (a server wrapper), of its largest descendant;
    with ``total``, of the whole tree (a server with several worker processes)."""

    def children(p: int) -> list[int]:
        out = []
        for task in Path(f"/proc/{p}/task").iterdir():
            with contextlib.suppress(OSError):
                out += [int(c) for c in (task / "children").read_text().split()]
        return out

    def vmrss(p: int) -> int:
        for line in Path(f"/proc/{p}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    seen, todo = [], [pid]
    while todo:
        p = todo.pop()
        seen.append(p)
        with contextlib.suppress(OSError):
            todo += children(p)
    sizes = [vmrss(p) for p in seen]
    return sum(sizes) if total else max(sizes)


# ----------------------------------------------------------------------------- servers


class Servers:
    def __init__(self, workdir: Path, pin: bool) -> None:
        self.workdir = workdir
        self.proxy_cpus, self.other_cpus = cpu_sets(pin)
        self.procs: list[subprocess.Popen[bytes]] = []
        self.fake_url = ""
        self.litellm_url = ""
        self.ours_url = ""
        self.litellm_key = "sk-litellm-" + secrets.token_urlsafe(24)
        self.ours_key = ""
        self.ours_proc: subprocess.Popen[bytes] | None = None

    def close(self) -> None:
        for proc in reversed(self.procs):
            terminate(proc)

    def start_fake(self) -> None:
        port = free_port()
        log_path = self.workdir / "fake.log"
        cmd = [sys.executable, str(FAKE), "--port", str(port), "--name", "bench"]
        proc = spawn(cmd, base_env(), log_path, self.other_cpus)
        self.procs.append(proc)
        self.fake_url = f"http://127.0.0.1:{port}"
        wait_ready(f"{self.fake_url}/readyz", proc, log_path, 30)
        log(f"fake upstream ready at {self.fake_url}")

    def start_litellm(self) -> None:
        port = free_port()
        cfg = self.workdir / "litellm.yaml"
        cfg.write_text(
            "model_list:\n"
            "  - model_name: fake\n"
            "    litellm_params:\n"
            "      model: openai/fake-model\n"
            f"      api_base: {self.fake_url}/v1\n"
            "      api_key: fake\n"
            "litellm_settings:\n"
            "  telemetry: false\n"
            "general_settings:\n"
            f"  master_key: {self.litellm_key}\n"
        )
        env = base_env() | {
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "LITELLM_TELEMETRY": "False",
        }
        exe = str(LITELLM_VENV / "bin" / "litellm")
        cmd = [exe, "--config", str(cfg), "--host", "127.0.0.1", "--port", str(port)]
        cmd += ["--num_workers", "1"]
        log_path = self.workdir / "litellm.log"
        proc = spawn(cmd, env, log_path, self.proxy_cpus)
        self.procs.append(proc)
        self.litellm_url = f"http://127.0.0.1:{port}"
        wait_ready(f"{self.litellm_url}/health/liveliness", proc, log_path, 240)
        log(f"litellm ready at {self.litellm_url}")

    def start_ours(self) -> None:
        proc, url, key = self.launch_ours(1, self.proxy_cpus, "ours")
        self.ours_proc, self.ours_url, self.ours_key = proc, url, key

    def launch_ours(
        self, workers: int, cpus: set[int] | None, name: str
    ) -> tuple[subprocess.Popen[bytes], str, str]:
        """Our proxy with ``workers`` uvicorn workers, its own key store, one virtual key."""
        port = free_port()
        cfg = self.workdir / "routing.yaml"
        cfg.write_text(
            "deployments:\n"
            "  - name: fake-a\n"
            "    provider: openai\n"
            f"    api_base: {self.fake_url}/v1\n"
            "    model: fake-model\n"
            "    api_key_env: FAKE_UPSTREAM_KEY\n"
            "    timeout_s: 30\n"
            "    max_retries: 2\n"
            "    input_cost_per_1k: 0.0005\n"
            "    output_cost_per_1k: 0.0015\n"
            "  - name: fake-emb\n"
            f"    api_base: {self.fake_url}/v1\n"
            "    model: fake-embedding\n"
            "    mode: embeddings\n"
            "aliases:\n"
            "  fake:\n"
            "    strategy: weighted\n"
            "    deployments:\n"
            "      - deployment: fake-a\n"
            "        weight: 1\n"
            "        priority: 0\n"
            # The example config's rails, and the cache (each request of that run another seed:
            # it looks up, misses and stores): the whole cost of having them on.
            "  guarded:\n"
            "    deployments: [{deployment: fake-a}]\n"
            "    guardrails: [limits, pii, injection]\n"
            "    cache: {ttl_s: 600}\n"
            "  cached:\n"
            "    deployments: [{deployment: fake-a}]\n"
            "    cache: {ttl_s: 3600}\n"
            "  embed:\n"
            "    deployments: [{deployment: fake-emb}]\n"
            # Semantic routing over the fake's embeddings (instant): what the routing itself
            # adds, the embeddings call's HTTP hop included but not a real model's compute.
            "  routed:\n"
            "    strategy: semantic\n"
            "    routing:\n"
            "      embedding_alias: embed\n"
            "      default: fake\n"
            "      routes:\n"
            "        - {name: code, target: fake, examples: [fix my python code, sql join]}\n"
            "        - {name: chat, target: fake, examples: [hello there, thanks a lot]}\n"
            "guardrails:\n"
            "  limits: {type: size, action: block, max_chars: 32000, max_messages: 64}\n"
            "  pii: {type: pii, stages: [pre_call, post_call], action: redact}\n"
            "  injection: {type: prompt_injection, action: flag}\n"
        )
        master = "mk-" + secrets.token_urlsafe(32)
        env = base_env() | {
            # dev: the keys live in SQLite on this one machine, which production refuses.
            "ENV": "dev",
            "LLM_PROXY_MASTER_KEY": master,
            "LLM_PROXY_CONFIG_PATH": str(cfg),
            "LLM_PROXY_DATABASE_URL": f"sqlite:///{self.workdir}/{name}.db",
            "LLM_PROXY_REDIS_URL": "redis://127.0.0.1:6379/15",
            "FAKE_UPSTREAM_KEY": "fake",
        }
        exe = str(ROOT / ".venv" / "bin" / "llmops")
        if not Path(exe).exists():
            exe = shutil.which("llmops") or exe
        cmd = [exe, "serve", "llm-proxy", "--port", str(port), "--workers", str(workers)]
        log_path = self.workdir / f"{name}.log"
        proc = spawn(cmd, env, log_path, cpus)
        self.procs.append(proc)
        url = f"http://127.0.0.1:{port}"
        wait_ready(f"{url}/readyz", proc, log_path, 120)
        body = {
            "name": "bench",
            "aliases": ["fake", "guarded", "cached", "routed"],
            "rpm": 100_000_000,
            "tpm": 1_000_000_000,
            "max_budget_usd": 1_000_000,
        }
        resp = httpx.post(
            f"{url}/admin/keys",
            json=body,
            headers={"Authorization": f"Bearer {master}"},
            timeout=10,
        )
        if resp.status_code != 201:
            raise SystemExit(f"POST /admin/keys -> {resp.status_code}: {resp.text[:500]}")
        log(f"{name}: our proxy ({workers} worker(s)) ready at {url} (virtual key created)")
        return proc, url, str(resp.json()["key"])

    # Targets: (chat completions URL, headers, model name).
    def direct(self) -> tuple[str, dict[str, str], str]:
        return f"{self.fake_url}/v1/chat/completions", {}, "fake-model"

    def litellm(self) -> tuple[str, dict[str, str], str]:
        auth = {"Authorization": f"Bearer {self.litellm_key}"}
        return f"{self.litellm_url}/v1/chat/completions", auth, "fake"

    def ours(self, alias: str = "fake") -> tuple[str, dict[str, str], str]:
        auth = {"Authorization": f"Bearer {self.ours_key}"}
        return f"{self.ours_url}/v1/chat/completions", auth, alias


def smoke(name: str, target: tuple[str, dict[str, str], str], fake_url: str) -> None:
    """One plain and one streaming request; fail loudly if the path does not work."""
    url, headers, model = target
    resp = httpx.post(url, json={"model": model, **PROMPT}, headers=headers, timeout=30)
    if resp.status_code != 200 or "Hello from bench" not in resp.text:
        raise SystemExit(f"{name}: smoke request failed: {resp.status_code} {resp.text[:500]}")
    if name != "direct":
        seen = httpx.get(f"{fake_url}/_requests", timeout=5).json()[-1]
        if seen["headers"].get("authorization") != "Bearer fake":
            raise SystemExit(f"{name}: the upstream did not get its own key: {seen}")
    body = {"model": model, **PROMPT, "stream": True}
    with httpx.stream("POST", url, json=body, headers=headers, timeout=30) as stream:
        text = "".join(stream.iter_text())
    if stream.status_code != 200 or "tok0" not in text:
        raise SystemExit(f"{name}: smoke stream failed: {stream.status_code} {text[:500]}")


# ----------------------------------------------------------------------------- load


LUA = """
wrk.method = "POST"
wrk.body = {body}
wrk.headers["Content-Type"] = "application/json"
{headers}
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRKJSON {{\\"requests\\": %d, \\"duration_us\\": %d, \\"connect\\": %d, \\"read\\": %d, "
    .. "\\"write\\": %d, \\"status\\": %d, \\"timeout\\": %d, \\"p50_us\\": %d, "
    .. "\\"p99_us\\": %d}}\\n",
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


def lua_string(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def wrk(
    target: tuple[str, dict[str, str], str],
    *,
    connections: int,
    seconds: float,
    workdir: Path,
    cpus: set[int] | None,
) -> dict[str, Any]:
    url, headers, model = target
    body = json.dumps({"model": model, **PROMPT})
    hdrs = "\n".join(f"wrk.headers[{lua_string(k)}] = {lua_string(v)}" for k, v in headers.items())
    script = LUA.format(body=lua_string(body), headers=hdrs)
    path = workdir / f"wrk-{secrets.token_hex(4)}.lua"
    path.write_text(script)
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "30s"]
    cmd += ["-s", str(path), url]

    def preexec() -> None:
        if cpus:
            os.sched_setaffinity(0, cpus)

    out = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=preexec)
    path.unlink()
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("WRKJSON ")), None)
    if out.returncode != 0 or line is None:
        raise SystemExit(f"wrk failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    res: dict[str, Any] = json.loads(line[len("WRKJSON ") :])
    errors = res["connect"] + res["read"] + res["write"] + res["status"] + res["timeout"]
    ok = res["requests"] - res["status"] - res["timeout"]
    res["errors"] = errors
    res["rps"] = round(ok / (res["duration_us"] / 1e6), 1)
    if errors > 0.01 * max(res["requests"], 1):
        log(f"WARNING: {errors} errors in {res['requests']} requests to {url}: {res}")
    return res


def sequential(
    mode: str,
    direct: tuple[str, dict[str, str], str],
    proxy: tuple[str, dict[str, str], str],
    n: int,
    cpus: set[int] | None,
    extra: dict[str, Any] | None = None,
    proxy_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    stream = {"stream": True} if mode == "ttft" else {}
    more = extra or {}

    def spec(t: tuple[str, dict[str, str], str]) -> dict[str, Any]:
        url, headers, model = t
        return {
            "url": url,
            "headers": headers,
            "body": {"model": model, **PROMPT, **stream, **more},
            "overhead_header": "x-llmops-overhead-ms",
        }

    payload = {
        "direct": spec(direct),
        "proxy": {**spec(proxy), **(proxy_options or {})},
        "n": n,
        "warmup": min(50, n // 5),
    }

    def preexec() -> None:
        if cpus:
            os.sched_setaffinity(0, cpus)

    cmd = [sys.executable, str(LOAD), mode, "--spec", json.dumps(payload)]
    out = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=preexec)
    if out.returncode != 0:
        raise SystemExit(f"latency client failed:\n{out.stderr}")
    res: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    if res["errors_direct"] or res["errors_proxy"]:
        log(f"WARNING: errors in sequential {mode}: {res}")
    return res


def guarded_vs_cached(
    srv: Servers,
    targets: dict[str, tuple[str, dict[str, str], str]],
    result: dict[str, Any],
    n: int,
    cpus: set[int] | None,
) -> None:
    """The same sequential pairs through the alias with the example rails and a cache that
    always misses (each request another seed: lookup, call, store), and through one whose
    cache answers: a hit never reaches the upstream, so its total time is the figure."""
    deterministic = {"temperature": 0}
    counted = {"count_header": "x-llmops-cache"}
    log(f"sequential latency, guardrails + cache (miss) vs direct, {n} pairs")
    lat = sequential(
        "latency", targets["direct"], srv.ours("guarded"), n, cpus, deterministic,
        {**counted, "vary_seed": True},
    )  # fmt: skip
    result["guarded_cache_results"] = lat.get("proxy_header_counts")
    result["overhead_ms_p50_guarded"] = added(lat, "p50")
    result["overhead_ms_p99_guarded"] = added(lat, "p99")
    result["guarded_extra_ms_p50"] = round(
        result["overhead_ms_p50_guarded"] - result["overhead_ms_p50"], 3
    )
    log(f"  guarded: +{result['overhead_ms_p50_guarded']} ms p50")
    log(f"sequential latency, cache hits vs direct, {n} pairs")
    hits = sequential(
        "latency", targets["direct"], srv.ours("cached"), n, cpus, deterministic, counted
    )
    result["cached_cache_results"] = hits.get("proxy_header_counts")
    result["cache_hit_ms_p50"] = round(hits["proxy_ms"]["p50"], 3)
    result["cache_hit_ms_p99"] = round(hits["proxy_ms"]["p99"], 3)
    result["direct_ms_p50"] = round(hits["direct_ms"]["p50"], 3)
    log(f"  cache hit: {result['cache_hit_ms_p50']} ms p50 (upstream direct "
        f"{result['direct_ms_p50']} ms)")  # fmt: skip
    log(f"sequential latency, semantic routing vs direct, {n} pairs")
    routed = sequential("latency", targets["direct"], srv.ours("routed"), n, cpus)
    result["overhead_ms_p50_routed"] = added(routed, "p50")
    result["route_extra_ms_p50"] = round(
        result["overhead_ms_p50_routed"] - result["overhead_ms_p50"], 3
    )
    log(f"  routed: +{result['overhead_ms_p50_routed']} ms p50")


def ratio(a: float | None, b: float | None, digits: int = 4) -> float | None:
    return round(a / b, digits) if a is not None and b else None


def grow_rss(
    target: tuple[str, dict[str, str], str],
    pid: int,
    requests: int,
    rate: float,
    conc: int,
    workdir: Path,
    cpus: set[int] | None,
    total: bool,
) -> dict[str, Any]:
    """RSS of ``pid`` (its whole tree with ``total``) before and after ``requests`` requests,
    sent by wrk in chunks of at most 20 s."""
    before = rss_kb(pid, total)
    done, elapsed, samples = 0, 0.0, [round(before / 1024, 1)]
    while done < requests:
        seconds = min(20.0, max(1.0, (requests - done) / rate))
        res = wrk(target, connections=conc, seconds=seconds, workdir=workdir, cpus=cpus)
        done += res["requests"]
        elapsed += res["duration_us"] / 1e6
        rate = max(res["rps"], 1.0)
        samples.append(round(rss_kb(pid, total) / 1024, 1))
        log(f"  {done} requests, RSS {samples[-1]} MB")
    time.sleep(1.0)
    after = rss_kb(pid, total)
    return {
        "before_mb": round(before / 1024, 1),
        "after_mb": round(after / 1024, 1),
        "growth_mb": round((after - before) / 1024, 2),
        "samples": samples,
        "requests": done,
        "rps": round(done / elapsed, 1),
    }


def workers_series(
    srv: Servers,
    result: dict[str, Any],
    duration: float,
    rounds: int,
    conc: int,
    rss_requests: int,
    workdir: Path,
) -> None:
    """Requests/s of our proxy with 1 and 2 uvicorn workers, nothing pinned (a 2-worker proxy
    needs both cores, which it shares with wrk and the fake upstream here), interleaved rounds,
    medians; then the 2-worker proxy's RSS (all its processes) over ``rss_requests``."""
    instances = {}
    for workers in (1, 2):
        proc, url, key = srv.launch_ours(workers, None, f"ours-w{workers}")
        target = (f"{url}/v1/chat/completions", {"Authorization": f"Bearer {key}"}, "fake")
        smoke(f"ours-w{workers}", target, srv.fake_url)
        instances[workers] = (proc, target)
        wrk(target, connections=conc, seconds=2, workdir=workdir, cpus=None)
    runs: dict[int, list[float]] = {1: [], 2: []}
    for r in range(rounds):
        for workers in (1, 2) if r % 2 == 0 else (2, 1):
            try:
                res = wrk(
                    instances[workers][1], connections=conc, seconds=duration,
                    workdir=workdir, cpus=None,
                )  # fmt: skip
            except SystemExit:
                log((workdir / f"ours-w{workers}.log").read_text(errors="replace")[-4000:])
                raise
            runs[workers].append(res["rps"])
            log(f"round {r + 1}/{rounds} ours, {workers} worker(s), unpinned: {res['rps']} req/s "
                f"p99 {res['p99_us'] / 1000:.1f} ms errors {res['errors']}")  # fmt: skip
    one, two = statistics.median(runs[1]), statistics.median(runs[2])
    result["rps_workers_1"] = one
    result["rps_workers_2"] = two
    result["rps_workers_2_over_1"] = ratio(two, one, 2)
    result["workers_runs"] = {str(k): v for k, v in runs.items()}
    terminate(instances[1][0])
    log(f"RSS phase, 2 workers: {rss_requests} requests")
    grown = grow_rss(
        instances[2][1], instances[2][0].pid, rss_requests, two, conc, workdir, None, True
    )
    key = "rss_growth_mb_100k_workers_2" if rss_requests >= 100_000 else "rss_growth_mb_quick_w2"
    result[key] = grown["growth_mb"]
    result["rss_workers_2"] = grown
    terminate(instances[2][0])


def added(res: dict[str, Any], q: str) -> float:
    return round(res["proxy_ms"][q] - res["direct_ms"][q], 3)


@contextlib.contextmanager
def workspace() -> Iterator[Path]:
    keep = os.environ.get("BENCH_KEEP_TMP")
    path = Path(tempfile.mkdtemp(prefix="llmops-bench-proxy-"))
    try:
        yield path
    finally:
        if keep:
            log(f"kept {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)


# ----------------------------------------------------------------------------- main


def _on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(f"terminated by signal {signum}")


def main() -> None:
    parser = argparse.ArgumentParser(description="LiteLLM proxy vs ours, same fake upstream.")
    parser.add_argument("--quick", action="store_true", help="short runs, for a smoke test")
    parser.add_argument("--skip-litellm", action="store_true", help="don't install/run LiteLLM")
    parser.add_argument("--skip-ours", action="store_true", help="don't run our proxy")
    parser.add_argument("--no-pin", action="store_true", help="don't pin processes to CPUs")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--duration", type=float, default=None, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument(
        "--workers-series",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also measure our proxy with 1 and 2 workers, unpinned (default: on)",
    )
    args = parser.parse_args()

    if shutil.which("wrk") is None:
        raise SystemExit(
            "wrk is required for the throughput runs: install it with "
            "`apt-get install -y wrk` (Debian/Ubuntu) or `brew install wrk` (macOS)"
        )
    quick = args.quick
    duration = args.duration or (3.0 if quick else 15.0)
    rounds = args.rounds or (1 if quick else 3)
    n_ours = 200 if quick else 2000
    n_litellm = 50 if quick else 300
    n_ttft = 100 if quick else 500
    rss_requests = 10_000 if quick else 100_000
    conc = args.concurrency

    litellm_version = None
    if not args.skip_litellm:
        litellm_version = ensure_litellm()
        log(f"litellm {litellm_version} installed in {LITELLM_VENV}")

    signal.signal(signal.SIGTERM, _on_sigterm)
    load_start = round(os.getloadavg()[0], 2)
    with workspace() as workdir:
        srv = Servers(workdir, pin=not args.no_pin)
        try:
            result = run(
                srv,
                args,
                quick,
                duration,
                rounds,
                conc,
                n_ours,
                n_litellm,
                n_ttft,
                rss_requests,
                workdir,
            )
        finally:
            srv.close()
    result["loadavg_1m_start_end"] = [load_start, round(os.getloadavg()[0], 2)]
    result["cpus"] = os.cpu_count()
    result["litellm_version"] = litellm_version
    result["concurrency"] = conc
    result["duration_s"] = duration
    result["notes"] = NOTES
    print(json.dumps(result))


def run(
    srv: Servers,
    args: argparse.Namespace,
    quick: bool,
    duration: float,
    rounds: int,
    conc: int,
    n_ours: int,
    n_litellm: int,
    n_ttft: int,
    rss_requests: int,
    workdir: Path,
) -> dict[str, Any]:
    gen_cpus = srv.other_cpus
    if srv.proxy_cpus:
        NOTES.append(
            f"proxies pinned to CPU {sorted(srv.proxy_cpus)}; fake upstream and load generators "
            f"to CPU {sorted(gen_cpus or [])}"
        )
    srv.start_fake()
    targets: dict[str, tuple[str, dict[str, str], str]] = {"direct": srv.direct()}
    if not args.skip_litellm:
        srv.start_litellm()
        targets["litellm"] = srv.litellm()
        NOTES.append(
            "LiteLLM runs with its master key only (no database: its virtual keys, budgets and "
            "spend tracking need Postgres + Prisma, whose engine download is impossible offline)"
        )
    if not args.skip_ours:
        srv.start_ours()
        targets["ours"] = srv.ours()
    for name, target in targets.items():
        smoke(name, target, srv.fake_url)
    log(f"smoke requests ok for {', '.join(targets)}")

    # Throughput: warm each target, then interleaved rounds, medians.
    order = list(targets)
    for name in order:
        wrk(targets[name], connections=conc, seconds=2, workdir=workdir, cpus=gen_cpus)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in order}
    for r in range(rounds):
        rotated = order[r % len(order) :] + order[: r % len(order)]
        for name in rotated:
            res = wrk(
                targets[name], connections=conc, seconds=duration, workdir=workdir, cpus=gen_cpus
            )
            runs[name].append(res)
            log(
                f"round {r + 1}/{rounds} {name:8s} {res['rps']:9.1f} req/s  "
                f"p50 {res['p50_us'] / 1000:7.1f} ms  p99 {res['p99_us'] / 1000:7.1f} ms  "
                f"errors {res['errors']}"
            )
    rps = {name: statistics.median(x["rps"] for x in rs) for name, rs in runs.items()}
    result: dict[str, Any] = {
        "rps_litellm": rps.get("litellm"),
        "rps_ours": rps.get("ours"),
        "rps_direct": rps["direct"],
        "rps_ratio_vs_litellm": (
            round(rps["ours"] / rps["litellm"], 2) if "ours" in rps and "litellm" in rps else None
        ),
    }
    result["throughput_runs"] = {
        name: [
            {
                "rps": x["rps"],
                "p50_ms": x["p50_us"] / 1000,
                "p99_ms": x["p99_us"] / 1000,
                "errors": x["errors"],
            }
            for x in rs
        ]
        for name, rs in runs.items()
    }

    # Added latency at concurrency 1, interleaved with direct requests.
    if "ours" in targets:
        log(f"sequential latency, ours vs direct, {n_ours} pairs")
        lat = sequential("latency", targets["direct"], targets["ours"], n_ours, gen_cpus)
        result["overhead_ms_p50"] = added(lat, "p50")
        result["overhead_ms_p99"] = added(lat, "p99")
        result["latency_ours"] = lat
        log(f"  ours: +{result['overhead_ms_p50']} ms p50, +{result['overhead_ms_p99']} ms p99")
        log(f"sequential streaming TTFT, ours vs direct, {n_ttft} pairs")
        ttft = sequential("ttft", targets["direct"], targets["ours"], n_ttft, gen_cpus)
        result["stream_ttft_added_ms_p50"] = added(ttft, "p50")
        result["stream_ttft_added_ms_p99"] = added(ttft, "p99")
        result["ttft_ours"] = ttft
        log(f"  ours TTFT: +{result['stream_ttft_added_ms_p50']} ms p50")
        guarded_vs_cached(srv, targets, result, n_ours, gen_cpus)
    if "litellm" in targets:
        log(f"sequential latency, litellm vs direct, {n_litellm} pairs")
        lat = sequential("latency", targets["direct"], targets["litellm"], n_litellm, gen_cpus)
        result["litellm_overhead_ms_p50"] = added(lat, "p50")
        result["litellm_overhead_ms_p99"] = added(lat, "p99")
        result["latency_litellm"] = lat
        log(
            f"  litellm: +{result['litellm_overhead_ms_p50']} ms p50, "
            f"+{result['litellm_overhead_ms_p99']} ms p99"
        )
        ttft = sequential("ttft", targets["direct"], targets["litellm"], n_litellm, gen_cpus)
        result["litellm_stream_ttft_added_ms_p50"] = added(ttft, "p50")
        result["ttft_litellm"] = ttft
        log(f"  litellm TTFT: +{result['litellm_stream_ttft_added_ms_p50']} ms p50")
    if "ours" in targets and "litellm" in targets:
        # Target: ours <= 1/25 of LiteLLM's, i.e. a ratio <= 0.04.
        result["overhead_ratio_vs_litellm"] = ratio(
            result["overhead_ms_p50"], result["litellm_overhead_ms_p50"]
        )
        result["ttft_ratio_vs_litellm"] = ratio(
            result["stream_ttft_added_ms_p50"], result["litellm_stream_ttft_added_ms_p50"]
        )
        log(f"  added latency ratio ours/LiteLLM: {result['overhead_ratio_vs_litellm']} "
            f"(TTFT {result['ttft_ratio_vs_litellm']})")  # fmt: skip
    if "ours" in targets:
        result["overhead_p99_over_p50"] = ratio(
            result["overhead_ms_p99"], result["overhead_ms_p50"], 2
        )

    # Memory: our proxy's RSS before and after many requests (wrk in chunks until N are done).
    if "ours" in targets and srv.ours_proc is not None:
        log(f"RSS phase: {rss_requests} requests to ours")
        rate = max(result["rps_ours"] or 100.0, 1.0)
        grown = grow_rss(
            targets["ours"], srv.ours_proc.pid, rss_requests, rate, conc, workdir, gen_cpus, False
        )
        growth = grown["growth_mb"]
        result["rss_growth_mb_100k"] = growth if rss_requests >= 100_000 else None
        if rss_requests < 100_000:
            result["rss_growth_mb_quick"] = growth
        result["rss_mb_before"] = grown["before_mb"]
        result["rss_mb_after"] = grown["after_mb"]
        result["rss_mb_samples"] = grown["samples"]
        result["rss_requests"] = grown["requests"]
        result["rss_phase_rps"] = grown["rps"]
        log(f"  RSS after {grown['requests']} requests: {grown['after_mb']} MB (+{growth} MB)")
    if "ours" in targets and args.workers_series:
        workers_series(srv, result, duration, rounds, conc, rss_requests, workdir)
    stats = httpx.get(f"{srv.fake_url}/_stats", timeout=5).json()
    result["upstream_requests"] = stats["requests"]
    result["quick"] = quick
    return result


if __name__ == "__main__":
    main()
