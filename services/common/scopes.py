"""The scopes an API key may carry, and how a configured key names them. Apart from auth.py so
settings can validate entries without importing the ASGI stack."""

from __future__ import annotations

from typing import Any

# What a key may be allowed to do. feedback:read guards what holds user data (reads, exports).
SCOPES = {
    "ask": "rag: ask questions",
    "search": "retrieval: list collections, search",
    "ingest": "retrieval: create collections, ingest and delete documents",
    "embed": "embeddings: embed, tokenize, list the model",
    "chat": "local-llm: chat completions, list the model",
    "feedback:write": "feedback: record interactions, feedback and preferences",
    "feedback:read": "feedback: read, count and export interactions and feedback",
    "admin": "retrieval: delete collections",
}
SCOPE_KEY = "x-llmops-scope"


def needs_scope(name: str) -> dict[str, Any]:
    """``openapi_extra`` of a route that needs ``name``: documented in the OpenAPI schema, and
    read by :class:`AuthMiddleware`, so fast routes (which skip FastAPI) are covered too."""
    if name not in SCOPES:
        raise ValueError(f"unknown scope {name!r}")
    return {SCOPE_KEY: name}


def parse_key_entry(entry: str) -> tuple[str, frozenset[str] | None]:
    """``<digest>`` or ``<digest>:<scope>+<scope>`` -> (digest, scopes; None: every scope)."""
    digest, sep, scopes = entry.partition(":")
    if not sep:
        return digest, None
    names = frozenset(s.strip() for s in scopes.split("+") if s.strip())
    unknown = sorted(names - set(SCOPES))
    if unknown or not names:
        raise ValueError(
            f"unknown scope(s) {', '.join(unknown) or '(none given)'} after the digest; "
            f"scopes are: {', '.join(SCOPES)}"
        )
    return digest, names
