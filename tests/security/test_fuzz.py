"""Every operation of embeddings, retrieval and feedback fuzzed from its own OpenAPI document
by Schemathesis, against the real service processes: no 5xx, every response's status, content
type and body as documented (errors included: one JSON shape), schema-violating requests
refused, and 405s that list every allowed method.

``LLMOPS_FUZZ_EXAMPLES`` (default 10 per operation) sets the depth; the default keeps `make test`
in budget, a long run is e.g. ``LLMOPS_FUZZ_EXAMPLES=500 .venv/bin/pytest tests/security``.

One check is left out: ``positive_data_acceptance`` (ST202) fails any 4xx to a request the
schema allows, but some rules are not expressible in JSON Schema ("query or vector", a cursor
from an earlier page, a collection that must exist) and rightly answer 400 or 404.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import API_KEY, API_KEY_HASH, ServiceProcess
from tests.retrieval.conftest import retrieval_env

EXAMPLES = os.environ.get("LLMOPS_FUZZ_EXAMPLES", "10")
SKIPPED_CHECKS = "positive_data_acceptance"


def schemathesis(url: str, tmp_path: Path) -> tuple[subprocess.CompletedProcess[str], str]:
    binary = Path(sys.executable).parent / "schemathesis"
    assert binary.exists(), f"{binary} is missing: run `make setup` (make test does)"
    r = subprocess.run(
        [str(binary), "run", f"{url}/openapi.json", "-H", f"Authorization: Bearer {API_KEY}",
         "--max-examples", EXAMPLES, "--seed", "20261204", "--exclude-checks", SKIPPED_CHECKS,
         "--request-timeout", "30", "--no-color"],
        capture_output=True, text=True, timeout=280, cwd=tmp_path,
    )  # fmt: skip
    return r, r.stdout + r.stderr


def totals(out: str) -> tuple[int, int]:
    """(operations tested, test cases generated) from the summary."""
    ops = re.search(r"Tested:\s+(\d+)", out)
    cases = re.search(r"(\d+) generated", out)
    assert ops and cases, out[-3000:]
    return int(ops.group(1)), int(cases.group(1))


@pytest.fixture(scope="module")
def services(service_factory: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    data = tmp_path_factory.mktemp("fuzz")
    emb = service_factory("embeddings", EMBEDDINGS_API_KEY_HASHES=API_KEY_HASH)
    fb = service_factory(
        "feedback", FEEDBACK_API_KEY_HASHES=API_KEY_HASH, FEEDBACK_DATA_DIR=str(data / "fb")
    )
    emb.wait_ready()
    ret: ServiceProcess = service_factory("retrieval", **retrieval_env(emb.url, data / "q"))
    return {
        "embeddings": emb.url,
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
