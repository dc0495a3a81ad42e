"""The fake provider's fault model without a server: the spec, the decision, the latencies."""

from __future__ import annotations

import random
import statistics
from collections import Counter

import pytest

from tether.testing import (
    ErrorResponse,
    FaultRule,
    FixedLatency,
    Hang,
    LogNormalLatency,
    MalformedJSON,
    Reset,
    ResetMidStream,
    SlowFirstByte,
    StallMidStream,
    UniformLatency,
    parse_faults,
    parse_latency,
)
from tether.testing._fake_faults import FaultPlan, down, format_faults, format_latency, parse_duration


def test_the_spec_from_the_docs_parses() -> None:
    rules = parse_faults("429(2s):0.1/chat,500:0.05,hang:0.01,reset_mid_stream(2):0.02=gpt-4o,down@5s:10s")
    assert rules == [
        FaultRule(ErrorResponse(429, retry_after=2.0), probability=0.1, api="chat"),
        FaultRule(ErrorResponse(500), probability=0.05),
        FaultRule(Hang(), probability=0.01),
        FaultRule(ResetMidStream(2), probability=0.02, model="gpt-4o"),
        FaultRule(ErrorResponse(503), start=5.0, duration=10.0, name="down"),
    ]


@pytest.mark.parametrize(("spec", "rule"), [
    ("503", FaultRule(ErrorResponse(503))),
    ("hang(30s)", FaultRule(Hang(30.0))),
    ("slow_first_byte(250ms)", FaultRule(SlowFirstByte(0.25))),
    ("reset", FaultRule(Reset())),
    ("stall_mid_stream", FaultRule(StallMidStream())),
    ("stall_mid_stream(1,30s)#1", FaultRule(StallMidStream(1, 30.0), nth=1)),
    ("malformed_json:0.5/messages", FaultRule(MalformedJSON(), probability=0.5, api="messages")),
    ("500#3", FaultRule(ErrorResponse(500), nth=3)),
    ("429#1-2", FaultRule(ErrorResponse(429), nth=range(1, 3))),
    ("down(10s)", down(10.0)),
    ("down(reset)@1m", FaultRule(Reset(), start=60.0, name="down")),
    ("down(10s,reset)", down(10.0, mode="reset")),
    ("400=openai/gpt-4o:free", FaultRule(ErrorResponse(400), model="openai/gpt-4o:free")),
])
def test_each_effect_and_condition(spec: str, rule: FaultRule) -> None:
    assert parse_faults(spec) == [rule]
    assert parse_faults(format_faults([rule])) == [rule]


@pytest.mark.parametrize("spec", ["999", "teapot", "429:2", "hang(1s,2s)", "429/nowhere", "reset(3)",
                                  "slow_first_byte(soon)", "down(1s,2s)",
                                  "stall_mid_stream(1,2s,3)", "stall_mid_stream(-1)"])
def test_a_bad_spec_is_a_clear_error(spec: str) -> None:
    with pytest.raises(ValueError, match="bad fault rule"):
        parse_faults(spec)


def test_empty_spec_means_no_faults() -> None:
    assert parse_faults("") == []
    assert parse_faults(" , ") == []


def test_durations() -> None:
    assert [parse_duration(t) for t in ("250ms", "1.5s", "2m", "3", ".5")] == [0.25, 1.5, 120.0, 3.0, 0.5]
    with pytest.raises(ValueError):
        parse_duration("1h")


def test_probabilities_share_one_draw_so_the_mix_is_exact() -> None:
    plan = FaultPlan(parse_faults("429:0.2,500:0.1,reset:0.05"))
    rng = random.Random(3)
    outcomes = Counter(
        rule.label if (rule := plan.decide("chat", "m", 0.0, rng.random())) else "ok" for _ in range(20_000))
    assert outcomes["error"] == pytest.approx(0.3 * 20_000, rel=0.05)
    assert outcomes["reset"] == pytest.approx(0.05 * 20_000, rel=0.1)
    assert outcomes["ok"] == pytest.approx(0.65 * 20_000, rel=0.05)


def test_the_same_draws_give_the_same_decisions() -> None:
    def run(seed: int) -> list[str | None]:
        plan, rng = FaultPlan(parse_faults("429:0.3,hang:0.1")), random.Random(seed)
        return [r.label if (r := plan.decide("chat", "m", 0.0, rng.random())) else None for _ in range(200)]

    assert run(5) == run(5)
    assert run(5) != run(6)


def test_nth_counts_matching_requests_even_when_another_rule_fired() -> None:
    plan = FaultPlan([FaultRule(ErrorResponse(500), nth=1), FaultRule(ErrorResponse(503), nth=2)])
    decided = [plan.decide("chat", "m", 0.0, 0.5) for _ in range(3)]
    assert [r.fault.status if r and isinstance(r.fault, ErrorResponse) else None for r in decided] == [500, 503, None]


def test_times_api_and_model_filters() -> None:
    plan = FaultPlan([FaultRule(Reset(), times=2, api="chat", model="gpt-4o*")])
    assert plan.decide("messages", "gpt-4o", 0.0, 0.5) is None
    assert plan.decide("chat", "claude-haiku-4-5", 0.0, 0.5) is None
    assert plan.decide("chat", None, 0.0, 0.5) is None
    assert [plan.decide("chat", "gpt-4o-mini", 0.0, 0.5) is not None for _ in range(3)] == [True, True, False]


def test_a_window_counts_from_when_the_rule_was_armed() -> None:
    plan = FaultPlan([FaultRule(ErrorResponse(503), start=5.0, duration=10.0)], epoch=100.0)
    assert [plan.decide("chat", "m", t, 0.5) is not None for t in (104.9, 105.0, 114.9, 115.0)] == [
        False, True, True, False]
    plan.add(down(1.0), epoch=200.0)
    assert plan.decide("chat", "m", 200.5, 0.5) == down(1.0)
    assert plan.decide("chat", "m", 201.0, 0.5) is None


def test_rules_validate_their_arguments() -> None:
    with pytest.raises(ValueError):
        FaultRule(Reset(), probability=1.5)
    with pytest.raises(ValueError):
        FaultRule(Reset(), api="chats")
    with pytest.raises(ValueError):
        ErrorResponse(200)
    assert ErrorResponse(429).advertised_retry_after == 1.0
    assert ErrorResponse(500).advertised_retry_after is None


def test_latency_specs() -> None:
    assert parse_latency("20ms") == FixedLatency(0.02)
    assert parse_latency("fixed:1s") == FixedLatency(1.0)
    assert parse_latency("uniform:10ms:50ms") == UniformLatency(0.01, 0.05)
    assert parse_latency("lognormal:30ms:200ms") == LogNormalLatency(0.03, 0.2)
    for latency in (FixedLatency(0.02), UniformLatency(0.01, 0.05), LogNormalLatency(0.03, 0.2)):
        assert parse_latency(format_latency(latency)) == latency
    with pytest.raises(ValueError, match="bad latency"):
        parse_latency("normal:1s:2s")


def test_lognormal_latency_has_the_asked_mean_and_p99() -> None:
    latency, rng = LogNormalLatency(mean=0.03, p99=0.2), random.Random(1)
    samples = sorted(latency.sample(rng) for _ in range(50_000))
    assert statistics.fmean(samples) == pytest.approx(0.03, rel=0.05)
    assert samples[int(0.99 * len(samples))] == pytest.approx(0.2, rel=0.1)
    with pytest.raises(ValueError, match="at most"):
        LogNormalLatency(mean=0.01, p99=1.0)
