"""The images' installs, made once per run for every deploy test (tests/deploy/pods.py)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.deploy.pods import image_venv, project_wheel


@pytest.fixture(scope="session")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("images")


@pytest.fixture(scope="session")
def image_installs(wheels: Path) -> dict[str, Path]:
    """Both images' installs, side by side: each pip is mostly one core busy unpacking, and a
    fresh clone pays about two minutes for the two one after the other."""
    project_wheel(wheels)  # once, before the two installs read it
    with ThreadPoolExecutor(2) as pool:
        made = {
            image: pool.submit(image_venv, image, wheels) for image in ("llmops", "llmops-models")
        }
        return {image: future.result() for image, future in made.items()}


@pytest.fixture(scope="session")
def lean(image_installs: dict[str, Path]) -> Path:
    """An install of exactly the ``llmops`` image's lock file (no torch)."""
    return image_installs["llmops"]


@pytest.fixture(scope="session")
def models(image_installs: dict[str, Path]) -> Path:
    """An install of exactly the ``llmops-models`` image's lock files."""
    return image_installs["llmops-models"]
