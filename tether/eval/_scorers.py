"""Scorers: what a good output is. Each takes a :class:`Case` (input, expected, output, trace)
and returns a :class:`Score`; pass/fail scorers set ``passed``, numeric ones ``value``.

Exact, contains, regex, JSON Schema, numeric tolerance, embedding similarity, trace
scorers (called tool X, no dead letters, cost below, retries at most), custom functions;
the LLM judge is in ``_judge``.
"""

from __future__ import annotations

import inspect
import json
import math
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from ._trace import RunTrace

if TYPE_CHECKING:
    from tether.memory import Embedder

__all__ = ["Case", "Score", "Scorer", "called_tool", "contains", "cost_below", "custom", "exact", "json_schema",
           "no_dead_letters", "numeric", "regex", "retries_at_most", "similarity"]


@dataclass(frozen=True)
class Case:
    """What a scorer sees of one item."""

    input: Any
    output: Any
    expected: Any = None
    trace: RunTrace | None = None
    item_id: str = ""
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Score:
    value: float | None
    passed: bool | None = None
    reason: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def verdict(cls, passed: bool, reason: str | None = None, **metadata: Any) -> Score:
        return cls(1.0 if passed else 0.0, passed, reason, dict(metadata))


class Scorer:
    """A named scorer. ``kind`` is ``"pass"`` (a verdict) or ``"numeric"`` (a value to compare)."""

    def __init__(self, name: str, fn: Callable[[Case], Score | Awaitable[Score]],
                 kind: Literal["pass", "numeric"] = "pass", *, of_output: bool = True) -> None:
        if not name or any(c.isspace() for c in name):
            raise ValueError(f"a scorer's name is one word (it keys the eval view), got {name!r}")
        self.name = name
        self.kind = kind
        self.of_output = of_output
        """Whether it judges the output (an agent that raised fails it) or the run's trace (scored anyway)."""
        self._fn = fn

    async def score(self, case: Case) -> Score:
        result = self._fn(case)
        if inspect.isawaitable(result):
            result = await result
        return result

    def __repr__(self) -> str:
        return f"<scorer {self.name} ({self.kind})>"


def _text(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, sort_keys=True)


def _need_expected(case: Case, scorer: str) -> None:
    if case.expected is None:
        raise ValueError(f"{scorer}: item {case.item_id or '?'} has no expected output; give the scorer its own "
                         "(e.g. contains('text')) or add `expected` to the item")


def exact(*, name: str = "exact", ignore_case: bool = False) -> Scorer:
    """Passes when the output equals the expected output (text compared with surrounding space trimmed)."""

    def fn(case: Case) -> Score:
        _need_expected(case, name)
        out, want = case.output, case.expected
        if isinstance(out, str) and isinstance(want, str):
            out, want = out.strip(), want.strip()
            if ignore_case:
                out, want = out.lower(), want.lower()
        return Score.verdict(out == want, None if out == want else f"expected {_text(want)[:80]!r}")

    return Scorer(name, fn)


def contains(text: str | None = None, *, name: str = "contains", ignore_case: bool = True) -> Scorer:
    """Passes when the output contains ``text`` (default: the expected output)."""

    def fn(case: Case) -> Score:
        if text is None:
            _need_expected(case, name)
        needle, hay = (text if text is not None else _text(case.expected)), _text(case.output)
        if ignore_case:
            needle, hay = needle.lower(), hay.lower()
        found = needle in hay
        return Score.verdict(found, f"{'found' if found else 'missing'} {needle[:80]!r}")

    return Scorer(name, fn)


def regex(pattern: str, *, name: str = "regex") -> Scorer:
    """Passes when the pattern matches anywhere in the output."""
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"regex scorer: {pattern!r} is not a valid regular expression ({exc})") from None

    def fn(case: Case) -> Score:
        match = compiled.search(_text(case.output))
        return Score.verdict(match is not None, f"matched {match[0][:80]!r}" if match else f"no match for {pattern!r}")

    return Scorer(name, fn)


def json_schema(schema: Mapping[str, Any], *, name: str = "json_schema") -> Scorer:
    """Passes when the output (a JSON value, or text holding one) validates against ``schema``.

    Needs ``jsonschema`` installed."""
    try:
        import jsonschema  # type: ignore[import-untyped]
    except ImportError:
        raise ImportError("the json_schema scorer needs jsonschema: pip install jsonschema") from None
    validator_cls = jsonschema.validators.validator_for(schema)
    validator_cls.check_schema(schema)
    validator = validator_cls(schema)

    def fn(case: Case) -> Score:
        value = case.output
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                return Score.verdict(False, f"not JSON: {exc}")
        errors = sorted(validator.iter_errors(value), key=lambda e: list(e.path))
        if errors:
            where = "/".join(str(p) for p in errors[0].path) or "(root)"
            return Score.verdict(False, f"{where}: {errors[0].message}"[:200])
        return Score.verdict(True)

    return Scorer(name, fn)


