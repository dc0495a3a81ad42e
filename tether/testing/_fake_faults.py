"""The fake provider's faults and latencies as data, the text spec that writes them, and the
decision of which fault (if any) a request gets.

Nothing here does I/O. ``FaultPlan.decide`` is a function of the armed rules, the request's
API and model, the clock and one uniform draw, so a seeded run is reproducible.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import ClassVar, Literal, TypeAlias

__all__ = [
    "APIS",
    "ErrorResponse",
    "Fault",
    "FaultPlan",
    "FaultRule",
    "FixedLatency",
    "Hang",
    "Latency",
    "Linger",
    "LogNormalLatency",
    "MalformedJSON",
    "Reset",
    "ResetMidStream",
    "SlowFirstByte",
    "StallMidStream",
    "UniformLatency",
    "down",
    "format_faults",
    "format_latency",
    "parse_duration",
    "parse_faults",
    "parse_latency",
]

APIS = ("chat", "responses", "embeddings", "models", "messages", "gemini")


# --- effects -------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ErrorResponse:
    """Answer with this HTTP status and the API's own error body.

    ``retry_after`` (seconds) adds ``Retry-After``/``retry-after-ms`` and the provider's
    rate-limit headers; a 429 without it advertises 1 s.
    """

    status: int
    retry_after: float | None = None
    headers: tuple[tuple[str, str], ...] = ()
    kind: ClassVar[str] = "error"

    def __post_init__(self) -> None:
        if not 400 <= self.status <= 599:
            raise ValueError(f"an error status is 4xx or 5xx, not {self.status}")
        if self.retry_after is not None and self.retry_after < 0:
            raise ValueError("retry_after must be >= 0")

    @property
    def advertised_retry_after(self) -> float | None:
        return 1.0 if self.retry_after is None and self.status == 429 else self.retry_after


@dataclass(frozen=True, slots=True)
class Hang:
    """Accept the request and never answer: after ``seconds`` (or when the client gives up, or the
    server stops) the connection is reset."""

    seconds: float = 300.0
    kind: ClassVar[str] = "hang"


@dataclass(frozen=True, slots=True)
class SlowFirstByte:
    """Wait ``seconds`` before the status line, then answer normally."""

    seconds: float = 2.0
    kind: ClassVar[str] = "slow_first_byte"


@dataclass(frozen=True, slots=True)
class Reset:
    """Close the connection with a TCP reset, without any response."""

    kind: ClassVar[str] = "reset"


@dataclass(frozen=True, slots=True)
class ResetMidStream:
    """Send the headers and ``after_chunks`` stream events (half the body when not streaming),
    then reset the connection."""

    after_chunks: int = 3
    kind: ClassVar[str] = "reset_mid_stream"


@dataclass(frozen=True, slots=True)
class StallMidStream:
    """Send the headers and ``after_chunks`` stream events, then pause ``seconds`` (a client
    may give up or go away meanwhile) before the rest; a complete answer is sent after the pause."""

    after_chunks: int = 3
    seconds: float = 2.0
    kind: ClassVar[str] = "stall_mid_stream"

    def __post_init__(self) -> None:
        if self.after_chunks < 0 or self.seconds < 0:
            raise ValueError("stall_mid_stream needs events >= 0 and a pause >= 0")


@dataclass(frozen=True, slots=True)
class Linger:
    """Send the whole stream, then keep the response open ``seconds`` before ending it, as
    upstreams do that close a stream's connection a little after its last event. A complete
    JSON answer (not streamed) is sent as usual."""

    seconds: float = 0.3
    kind: ClassVar[str] = "linger"


@dataclass(frozen=True, slots=True)
class MalformedJSON:
    """Answer 200 with a truncated JSON body (a truncated event when streaming)."""

    kind: ClassVar[str] = "malformed_json"


Fault: TypeAlias = (ErrorResponse | Hang | SlowFirstByte | Reset | ResetMidStream | StallMidStream | Linger
                    | MalformedJSON)


# --- rules ---------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class FaultRule:
    """When to apply a fault. Every condition given must hold.

    - ``api``: one of ``chat``, ``responses``, ``embeddings``, ``models``, ``messages``, ``gemini``;
    - ``model``: a model name or glob (``gpt-4o*``);
    - ``start``/``duration``: a window in seconds after the rule was armed (at server start
      for constructor rules, at ``set_faults`` for later ones);
    - ``nth``: only the Nth matching request (1-based; an int or a collection such as
      ``range(1, 3)``); matching means api, model and window hold;
    - ``times``: fire at most this many times;
    - ``probability``: the rules with a probability below 1 share one uniform draw per
      request, each taking its own slice, so ``429:0.1,500:0.05`` gives exactly 10 % and 5 %.

    The first rule (in order) that fires wins. ``name`` labels the fault in the request log
    (default: the effect's kind, ``error``/``hang``/...).
    """

    fault: Fault
    probability: float = 1.0
    api: str | None = None
    model: str | None = None
    nth: int | Collection[int] | None = None
    times: int | None = None
    start: float = 0.0
    duration: float | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError(f"probability must be within [0, 1], not {self.probability}")
        if self.api is not None and self.api not in APIS:
            raise ValueError(f"unknown api {self.api!r}; expected one of {', '.join(APIS)}")
        if self.start < 0 or (self.duration is not None and self.duration <= 0):
            raise ValueError("start must be >= 0 and duration > 0")
        if self.times is not None and self.times < 0:
            raise ValueError("times must be >= 0")

    @property
    def label(self) -> str:
        return self.name or self.fault.kind


def down(seconds: float | None, *, start: float = 0.0, mode: Literal["503", "reset"] = "503") -> FaultRule:
    """Every request in the window gets a 503 (or a connection reset); ``None``: until cleared."""
    fault: Fault = Reset() if mode == "reset" else ErrorResponse(503)
    return FaultRule(fault, start=start, duration=seconds, name="down")


@dataclass(slots=True)
class _Armed:
    rule: FaultRule
    epoch: float
    seen: int = 0
    fired: int = 0


class FaultPlan:
    """Rules armed at a moment of the clock, with their counters."""

    def __init__(self, rules: Iterable[FaultRule] = (), *, epoch: float = 0.0) -> None:
        self._armed = [_Armed(rule, epoch) for rule in rules]

    @property
    def rules(self) -> list[FaultRule]:
        return [armed.rule for armed in self._armed]

    def add(self, rule: FaultRule, *, epoch: float) -> None:
        # a new list, swapped in one assignment: a reader in another thread sees old or new
        self._armed = [*self._armed, _Armed(rule, epoch)]

    def decide(self, api: str, model: str | None, now: float, draw: float) -> FaultRule | None:
        """The rule that fires for this request, if any; ``draw`` is uniform in [0, 1)."""
        chosen: FaultRule | None = None
        slice_start = 0.0
        for armed in self._armed:
            rule = armed.rule
            if rule.api is not None and rule.api != api:
                continue
            if rule.model is not None and (model is None or not fnmatchcase(model, rule.model)):
                continue
            elapsed = now - armed.epoch
            if elapsed < rule.start or (rule.duration is not None and elapsed >= rule.start + rule.duration):
                continue
            armed.seen += 1  # counted even after another rule fired, so `nth` means the Nth match
            if chosen is not None:
                continue
            if rule.nth is not None and not _is_nth(rule.nth, armed.seen):
                continue
            if rule.times is not None and armed.fired >= rule.times:
                continue
            if rule.probability < 1.0:
                low, slice_start = slice_start, slice_start + rule.probability
                if not low <= draw < slice_start:
                    continue
            armed.fired += 1
            chosen = rule
        return chosen


def _is_nth(nth: int | Collection[int], seen: int) -> bool:
    return seen == nth if isinstance(nth, int) else seen in nth


# --- latency -------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class FixedLatency:
    seconds: float

    def sample(self, rng: random.Random) -> float:
        return self.seconds


@dataclass(frozen=True, slots=True)
class UniformLatency:
    low: float
    high: float

    def __post_init__(self) -> None:
        if not 0 <= self.low <= self.high:
            raise ValueError("uniform latency needs 0 <= low <= high")

    def sample(self, rng: random.Random) -> float:
        return rng.uniform(self.low, self.high)


_Z99 = 2.3263478740408408  # the standard normal's 99th percentile


@dataclass(frozen=True, slots=True)
class LogNormalLatency:
    """A log-normal distribution given by its mean and its 99th percentile (seconds).

    A log-normal with a given mean cannot have a p99 above about 15 times that mean.
    """

    mean: float
    p99: float
    mu: float = field(init=False, repr=False, compare=False)
    sigma: float = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not 0 < self.mean < self.p99:
            raise ValueError("lognormal latency needs 0 < mean < p99")
        # mean = exp(mu + s^2/2), p99 = exp(mu + z s)  =>  s^2/2 - z s + ln(p99/mean) = 0
        gap = _Z99 * _Z99 - 2 * math.log(self.p99 / self.mean)
        if gap < 0:
            raise ValueError(f"lognormal latency: p99 can be at most {math.exp(_Z99 ** 2 / 2):.1f}x the mean")
        sigma = _Z99 - math.sqrt(gap)
        object.__setattr__(self, "sigma", sigma)
        object.__setattr__(self, "mu", math.log(self.mean) - sigma * sigma / 2)

    def sample(self, rng: random.Random) -> float:
        return rng.lognormvariate(self.mu, self.sigma)


Latency: TypeAlias = FixedLatency | UniformLatency | LogNormalLatency


# --- the text spec -------------------------------------------------------------------------

_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|s|m)?")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, None: 1.0}

_RULE = re.compile(
    r"""
    (?P<effect>\d{3}|[a-z_]+)
    (?:\((?P<args>[^)]*)\))?
    (?::(?P<probability>\d*\.?\d+))?
    (?:@(?P<start>[\d.]+[a-z]*)(?::(?P<duration>[\d.]+[a-z]*))?)?
    (?:\#(?P<nth>\d+)(?:-(?P<nth_last>\d+))?)?
    (?:/(?P<api>[a-z]+))?
    (?:=(?P<model>.+))?
    """,
    re.VERBOSE,
)

_SPLIT = re.compile(r",(?![^(]*\))")  # commas outside parentheses


def parse_duration(text: str) -> float:
    """``250ms``, ``1.5s``, ``2m`` or a bare number of seconds."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"bad duration {text!r}: expected e.g. 250ms, 1.5s, 2m or 3")
    return float(match[1]) * _UNITS[match[2]]


def parse_faults(spec: str) -> list[FaultRule]:
    """Parse the compact fault spec (grammar in ``tether.testing.fake_provider``'s docstring)."""
    return [_parse_rule(item.strip()) for item in _SPLIT.split(spec) if item.strip()]


def _parse_rule(text: str) -> FaultRule:
    match = _RULE.fullmatch(text)
    if match is None:
        raise ValueError(f"bad fault rule {text!r}")
    effect = match["effect"]
    args = [a.strip() for a in match["args"].split(",")] if match["args"] else []
    start = parse_duration(match["start"]) if match["start"] else 0.0
    duration = parse_duration(match["duration"]) if match["duration"] else None
    name = None
    try:
        fault: Fault
        if effect.isdigit():
            _at_most(args, 1, text)
            fault = ErrorResponse(int(effect), parse_duration(args[0]) if args else None)
        elif effect == "down":
            _at_most(args, 2, text)
            mode = "503"
            for arg in args:
                if arg in ("503", "reset"):
                    mode = arg
                elif duration is None:
                    duration = parse_duration(arg)
                else:
                    raise ValueError(f"{text!r}: give the length once")
            fault, name = (Reset() if mode == "reset" else ErrorResponse(503)), "down"
        elif effect in _TIMED:
            _at_most(args, 1, text)
            fault = _TIMED[effect](parse_duration(args[0])) if args else _TIMED[effect]()
        elif effect == "reset_mid_stream":
            _at_most(args, 1, text)
            fault = ResetMidStream(int(args[0])) if args else ResetMidStream()
        elif effect == "stall_mid_stream":
            _at_most(args, 2, text)
            fault = StallMidStream(int(args[0]) if args else 3, parse_duration(args[1]) if len(args) > 1 else 2.0)
        elif effect in _PLAIN:
            _at_most(args, 0, text)
            fault = _PLAIN[effect]()
        else:
            raise ValueError(f"unknown fault {effect!r} in {text!r}")
        nth: int | range | None = None
        if match["nth"]:
            first = int(match["nth"])
            nth = range(first, int(match["nth_last"]) + 1) if match["nth_last"] else first
        probability = float(match["probability"]) if match["probability"] else 1.0
        return FaultRule(fault, probability=probability, api=match["api"], model=match["model"], nth=nth,
                         start=start, duration=duration, name=name)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"bad fault rule {text!r}: {exc}") from None


