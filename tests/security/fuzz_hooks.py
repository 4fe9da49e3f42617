"""Schemathesis hooks for tests/security/test_fuzz.py, loaded through ``SCHEMATHESIS_HOOKS`` by
the runs that need them (rag, the proxy, local-llm).

``LLMOPS_FUZZ_NAMES`` (JSON ``{operation path: {field: name}}``): a model or a collection is a
free string in the OpenAPI documents (an alias of the routing config, the one served model, a
collection that exists), so a generated one is nearly always unknown and answered 404 before the
handler reads anything else. Most generated cases get the real name instead, in the body or the
path (about one in four keeps its own), so they reach the rest of the handler: limits, the
upstream call, retrieval, generation, streaming.

``LLMOPS_FUZZ_KEYS`` (JSON ``{path prefix: key}``, longest prefix wins): the key each operation
is called with, e.g. the proxy's master key for ``/admin`` and a virtual key (with limits and a
budget) for ``/v1``, so authentication hides no handler.
"""

from __future__ import annotations

import json
import os
import zlib
from typing import Any

import schemathesis

NAMES: dict[str, dict[str, str]] = json.loads(os.environ.get("LLMOPS_FUZZ_NAMES", "{}"))
KEYS: dict[str, str] = json.loads(os.environ.get("LLMOPS_FUZZ_KEYS", "{}"))


def _real(name: Any) -> bool:
    """Whether a generated name gives way to the real one: an empty one always (the coverage
    phase's favourite), others three times in four, so unknown names are fuzzed too."""
    if not isinstance(name, str):
        return False  # a wrong type is what a negative case is about: kept
    return not name or zlib.crc32(name.encode("utf-8", "surrogatepass")) % 4 != 0


@schemathesis.hook
def map_case(context: Any, case: Any) -> Any:
    """``map_case`` rather than ``map_body``: the coverage phase applies only case hooks."""
    for field, name in NAMES.get(case.operation.path, {}).items():
        body, params = case.body, case.path_parameters
        if isinstance(body, dict) and _real(body.get(field)):
            case.body = {**body, field: name}
        if isinstance(params, dict) and _real(params.get(field)):
            case.path_parameters = {**params, field: name}
    return case


if KEYS:

    @schemathesis.auth(refresh_interval=None)
    class PathKeys:
        """The key of the longest prefix of the operation's path."""

        def get(self, case: Any, context: Any) -> str:
            path = case.operation.path
            prefix = max((p for p in KEYS if path.startswith(p)), key=len, default="")
            return KEYS[prefix]

        def set(self, case: Any, data: str, context: Any) -> None:
            case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}
