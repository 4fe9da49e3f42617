from __future__ import annotations

from typing import Any

import pytest
from openai import OpenAI

from tests.conftest import API_KEY, ServiceProcess

MODEL = "all-MiniLM-L6-v2"


@pytest.fixture(scope="session")
def client(embeddings: ServiceProcess) -> OpenAI:
    return OpenAI(base_url=f"{embeddings.url}/v1", api_key=API_KEY, max_retries=0)


@pytest.fixture(scope="session")
def st_model() -> Any:
    """The same model loaded directly with sentence-transformers: the reference for vectors."""
    from sentence_transformers import SentenceTransformer

    from services.embeddings.encoder import default_model_path

    return SentenceTransformer(str(default_model_path()), device="cpu", local_files_only=True)
