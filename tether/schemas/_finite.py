"""JSON has no NaN or infinity: the one check every way into tether (events, memory, the
gateway's CloudEvents ingest) runs on data before keeping it; the spelling recorded bodies
get instead (a recording never fails the call it records); the scrub for old data.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

__all__ = ["NON_FINITE_HINT", "finite_or_none", "json_safe", "non_finite", "plain_json"]

NON_FINITE_HINT = "JSON has no NaN or Infinity: send a finite number, null or a string"

Path = tuple[str | int, ...]
_LEAVES = frozenset({str, int, bool, type(None)})


def non_finite(value: Any) -> Path | None:
    """Where the first NaN or infinity in ``value`` is (a path of keys and indexes; ``()``
    for ``value`` itself), or None if every number in it is finite.

    ``value`` is JSON-like data (dicts, lists, tuples, scalars) or a pydantic model, whose
    fields are walked the same way. On the publish path, so the common types go first.
    """
    kind = type(value)
    if kind in _LEAVES:
        return None
    if kind is float:
        return None if math.isfinite(value) else ()
    if kind is dict:
        items: Any = value.items()
    elif kind is list or kind is tuple:
        items = enumerate(value)
    elif hasattr(kind, "__pydantic_fields__") and isinstance(value, BaseModel):
        items = value.__dict__.items()
    elif isinstance(value, Mapping):
        items = value.items()
    elif isinstance(value, list | tuple):
        items = enumerate(value)
    elif isinstance(value, float):
        return None if math.isfinite(value) else ()
    else:
        return None
    for key, item in items:
        if type(item) in _LEAVES:
            continue
        found = non_finite(item)
        if found is not None:
            return (key, *found)
    return None


def plain_json(value: Any) -> bool:
    """Whether ``value`` is JSON as ``json.loads`` makes it (dicts with string keys, lists,
    strings, ints, bools, None, finite floats) and nothing else: what validating it as a
    recorded body would give back unchanged, so a payload tether builds of it may skip that
    (``Payload.trusted``)."""
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        return True
    if kind is float:
        return math.isfinite(value)
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str:
                return False
            kind = type(item)
            if not (kind is str or kind is int or kind is bool or item is None or plain_json(item)):
                return False
        return True
    if kind is list:
        for item in value:
            kind = type(item)
            if not (kind is str or kind is int or kind is bool or item is None or plain_json(item)):
                return False
        return True
    return False


def finite_or_none(value: Any) -> Any:
    """``value`` with every NaN or infinity replaced by None (JSON's null)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_or_none(v) for v in value]
    return value


def json_safe(value: Any) -> Any:
    """``value`` with every NaN or infinity spelled as the string ``"NaN"``, ``"Infinity"``
    or ``"-Infinity"`` (as the log always stored them); ``value`` itself when it has none.

    For what tether *records* of someone else's call (request and response bodies, tool
    arguments and results, a run's input and output): recording must never fail the call.
    """
    if non_finite(value) is None:
        return value
    return _spelled(value)


def _spelled(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, Mapping):
        return {k: _spelled(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_spelled(v) for v in value]
    if isinstance(value, BaseModel):
        return _spelled(value.model_dump())
    return value
