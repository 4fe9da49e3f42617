"""Feedback service: durable writes/s into PostgreSQL under 32 concurrent clients, p50/p99.

    .venv/bin/python bench/feedback.py [--duration 15] [--rounds 3] [--concurrency 32]
                                       [--no-workers-series]

What runs, all on this machine against the local PostgreSQL (127.0.0.1:5432, user postgres):

* a fresh database (dropped at the end, unless ``--keep-db``);
* **ours**: ``llmops serve feedback`` (one worker, ENV=production, API-key auth, metrics and
  access log on) with group commit at its default ``FEEDBACK_MAX_BATCH`` (512), loaded by
  ``wrk -t1 -cN --latency`` POSTing ``/v1/interactions``, each request with a unique id
  (a Lua ``request()`` function and a counter). A write counts once the service answered
  201/200, which it does only after the row's transaction committed in PostgreSQL;
* **ours, 2 workers** (``--workers-series``, the default): the same service started with
  ``--workers 2``, same load. Each worker process has its own group-commit task, engine and
  pool, spool segment (one file per pid, under one spool folder) and metrics files (the
  ``PROMETHEUS_MULTIPROC_DIR`` the script gives it, summed by ``/metrics``). The workers
  share one listening socket and the kernel spreads wrk's connections over them, not always
  evenly (one worker may take all 32): each round records ``connections_per_worker``, counted
  from /proc midway. What a second process on the same two cores buys;
* anchor **no group commit**: the same service with ``FEEDBACK_MAX_BATCH=1``, one transaction
  per HTTP write, same load: what group commit buys;
* anchor **pgbench**: PostgreSQL itself, no HTTP: ``pgbench -n -M prepared -c N -j 2`` running
  the same single-row ``INSERT ... ON CONFLICT (id) DO NOTHING RETURNING id`` into the same
  table, one commit per write: the most a service committing once per request could reach.
  Its p50/p99 come from pgbench's per-transaction log (``-l``).

Each target is warmed up, then measured in interleaved rounds (order rotated each round);
medians are reported and every round is kept in the JSON. Durability check in the same run:
wrk's script records the id of every 201/200 answer; after each service run those ids are
looked up in PostgreSQL, and the rows carrying the run's id prefix are counted. Every
acknowledged write must be there (rows >= acked: requests cut off when wrk stops may commit
unanswered). If one is missing the script prints its JSON line and exits 1. Each round also
records ``foreign_cpu_s``: CPU seconds other processes on the (shared) machine took meanwhile.
Progress goes to stderr; the last line on stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
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
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
from _services import ROOT, free_port, processes, stop_group

PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}
KEY = "sk-bench-feedback-" + secrets.token_urlsafe(16)
TARGET_WRITES_PER_S = 1000
# Summed over the rounds of a service target, as they are named in the last line.
SUMMED = ("errors", "spooled_202", "acked", "rows_in_db", "acked_missing_in_db")
BODY: dict[str, Any] = {
    "question": "What does the refund policy say about damaged items?",
    "answer": "Damaged items can be returned within 30 days for a full refund.",
    "model": "smollm2",
    "prompt_name": "rag-qa",
    "prompt_version": "7",
    "context_ids": ["doc-1#0", "doc-2#3"],
    "latency_ms": 412.5,
    "usage": {"prompt_tokens": 312, "completion_tokens": 18},
    "environment": "production",
}
TARGETS = ("ours", "workers_2", "no_group_commit", "pgbench")


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- database


def pg_connect(dbname: str) -> psycopg.Connection[Any]:
    return psycopg.connect(dbname=dbname, autocommit=True, **PG)  # type: ignore[arg-type]


@contextlib.contextmanager
def fresh_database(keep: bool) -> Iterator[str]:
    name = f"llmops_bench_feedback_{os.getpid()}_{secrets.token_hex(3)}"
    with pg_connect("postgres") as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    log(f"created database {name}")
    try:
        yield name
    finally:
        if keep:
            log(f"kept database {name}")
        else:
            with pg_connect("postgres") as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            log(f"dropped database {name}")


def count_rows(db: str, prefix: str) -> int:
    with pg_connect(db) as conn:
        row = conn.execute(
            "SELECT count(*) FROM interactions WHERE id LIKE %s", (prefix + "%",)
        ).fetchone()
    return int(row[0]) if row else 0


def missing_rows(db: str, ids: list[str]) -> int:
    """How many of ``ids`` have no row in ``interactions``."""
    with pg_connect(db) as conn:
        conn.execute("CREATE TEMP TABLE acked (id text PRIMARY KEY)")
        with conn.cursor().copy("COPY acked (id) FROM STDIN") as copy:
            for i in ids:
                copy.write_row((i,))
        row = conn.execute(
            "SELECT count(*) FROM acked a LEFT JOIN interactions i ON i.id = a.id "
            "WHERE i.id IS NULL"
        ).fetchone()
    return int(row[0]) if row else len(ids)


def pg_facts(db: str) -> dict[str, str]:
    with pg_connect(db) as conn:
        out = {}
        for name in ("server_version", "synchronous_commit", "fsync", "wal_sync_method"):
            row = conn.execute(f"SHOW {name}").fetchone()
            out[name] = str(row[0]) if row else "?"
    return out


# ----------------------------------------------------------------------------- the service


class Service:
    """``llmops serve feedback`` as its own process, its output in a log file."""

    def __init__(
        self, name: str, db: str, workdir: Path, extra: dict[str, str], workers: int = 1
    ) -> None:
        self.name = name
        self.workers = workers
        self.port = 0
        self.log_path = workdir / f"{name}.log"
        port = self.port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        drop = ("FEEDBACK_", "LANGFUSE_", "LLMOPS_", "PROMETHEUS_", "OTEL_")
        env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
        env |= {
            "ENV": "production",
            "FEEDBACK_AUTO_MIGRATE": "true",  # production leaves that to a migration Job
            "PYTHONUNBUFFERED": "1",
            "FEEDBACK_API_KEY_HASHES": hashlib.sha256(KEY.encode()).hexdigest(),
            "FEEDBACK_DATABASE_URL": f"postgresql+psycopg://postgres@127.0.0.1:5432/{db}",
            "FEEDBACK_SPOOL_DIR": str(workdir / f"spool-{name}"),
            "FEEDBACK_LOG_LEVEL": "WARNING",
            **extra,
        }
        if workers > 1:
            # ``llmops serve`` would make one under TMPDIR and leave it there; this one goes
            # with the work folder. Every worker writes its samples here, /metrics sums them.
            prom = workdir / f"prometheus-{name}"
            prom.mkdir()
            env["PROMETHEUS_MULTIPROC_DIR"] = str(prom)
        exe = ROOT / ".venv" / "bin" / "llmops"
        cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "services.cli.main"]
        cmd += ["serve", "feedback", "--port", str(port), "--workers", str(workers)]
        fh = open(self.log_path, "wb")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
        )
        fh.close()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"{name} exited with {self.proc.returncode}:\n{self.tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if (
                    httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200
                    and self._all_workers_up()
                ):
                    log(f"{name} ready at {self.url}")
                    return
            time.sleep(0.2)
        self.stop()
        raise SystemExit(f"{name} not ready after 120 s:\n{self.tail()}")

    def worker_pids(self) -> list[int]:
        """The processes that serve: uvicorn's spawned workers, or the one process."""
        if self.workers == 1:
            return [self.proc.pid]
        pids = []
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
                cmdline = Path(f"/proc/{entry.name}/cmdline").read_bytes()
            except (OSError, IndexError, ValueError):
                continue
            if ppid == self.proc.pid and b"multiprocessing.spawn" in cmdline:
                pids.append(int(entry.name))
        return sorted(pids)

    def connections(self, remote_port: int | None = None) -> list[int]:
        """Per worker, its established TCP connections: clients on the service's port, or (with
        ``remote_port``) its own connections to that port (PostgreSQL's)."""
        wanted: set[str] = set()
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            with contextlib.suppress(OSError), open(table) as fh:
                for line in fh.readlines()[1:]:
                    f = line.split()
                    local, remote = int(f[1].rsplit(":", 1)[1], 16), int(f[2].rsplit(":", 1)[1], 16)
                    port_ok = remote == remote_port if remote_port else local == self.port
                    if f[3] == "01" and port_ok:  # ESTABLISHED
                        wanted.add(f[9])
        out = []
        for pid in self.worker_pids():
            n = 0
            with contextlib.suppress(OSError):
                for fd in os.scandir(f"/proc/{pid}/fd"):
                    with contextlib.suppress(OSError):
                        link = os.readlink(fd.path)
                        n += link.startswith("socket:[") and link[8:-1] in wanted
            out.append(n)
        return out

    def _all_workers_up(self) -> bool:
        """With several workers, /readyz may be answered by the first one up: wait until each
        worker holds a PostgreSQL connection (its start-up opened one, kept in its pool)."""
        if self.workers == 1:
            return True
        per_worker = self.connections(remote_port=int(str(PG["port"])))
        return len(per_worker) == self.workers and all(per_worker)

    def tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        stop_group(self.proc, timeout=60)

    def batch_totals(self) -> tuple[float, float]:
        """(ops, transactions) so far, from ``llmops_feedback_commit_batch_size_{sum,count}``."""
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        found = {}
        for suffix in ("sum", "count"):
            m = re.search(
                rf"^llmops_feedback_commit_batch_size_{suffix}(?:\{{\}})? (\S+)$", text, re.M
            )
            if m is None:
                raise SystemExit(f"{self.name}: no commit batch metric in /metrics")
            found[suffix] = float(m.group(1))
        return found["sum"], found["count"]

    def smoke(self, tag: str) -> None:
        """One interaction (201), its replay (200) and a thumbs-up on it (201), or fail."""
        auth = {"Authorization": f"Bearer {KEY}"}
        body = {"id": f"{tag}-smoke", **BODY}
        with httpx.Client(base_url=self.url, headers=auth, timeout=30) as client:
            first = client.post("/v1/interactions", json=body)
            replay = client.post("/v1/interactions", json=body)
            fb = client.post(
                "/v1/feedback",
                json={"interaction_id": body["id"], "kind": "thumbs", "value": "up"},
            )
            anon = httpx.post(f"{self.url}/v1/interactions", json=body, timeout=30)
        got = (first.status_code, replay.status_code, fb.status_code, anon.status_code)
        if got != (201, 200, 201, 401):
            raise SystemExit(
                f"{self.name}: smoke writes answered {got}, expected (201, 200, 201, 401): "
                f"{first.text[:300]} {fb.text[:300]}"
            )


