"""The rag prompt, from MLflow's prompt registry: cached, and served through registry outages.

Resolution order for a request: a fresh cached copy (younger than the TTL, no registry call);
else the registry (one fetch in flight per key); if the registry fails, the last copy ever
fetched for that key (flagged stale); for the alias with nothing fetched yet, the bundled file
(flagged unavailable). A version pinned by a caller is never swapped for a different text, so
a pinned version that was never fetched fails with :class:`PromptUnavailable` instead.

MLflow's client is synchronous and imported lazily (it takes seconds to import): calls run in a
worker thread and fail fast (see :func:`_fail_fast_http`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import re
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import PromptVersion

log = logging.getLogger("llmops.rag.registry")

Source = Literal["registry", "last-known-good", "bundled"]
STALE = "prompt_registry_stale"
UNAVAILABLE = "prompt_registry_unavailable"

# MLflow's variable syntax (mlflow.prompt.constants.PROMPT_TEMPLATE_VARIABLE_PATTERN), kept here
# so that rendering does not import MLflow.
_VARIABLE = re.compile(r"\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*(?:\.[a-zA-Z_][a-zA-Z0-9_]*)*)\s*\}\}")

# Longest pause before the registry is asked again after a failure (capped by the TTL).
_MAX_RETRY_AFTER_S = 5.0


class PromptNotFound(Exception):
    """The registry answered: no such prompt, version or alias. The message says what to do."""


class PromptUnavailable(Exception):
    """The registry cannot be reached and no copy of the requested version was ever fetched."""


@dataclass(frozen=True)
class ResolvedPrompt:
    name: str
    version: str | None  # None only for the bundled file
    template: str
    source: Source
    degraded: tuple[str, ...]

    def render(self, **variables: str) -> str:
        """Fill every ``{{ var }}`` in one pass.

        Not MLflow's ``PromptVersion.format``: it substitutes one variable after another, so a
        retrieved passage containing ``{{ question }}`` would itself be rewritten.
        """
        missing = sorted({m for m in _VARIABLE.findall(self.template) if m not in variables})
        if missing:
            raise ValueError(
                f"prompt '{self.name}' (version {self.version or 'bundled'}) needs "
                f"{', '.join(repr(m) for m in missing)}, which were not given"
            )
        return _VARIABLE.sub(lambda m: variables[m.group(1)], self.template)


@dataclass
class _Entry:
    prompt: ResolvedPrompt | None  # None: the registry said not found (cached like a hit)
    not_found: str | None  # that answer's message
    fetched_at: float  # monotonic


class _RegistryDown(Exception):
    """Connection refused, timeout, 5xx: anything that says nothing about the prompt itself."""


def _fail_fast_http(timeout_s: float) -> None:
    """Make MLflow's HTTP calls fail in about ``timeout_s`` instead of minutes.

    MLflow reads these from the process environment on every request
    (``mlflow.utils.rest_utils.http_request``) and has no per-client setting; its defaults (7
    retries, backoff factor 2, 120 s timeout) would hold a request for minutes against a down
    registry. They are set for the whole process, and only when unset, so an operator's values
    win. No retries: the registry's own TTL and back-off decide when to ask again.
    """
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(max(1, math.ceil(timeout_s))))


def _now_iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat()


class PromptRegistry:
    """One prompt name and alias of one MLflow registry; ``tracking_uri=None``: the bundled
    file only ("MLflow not configured", not a degraded mode)."""

    def __init__(
        self,
        tracking_uri: str | None,
        name: str,
        alias: str,
        ttl_s: float,
        bundled_path: Path,
        timeout_s: float = 5.0,
    ) -> None:
        if ttl_s <= 0 or timeout_s <= 0:
            raise ValueError(f"ttl_s and timeout_s must be positive (got {ttl_s}, {timeout_s})")
        try:
            bundled = Path(bundled_path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ValueError(f"the bundled prompt {bundled_path} cannot be read: {exc}") from exc
        if not bundled.strip():
            raise ValueError(f"the bundled prompt {bundled_path} is empty")
        self.tracking_uri = tracking_uri or None
        self.name = name
        self.alias = alias
        self.ttl_s = ttl_s
        self.timeout_s = timeout_s
        self._bundled = ResolvedPrompt(name, None, bundled, "bundled", ())
        self._entries: dict[str, _Entry] = {}
        self._inflight: dict[str, asyncio.Future[ResolvedPrompt]] = {}
        self._client: MlflowClient | None = None
        self._retry_at = 0.0  # monotonic: no registry call before this after a failure
        self._last_success: float | None = None
        self._last_error: str | None = None
        self._last_error_at: float | None = None
        self._last_source: Source | None = None
        self._errors = 0
        if self.tracking_uri:
            _fail_fast_http(timeout_s)

    async def get(self, version: str | None = None) -> ResolvedPrompt:
        """The alias's prompt (``version=None``) or a pinned version, per the module's rules."""
        if version is not None:
            version = version.strip()
            if not version.isdigit():
                raise PromptNotFound(
                    f"prompt versions are numbers (got {version!r}); list them with "
                    f"`llmops prompts list` or `llmops prompts show {self.name}`"
                )
        if self.tracking_uri is None:
            return self._served(self._bundled)
        key = f"@{self.alias}" if version is None else version
        cached = self._fresh(key)
        if cached is not None:
            return cached
        if time.monotonic() < self._retry_at:
            return self._fallback(key, version)
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.ensure_future(self._refresh(key, version))
            self._inflight[key] = task
            task.add_done_callback(lambda t: self._done(key, t))
        # Shielded: a caller that gives up must not cancel the fetch the others wait for.
        return await asyncio.shield(task)

    def status(self) -> dict[str, Any]:
        """For /readyz: where the prompt comes from and how the registry has been answering."""
        now = time.monotonic()
        cached = {
            key: {
                "version": e.prompt.version if e.prompt else None,
                "not_found": e.not_found is not None,
                "age_s": round(now - e.fetched_at, 3),
                "fresh": now - e.fetched_at < self.ttl_s,
            }
            for key, e in self._entries.items()
        }
        return {
            "name": self.name,
            "alias": self.alias,
            "registry": self.tracking_uri,
            "source": self._last_source,
            "last_success_at": _now_iso(self._last_success),
            "last_error": self._last_error,
            "last_error_at": _now_iso(self._last_error_at),
            "errors": self._errors,
            "retry_in_s": round(max(0.0, self._retry_at - now), 3),
            "cached": cached,
        }

    def _served(self, prompt: ResolvedPrompt) -> ResolvedPrompt:
        self._last_source = prompt.source
        return prompt

    def _fresh(self, key: str) -> ResolvedPrompt | None:
        entry = self._entries.get(key)
        if entry is None or time.monotonic() - entry.fetched_at >= self.ttl_s:
            return None
        if entry.not_found is not None:
            raise PromptNotFound(entry.not_found)
        assert entry.prompt is not None
        return self._served(entry.prompt)

    def bundled(self, *degraded: str) -> ResolvedPrompt:
        """The prompt shipped with the service, flagged with ``degraded``."""
        return self._served(replace(self._bundled, degraded=degraded))

    def _fallback(self, key: str, version: str | None) -> ResolvedPrompt:
        entry = self._entries.get(key)
        if entry is not None and entry.prompt is not None:
            return self._served(replace(entry.prompt, source="last-known-good", degraded=(STALE,)))
        if version is None:
            return self._served(replace(self._bundled, degraded=(UNAVAILABLE,)))
        raise PromptUnavailable(
            f"the prompt registry at {self.tracking_uri} is unreachable ({self._last_error}) and "
            f"version {version} of prompt '{self.name}' was never fetched; retry shortly, or "
            f"ask without a pinned version to get the '{self.alias}' prompt"
        )

    def _done(self, key: str, task: asyncio.Future[ResolvedPrompt]) -> None:
        self._inflight.pop(key, None)
        if not task.cancelled():
            task.exception()  # retrieved here, so an unawaited failure is not logged as lost

    async def _refresh(self, key: str, version: str | None) -> ResolvedPrompt:
        try:
            pv = await asyncio.to_thread(self._fetch, version)
        except PromptNotFound as exc:
            self._last_success = time.time()
            self._entries[key] = _Entry(None, str(exc), time.monotonic())
            raise
        except _RegistryDown as exc:
            self._last_error, self._last_error_at = str(exc), time.time()
            self._errors += 1
            self._retry_at = time.monotonic() + min(self.ttl_s, _MAX_RETRY_AFTER_S)
            log.warning(
                "prompt registry unreachable; serving a fallback",
                extra={"registry": self.tracking_uri, "key": key, "error": str(exc)},
            )
            return self._fallback(key, version)
        prompt = ResolvedPrompt(self.name, str(pv.version), str(pv.template), "registry", ())
        self._entries[key] = _Entry(prompt, None, time.monotonic())
        self._last_success = time.time()
        return self._served(prompt)

    def _fetch(self, version: str | None) -> PromptVersion:
        """One registry lookup (in a worker thread): the version, or a classified error."""
        from mlflow.exceptions import MlflowException

        what = f"alias '{self.alias}'" if version is None else f"version {version}"
        try:
            client = self._mlflow()
        except Exception as exc:  # e.g. a URI scheme MLflow has no store for: shown in status()
            raise _RegistryDown(f"cannot use {self.tracking_uri}: {exc}") from None
        try:
            # MLflow's decorators leave these untyped: the annotation restores the type.
            pv: PromptVersion | None
            if version is None:
                pv = client.get_prompt_version_by_alias(self.name, self.alias)
            else:
                pv = client.get_prompt_version(self.name, version)
        except MlflowException as exc:
            status = exc.get_http_status_code()  # type: ignore[no-untyped-call]
            if status in (400, 404):
                raise self._not_found(version, exc) from None
            raise _RegistryDown(f"{what} of '{self.name}': HTTP {status}: {exc.message}") from None
        except Exception as exc:
            raise _RegistryDown(f"{what} of '{self.name}': {type(exc).__name__}: {exc}") from None
        if pv is None:
            raise self._not_found(version, None)
        if not pv.is_text_prompt:
            raise PromptNotFound(
                f"prompt '{self.name}' {what} is a chat prompt; the rag service needs a text "
                f"template with {{{{ context }}}} and {{{{ question }}}}: push one with "
                f"`llmops prompts push FILE --name {self.name}`"
            )
        return pv

    def _not_found(self, version: str | None, exc: Exception | None) -> PromptNotFound:
        from mlflow.exceptions import MlflowException

        detail = f" (MLflow: {exc.message})" if isinstance(exc, MlflowException) else ""
        where = f"the registry at {self.tracking_uri}"
        no_prompt = isinstance(exc, MlflowException) and exc.error_code == "RESOURCE_DOES_NOT_EXIST"
        if version is None and no_prompt:
            return PromptNotFound(
                f"prompt '{self.name}' does not exist in {where}{detail}; push it with "
                f"`llmops prompts push FILE --name {self.name}` and promote it with "
                f"`llmops prompts promote {self.name} --version N --to {self.alias}`"
            )
        if version is None:
            return PromptNotFound(
                f"no version of prompt '{self.name}' has alias '{self.alias}' in {where}"
                f"{detail}; push one with `llmops prompts push` and promote it with "
                f"`llmops prompts promote {self.name} --version N --to {self.alias}`"
            )
        return PromptNotFound(
            f"prompt '{self.name}' has no version {version} in {where}{detail}; list its "
            f"versions with `llmops prompts list`"
        )

    def _mlflow(self) -> MlflowClient:
        if self._client is None:
            from mlflow import MlflowClient

            # Explicit URIs: never MLflow's process-global tracking or registry URI.
            self._client = MlflowClient(
                tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri
            )
        return self._client
