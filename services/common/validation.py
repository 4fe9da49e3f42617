"""Value rules that several services' request models share: what their stores can hold and
what a number must not silently become."""

from __future__ import annotations

import re
from typing import Any

INT4_MAX = 2**31 - 1  # PostgreSQL's INTEGER: a larger count or limit is a 400, not a DB error

_NUMBER = re.compile(r"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*")


def no_control_characters(value: str | None) -> str | None:
    """For ids and names that also end up in URLs, tables and terminals: a NUL the database
    refuses, a line break no route matches, an escape sequence an operator's terminal runs."""
    if value is not None and any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError("must not contain control characters (NUL, ESC, CR, LF, ...)")
    return value


def iso_8601_only(value: Any) -> Any:
    """A pydantic ``mode="before"`` validator for date-times: pydantic takes a number as
    seconds since the epoch, which here is always a mistake (``-384`` is a date in 1969)."""
    if isinstance(value, int | float) or (isinstance(value, str) and _NUMBER.fullmatch(value)):
        raise ValueError("expected an ISO 8601 date or date-time, e.g. 2027-01-01T00:00:00Z")
    return value