# ----------------------------------------------------------------------------- shared machine


class ForeignCPU:
    """CPU seconds taken during a run by processes that are not this benchmark's own tree (the
    services, wrk, pgbench) nor PostgreSQL's: other work on a shared machine. Sampled every
    0.5 s from /proc; processes that start and end between two samples are missed, so this is
    an indicator of interference, not an exact account."""

    TICK = os.sysconf("SC_CLK_TCK")

    def __init__(self) -> None:
        self.seconds = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> ForeignCPU:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @staticmethod
    def _snapshot() -> dict[int, tuple[int, str, int]]:
        """pid -> (ppid, comm, utime + stime in ticks)."""
        return {p.pid: (p.ppid, p.comm, p.cpu_ticks) for p in processes()}

    @staticmethod
    def _foreign(snap: dict[int, tuple[int, str, int]]) -> set[int]:
        mine, todo = set(), [os.getpid()]
        children: dict[int, list[int]] = {}
        for pid, (ppid, _, _) in snap.items():
            children.setdefault(ppid, []).append(pid)
        while todo:
            pid = todo.pop()
            mine.add(pid)
            todo += children.get(pid, [])
        return {p for p, (_, comm, _) in snap.items() if p not in mine and comm != "postgres"}

    def _loop(self) -> None:
        prev = self._snapshot()
        while not self._stop.wait(0.5):
            cur = self._snapshot()
            ticks = 0
            for pid in self._foreign(cur):
                before = prev[pid][2] if pid in prev else 0
                ticks += max(0, cur[pid][2] - before)
            self.seconds += ticks / self.TICK
            prev = cur


