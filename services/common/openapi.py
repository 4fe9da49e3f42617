"""OpenAPI fragments the services share: the documentation of a server-sent-events answer.

Chat completions (llm-proxy, local-llm) and asks (rag) answer ``stream: true`` with events whose
``data`` is a JSON object, then ``[DONE]``; a failure after the first byte cannot change the
status any more, so it is an event carrying the error object. Documenting each event (the way
OpenAPI 3.2's ``itemSchema`` does, in the ``schema`` of a 3.1 document) lets clients and fuzzers
check a stream as they check a JSON answer.
"""

from __future__ import annotations

from typing import Any

_NULLABLE_STRING = {"type": ["string", "null"]}

# The error object of services/common/errors.py, inline: the fragment needs no component.
STREAM_ERROR: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": _NULLABLE_STRING,
                "code": _NULLABLE_STRING,
            },
        }
    },
}


def event_stream(data: dict[str, Any], description: str) -> dict[str, Any]:
    """The ``content`` entry of a ``text/event-stream`` answer whose events carry ``data`` (a
    JSON schema), then ``[DONE]``; or an error event when the stream fails midway."""
    return {
        "text/event-stream": {
            "schema": {
                "type": "object",
                "description": f"One event of the stream. {description}",
                "required": ["data"],
                "properties": {
                    "data": {
                        "type": "string",
                        "if": {"const": "[DONE]"},
                        "else": {
                            "contentMediaType": "application/json",
                            "contentSchema": {"anyOf": [data, STREAM_ERROR]},
                        },
                    }
                },
            }
        }
    }
