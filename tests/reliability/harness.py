"""What every fault test of the reliability suite shares: a steady load from threads, the
outcome of each request, and the row each test adds to docs/reliability.md.

A row is printed (``pytest -s`` shows it) and, when ``LLMOPS_RELIABILITY_REPORT`` names a file,
appended to it as one JSON line; ``python -m tests.reliability.report`` (``make reliability``)
runs the suite that way and writes the tables.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson

REPORT_ENV = "LLMOPS_RELIABILITY_REPORT"
LONG_ENV = "LLMOPS_RELIABILITY_LONG"  # "1": the longer runs (more load, longer soak)


def long_mode() -> bool:
    return os.environ.get(LONG_ENV, "") == "1"


def scaled(short: float, long: float) -> float:
    """A duration or count: ``short`` in `make test`, ``long`` behind the flag."""
    return long if long_mode() else short


@dataclass
class Outcome:
    """One request of a load: when it was sent and answered, and whether it was acknowledged
    (the service answered 2xx, so what it carried must not be lost)."""

    n: int
    sent: float
    done: float
    status: int  # 0: no HTTP answer (connection refused or reset, timeout)
    acked: bool
    detail: Any = None  # what the test needs to check it later (an id, a body)


Call = Callable[[int], tuple[int, bool, Any]]  # request n -> (status, acknowledged, detail)


@dataclass
class SteadyLoad:
    """``threads`` workers calling ``call(n)`` in a loop (each waiting ``pause_s`` between its
    calls) until :meth:`stop`; an exception in ``call`` is an unanswered request (status 0)."""

    call: Call
    threads: int = 4
    pause_s: float = 0.0
    outcomes: list[Outcome] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._next = 0
        self._workers = [
            threading.Thread(target=self._run, daemon=True) for _ in range(self.threads)
        ]

    def _take(self) -> int:
        with self._lock:
            self._next += 1
            return self._next

    def _run(self) -> None:
        while not self._stop.is_set():
            n = self._take()
            sent = time.monotonic()
            try:
                status, acked, detail = self.call(n)
            except Exception as exc:  # an unanswered request is an outcome, not an error
                status, acked, detail = 0, False, repr(exc)
            with self._lock:
                self.outcomes.append(Outcome(n, sent, time.monotonic(), status, acked, detail))
            if self.pause_s:
                self._stop.wait(self.pause_s)

    def __enter__(self) -> SteadyLoad:
        for t in self._workers:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> list[Outcome]:
        self._stop.set()
        for t in self._workers:
            t.join(timeout=120)
        return self.outcomes

    def run_for(self, seconds: float) -> None:
        """Keep the load going for ``seconds`` (the caller's thread just waits)."""
        time.sleep(seconds)

    @property
    def acked(self) -> list[Outcome]:
        with self._lock:
            return [o for o in self.outcomes if o.acked]

    def count(self) -> int:
        with self._lock:
            return len(self.outcomes)


class ThreadClients:
    """One httpx client per load thread (a client's pool is not shared across threads), each
    made with the same arguments; :meth:`close` closes them all."""

    def __init__(self, **client_args: Any) -> None:
        self._args = {"timeout": 30, **client_args}
        self._local = threading.local()
        self._all: list[httpx.Client] = []
        self._lock = threading.Lock()

    def get(self) -> httpx.Client:
        client: httpx.Client | None = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = httpx.Client(**self._args)
            with self._lock:
                self._all.append(client)
        return client

    def close(self) -> None:
        with self._lock:
            for client in self._all:
                client.close()


def wait_until(cond: Callable[[], Any], timeout: float, what: str, every_s: float = 0.1) -> None:
    """Poll ``cond`` until it is true; a TimeoutError naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout} s")
        time.sleep(every_s)


def recovery_s(outcomes: list[Outcome], since: float) -> float:
    """Seconds from ``since`` (the fault's end: the restart, the dependency back) to the first
    acknowledged request sent after it; inf when none was."""
    after = [o.done for o in outcomes if o.acked and o.sent >= since]
    return (min(after) - since) if after else float("inf")


def record(
    *,
    fault: str,
    load: str,
    requests: int,
    acknowledged: int,
    lost: int | str,
    recovery: float | None,
    notes: str = "",
    table: str = "faults",
) -> dict[str, Any]:
    """Print a row of the report, and append it to ``$LLMOPS_RELIABILITY_REPORT`` if set.

    ``recovery`` is seconds (None where the fault has no end, e.g. a soak)."""
    row = {
        "table": table,
        "fault": fault,
        "load": load,
        "requests": requests,
        "acknowledged": acknowledged,
        "lost": lost,
        "recovery_s": None if recovery is None else round(recovery, 2),
        "notes": notes,
    }
    return _emit(row)


def record_row(table: str, **fields: Any) -> dict[str, Any]:
    """A row of another table of the report (fuzzing totals, the soak's RSS)."""
    return _emit({"table": table, **fields})


def _emit(row: dict[str, Any]) -> dict[str, Any]:
    print(f"RELIABILITY {orjson.dumps(row).decode()}")
    target = os.environ.get(REPORT_ENV)
    if target:
        with Path(target).open("ab") as f:
            f.write(orjson.dumps(row) + b"\n")
    return row


def rss_kb(pid: int) -> int:
    """Resident set size of a process and all its descendants (workers), in KiB."""
    total = 0
    for p in [pid, *_descendants(pid)]:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def _descendants(pid: int) -> list[int]:
    out: list[int] = []
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except FileNotFoundError:
        return out
    for c in children:
        out += [int(c), *_descendants(int(c))]
    return out
