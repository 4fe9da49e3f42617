"""The registry the CLI tests of ``llmops prompts`` and ``llmops models`` talk to."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.rag.conftest import shared_mlflow_server


@pytest.fixture(scope="session")
def registry_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The session's ``mlflow server`` (the same process tests/rag uses)."""
    with shared_mlflow_server(tmp_path_factory) as server:
        yield server.url