_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    match = _NUMBER.search(_text(value).replace(",", ""))
    return float(match[0]) if match else None


def numeric(*, tolerance: float = 0.0, relative: bool = False, name: str = "numeric") -> Scorer:
    """Passes when the output's number is within ``tolerance`` of the expected one (a share of
    it with ``relative``); the value is the absolute error. Text outputs give their first number."""
    if tolerance < 0:
        raise ValueError(f"numeric scorer: tolerance must be 0 or more, got {tolerance}")

    def fn(case: Case) -> Score:
        _need_expected(case, name)
        want, got = _number(case.expected), _number(case.output)
        if want is None:
            raise ValueError(f"{name}: item {case.item_id or '?'}'s expected output {case.expected!r} is not a number")
        if got is None:
            return Score(None, False, "the output holds no number")
        error = abs(got - want)
        limit = tolerance * abs(want) if relative else tolerance
        return Score(error, error <= limit, f"{got:g} vs {want:g}")

    return Scorer(name, fn)


def similarity(threshold: float = 0.8, *, embedder: Embedder | None = None, name: str = "similarity") -> Scorer:
    """The cosine similarity of the output's and the expected output's embeddings (value), passing
    at ``threshold``. The default embedder is tether's offline ``HashEmbedder`` (words, not meaning);
    pass ``tether.memory.LocalEmbedder()`` for MiniLM sentence embeddings."""
    if embedder is None:
        from tether.memory import HashEmbedder  # imported when used: tether.memory loads SQLite and cryptography

        embedder = HashEmbedder()
    model = embedder

    async def fn(case: Case) -> Score:
        _need_expected(case, name)
        a, b = await model.embed([_text(case.output), _text(case.expected)])
        cosine = sum(x * y for x, y in zip(a, b, strict=True)) / (
            (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))) or 1.0)
        return Score(cosine, cosine >= threshold, f"cosine {cosine:.3f}", {"embedder": model.name})

    return Scorer(name, fn, "numeric")


# -- trace scorers -----------------------------------------------------------------------------


def _trace(case: Case, scorer: str) -> RunTrace:
    if case.trace is None:
        raise ValueError(f"{scorer} scores a run's trace, and item {case.item_id or '?'} has no run")
    return case.trace


def called_tool(tool: str, *, name: str | None = None, **arguments: Any) -> Scorer:
    """Passes when the run called ``tool`` (with these arguments, if given)."""
    label = name or f"called_tool:{tool}"
    return Scorer(label, lambda case: Score.verdict(_trace(case, label).called_tool(tool, **arguments)),
                  of_output=False)


def no_dead_letters(*, name: str = "no_dead_letters") -> Scorer:
    def fn(case: Case) -> Score:
        dead = _trace(case, name).dead_letters
        return Score.verdict(dead == 0, f"{dead} dead letter(s)")

    return Scorer(name, fn, of_output=False)


def cost_below(usd: float, *, name: str | None = None) -> Scorer:
    label = name or f"cost_below:{usd:g}"

    def fn(case: Case) -> Score:
        cost = _trace(case, label).cost
        return Score(cost, cost < usd, f"${cost:.6f}")

    return Scorer(label, fn, of_output=False)


def retries_at_most(n: int, *, name: str | None = None) -> Scorer:
    label = name or f"retries_at_most:{n}"

    def fn(case: Case) -> Score:
        retries = _trace(case, label).retries
        return Score(float(retries), retries <= n, f"{retries} retr{'y' if retries == 1 else 'ies'}")

    return Scorer(label, fn, of_output=False)


def custom(fn: Callable[[Case], Any], *, name: str | None = None, kind: Literal["pass", "numeric"] | None = None
           ) -> Scorer:
    """A scorer from a Python function of a :class:`Case` (sync or async) returning a ``bool``
    (a verdict), a number (a value), a :class:`Score`, or ``(bool | number, reason)``."""
    label = name or getattr(fn, "__name__", None) or "custom"

    async def run(case: Case) -> Score:
        result = fn(case)
        if inspect.isawaitable(result):
            result = await result
        reason = None
        if isinstance(result, tuple) and len(result) == 2:
            result, reason = result
        if isinstance(result, Score):
            return result
        if isinstance(result, bool):
            return Score.verdict(result, reason)
        if isinstance(result, int | float):
            return Score(float(result), None, reason)
        raise TypeError(f"scorer {label} returned {type(result).__name__}; return a bool, a number or a Score")

    return Scorer(label, run, kind or "pass")
