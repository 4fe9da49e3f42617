"""``kill -9`` under load loses nothing acknowledged: feedback killed while it takes writes, rag
killed while it answers asks, each restarted on the same volume (spool, outbox) and a new port.

Real processes on real PostgreSQL. Load threads read the service's current URL on every request
(:class:`Live`), so they follow it to its new port; a request sent while it is down is
unanswered (status 0), never acknowledged. Afterwards every write answered 2xx (for a streamed
ask: whose final ``rag.ask`` event arrived) is counted in PostgreSQL by its id: none missing,
none twice.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import psycopg
import pytest

from tests.conftest import API_KEY_HASH, ServiceProcess, auth_headers, fresh_pg_database
from tests.feedback.conftest import interaction
from tests.rag.platform import Platform, running_platform, set_reply
from tests.reliability.harness import (
    Outcome,
    SteadyLoad,
    ThreadClients,
    record,
    recovery_s,
    scaled,
    wait_until,
)

THREADS = 8
KILLS = int(scaled(2, 6))
LOAD_BETWEEN_S = scaled(2.0, 10.0)  # load on the live service before each kill, and at the end
REPLY = "Damaged items can be returned within 30 days [1]."


class Live:
    """The URL of the service's current life, read by the load on every request; a restart
    (``ServiceProcess`` picks a new port) moves it."""

    def __init__(self, svc: ServiceProcess) -> None:
        self.svc = svc
        self.url = svc.url
        self._clients = ThreadClients(headers=auth_headers())

    def client(self) -> httpx.Client:
        return self._clients.get()


@dataclass
class Kill:
    at: float  # SIGKILL sent
    restart: float  # the new process launched
    in_flight: int  # requests sent before the kill and answered after it (or never)
    acked_before: int  # acknowledged in the second before the kill


def _pg(url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"))


def _unanswered(exc: httpx.HTTPError) -> httpx.HTTPError:
    """A request the service could not answer (down, or killed mid-request): back off a little
    so refused connections don't starve the restart of CPU, then count it as status 0."""
    time.sleep(0.1)
    return exc


def _acked_since(load: SteadyLoad, since: float) -> bool:
    return any(o.acked and o.done >= since for o in list(load.outcomes))


def _kill_and_restart(
    load: SteadyLoad, live: Live, start: Callable[[], ServiceProcess], kills: int
) -> list[Kill]:
    """``kills`` times: the load runs on the live service, it is SIGKILLed (no shutdown hook,
    no flush), and a new process is started on the same volume; the load follows it."""
    done: list[Kill] = []
    for _ in range(kills):
        load.run_for(LOAD_BETWEEN_S)
        # Kill while writes are being acknowledged (a cold restart may still be warming up).
        wait_until(lambda: _acked_since(load, time.monotonic() - 0.5), 60, "writes acknowledged")
        killed = time.monotonic()
        os.kill(live.svc.proc.pid, signal.SIGKILL)
        live.svc.proc.wait()
        restart = time.monotonic()
        svc = start()
        live.svc, live.url = svc, svc.url
        svc.wait_ready(120)
        outcomes = list(load.outcomes)
        done.append(
            Kill(
                at=killed,
                restart=restart,
                in_flight=sum(1 for o in outcomes if o.sent < killed <= o.done),
                acked_before=sum(1 for o in outcomes if o.acked and killed - 1 <= o.done < killed),
            )
        )
    load.run_for(LOAD_BETWEEN_S)
    return done


def _check_faults(kills: list[Kill], outcomes: list[Outcome]) -> tuple[list[Outcome], float]:
    """The load really was writing when each kill came, and came back after each restart; the
    requests of the fault window (from the first kill on) and the slowest recovery."""
    for k in kills:
        assert k.in_flight >= 1, f"no request was in flight at the kill: {k}"
        assert k.acked_before >= 1, f"nothing was acknowledged just before the kill: {k}"
    recoveries = []
    for n, k in enumerate(kills):
        until = kills[n + 1].at if n + 1 < len(kills) else float("inf")
        recoveries.append(recovery_s([o for o in outcomes if o.sent < until], k.restart))
    assert all(r != float("inf") for r in recoveries), (
        f"no write acknowledged after a restart: {recoveries}"
    )
    window = [o for o in outcomes if o.done >= kills[0].at]
    assert sum(1 for o in window if o.status == 0) >= len(kills), "the kills went unnoticed"
    return window, max(recoveries)


