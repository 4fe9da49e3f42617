"""Every operation of the six services fuzzed from its own OpenAPI document by Schemathesis,
against the real service processes: no 5xx, every response's status, content type and body as
documented (errors included: one JSON shape; a stream's events included), schema-violating
requests refused, and 405s that list every allowed method.

embeddings, retrieval and feedback run on their own; rag, llm-proxy and local-llm with their
peers (see ``peers``). The proxy and local-llm parse nothing from a request that only names an
unknown model, and a generated name always is: fuzz_hooks.py gives most generated cases the
real one (a proxy alias, the served model, rag's collection), and the proxy's keys per path.

``LLMOPS_FUZZ_EXAMPLES`` (default 10 per operation) sets the depth; the default keeps `make test`
in budget, a long run is e.g. ``LLMOPS_FUZZ_EXAMPLES=500 .venv/bin/pytest tests/security``.

One check is left out: ``positive_data_acceptance`` (ST202) fails any 4xx to a request the
schema allows, but some rules are not expressible in JSON Schema ("query or vector", a cursor
from an earlier page, a collection that must exist, a top_k or max_tokens over a limit the
deployment sets, a prompt longer than the model's context) and rightly answer 400 or 404.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import API_KEY, API_KEY_HASH, ServiceProcess
from tests.llm_proxy.conftest import MASTER_KEY, FakeUpstream
from tests.rag.platform import Platform, start_retrieval
from tests.reliability.harness import record_row
from tests.retrieval.conftest import retrieval_env

EXAMPLES = os.environ.get("LLMOPS_FUZZ_EXAMPLES", "10")
SKIPPED_CHECKS = "positive_data_acceptance"
HOOKS = Path(__file__).with_name("fuzz_hooks.py")
LOCAL_MODEL = "smollm2-135m-instruct"
LOCAL_MAX_TOKENS = 4  # local-llm's limit a request, for the fuzz (see the platform's section)
# What the fuzz found in each service, and was fixed (docs/reliability.md's table).
FOUND = {
    "embeddings": '`add_special_tokens: "yes"` (or `1`) was taken for true: now a JSON boolean '
    "only, else 400",
    "retrieval": "a 405 listed only the first route's method in `Allow` (GET for a path that also "
    "takes DELETE): now every method",
    "feedback": "`?until=0.5` was read as 0.5 s after the epoch: the time filters take ISO 8601 "
    "only, else 400 naming the parameter",
    "rag": '`"stream": 0` (and `"top_k": true` or `"2"`) were coerced: an ask takes JSON '
    "types only, else 400; its stream (text/event-stream, each event) and its 429/502/504 are "
    "documented",
    "llm-proxy": "`input: [true]` to /v1/embeddings was a 500 (so was any non-string item, "
    "OpenAI's token ids `[1, 2]` included): the four OpenAI input forms are taken, anything else "
    "is a 400; a bad `max_tokens` beside a good `max_completion_tokens` was passed on unchecked; "
    "chat and embeddings documented no request body (every case was a bodiless 400), nor their "
    "stream and 429/502/504/4XX answers; `expires_at: -384` made a key (seconds since the epoch, "
    "found at 200 examples): ISO 8601 only, else 400",
    "local-llm": '`stream_options.include_usage: 0` (and `"stream": 0`, `"max_tokens": true` '
    'or `"2"`) were coerced: a chat request takes JSON types only, else 400; its stream, its '
    "429 and its non-empty `messages` are documented",
}


def schemathesis(
    url: str, tmp_path: Path, *, hooks: dict[str, Any] | None = None
) -> tuple[subprocess.CompletedProcess[str], str]:
    """One run over the service's own document; ``hooks`` are settings of fuzz_hooks.py (real
    names for most cases; keys per path, which replace the one key of ``-H``)."""
    binary = Path(sys.executable).parent / "schemathesis"
    assert binary.exists(), f"{binary} is missing: run `make setup` (make test does)"
    env = dict(os.environ)
    auth: list[str] = ["-H", f"Authorization: Bearer {API_KEY}"]
    if hooks is not None:
        env["SCHEMATHESIS_HOOKS"] = str(HOOKS)
        env.update({k: json.dumps(v) for k, v in hooks.items()})
        auth = [] if "LLMOPS_FUZZ_KEYS" in hooks else auth
    r = subprocess.run(
        [str(binary), "run", f"{url}/openapi.json", *auth,
         "--max-examples", EXAMPLES, "--seed", "20261204", "--exclude-checks", SKIPPED_CHECKS,
         "--request-timeout", "30", "--no-color"],
        capture_output=True, text=True, timeout=280, cwd=tmp_path, env=env,
    )  # fmt: skip
    return r, r.stdout + r.stderr


def totals(out: str) -> tuple[int, int]:
    """(operations tested, test cases generated) from the summary."""
    ops = re.search(r"Tested:\s+(\d+)", out)
    cases = re.search(r"(\d+) generated", out)
    assert ops and cases, out[-3000:]
    return int(ops.group(1)), int(cases.group(1))


@pytest.fixture(scope="module")
def local_llm_starting(service_factory: Any) -> Iterator[ServiceProcess]:
    """local-llm for ``peers``, started (not awaited) with the first services: its model loads
    while the first services are fuzzed. Bounded: see LOCAL_MAX_TOKENS. Stopped with the module
    (the model's memory is not kept for the rest of the session)."""
    llm: ServiceProcess = service_factory(
        "local-llm",
        LOCAL_LLM_API_KEY_HASHES=API_KEY_HASH,
        LOCAL_LLM_MAX_NEW_TOKENS_LIMIT=str(LOCAL_MAX_TOKENS),
        LOCAL_LLM_DEFAULT_MAX_TOKENS="1",
        LOCAL_LLM_CONTEXT_LENGTH="256",
    )
    yield llm
    llm.stop()


@pytest.fixture(scope="module")
def services(
    service_factory: Any,
    embeddings: ServiceProcess,
    local_llm_starting: ServiceProcess,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, str]:
    """Embeddings is the session's (other tests start it anyway), retrieval and feedback the
    module's own (and local-llm starts loading, for later)."""
    data = tmp_path_factory.mktemp("fuzz")
    fb = service_factory(
        "feedback", FEEDBACK_API_KEY_HASHES=API_KEY_HASH, FEEDBACK_DATA_DIR=str(data / "fb")
    )
    ret: ServiceProcess = service_factory("retrieval", **retrieval_env(embeddings.url, data / "q"))
    return {
        "embeddings": embeddings.url,
        "retrieval": ret.wait_ready().url,
        "feedback": fb.wait_ready().url,
    }


@pytest.mark.parametrize("name", ["embeddings", "retrieval", "feedback"])
def test_every_operation_holds_to_its_openapi_document(
    name: str, services: dict[str, str], tmp_path: Path
) -> None:
    r, out = schemathesis(services[name], tmp_path)
    ops, cases = totals(out)
    assert ops >= 4 and cases >= ops * 5, out[-3000:]  # it ran, over every operation
    assert r.returncode == 0 and f"{cases} generated, {cases} passed" in out, out[-6000:]
    assert "Server error" not in out and "ST101" not in out
    print(f"{name}: {ops} operations, {cases} cases, 0 failures")  # the report's figures
    record_row(
        "fuzz", service=name, operations=ops, cases=cases, server_errors=0,
        found_and_fixed=FOUND[name],
    )  # fmt: skip


# ---------------------------------------------------------------- rag, llm-proxy, local-llm
#
# Each as a real process with its peers: the proxy over the fake upstream (a chat and an
# embeddings alias), called with a virtual key (limits, a budget) on /v1 and the master key on
# /admin; rag over that proxy, a retrieval of its own (the handbook collection, on the session's
# embeddings) and the feedback above. rag runs without an MLflow registry: it serves its bundled
# prompt (the registry has tests of its own). local-llm is the real model, bounded so that a case
# takes a fraction of a second: at most LOCAL_MAX_TOKENS tokens a request (1 when none is
# asked), and a 256-token context (a longer prompt is a 400, never a long prefill).


@dataclass
class Peers:
    proxy: str
    proxy_key: str  # a virtual key with limits and a budget, for /v1
    rag: str
    local_llm: str


def _proxy_config(fake: FakeUpstream) -> dict[str, Any]:
    return {
        "deployments": [
            {"name": "fake", "api_base": fake.api_base, "model": "fake-model",
             "input_cost_per_1k": 0.5, "output_cost_per_1k": 1.5},
            {"name": "fake-emb", "api_base": fake.api_base, "model": "fake-emb",
             "mode": "embeddings", "input_cost_per_1k": 0.1},
        ],
        "aliases": {
            "smollm2": {"deployments": [{"deployment": "fake"}]},  # rag's default model
            "embed": {"deployments": [{"deployment": "fake-emb"}]},
        },
    }  # fmt: skip


@pytest.fixture(scope="module")
def peers(
    service_factory: Any,
    embeddings: ServiceProcess,
    services: dict[str, str],
    local_llm_starting: ServiceProcess,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Peers]:
    """The three services and what they call; the proxy starts while retrieval ingests."""
    tmp = tmp_path_factory.mktemp("fuzz-peers")
    fake = FakeUpstream("fuzz", tmp)
    config = tmp / "routing.yaml"
    config.write_text(yaml.safe_dump(_proxy_config(fake)))
    proxy: ServiceProcess = service_factory(
        "llm-proxy",
        LLM_PROXY_CONFIG_PATH=str(config),
        LLM_PROXY_MASTER_KEY=MASTER_KEY,
        LLM_PROXY_DATABASE_URL=f"sqlite:///{tmp}/proxy.db",
    )
    retrieval = start_retrieval(service_factory, embeddings, tmp)
    proxy.wait_ready(60)
    r = httpx.post(
        f"{proxy.url}/admin/keys",
        json={"name": "fuzz", "rpm": 100_000, "tpm": 10_000_000, "max_budget_usd": 1000},
        headers={"Authorization": f"Bearer {MASTER_KEY}"},
        timeout=30,
    )
    assert r.status_code == 201, r.text
    platform = Platform(retrieval, proxy, fake, services["feedback"])
    rag: ServiceProcess = service_factory("rag", **platform.rag_env(tmp)).wait_ready(60)
    yield Peers(proxy.url, r.json()["key"], rag.url, local_llm_starting.wait_ready(600).url)
    fake.stop()


def hooks_for(name: str, peers: Peers) -> dict[str, Any]:
    """fuzz_hooks.py's settings for a service: its keys per path, the names that exist."""
    if name == "llm-proxy":
        return {
            "LLMOPS_FUZZ_KEYS": {"/": peers.proxy_key, "/admin": MASTER_KEY},
            "LLMOPS_FUZZ_NAMES": {
                "/v1/chat/completions": {"model": "smollm2"},
                "/v1/embeddings": {"model": "embed"},
                "/v1/models/{model}": {"model": "smollm2"},
            },
        }
    if name == "local-llm":
        served = {"model": LOCAL_MODEL}
        return {"LLMOPS_FUZZ_NAMES": {"/v1/chat/completions": served, "/v1/models/{model}": served}}
    return {"LLMOPS_FUZZ_NAMES": {"/v1/ask": {"collection": "handbook"}}}


@pytest.mark.parametrize("name", ["rag", "llm-proxy", "local-llm"])
def test_every_operation_of_the_platform_holds_to_its_openapi_document(
    name: str, peers: Peers, tmp_path: Path
) -> None:
    url = {"rag": peers.rag, "llm-proxy": peers.proxy, "local-llm": peers.local_llm}[name]
    r, out = schemathesis(url, tmp_path, hooks=hooks_for(name, peers))
    ops, cases = totals(out)
    assert ops >= 4 and cases >= ops * 5, out[-3000:]
    assert r.returncode == 0 and f"{cases} generated, {cases} passed" in out, out[-6000:]
    assert "Server error" not in out and "ST101" not in out
    print(f"{name}: {ops} operations, {cases} cases, 0 failures")
    record_row(
        "fuzz", service=name, operations=ops, cases=cases, server_errors=0,
        found_and_fixed=FOUND[name],
    )  # fmt: skip