# ----------------------------------------------------------------------------- wrk


LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = {auth}
local HEAD = '{{"id":"'
local TAIL = {tail}
local TAG = {tag}
local ACKED = {acked}
local threads = {{}}

function setup(thread)
  thread:set("tid", #threads + 1)
  table.insert(threads, thread)
end

function init(args)
  counter = 0
  statuses = {{}}
  prefix = TAG .. "-t" .. tid .. "-"
  acked = io.open(ACKED .. "-t" .. tid .. ".txt", "w")
end

function request()
  counter = counter + 1
  return wrk.format(nil, nil, nil, HEAD .. prefix .. counter .. TAIL)
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  if status == 201 or status == 200 then
    acked:write((string.match(body, '"id":"([^"]+)"') or "?"), "\\n")
  end
end

function done(summary, latency, requests)
  local counts = {{}}
  for _, t in ipairs(threads) do
    for k, v in pairs(t:get("statuses")) do counts[k] = (counts[k] or 0) + v end
  end
  local parts = {{}}
  for k, v in pairs(counts) do table.insert(parts, string.format('"%d": %d', k, v)) end
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {{"requests": %d, "duration_us": %d, "connect": %d, "read": %d, "write": %d, '
    .. '"status": %d, "timeout": %d, "p50_us": %d, "p99_us": %d, "statuses": {{%s}}}}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), table.concat(parts, ", ")))
end
"""


def lua_string(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def run_wrk(url: str, tag: str, conc: int, seconds: int, workdir: Path) -> dict[str, Any]:
    tail = '",' + json.dumps(BODY, separators=(",", ":"))[1:]
    acked_base = workdir / f"acked-{tag}"
    script = LUA.format(
        auth=lua_string(f"Bearer {KEY}"),
        tail=lua_string(tail),
        tag=lua_string(tag),
        acked=lua_string(str(acked_base)),
    )
    path = workdir / f"wrk-{tag}.lua"
    path.write_text(script)
    cmd = ["wrk", "-t1", f"-c{conc}", f"-d{seconds}s", "--timeout", "30s", "--latency"]
    cmd += ["-s", str(path), f"{url}/v1/interactions"]
    out = subprocess.run(cmd, capture_output=True, text=True)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("WRKJSON ")), None)
    if out.returncode != 0 or line is None:
        raise SystemExit(f"wrk failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    raw: dict[str, Any] = json.loads(line[len("WRKJSON ") :])
    acked_ids: list[str] = []
    for f in sorted(workdir.glob(f"{acked_base.name}-t*.txt")):
        acked_ids += f.read_text().split()
        f.unlink()
    statuses = {int(k): v for k, v in raw["statuses"].items()}
    acked = statuses.get(201, 0) + statuses.get(200, 0)
    socket_errors = raw["connect"] + raw["read"] + raw["write"] + raw["timeout"]
    bad_status = sum(v for k, v in statuses.items() if k not in (200, 201))
    seconds_run = raw["duration_us"] / 1e6
    return {
        "writes_per_s": round(acked / seconds_run, 1),
        "latency_ms_p50": round(raw["p50_us"] / 1000, 2),
        "latency_ms_p99": round(raw["p99_us"] / 1000, 2),
        "requests": raw["requests"],
        "acked": acked,
        "spooled_202": statuses.get(202, 0),
        "errors": socket_errors + bad_status,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "socket_errors": {k: raw[k] for k in ("connect", "read", "write", "timeout")},
        "seconds": round(seconds_run, 2),
        "acked_ids": acked_ids,
    }


# ----------------------------------------------------------------------------- pgbench


def pgbench_script(workdir: Path) -> Path:
    """The row the service writes for BODY, as one prepared INSERT, one commit per write."""

    def lit(value: Any) -> str:
        return "'" + str(value).replace("'", "''") + "'"

    sql = (
        "\\set r random(1, 9000000000000000)\n"
        "INSERT INTO interactions (id, trace_id, created_at, received_at, model, prompt_name, "
        "prompt_version, question, context_ids, answer, latency_ms, prompt_tokens, "
        "completion_tokens, environment, request_hash) VALUES ("
        "'pg-r' || :run || '-c' || :client_id || '-' || :r, md5(:r::text), now(), now(), "
        f"{lit(BODY['model'])}, {lit(BODY['prompt_name'])}, {lit(BODY['prompt_version'])}, "
        f"{lit(BODY['question'])}, {lit(json.dumps(BODY['context_ids']))}, "
        f"{lit(BODY['answer'])}, {BODY['latency_ms']}, {BODY['usage']['prompt_tokens']}, "
        f"{BODY['usage']['completion_tokens']}, {lit(BODY['environment'])}, "
        "md5(:r::text) || md5(:client_id::text)) "
        "ON CONFLICT (id) DO NOTHING RETURNING id;\n"
    )
    path = workdir / "insert.sql"
    path.write_text(sql)
    return path


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    rank = max(0, min(len(sorted_values) - 1, round(q / 100 * len(sorted_values)) - 1))
    return sorted_values[rank]


def run_pgbench(
    db: str, script: Path, run: int, conc: int, seconds: int, workdir: Path
) -> dict[str, Any]:
    logdir = workdir / f"pgbench-{run}"
    logdir.mkdir()
    cmd = ["pgbench", "-n", "-M", "prepared", "-f", str(script), "-c", str(conc), "-j", "2"]
    cmd += ["-T", str(seconds), "-D", f"run={run}", "-l", "--log-prefix", str(logdir / "tx")]
    cmd += ["-h", PG["host"], "-p", str(PG["port"]), "-U", PG["user"], db]  # type: ignore[list-item]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=logdir)
    if out.returncode != 0:
        raise SystemExit(f"pgbench failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    tps = re.search(r"^tps = ([\d.]+) \(without initial connection time\)", out.stdout, re.M)
    done = re.search(r"^number of transactions actually processed: (\d+)", out.stdout, re.M)
    failed = re.search(r"^number of failed transactions: (\d+)", out.stdout, re.M)
    if tps is None or done is None:
        raise SystemExit(f"cannot parse pgbench output:\n{out.stdout}")
    lat_us: list[float] = []
    for f in logdir.iterdir():
        for ln in f.read_text().splitlines():
            parts = ln.split()
            if len(parts) >= 3 and parts[2].isdigit():  # client tx latency_us script epoch us
                lat_us.append(float(parts[2]))
    lat_us.sort()
    shutil.rmtree(logdir, ignore_errors=True)
    return {
        "writes_per_s": round(float(tps.group(1)), 1),
        "latency_ms_p50": round(percentile(lat_us, 50) / 1000, 2),
        "latency_ms_p99": round(percentile(lat_us, 99) / 1000, 2),
        "transactions": int(done.group(1)),
        "logged": len(lat_us),
        "errors": int(failed.group(1)) if failed else 0,
    }


# ----------------------------------------------------------------------------- main


def _on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(f"terminated by signal {signum}")


def median(runs: list[dict[str, Any]], key: str) -> float:
    return round(float(statistics.median(r[key] for r in runs)), 2)


def measure(args: argparse.Namespace, db: str, workdir: Path) -> tuple[dict[str, Any], list[str]]:
    conc, seconds, rounds = args.concurrency, args.duration, args.rounds
    targets = TARGETS if args.workers_series else tuple(t for t in TARGETS if t != "workers_2")
    failures: list[str] = []
    services: dict[str, Service] = {}
    try:
        services["ours"] = Service("ours", db, workdir, {})
        if "workers_2" in targets:
            services["workers_2"] = Service("workers_2", db, workdir, {}, workers=2)
        services["no_group_commit"] = Service(
            "no_group_commit", db, workdir, {"FEEDBACK_MAX_BATCH": "1"}
        )
        for name, svc in services.items():
            svc.smoke(name)
        log("smoke writes ok (201, replay 200, feedback 201, no key 401)")
        script = pgbench_script(workdir)

        log(f"warm-up: {args.warmup} s per target")
        for name, svc in services.items():
            run_wrk(svc.url, f"warm-{name}", conc, args.warmup, workdir)
        run_pgbench(db, script, 0, conc, args.warmup, workdir)

        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in targets}
        batches: dict[str, list[float]] = {name: [0.0, 0.0] for name in services}
        for r in range(1, rounds + 1):
            k = (r - 1) % len(targets)
            for name in targets[k:] + targets[:k]:
                foreign = ForeignCPU()
                if name == "pgbench":
                    with foreign:
                        res = run_pgbench(db, script, r, conc, seconds, workdir)
                    time.sleep(0.5)
                    res["rows_in_db"] = count_rows(db, f"pg-r{r}-")
                    if res["rows_in_db"] < res["transactions"]:
                        failures.append(f"round {r} pgbench: {res}")
                else:
                    svc = services[name]
                    before = svc.batch_totals()
                    tag = f"r{r}-{name}"
                    spread: list[list[int]] = []  # wrk's connections per worker, mid-run
                    sampler = threading.Timer(
                        seconds / 2, lambda s=svc, out=spread: out.append(s.connections())
                    )
                    if svc.workers > 1:
                        sampler.start()
                    with foreign:
                        res = run_wrk(svc.url, tag, conc, seconds, workdir)
                    sampler.cancel()
                    if svc.workers > 1:
                        res["connections_per_worker"] = spread[0] if spread else None
                    time.sleep(0.5)  # requests cut off by wrk's stop may still be committing
                    after = svc.batch_totals()
                    ops, tx = after[0] - before[0], after[1] - before[1]
                    batches[name][0] += ops
                    batches[name][1] += tx
                    res["avg_batch"] = round(ops / tx, 2) if tx else None
                    res["rows_in_db"] = count_rows(db, tag + "-")
                    ids = res.pop("acked_ids")
                    res["acked_missing_in_db"] = missing_rows(db, ids)
                    if res["acked"] > res["rows_in_db"] or res["acked_missing_in_db"]:
                        failures.append(
                            f"round {r} {name}: {res['acked']} writes acknowledged, "
                            f"{res['rows_in_db']} rows in PostgreSQL, "
                            f"{res['acked_missing_in_db']} acknowledged ids missing"
                        )
                    if len(ids) != res["acked"]:
                        failures.append(
                            f"round {r} {name}: {len(ids)} acknowledged ids recorded by wrk's "
                            f"script for {res['acked']} 201/200 answers"
                        )
                res["round"] = r
                res["target"] = name
                res["foreign_cpu_s"] = round(foreign.seconds, 1)
                runs[name].append(res)
                log(
                    f"round {r}/{rounds} {name:16s} {res['writes_per_s']:8.1f} writes/s  "
                    f"p50 {res['latency_ms_p50']:7.2f} ms  p99 {res['latency_ms_p99']:7.2f} ms  "
                    f"errors {res['errors']}  rows {res['rows_in_db']}  "
                    f"other CPU {res['foreign_cpu_s']} s"
                    + (
                        f"  acked {res['acked']}  avg batch {res['avg_batch']}"
                        if "acked" in res
                        else ""
                    )
                    + (
                        f"  connections per worker {res['connections_per_worker']}"
                        if "connections_per_worker" in res
                        else ""
                    )
                )
    finally:
        for svc in services.values():
            svc.stop()

    ours, nogc, pgb = runs["ours"], runs["no_group_commit"], runs["pgbench"]
    two = runs.get("workers_2", [])
    writes = median(ours, "writes_per_s")

    def avg_batch(name: str) -> float | None:
        ops, tx = batches[name]
        return round(ops / tx, 2) if tx else None

    def service(rows: list[dict[str, Any]], name: str, key: str) -> dict[str, Any]:
        """A service target's figures, each key named by ``key`` (``{}`` for the figure)."""
        return {
            key.format("writes_per_s"): median(rows, "writes_per_s"),
            key.format("latency_ms_p50"): median(rows, "latency_ms_p50"),
            key.format("latency_ms_p99"): median(rows, "latency_ms_p99"),
            **{key.format(f): sum(x[f] for x in rows) for f in SUMMED},
            key.format("avg_batch"): avg_batch(name),
        }

    result: dict[str, Any] = {
        **service(ours, "ours", "{}"),
        "durable": not failures,
        "target_writes_per_s": TARGET_WRITES_PER_S,
        "met_target": writes >= TARGET_WRITES_PER_S,
        **service(nogc, "no_group_commit", "no_group_commit_{}"),
        "pgbench_tps": median(pgb, "writes_per_s"),
        "pgbench_latency_ms_p50": median(pgb, "latency_ms_p50"),
        "pgbench_latency_ms_p99": median(pgb, "latency_ms_p99"),
        "pgbench_errors": sum(x["errors"] for x in pgb),
        "ratio_vs_no_group_commit": round(writes / median(nogc, "writes_per_s"), 2),
        "ratio_vs_pgbench": round(writes / median(pgb, "writes_per_s"), 2),
        "workers_series": bool(two),
    }
    if two:
        result |= service(two, "workers_2", "{}_workers_2")
        result["writes_workers_2_over_1"] = round(result["writes_per_s_workers_2"] / writes, 2)
        # How the kernel spread wrk's 32 connections over the two workers, per round (sampled
        # mid-run): one worker may get them all, then the second one idles.
        result["connections_per_worker_workers_2"] = [x.get("connections_per_worker") for x in two]
    result["foreign_cpu_s_max"] = max(x["foreign_cpu_s"] for x in ours + two + nogc + pgb)
    result["rounds"] = [
        x for r in range(rounds) for x in (ours[r], *two[r : r + 1], nogc[r], pgb[r])
    ]
    return result, failures


def main() -> None:
    parser = argparse.ArgumentParser(description="Durable writes/s of the feedback service.")
    parser.add_argument("--duration", type=int, default=15, help="seconds per measured run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=3, help="seconds of warm-up per target")
    parser.add_argument("--keep-db", action="store_true", help="don't drop the database")
    parser.add_argument(
        "--workers-series",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also measure the service with --workers 2 (in the same rounds)",
    )
    args = parser.parse_args()
    for tool in ("wrk", "pgbench"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is required (apt-get install -y wrk postgresql-client)")

    signal.signal(signal.SIGTERM, _on_sigterm)
    load_start = round(os.getloadavg()[0], 2)
    workdir = Path(tempfile.mkdtemp(prefix="llmops-bench-feedback-"))
    try:
        with fresh_database(args.keep_db) as db:
            facts = pg_facts(db)
            log(f"PostgreSQL {facts}")
            result, failures = measure(args, db, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    result["concurrency"] = args.concurrency
    result["duration_s"] = args.duration
    result["rounds_n"] = args.rounds
    result["cpus"] = os.cpu_count()
    result["postgres"] = facts
    result["loadavg_1m_start_end"] = [load_start, round(os.getloadavg()[0], 2)]
    for failure in failures:
        log(f"DURABILITY FAILURE: {failure}")
    print(json.dumps(result), flush=True)
    if failures:
        sys.exit(1)


if __name__ == "__main__":
    main()
