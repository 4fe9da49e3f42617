"""JSON logs on stdout, one object per line, carrying the request id and trace id.

Log collectors (Loki, Cloud Logging, ...) parse these without regexes, and the ids let an
operator jump from a Grafana panel to the exact request and its trace.

PII is redacted by default (``LOG_REDACT_PII``): the message, the string values of the extras
and an exception's text go through :func:`services.common.pii.redact_value`, so an email, a
card number or a key in a prompt, an error or a payload log does not end up in the log store
(which keeps everything longer, for more people, than the request did).
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import orjson
from opentelemetry import trace

from services.common.context import current_request_id
from services.common.pii import redact, redact_value

_RESERVED = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "color_message",
}


# Extras written by our own code from closed sets (ids, route templates): not worth a pass.
_NOT_REDACTED = frozenset({"request_id", "trace_id", "span_id", "ts", "level", "logger", "method",
                           "route"})  # fmt: skip


class JsonFormatter(logging.Formatter):
    def __init__(self, redact_pii: bool = True) -> None:
        super().__init__()
        self.redact_pii = redact_pii

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": redact(msg)[0] if self.redact_pii else msg,
        }
        rid = current_request_id()
        if rid:
            out["request_id"] = rid
        ctx = trace.get_current_span().get_span_context()
        if ctx.is_valid:
            out["trace_id"] = format(ctx.trace_id, "032x")
            out["span_id"] = format(ctx.span_id, "016x")
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                if (
                    self.redact_pii
                    and key not in _NOT_REDACTED
                    and isinstance(value, str | dict | list | tuple)
                ):
                    value = redact_value(value)
                out[key] = value
        if record.exc_info:
            exc = self.formatException(record.exc_info)
            out["exc"] = redact(exc)[0] if self.redact_pii else exc
        return orjson.dumps(out, default=str).decode()


def setup_logging(level: str = "INFO", redact_pii: bool = True) -> None:
    """Route the root, uvicorn and our loggers through one JSON handler; safe to call twice
    (the second call's level and redaction apply)."""
    # Not in our JSON lines, so not worth computing for every record.
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    root = logging.getLogger()
    handler = next((h for h in root.handlers if getattr(h, "_llmops", False)), None)
    if handler is None:
        handler = logging.StreamHandler(sys.stdout)
        handler._llmops = True  # type: ignore[attr-defined]
        for h in list(root.handlers):
            root.removeHandler(h)
        root.addHandler(handler)
    handler.setFormatter(JsonFormatter(redact_pii=redact_pii))
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        lg = logging.getLogger(name)
        lg.handlers.clear()
        lg.propagate = True
    # Access lines come from our middleware, with ids and timings; uvicorn's would duplicate them.
    logging.getLogger("uvicorn.access").disabled = True
