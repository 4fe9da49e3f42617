"""Embedding models from MLflow's model registry (``EMBEDDINGS_MODEL_URI``).

At start the service resolves ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` to one
version, downloads that version's files into ``CACHE_DIR`` once (a restart reuses them) and
loads them like any local model directory, never with ``trust_remote_code``: no code from the
registry runs.

The registry must answer at every start, even when the files are cached: an alias may have
moved, and a version number alone does not name the same files in another (or a recreated)
registry. When it does not answer, or has no such version, there is no fallback to the packaged
model or to an older download: vectors from a different embedder would not match the ones
already indexed, and search would quietly return nonsense. The service stays unready (``/readyz``
503 with the reason) and asks again (see ``app.py``).

``llmops models register-embedder`` (``services/cli/models.py``) writes the versions: MLflow's
``sentence_transformers`` flavor holding the model directory byte for byte, tagged with the
files' content hash (checked here after every download) and the id the service answers to.

MLflow is imported only when a model is fetched: it takes seconds to import.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mlflow.exceptions import MlflowException

log = logging.getLogger("llmops.embeddings")

# Version tags written by `llmops models register-embedder`.
CONTENT_TAG = "llmops.content_sha256"
SERVED_NAME_TAG = "llmops.served_model_name"
SOURCE_TAG = "llmops.source"

FLAVOR = "sentence_transformers"
# Where that flavor keeps the model's files (mlflow.sentence_transformers'
# SENTENCE_TRANSFORMERS_DATA_PATH) when an MLmodel file does not say.
FLAVOR_DATA_DIR = "model.sentence_transformer"

ALIAS_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,255}$")
_URI = re.compile(r"^models:/(?P<name>[^/@\s]+)(?:@(?P<alias>[A-Za-z0-9_-]+)|/(?P<version>\d+))$")


@dataclass(frozen=True)
class ModelRef:
    name: str
    alias: str | None = None
    version: str | None = None


@dataclass(frozen=True)
class FetchedModel:
    path: Path  # the sentence-transformers directory
    served_name: str  # the version's SERVED_NAME_TAG, else the registered model's name
    source: str  # mlflow:models:/NAME/VERSION: the version actually served
    cached: bool


class RegistryError(Exception):
    """The registry did not answer, has no such version (yet), or sent files that do not match
    the version's hash: worth asking again, since an alias can be set and a registry come back.
    The message says what to do."""


def parse_model_uri(uri: str) -> ModelRef:
    m = _URI.match(uri.strip())
    if m is None:
        raise ValueError(
            f"EMBEDDINGS_MODEL_URI takes models:/NAME@ALIAS or models:/NAME/VERSION (e.g. "
            f"models:/embedder@production), got {uri!r}; stages and 'latest' are not accepted: "
            "point an alias at the version to serve"
        )
    return ModelRef(m["name"], m["alias"], m["version"])


def content_hash(model_dir: Path) -> str:
    """SHA-256 over every file's relative path, size and bytes: equal hashes, the same files.

    Recorded with each registered version: ``register-embedder`` skips registering files the
    latest version already holds, and the service checks every download against it.
    """
    files = [p for p in model_dir.rglob("*") if p.is_file()]
    digest = hashlib.sha256()
    for file in sorted(files, key=lambda p: p.relative_to(model_dir).as_posix()):
        digest.update(f"{file.relative_to(model_dir).as_posix()}\0{file.stat().st_size}\0".encode())
        with file.open("rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def configure_mlflow_env() -> None:
    """MLflow's process-wide settings, only where none are set: requests fail in seconds rather
    than after minutes of MLflow's own retries (the caller decides when to ask again), no
    telemetry, no progress bars."""
    for key, value in (
        ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0"),
        ("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0"),
        ("MLFLOW_HTTP_REQUEST_TIMEOUT", "30"),
        ("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false"),
        ("MLFLOW_DISABLE_TELEMETRY", "true"),
    ):
        os.environ.setdefault(key, value)


def fetch(uri: str, tracking_uri: str, cache_dir: Path) -> FetchedModel:
    """The version ``uri`` names, downloaded into ``cache_dir`` unless already there.

    Raises :class:`RegistryError` for what may change by itself (the registry is down, the
    alias not set yet) and ``ValueError`` for a version that is not a sentence-transformers
    model.
    """
    ref = parse_model_uri(uri)
    configure_mlflow_env()
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    # MLflow logs through its own stderr handler: through ours instead, as JSON.
    mlflow_log = logging.getLogger("mlflow")
    mlflow_log.handlers.clear()
    mlflow_log.propagate = True
    mlflow_log.setLevel(logging.WARNING)

    # Explicit URIs: never MLflow's process-global tracking or registry URI.
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    try:
        if ref.alias is not None:
            mv = client.get_model_version_by_alias(ref.name, ref.alias)
        else:
            mv = client.get_model_version(ref.name, str(ref.version))
    except MlflowException as exc:
        raise RegistryError(_explain(exc, uri, ref, tracking_uri)) from None
    version = str(mv.version)
    source = f"mlflow:models:/{ref.name}/{version}"
    if mv.status != "READY":
        raise RegistryError(f"{source} is {mv.status}, not READY, in {tracking_uri}")
    tags = dict(mv.tags or {})
    expected = tags.get(CONTENT_TAG)
    # Keyed by the version's storage location too: another registry's version 3 is not this.
    key = hashlib.sha256(f"{mv.source}\n{expected or ''}".encode()).hexdigest()[:12]
    safe_name = re.sub(r"[^A-Za-z0-9_.-]", "_", ref.name)[:80]
    target = cache_dir / "mlflow" / f"{safe_name}-{version}-{key}"
    cached = target.is_dir()
    if not cached:
        try:
            # Not models:/NAME/VERSION: MLflow resolves that with its process-global registry.
            location = client.get_model_version_download_uri(ref.name, version)
        except MlflowException as exc:
            raise RegistryError(_explain(exc, uri, ref, tracking_uri)) from None
        _download(location, tracking_uri, target, expected, source)
    return FetchedModel(
        path=model_dir(target, source),
        served_name=tags.get(SERVED_NAME_TAG) or ref.name,
        source=source,
        cached=cached,
    )


def model_dir(root: Path, source: str) -> Path:
    """The sentence-transformers directory inside a version's files: the flavor's data
    directory, or the root itself for a plain directory logged as artifacts."""
    path = root
    if (root / "MLmodel").is_file():
        from mlflow.models import Model

        flavors = Model.load(str(root / "MLmodel")).flavors
        if FLAVOR not in flavors:
            raise ValueError(
                f"{source} is not a sentence-transformers model (its flavors: "
                f"{', '.join(sorted(flavors))}); register one with "
                "`llmops models register-embedder`"
            )
        path = root / str(flavors.get("python_function", {}).get("data") or FLAVOR_DATA_DIR)
    if not (path / "modules.json").is_file():
        raise ValueError(f"{source} holds no sentence-transformers model (no modules.json)")
    return path


def _download(
    location: str, tracking_uri: str, target: Path, expected: str | None, source: str
) -> None:
    """Into a temporary sibling first, renamed into place once complete and checked: a
    directory in the cache is always a whole version, whatever worker or crash came before."""
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    log.info("downloading %s from %s", source, tracking_uri, extra={"cache": str(target)})
    try:
        try:
            got = mlflow.artifacts.download_artifacts(
                artifact_uri=location, dst_path=str(tmp), tracking_uri=tracking_uri
            )
        except (MlflowException, OSError) as exc:  # requests' errors are OSErrors
            raise RegistryError(
                f"downloading {source} from the MLflow registry at {tracking_uri} failed: "
                f"{_one_line(exc)}"
            ) from None
        root = Path(got).resolve()  # tmp/<last part of the location>
        if not root.is_dir() or not root.is_relative_to(tmp.resolve()):
            raise RegistryError(f"{source} was downloaded to {got}, not into {tmp}")
        if expected:
            got_hash = content_hash(model_dir(root, source))
            if got_hash != expected:
                raise RegistryError(
                    f"the files downloaded for {source} do not match its {CONTENT_TAG} tag "
                    f"(sha256 {got_hash[:12]}, tag {expected[:12]}): the stored files changed "
                    "or the download was cut; register the model again"
                )
        try:
            root.rename(target)
        except OSError:
            if not target.is_dir():
                raise
            # Another worker finished the same version first: use its copy.
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(getattr(exc, "message", exc)).split())


def _explain(exc: MlflowException, uri: str, ref: ModelRef, tracking_uri: str) -> str:
    message = _one_line(exc)
    if message.startswith("API request to "):  # MLflow's wording for "no answer"
        reason = re.search(r"\[Errno -?\d+\][^'\")]*", message) or re.search(
            r"[Tt]imed? ?out|Max retries exceeded|error code \d+", message
        )
        why = reason.group(0).strip() if reason else message
        return f"cannot reach the MLflow registry at {tracking_uri}: {why}"
    if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND", "INVALID_PARAMETER_VALUE"):
        detail = re.sub(r"^[A-Z_]+: ", "", message).rstrip(".")
        if ref.alias is None:
            hint = f"see the versions with `llmops models list --name {ref.name}`"
        else:
            hint = (
                "register the model with "
                f"`llmops models register-embedder --name {ref.name} --alias {ref.alias}`"
            )
        return f"{uri} is not in the MLflow registry at {tracking_uri}: {detail}; {hint}"
    return f"the MLflow registry at {tracking_uri} could not resolve {uri}: {message}"