_TIMED: dict[str, type[Hang] | type[SlowFirstByte] | type[Linger]] = {
    "hang": Hang, "slow_first_byte": SlowFirstByte, "linger": Linger}
_PLAIN: dict[str, type[Reset] | type[MalformedJSON]] = {"reset": Reset, "malformed_json": MalformedJSON}


def _at_most(args: list[str], count: int, text: str) -> None:
    if len(args) > count:
        raise ValueError(f"too many arguments in {text!r}")


def format_faults(rules: Iterable[FaultRule]) -> str:
    """The spec text for rules. The spec cannot say ``times``, custom headers or an ``nth`` that is
    not a single number or a range; such rules are written without them."""
    return ",".join(_format_rule(rule) for rule in rules)


def _format_rule(rule: FaultRule) -> str:
    fault = rule.fault
    if rule.name == "down" and isinstance(fault, Reset | ErrorResponse):
        text = "down(reset)" if isinstance(fault, Reset) else "down"
    elif isinstance(fault, ErrorResponse):
        text = str(fault.status)
        if fault.retry_after is not None:
            text += f"({_seconds(fault.retry_after)})"
    elif isinstance(fault, Hang | SlowFirstByte | Linger):
        text = f"{fault.kind}({_seconds(fault.seconds)})"
    elif isinstance(fault, ResetMidStream):
        text = f"reset_mid_stream({fault.after_chunks})"
    elif isinstance(fault, StallMidStream):
        text = f"stall_mid_stream({fault.after_chunks},{_seconds(fault.seconds)})"
    else:
        text = fault.kind
    if rule.probability < 1.0:
        text += f":{rule.probability:g}"
    if rule.start or rule.duration is not None:
        text += f"@{_seconds(rule.start)}"
        if rule.duration is not None:
            text += f":{_seconds(rule.duration)}"
    if isinstance(rule.nth, int):
        text += f"#{rule.nth}"
    elif isinstance(rule.nth, range) and rule.nth.step == 1 and len(rule.nth):
        text += f"#{rule.nth.start}-{rule.nth.stop - 1}"
    if rule.api:
        text += f"/{rule.api}"
    if rule.model:
        text += f"={rule.model}"
    return text


