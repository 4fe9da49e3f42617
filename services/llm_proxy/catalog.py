"""The routing catalog: deployments and aliases from the YAML file, validated and hot-reloaded.

A bad edit to the file never takes the proxy down: the new version is rejected with a logged
reason (and a metric), the last good catalog keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from services.llm_proxy.guardrails import GuardrailSpec
from services.llm_proxy.query_routing import ComplexityRouting, SemanticRouting

log = logging.getLogger("llmops.llm_proxy.catalog")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Deployment(_Strict):
    """One upstream model endpoint: where it is, what it costs, how hard to try it."""

    name: str = Field(min_length=1)
    provider: Literal["openai"] = "openai"
    api_base: str = Field(min_length=1, description="e.g. http://vllm:8000/v1")
    model: str = Field(min_length=1, description="The model name the upstream expects.")
    mode: Literal["chat", "embeddings"] = "chat"
    api_key_env: str | None = None
    api_key_file: Path | None = None
    api_version: str | None = Field(
        None, description="Azure OpenAI: set it, with api_base the resource endpoint."
    )
    timeout_s: float = Field(60.0, gt=0)
    max_retries: int = Field(2, ge=0, le=10)
    rpm: int | None = Field(None, ge=1)
    tpm: int | None = Field(None, ge=1)
    input_cost_per_1k: float = Field(0.0, ge=0)
    output_cost_per_1k: float = Field(0.0, ge=0)
    headers: dict[str, str] = Field(default_factory=dict)
    structured_outputs: Literal["validate", "trust"] = Field(
        "validate",
        description="validate: the proxy checks response_format and tool arguments against "
        "their schemas (and repairs); trust: the upstream guarantees them (constrained decoding).",
    )

    @field_validator("api_base")
    @classmethod
    def _http(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("api_base must start with http:// or https://")
        return value.rstrip("/")

    def api_key(self) -> str | None:
        """Read at load (and reload) time, so a rotated Secret is picked up with the file."""
        if self.api_key_file is not None:
            return self.api_key_file.read_text(encoding="utf-8").strip()
        if self.api_key_env:
            value = os.environ.get(self.api_key_env)
            if value is None:
                raise ValueError(
                    f"deployment {self.name!r}: environment variable {self.api_key_env} is not set"
                )
            return value
        return None

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        return (input_tokens * self.input_cost_per_1k + output_tokens * self.output_cost_per_1k) / (
            1000.0
        )


class AliasTarget(_Strict):
    deployment: str
    weight: float = Field(1.0, gt=0)
    priority: int = Field(0, ge=0, description="Lower is tried first; higher ones are fallbacks.")


class SemanticCache(_Strict):
    """Also serve a stored answer to a paraphrase: off unless configured (false hits)."""

    embedding_alias: str
    threshold: float = Field(0.95, gt=0, le=1)
    max_entries: int = Field(1000, ge=1, description="Per tenant and alias; oldest go first.")


class CacheOptions(_Strict):
    """The response cache of an alias: exact (Redis, per tenant), optionally semantic."""

    ttl_s: float = Field(600.0, gt=0)
    charge_hits: bool = Field(
        False, description="Charge a cached answer's tokens to the key's spend as if fresh."
    )
    semantic: SemanticCache | None = None


class StructuredOptions(_Strict):
    max_repairs: int = Field(
        2, ge=0, le=5, description="Retries with the validation error fed back, then a 502."
    )


class Alias(_Strict):
    """What clients send as ``model``: a set of deployments and a strategy to choose among them,
    or (``semantic``, ``complexity``) a rule that hands each request to another alias."""

    strategy: Literal["weighted", "least-latency", "lowest-cost", "semantic", "complexity"] = (
        "weighted"
    )
    deployments: list[AliasTarget] = Field(default_factory=list)
    fallbacks: list[str] = Field(default_factory=list, description="Aliases tried next, in order.")
    routing: SemanticRouting | ComplexityRouting | None = None
    guardrails: list[str] = Field(default_factory=list, description="Names under guardrails.")
    stream_guardrails: Literal["check", "buffer"] = "check"
    cache: CacheOptions | None = None
    structured_output: StructuredOptions = StructuredOptions()

    @model_validator(mode="after")
    def _shape(self) -> Alias:
        routed = self.strategy in ("semantic", "complexity")
        if not routed:
            if not self.deployments:
                raise ValueError("an alias needs at least 1 deployment")
            if self.routing is not None:
                raise ValueError(
                    f"'routing' needs strategy semantic or complexity, not {self.strategy}"
                )
            return self
        want = SemanticRouting if self.strategy == "semantic" else ComplexityRouting
        if not isinstance(self.routing, want):
            raise ValueError(f"strategy {self.strategy} needs a 'routing' block of that kind")
        if self.deployments or self.fallbacks or self.guardrails or self.cache is not None:
            raise ValueError(
                "a routing alias hands each request to a target alias, whose deployments, "
                "fallbacks, guardrails and cache apply: set them there"
            )
        return self

    def targets(self) -> list[str]:
        """The aliases a routing alias can hand a request to."""
        r = self.routing
        if isinstance(r, SemanticRouting):
            return [r.default, *(route.target for route in r.routes)]
        if isinstance(r, ComplexityRouting):
            return [r.default, r.complex]
        return []


class Breaker(_Strict):
    failures: int = Field(5, ge=1, description="Consecutive failures that open the circuit.")
    failure_ratio: float = Field(0.5, gt=0, le=1)
    window: int = Field(20, ge=2, description="Recent calls the failure ratio is taken over.")
    min_calls: int = Field(10, ge=1)
    cooldown_s: float = Field(30.0, gt=0, description="Open for this long, then one probe.")


class RouterOptions(_Strict):
    backoff_initial_s: float = Field(0.1, ge=0)
    backoff_max_s: float = Field(2.0, ge=0)
    max_retry_after_s: float = Field(
        10.0, ge=0, description="Honour an upstream's Retry-After up to this; longer: next one."
    )
    breaker: Breaker = Breaker()
    ewma_alpha: float = Field(0.3, gt=0, le=1)


class Catalog(_Strict):
    deployments: list[Deployment] = Field(min_length=1)
    aliases: dict[str, Alias] = Field(min_length=1)
    router: RouterOptions = RouterOptions()
    guardrails: dict[str, GuardrailSpec] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _references(self) -> Catalog:
        names = [d.name for d in self.deployments]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"deployment names must be unique; repeated: {', '.join(dupes)}")
        known = set(names)
        by_name = {d.name: d for d in self.deployments}
        for alias, spec in self.aliases.items():
            modes = set()
            for target in spec.deployments:
                if target.deployment not in known:
                    raise ValueError(
                        f"alias {alias!r} names deployment {target.deployment!r}, which is not "
                        f"defined under deployments"
                    )
                modes.add(by_name[target.deployment].mode)
            if len(modes) > 1:
                raise ValueError(f"alias {alias!r} mixes chat and embeddings deployments")
            for fallback in spec.fallbacks:
                if fallback not in self.aliases:
                    raise ValueError(f"alias {alias!r} falls back to unknown alias {fallback!r}")
                if fallback == alias:
                    raise ValueError(f"alias {alias!r} falls back to itself")
        # Guardrail names, routing targets and embedding aliases, once every alias is known.
        for alias, spec in self.aliases.items():
            for rail in spec.guardrails:
                if rail not in self.guardrails:
                    raise ValueError(
                        f"alias {alias!r} names guardrail {rail!r}, which is not defined "
                        f"under guardrails"
                    )
            for goal in spec.targets():
                if goal not in self.aliases:
                    raise ValueError(
                        f"routing alias {alias!r} hands requests to unknown alias {goal!r}"
                    )
                t = self.aliases[goal]
                if t.routing is not None:
                    raise ValueError(
                        f"routing alias {alias!r} hands requests to another routing alias {goal!r}"
                    )
                if self.mode(goal) != "chat":
                    raise ValueError(
                        f"routing alias {alias!r}: target {goal!r} is not a chat alias"
                    )
            embedder = getattr(spec.routing, "embedding_alias", None)
            semantic = spec.cache.semantic if spec.cache is not None else None
            for name in (embedder, semantic.embedding_alias if semantic else None):
                if name is None:
                    continue
                if name not in self.aliases or self.aliases[name].routing is not None:
                    raise ValueError(f"alias {alias!r}: embedding alias {name!r} is not defined")
                if self.mode(name) != "embeddings":
                    raise ValueError(f"alias {alias!r}: {name!r} is not an embeddings alias")
        return self

    def deployment(self, name: str) -> Deployment:
        for d in self.deployments:
            if d.name == name:
                return d
        raise KeyError(name)

    def mode(self, alias: str) -> str:
        spec = self.aliases[alias]
        if spec.routing is not None:
            return "chat"
        return self.deployment(spec.deployments[0].deployment).mode


class CatalogError(ValueError):
    """The file cannot be used; the message names the file and the problem."""


def load_catalog(path: Path) -> tuple[Catalog, dict[str, str | None]]:
    """Parse and validate the file; also read every deployment's API key (returned apart)."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise CatalogError(f"cannot read routing config {path}: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise CatalogError(f"routing config {path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise CatalogError(f"routing config {path} must be a mapping with deployments and aliases")
    try:
        catalog = Catalog.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise CatalogError(f"routing config {path}: {where}: {first['msg']}") from exc
    keys: dict[str, str | None] = {}
    for d in catalog.deployments:
        try:
            keys[d.name] = d.api_key()
        except (OSError, ValueError) as exc:
            raise CatalogError(f"routing config {path}: {exc}") from exc
    return catalog, keys


class CatalogWatcher:
    """Polls the file's mtime and size; on change, validates and swaps in the new catalog."""

    def __init__(
        self,
        path: Path,
        interval_s: float,
        on_change: Callable[[Catalog, dict[str, str | None]], None],
        on_error: Callable[[str], None],
    ) -> None:
        self.path = path
        self.interval_s = interval_s
        self.on_change = on_change
        self.on_error = on_error
        self._stamp = self._read_stamp()
        self._task: asyncio.Task[None] | None = None

    def _read_stamp(self) -> tuple[float, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return st.st_mtime, st.st_size

    def start(self) -> asyncio.Task[None] | None:
        if self.interval_s > 0:
            self._task = asyncio.create_task(self._run(), name="catalog-watcher")
        return self._task

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            self.check()

    def check(self) -> None:
        stamp = self._read_stamp()
        if stamp is None or stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            catalog, keys = load_catalog(self.path)
        except CatalogError as exc:
            log.error("routing config rejected; keeping the previous one: %s", exc)
            self.on_error(str(exc))
            return
        log.info(
            "routing config reloaded",
            extra={"deployments": len(catalog.deployments), "aliases": len(catalog.aliases)},
        )
        self.on_change(catalog, keys)