# -- feedback ----------------------------------------------------------------------------------


def test_kill_9_of_feedback_under_writes_loses_no_acknowledged_write(
    service_factory: Any, tmp_path: Path
) -> None:
    with fresh_pg_database("llmops_crash_fb") as pg_url:
        env = {
            "ENV": "dev",
            "FEEDBACK_API_KEY_HASHES": API_KEY_HASH,
            "FEEDBACK_DATABASE_URL": pg_url,
            "FEEDBACK_SPOOL_DIR": str(tmp_path / "spool"),
            "FEEDBACK_PROBE_INTERVAL_S": "0.2",
        }

        def start() -> ServiceProcess:
            svc: ServiceProcess = service_factory("feedback", **env)
            return svc

        live = Live(start().wait_ready(120))
        seeds = [f"seed-{n}" for n in range(16)]
        with httpx.Client(base_url=live.url, headers=auth_headers(), timeout=30) as api:
            for sid in seeds:
                assert api.post("/v1/interactions", json=interaction(sid)).status_code == 201

        def call(n: int) -> tuple[int, bool, Any]:
            """Odd: a new interaction; even: a comment (unique text) on a seed interaction, half
            of them with an idempotency key, half with an id the service picks."""
            if n % 2:
                path, body, key = "/v1/interactions", interaction(f"crash-{n}"), f"crash-{n}"
            else:
                key = f"load-{n}"
                body = {"interaction_id": seeds[n % 16], "kind": "comment", "value": key}
                if n % 4 == 0:
                    body["idempotency_key"] = f"key-{n}"
                path = "/v1/feedback"
            try:
                r = live.client().post(f"{live.url}{path}", json=body)
            except httpx.HTTPError as exc:
                raise _unanswered(exc) from None
            return r.status_code, 200 <= r.status_code < 300, (path, key)

        with SteadyLoad(call, threads=THREADS) as load:
            kills = _kill_and_restart(load, live, start, KILLS)
        outcomes = load.outcomes
        window, recovery = _check_faults(kills, outcomes)

        def settled() -> bool:
            r = httpx.get(f"{live.url}/readyz", timeout=10).json()
            return bool(r["write_mode"] == "direct" and r["spool_depth"] == 0)

        wait_until(settled, 60, "feedback back to direct writes with an empty spool")
        with _pg(pg_url) as conn:
            inter = dict(
                conn.execute(
                    "SELECT id, count(*) FROM interactions WHERE id LIKE 'crash-%' GROUP BY id"
                ).fetchall()
            )
            comments = dict(
                conn.execute(
                    "SELECT value_text, count(*) FROM feedback WHERE kind = 'comment' "
                    "GROUP BY value_text"
                ).fetchall()
            )
        stored = {"/v1/interactions": inter, "/v1/feedback": comments}
        acked = [o.detail for o in outcomes if o.acked]
        lost = [d for d in acked if stored[d[0]].get(d[1], 0) == 0]
        twice = {k: c for table in stored.values() for k, c in table.items() if c > 1}
        record(
            fault=f"kill -9 of feedback ({KILLS} kills)",
            load=f"{THREADS} threads writing interactions and feedback",
            requests=len(window),
            acknowledged=sum(1 for o in window if o.acked),
            lost=len(lost),
            recovery=recovery,
            notes=f"restart on the same spool; {len(acked)} acknowledged in the whole run, all "
            "counted in PostgreSQL by id (feedback by its unique text)",
        )
        assert not lost, f"{len(lost)} acknowledged writes missing: {lost[:10]}"
        assert not twice, f"written more than once: {twice}"
        assert len(window) >= 50, "too few requests during the faults to mean anything"
        assert sum(1 for o in window if o.acked) >= 20, "too few writes acknowledged in the faults"