def _seconds(value: float) -> str:
    return f"{value * 1000:g}ms" if 0 < value < 1 else f"{value:g}s"


def parse_latency(spec: str) -> Latency:
    """``20ms`` or ``fixed:20ms``; ``uniform:10ms:50ms``; ``lognormal:MEAN:P99`` (``lognormal:30ms:2s``)."""
    kind, _, rest = spec.strip().partition(":")
    parts = rest.split(":") if rest else []
    try:
        if not rest:
            return FixedLatency(parse_duration(kind))
        if kind == "fixed" and len(parts) == 1:
            return FixedLatency(parse_duration(parts[0]))
        if kind == "uniform" and len(parts) == 2:
            return UniformLatency(parse_duration(parts[0]), parse_duration(parts[1]))
        if kind == "lognormal" and len(parts) == 2:
            return LogNormalLatency(parse_duration(parts[0]), parse_duration(parts[1]))
    except ValueError as exc:
        raise ValueError(f"bad latency {spec!r}: {exc}") from None
    raise ValueError(f"bad latency {spec!r}: expected 20ms, fixed:20ms, uniform:10ms:50ms or "
                     "lognormal:30ms:200ms")


def format_latency(latency: Latency) -> str:
    if isinstance(latency, FixedLatency):
        return f"fixed:{_seconds(latency.seconds)}"
    if isinstance(latency, UniformLatency):
        return f"uniform:{_seconds(latency.low)}:{_seconds(latency.high)}"
    return f"lognormal:{_seconds(latency.mean)}:{_seconds(latency.p99)}"
