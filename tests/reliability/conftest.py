"""The whole platform as processes a test owns: embeddings, retrieval on local Qdrant, the proxy
over the fake upstream (a virtual key, a provider API key), feedback on a fresh PostgreSQL
database, and rag in front. The soak and the no-secrets-in-logs test each start their own (with
their own keys), and stop it when done, so what they measure is theirs alone."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.conftest import API_KEY, ServiceProcess, fresh_pg_database
from tests.llm_proxy.conftest import MASTER_KEY, FakeUpstream
from tests.llm_proxy.conftest import private_redis as private_redis  # the fixture, here too
from tests.rag.platform import DOCS

PROVIDER_KEY_ENV = "TEST_PROVIDER_API_KEY"  # what the deployment's api_key_env names


@dataclass(frozen=True)
class Keys:
    """Every secret the platform is given: one key all the services accept (and call each other
    with), the proxy's master key, the key the proxy sends to the provider, and an optional
    Authorization value for the OTLP exporter."""

    service: str = API_KEY
    master: str = MASTER_KEY
    provider: str = "sk-provider-test-0123456789abcdef"
    otlp_auth: str | None = None


@dataclass
class WholePlatform:
    embeddings: ServiceProcess
    retrieval: ServiceProcess
    proxy: ServiceProcess
    feedback: ServiceProcess
    rag: ServiceProcess
    fake: FakeUpstream
    pg_url: str  # SQLAlchemy URL of feedback's database
    keys: Keys
    virtual_key: str  # made with the master key; rag calls the proxy with it
    virtual_key_hint: str  # what the proxy keeps of it to show (not usable as the key)

    def services(self) -> dict[str, ServiceProcess]:
        return {
            "embeddings": self.embeddings,
            "retrieval": self.retrieval,
            "llm-proxy": self.proxy,
            "feedback": self.feedback,
            "rag": self.rag,
        }

    def stop(self) -> None:
        """Front to back, so rag's outbox drains into a feedback that still runs."""
        for svc in (self.rag, self.proxy, self.retrieval, self.embeddings, self.feedback):
            svc.stop()


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@contextmanager
def whole_platform(
    service_factory: Any,
    tmp: Path,
    keys: Keys = Keys(),
    otlp_endpoint: str | None = None,
    reply: str | None = None,
) -> Iterator[WholePlatform]:
    """Start everything (a few tens of seconds: the model loads), yield it, stop it."""
    tracing: dict[str, str] = {}
    if otlp_endpoint:
        tracing["OTEL_BSP_SCHEDULE_DELAY"] = "100"  # spans leave within 0.1 s

    def traced(prefix: str) -> dict[str, str]:
        if not otlp_endpoint:
            return {}
        env = {f"{prefix}_OTLP_ENDPOINT": otlp_endpoint, **tracing}
        if keys.otlp_auth:
            env[f"{prefix}_OTLP_HEADERS"] = f"Authorization=Basic {keys.otlp_auth}"
        return env

    digest = _digest(keys.service)
    with ExitStack() as stack:
        fake = FakeUpstream("whole", tmp)
        stack.callback(fake.stop)
        if reply is not None:
            httpx.post(f"{fake.url}/_script", json={"content": reply}).raise_for_status()
        pg = stack.enter_context(fresh_pg_database("llmops_whole"))
        # Started together; each is waited for below (the model load is the long pole).
        embeddings = service_factory(
            "embeddings", ENV="dev", EMBEDDINGS_API_KEY_HASHES=digest, **traced("EMBEDDINGS")
        )
        feedback = service_factory(
            "feedback",
            ENV="dev",
            FEEDBACK_API_KEY_HASHES=digest,
            FEEDBACK_DATABASE_URL=pg,
            FEEDBACK_SPOOL_DIR=str(tmp / "fb-spool"),
            **traced("FEEDBACK"),
        )
        config = {
            "deployments": [
                {
                    "name": "fake",
                    "api_base": fake.api_base,
                    "model": "fake-model",
                    "api_key_env": PROVIDER_KEY_ENV,
                }
            ],
            "aliases": {"smollm2": {"deployments": [{"deployment": "fake"}]}},
        }
        (tmp / "routing.yaml").write_text(yaml.safe_dump(config))
        proxy = service_factory(
            "llm-proxy",
            LLM_PROXY_CONFIG_PATH=str(tmp / "routing.yaml"),
            LLM_PROXY_MASTER_KEY=keys.master,
            LLM_PROXY_DATABASE_URL=f"sqlite:///{tmp}/proxy.db",
            **{PROVIDER_KEY_ENV: keys.provider},
            **traced("LLM_PROXY"),
        )
        started = [embeddings, feedback, proxy]
        try:
            for svc in started:
                svc.wait_ready(240)
            retrieval = service_factory(
                "retrieval",
                ENV="dev",
                RETRIEVAL_API_KEY_HASHES=digest,
                RETRIEVAL_EMBEDDINGS_URL=embeddings.url,
                RETRIEVAL_EMBEDDINGS_API_KEY=keys.service,
                RETRIEVAL_QDRANT_PATH=str(tmp / "qdrant"),
                RETRIEVAL_CHUNK_TOKENS="64",
                RETRIEVAL_CHUNK_OVERLAP_TOKENS="8",
                **traced("RETRIEVAL"),
            )
            started.append(retrieval)
            retrieval.wait_ready(120)
            auth = {"Authorization": f"Bearer {keys.service}"}
            with httpx.Client(base_url=retrieval.url, headers=auth, timeout=120) as api:
                r = api.post("/v1/collections", json={"name": "handbook"})
                assert r.status_code == 201, r.text
                r = api.post("/v1/collections/handbook/documents", json={"documents": DOCS})
                assert r.status_code == 200, r.text
            r = httpx.post(
                f"{proxy.url}/admin/keys",
                json={"name": "rag"},
                headers={"Authorization": f"Bearer {keys.master}"},
                timeout=30,
            )
            assert r.status_code == 201, r.text
            virtual = r.json()
            rag = service_factory(
                "rag",
                ENV="dev",
                RAG_API_KEY_HASHES=digest,
                RAG_RETRIEVAL_URL=retrieval.url,
                RAG_RETRIEVAL_API_KEY=keys.service,
                RAG_PROXY_URL=proxy.url,
                RAG_PROXY_API_KEY=virtual["key"],
                RAG_FEEDBACK_URL=feedback.url,
                RAG_FEEDBACK_API_KEY=keys.service,
                RAG_DEFAULT_COLLECTION="handbook",
                RAG_OUTBOX_DIR=str(tmp / "outbox"),
                RAG_MAX_TOKENS="64",
                **traced("RAG"),
            )
            started.append(rag)
            rag.wait_ready(60)
            platform = WholePlatform(
                embeddings=embeddings,
                retrieval=retrieval,
                proxy=proxy,
                feedback=feedback,
                rag=rag,
                fake=fake,
                pg_url=pg,
                keys=keys,
                virtual_key=virtual["key"],
                virtual_key_hint=virtual["key_hint"],
            )
            yield platform
            platform.stop()
        finally:
            for svc in reversed(started):  # idempotent: a stopped one stays stopped
                svc.stop()