# -- rag ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rag_platform(
    service_factory: Any, embeddings: ServiceProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Platform]:
    """tests/rag's platform (embeddings, retrieval, the proxy over the fake upstream, feedback
    on PostgreSQL, whose rows the test counts)."""
    tmp = tmp_path_factory.mktemp("crash-rag")
    with running_platform(service_factory, embeddings, tmp, name="crash_rag") as platform:
        set_reply(platform.fake, REPLY)
        yield platform


def ask_call(live: Live) -> Callable[[int], tuple[int, bool, Any]]:
    """Every third ask streamed. A plain ask is acknowledged by its 2xx; a stream by its final
    ``rag.ask`` event (its 200 came before the answer existed)."""

    def call(n: int) -> tuple[int, bool, Any]:
        body = {"question": f"Can I return a damaged item? ({n})", "stream": n % 3 == 0}
        api = live.client()
        try:
            if not body["stream"]:
                r = api.post(f"{live.url}/v1/ask", json=body)
                ok = r.status_code == 200
                return r.status_code, ok, r.json()["interaction_id"] if ok else r.text[:200]
            final: dict[str, Any] | None = None
            with api.stream("POST", f"{live.url}/v1/ask", json=body) as r:
                if r.status_code != 200:
                    r.read()
                    return r.status_code, False, r.text[:200]
                for line in r.iter_lines():
                    if line.startswith("data: {"):
                        event = orjson.loads(line[6:])
                        if event.get("object") == "rag.ask":
                            final = event
                        elif "error" in event:
                            return 200, False, event
            if final is None:  # the stream ended without its answer: not acknowledged
                return 0, False, "stream cut before its final event"
            return 200, True, final["interaction_id"]
        except httpx.HTTPError as exc:
            raise _unanswered(exc) from None

    return call


def rag_missing(pg_url: str, ids: list[str]) -> tuple[list[str], dict[str, int]]:
    """Of ``ids``, those not in PostgreSQL; and any interaction stored more than once."""
    with _pg(pg_url) as conn:
        counts = dict(
            conn.execute(
                "SELECT id, count(*) FROM interactions WHERE id = ANY(%s) GROUP BY id", (ids,)
            ).fetchall()
        )
    return [i for i in ids if i not in counts], {i: c for i, c in counts.items() if c > 1}


def test_kill_9_of_rag_under_asks_loses_no_acknowledged_interaction(
    rag_platform: Platform, service_factory: Any, tmp_path: Path
) -> None:
    env = rag_platform.rag_env(tmp_path)

    def start() -> ServiceProcess:
        svc: ServiceProcess = service_factory("rag", **env)
        return svc

    live = Live(start().wait_ready(120))
    with SteadyLoad(ask_call(live), threads=THREADS) as load:
        kills = _kill_and_restart(load, live, start, KILLS)
    outcomes = load.outcomes
    window, recovery = _check_faults(kills, outcomes)
    acked = [str(o.detail) for o in outcomes if o.acked]
    # The last life sends its outbox (and what the killed ones left there) to feedback.
    wait_until(
        lambda: httpx.get(f"{live.url}/readyz", timeout=10).json()["outbox_depth"] == 0,
        90,
        "the rag outbox emptied into the feedback service",
    )
    missing, twice = rag_missing(rag_platform.database_url, acked)
    record(
        fault=f"kill -9 of rag ({KILLS} kills)",
        load=f"{THREADS} threads asking (1 in 3 streamed)",
        requests=len(window),
        acknowledged=sum(1 for o in window if o.acked),
        lost=len(missing),
        recovery=recovery,
        notes=f"restart on the same outbox; {len(acked)} asks acknowledged in the whole run, "
        "each interaction counted in PostgreSQL by id; an answer (a stream's final event) waits "
        "for its interaction's fsync in the outbox (group commit)",
    )
    assert not missing, f"{len(missing)} answered asks have no interaction: {missing[:10]}"
    assert not twice, f"interactions stored more than once: {twice}"
    assert sum(1 for o in window if o.acked) >= 3 * KILLS, "too few asks answered in the faults"
