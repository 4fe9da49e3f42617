"""One ask end to end over the real local model (SmolLM2-135M-Instruct) instead of the fake
provider: real retrieval, real proxy, real model, the answer recorded by feedback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.conftest import API_KEY, ServiceProcess, auth_headers
from tests.llm_proxy.conftest import MASTER_KEY
from tests.rag.platform import Platform
from tests.rag.test_ask import recorded


def test_an_ask_answered_by_the_local_model(
    platform: Platform, local_llm: ServiceProcess, service_factory: Any, tmp_path: Path
) -> None:
    routing = tmp_path / "routing.yaml"
    routing.write_text(
        yaml.safe_dump(
            {
                "deployments": [
                    {
                        "name": "local-smollm2",
                        "api_base": f"{local_llm.url}/v1",
                        "model": "smollm2-135m-instruct",
                        "api_key_env": "LLMOPS_TEST_LOCAL_KEY",
                        "timeout_s": 300,
                    }
                ],
                "aliases": {"smollm2": {"deployments": [{"deployment": "local-smollm2"}]}},
            }
        )
    )
    proxy: ServiceProcess = service_factory(
        "llm-proxy",
        LLM_PROXY_CONFIG_PATH=str(routing),
        LLM_PROXY_MASTER_KEY=MASTER_KEY,
        LLM_PROXY_DATABASE_URL=f"sqlite:///{tmp_path}/proxy.db",
        LLMOPS_TEST_LOCAL_KEY=API_KEY,
    ).wait_ready(60)
    rag = service_factory(
        "rag", **platform.rag_env(tmp_path, RAG_PROXY_URL=proxy.url, RAG_MAX_TOKENS="40")
    ).wait_ready(60)
    r = httpx.post(
        f"{rag.url}/v1/ask",
        headers=auth_headers(),
        timeout=300,
        json={"question": "How long do I have to return a damaged item?"},
    )
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["answer"].strip() and data["deployment"] == "local-smollm2"
    assert data["usage"]["completion_tokens"] > 0
    assert data["contexts"][0]["document_id"] == "handbook/refunds.md"
    # Whatever the small model wrote, a citation only ever names a retrieved chunk.
    assert {c["chunk_id"] for c in data["citations"]} <= {c["chunk_id"] for c in data["contexts"]}
    assert recorded(platform.feedback_url, data["interaction_id"])["answer"] == data["answer"]
