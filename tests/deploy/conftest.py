"""The images' installs, made once per run for every deploy test (tests/deploy/pods.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.deploy.pods import image_venv


@pytest.fixture(scope="session")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("images")


@pytest.fixture(scope="session")
def lean(wheels: Path) -> Path:
    """An install of exactly the ``llmops`` image's lock file (no torch)."""
    return image_venv("llmops", wheels)


@pytest.fixture(scope="session")
def models(wheels: Path) -> Path:
    """An install of exactly the ``llmops-models`` image's lock files."""
    return image_venv("llmops-models", wheels)
