"""Client of the embeddings service: vectors in batches, token counts for the chunker."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt

from services.common.errors import peer_error
from services.common.http import create_client
from services.common.retry import Transient, retry_after_seconds, retrying
from services.retrieval.config import RetrievalSettings


class EmbeddingsUnavailable(Exception):
    """The embeddings service could not be reached or kept failing."""


def _transient(exc: BaseException) -> bool:
    return isinstance(exc, (Transient, httpx.TransportError))


class EmbeddingsClient:
    def __init__(self, settings: RetrievalSettings) -> None:
        key = settings.embeddings_api_key
        self.http = create_client(
            settings.embeddings_url,
            api_key=key.get_secret_value() if key else None,
            timeout=settings.embeddings_timeout_s,
        )
        self.model = settings.embeddings_model
        self.batch = settings.embed_batch_size
        self._parallel = asyncio.Semaphore(4)
        self._input_limit: int | None = None

    async def close(self) -> None:
        await self.http.aclose()

    async def _post(self, path: str, body: dict[str, object]) -> dict[str, object]:
        try:
            async for attempt in retrying(3, _transient):
                with attempt:
                    r = await self.http.post(path, json=body)
                    if r.status_code == 429 or r.status_code >= 500:
                        raise Transient(
                            f"{r.status_code}: {r.text[:200]}",
                            retry_after_seconds(r.headers.get("retry-after")),
                        )
                    if r.status_code != 200:
                        said = peer_error(r)["message"]
                        raise EmbeddingsUnavailable(
                            f"embeddings service answered {r.status_code}: {said}"
                        )
                    data: dict[str, object] = r.json()
                    return data
        except (Transient, httpx.TransportError) as exc:
            raise EmbeddingsUnavailable(f"embeddings service unavailable: {exc}") from exc
        raise AssertionError("unreachable")

    async def dimension(self) -> int:
        try:
            r = await self.http.get("/v1/models")
        except httpx.TransportError as exc:
            raise EmbeddingsUnavailable(f"embeddings service unavailable: {exc}") from exc
        if r.status_code != 200:
            raise EmbeddingsUnavailable(
                f"embeddings service answered {r.status_code}: {peer_error(r)['message']}"
            )
        for model in r.json()["data"]:
            if model["id"] == self.model:
                return int(model["dimensions"])
        raise EmbeddingsUnavailable(f"the embeddings service does not serve '{self.model}'")

    async def count_tokens(self, texts: list[str]) -> list[int]:
        """Tokens of each text in the model's tokenizer, special tokens excluded."""
        out: list[int] = []
        for i in range(0, len(texts), 2048):
            body = {"input": texts[i : i + 2048], "add_special_tokens": False}
            data = await self._post("/v1/tokenize", body)
            out.extend(int(d["tokens"]) for d in data["data"])  # type: ignore[attr-defined]
            self._note_limit(data)
        return out

    async def input_limit(self) -> int:
        """The most tokens a text may have (special tokens excluded) for the model to take it
        whole; learnt from the tokenize answers, so a model swap is noticed on the next one."""
        if self._input_limit is None:
            await self.count_tokens([""])
        assert self._input_limit is not None
        return self._input_limit

    def _note_limit(self, data: dict[str, object]) -> None:
        max_input = data.get("max_input_tokens")
        if isinstance(max_input, int):
            special = data.get("special_tokens")
            self._input_limit = max_input - (special if isinstance(special, int) else 2)

    async def _embed_batch(self, texts: list[str], bounded: bool) -> npt.NDArray[np.float32]:
        body: dict[str, object] = {"model": self.model, "input": texts, "encoding_format": "base64"}
        if not bounded:
            data = await self._post("/v1/embeddings", body)
        else:
            async with self._parallel:
                data = await self._post("/v1/embeddings", body)
        items: list[dict[str, Any]] = data["data"]  # type: ignore[assignment]
        rows = sorted(items, key=lambda d: int(d["index"]))
        return np.stack(
            [np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in rows]
        )

    async def embed(self, texts: list[str]) -> npt.NDArray[np.float32]:
        """Vectors for ``texts``, in order. A large input (a document's chunks) goes out in
        batches, at most 4 at a time, so one ingest cannot fill the embeddings service's queue;
        a single batch (a search query) does not wait for that bound: concurrent queries reach
        the service together and share its forward passes (docs/benchmarks.md, rag at
        concurrency 16: batches of 1.6 texts behind the bound)."""
        parts = [texts[i : i + self.batch] for i in range(0, len(texts), self.batch)]
        bounded = len(parts) > 1
        results = await asyncio.gather(*(self._embed_batch(p, bounded) for p in parts))
        return np.concatenate(results) if results else np.zeros((0, 0), np.float32)
