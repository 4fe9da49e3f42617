"""Search filters from a small JSON language to Qdrant's, with a 400 for anything ambiguous.

``{"lang": "en"}`` equality, ``{"lang": {"in": ["en", "de"]}}`` any-of, ``{"year": {"gte": 2020,
"lt": 2024}}`` numeric range, ``{"published": {"gte": "2024-01-01"}}`` date range. Keys are
metadata fields; ``doc_id`` filters on the document id.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from qdrant_client import models

from services.common.errors import APIError

_RANGE_OPS = ("gt", "gte", "lt", "lte")


def _bad(field: str, message: str) -> APIError:
    return APIError(
        400, f"filter.{field}: {message}", param=f"filter.{field}", code="invalid_filter"
    )


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _as_datetime(v: Any) -> datetime | None:
    if not isinstance(v, str):
        return None
    try:
        return datetime.fromisoformat(v.replace("Z", "+00:00"))
    except ValueError:
        return None


def _condition(field: str, spec: Any) -> models.FieldCondition:
    key = field if field == "doc_id" else f"metadata.{field}"
    if isinstance(spec, (bool, str, int)):
        return models.FieldCondition(key=key, match=models.MatchValue(value=spec))
    if isinstance(spec, float):
        raise _bad(
            field, 'equality on a float is unreliable; use a range such as {"gte": x, "lte": x}'
        )
    if isinstance(spec, list):
        raise _bad(field, 'a list is ambiguous; use {"in": [...]} to match any of the values')
    if not isinstance(spec, dict) or not spec:
        raise _bad(field, 'expected a value, {"in": [...]} or a range {"gte": ..., "lt": ...}')
    ops = set(spec)
    if ops == {"in"}:
        values = spec["in"]
        if not isinstance(values, list) or not values:
            raise _bad(field, "'in' takes a non-empty list")
        if all(isinstance(v, str) for v in values) or all(
            isinstance(v, int) and not isinstance(v, bool) for v in values
        ):
            return models.FieldCondition(key=key, match=models.MatchAny(any=values))
        raise _bad(field, "'in' takes a list of strings or a list of integers")
    unknown = ops - set(_RANGE_OPS)
    if unknown:
        raise _bad(
            field, f"unknown operator(s) {sorted(unknown)}; use 'in', 'gt', 'gte', 'lt', 'lte'"
        )
    values = [spec[o] for o in _RANGE_OPS if o in spec]
    if all(_is_number(v) for v in values):
        return models.FieldCondition(key=key, range=models.Range(**{o: spec[o] for o in ops}))
    dates = {o: _as_datetime(spec[o]) for o in ops}
    if all(d is not None for d in dates.values()):
        return models.FieldCondition(key=key, range=models.DatetimeRange(**dates))
    raise _bad(field, "range bounds must all be numbers or all be ISO 8601 dates")


def to_qdrant(spec: dict[str, Any] | None) -> models.Filter | None:
    if not spec:
        return None
    return models.Filter(must=[_condition(field, value) for field, value in spec.items()])
