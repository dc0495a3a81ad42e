"""Where tether's settings live, and how a bad one is reported.

``tether.toml`` in the working directory, else ``[tool.tether]`` of its ``pyproject.toml``;
a path given explicitly is read as it is (its ``[tool.tether]`` if it is a pyproject.toml).
Each part validates its sections with its pydantic models (``tether._config`` composes them
into the one model of the whole file); :func:`problems` turns their errors into dotted paths.
"""

from __future__ import annotations

import difflib
import json
import re
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

__all__ = ["Loc", "config_file", "describe", "dotted", "problems", "tether_table"]

Loc = tuple[str | int, ...]


def config_file(path: str | Path | None = None, *, cwd: Path | None = None) -> Path | None:
    """``path``; else ``tether.toml`` in ``cwd``; else its ``pyproject.toml``; else None."""
    if path is not None:
        return Path(path)
    base = Path.cwd() if cwd is None else cwd
    return next((f for f in (base / "tether.toml", base / "pyproject.toml") if f.is_file()), None)


def tether_table(file: Path) -> dict[str, Any]:
    """The settings in ``file``: the whole file, or a pyproject.toml's ``[tool.tether]`` ({} if none).

    Raises ``OSError`` if it cannot be read, ``tomllib.TOMLDecodeError`` if it is not TOML,
    and ``ValueError`` if ``[tool.tether]`` is not a table."""
    data: dict[str, Any] = tomllib.loads(file.read_text(encoding="utf-8"))
    if file.name != "pyproject.toml":
        return data
    tool = data.get("tool", {})
    table = tool.get("tether", {}) if isinstance(tool, dict) else {}
    if not isinstance(table, dict):
        raise ValueError("[tool.tether] must be a table")
    return table


# -- reporting -------------------------------------------------------------------------

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def dotted(loc: Loc) -> str:
    """``("routes", "openai:*", "retry")`` -> ``routes."openai:*".retry``, TOML's own spelling."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            key = part if _BARE_KEY.match(part) else json.dumps(part)
            out = f"{out}.{key}" if out else key
    return out


def _type_name(value: Any) -> str:
    if value is None:
        return "nothing"
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "an array", dict: "a table"}.get(type(value), type(value).__name__)


def _fields(tp: Any) -> dict[str, Any] | None:
    """The fields of a pydantic model or dataclass (name -> annotation), else None."""
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return {name: f.annotation for name, f in tp.model_fields.items()}
    found = getattr(tp, "__pydantic_fields__", None)
    return None if found is None else {name: f.annotation for name, f in found.items()}


def _unwrap(tp: Any) -> Any:
    """``tp`` without ``Annotated`` and ``| None``."""
    while True:
        origin = typing.get_origin(tp)
        if origin is typing.Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (typing.Union, types.UnionType):
            tp = next(a for a in typing.get_args(tp) if a is not type(None))
        else:
            return tp


def _step(tp: Any, part: str | int) -> Any:
    """The type found at ``part`` inside ``tp`` (None when unknown)."""
    tp = _unwrap(tp)
    fields = _fields(tp)
    if fields is not None:
        return fields.get(str(part))
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (dict, Mapping) and len(args) == 2:
        return args[1]
    return args[0] if args else None


def _known_keys(root: Any, loc: Loc) -> list[str]:
    tp = root
    for part in loc:
        tp = _step(tp, part)
        if tp is None:
            return []
    return list(_fields(_unwrap(tp)) or ())


def describe(error: Mapping[str, Any], *, root: Any = None) -> str:
    """One pydantic error in the words of a config file: what was wrong and what is allowed."""
    kind, value, ctx = error["type"], error.get("input"), error.get("ctx") or {}
    got = _type_name(value)
    if kind in ("extra_forbidden", "unexpected_keyword_argument"):
        loc = tuple(error["loc"])
        known = _known_keys(root, loc[:-1]) if root is not None else []
        near = difflib.get_close_matches(str(loc[-1]), known, n=1)
        if near:
            return f"unknown key (did you mean {near[0]!r}?)"
        return f"unknown key; known keys: {', '.join(sorted(known))}" if known else "unknown key"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return f"expected an integer, got {got}"
    if kind in ("float_type", "float_parsing"):
        return f"expected a number, got {got}"
    if kind in ("bool_type", "bool_parsing"):
        return f"expected true or false, got {got}"
    if kind in ("string_type",):
        return f"expected a string, got {got}"
    if kind in ("dict_type", "model_type", "dataclass_type", "model_attributes_type", "dataclass_exact_type"):
        return f"must be a table, got {got}"
    if kind in ("list_type", "tuple_type", "frozen_set_type", "set_type", "iterable_type"):
        return f"expected an array, got {got}"
    if kind == "greater_than_equal":
        return f"must not be negative, got {value}" if ctx["ge"] == 0 else f"must be at least {ctx['ge']}, got {value}"
    if kind == "greater_than":
        return f"must be positive, got {value}" if ctx["gt"] == 0 else f"must be more than {ctx['gt']}, got {value}"
    if kind == "less_than_equal":
        return f"must be at most {ctx['le']}, got {value}"
    if kind == "less_than":
        return f"must be less than {ctx['lt']}, got {value}"
    if kind == "literal_error":
        return f"must be one of {ctx['expected']}, got {value!r}"
    if kind == "string_too_short":
        return "must not be empty"
    if kind == "value_error":
        return str(error["msg"]).removeprefix("Value error, ")
    return str(error["msg"])


def _written(data: Any, loc: Loc) -> bool:
    for part in loc:
        if isinstance(part, int):
            if isinstance(data, set | frozenset):  # given in code: written, in no order
                return True
            if not isinstance(data, list | tuple) or not 0 <= part < len(data):
                return False
        elif not isinstance(data, Mapping) or part not in data:
            return False
        data = data[part]
    return True


def problems(exc: ValidationError, data: Any, *, root: Any, prefix: Loc = (),
             origin: Callable[[Loc], Loc | None] | None = None) -> list[tuple[str, str]]:
    """``exc``'s errors as ``(dotted path, problem)``, each once, in the order found.

    ``data`` is what was validated, ``root`` its model, ``prefix`` where ``data`` sits in the
    file. ``origin`` maps a place in ``data`` to where its value was written (None when it
    was not written: a default), for sections that inherit. A problem with a value nobody
    wrote says "(the default)"."""
    found: dict[str, str] = {}
    for error in exc.errors(include_url=False):
        loc: Loc = tuple(part for part in error["loc"] if part != "[key]")
        field = (error.get("ctx") or {}).get("field")
        problem = describe({**error, "loc": loc}, root=root)
        if field:  # a rule between fields, reported at the field it names
            loc = (*loc, field)
        written = origin(loc) if origin is not None else loc
        if written is None or not _written(data, written):
            written = loc if written is None else written
            problem += " (the default)"
        found.setdefault(dotted((*prefix, *written)), problem)
    return list(found.items())
