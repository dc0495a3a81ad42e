"""The one call loop, driven by a scripted driver: every branch, no sockets, no clock waits.

Engine steps (``Run``) are answered from a script, attempts from a :class:`MemoryUpstream`;
the driver keeps what the loop asked for (events, steps, sleeps), which is what is checked.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Generator
from typing import Any, cast

import pytest

from tether.middleware import (
    BreakerState,
    BudgetLimits,
    BudgetRefusal,
    Call,
    CallEngine,
    CallRecord,
    Completed,
    Effect,
    Emit,
    Failure,
    FallbackPolicy,
    GaveUp,
    Invoke,
    Invoked,
    MemoryUpstream,
    Outcome,
    Policy,
    PolicySet,
    RateLimitPolicy,
    RetryPolicy,
    Run,
    RunawayError,
    RunawayGuard,
    RunawayTracker,
    Send,
    Sent,
    Sleep,
    Spawn,
    Stopped,
    Streaming,
    Target,
    ToolCall,
    ToolRegistry,
    WorkItem,
    call_flow,
    drive,
    tool_flow,
)
from tether.schemas import Usage

BODY = {"model": "gpt-a", "messages": [{"role": "user", "content": "hi"}]}
OK = Outcome(True, 12.0, {"choices": [{"message": {"content": "hello"}}]}, Usage(input_tokens=3, output_tokens=2))


def failed(status: int = 503, *, kind: str = "http", retry_after_s: float | None = None) -> Outcome:
    return Outcome(False, 5.0, failure=Failure(kind=kind, status_code=status, error_type="APIStatusError",  # type: ignore[arg-type]
                                               message=f"status {status}", retry_after_s=retry_after_s))


class FakeBreakers:
    """The only part of the shared breakers the loop reads itself: the watched state."""

    def __init__(self, open_routes: tuple[str, ...] = (), trips: bool = False) -> None:
        self.open = set(open_routes)
        self.trips = trips  # every outcome would open the breaker: recorded on the bus's loop
        self.folded: list[tuple[str, bool, bool]] = []

    def record_closed(self, route: str, policy: Any, *, ok: bool, counts: bool, call_id: str) -> bool:
        if route in self.open or self.trips:
            return False
        self.folded.append((route, ok, counts))
        return True

    def state(self, route: str) -> BreakerState:
        return BreakerState(state="open", opened_at=time.time()) if route in self.open else BreakerState()

    async def record(self, route: str, policy: Any, *, ok: bool, counts: bool, call_id: str) -> None:
        raise AssertionError("a scripted driver does not run engine steps")


class Script:
    """A driver that answers engine steps from ``runs`` (by step name) and attempts from ``upstream``."""

    def __init__(self, upstream: MemoryUpstream | None = None, **runs: list[Any]) -> None:
        self.upstream = upstream or MemoryUpstream()
        self.runs = runs
        self.events: list[Any] = []
        self.steps: list[str] = []
        self.spawned: list[str] = []
        self.sleeps: list[tuple[float, str]] = []
        self.invokes: list[Invoked] = []

    async def handle(self, effect: Effect) -> Any:
        if isinstance(effect, Emit):
            self.events.append(effect.event.data)
            return None
        if isinstance(effect, Run | Spawn):
            name = getattr(effect.make, "func", effect.make).__name__
            if isinstance(effect, Spawn):
                self.spawned.append(name)
                return None
            self.steps.append(name)
            answers = self.runs.get(name)
            return answers.pop(0) if answers else None
        if isinstance(effect, Sleep):
            self.sleeps.append((effect.seconds, effect.why))
            return None
        if isinstance(effect, Invoke):
            return self.invokes.pop(0)
        assert isinstance(effect, Send)
        return await self.upstream.attempt(effect)

    def run(self, flow: Generator[Effect, Any, Any]) -> Any:
        return asyncio.run(drive(flow, self.handle))

    @property
    def kinds(self) -> list[str]:
        return [type(e).__name__ for e in self.events]

    @property
    def decisions(self) -> list[str]:
        return [e.decision for e in self.events if type(e).__name__.endswith("AttemptFailed")]


def engine(policies: PolicySet | None = None, breakers: FakeBreakers | None = None) -> CallEngine:
    nothing = cast(Any, None)  # the loop never touches the bus, rates or spend: its driver does
    return CallEngine(nothing, policies=policies or PolicySet(), providers={}, tools=ToolRegistry(),
                      breakers=cast(Any, breakers or FakeBreakers()), rates=nothing, spend=nothing, seed=1)


def llm_call(eng: CallEngine | None = None, *, policy: Policy | None = None, runid: str | None = None,
             runaway: RunawayTracker | None = None, rec: CallRecord | None = None,
             deadline_at: float | None = None) -> Call:
    eng = eng or engine()
    item = WorkItem(call_id="c1", kind="llm", provider="openai", model="gpt-a", body=BODY, runid=runid,
                    deadline_at=deadline_at)
    return Call(eng, item, rec or CallRecord.new(item, time.time()), policy or eng.policy_of(item), runaway=runaway)


def test_success() -> None:
    script = Script(MemoryUpstream(OK))
    breakers = FakeBreakers()
    ending = script.run(call_flow(llm_call(engine(breakers=breakers))))
    assert isinstance(ending, Completed)
    assert (ending.attempt, ending.outcome.response) == (1, OK.response)
    assert script.kinds == ["LlmCallCompleted"]
    assert breakers.folded == [("openai:gpt-a", True, True)]  # the closed breaker learns in the caller
    assert script.spawned == ["account"]  # the spend is counted on the bus's loop
    assert script.sleeps == [] and script.steps == []
    assert script.upstream.sends[0].target == Target("openai", "gpt-a")


def test_retryable_failure_then_success() -> None:
    script = Script(MemoryUpstream(failed(503), OK))
    call = llm_call()
    ending = script.run(call_flow(call))
    assert isinstance(ending, Completed) and ending.attempt == 2
    assert script.kinds == ["LlmCallAttemptFailed", "LlmCallCompleted"]
    assert script.decisions == ["retry"]
    [(delay, why)] = script.sleeps
    assert why == "retry" and 0 <= delay <= RetryPolicy().max_delay_s
    assert [a["failure"] is None for a in call.rec.attempts] == [False, True]


def test_retry_after_is_honoured() -> None:
    """A raw HTTP answer (an adapter's) is read by the loop: a 429's Retry-After is the wait."""
    answer = Sent(4.0, status=429, headers=[("retry-after", "7"), ("content-type", "application/json")],
                  body=b'{"error": {"message": "slow down", "type": "rate_limit"}}')
    script = Script(MemoryUpstream(answer, OK))
    call = llm_call()
    call.kind = "openai"
    ending = script.run(call_flow(call))
    assert isinstance(ending, Completed)
    assert script.sleeps[0][0] == pytest.approx(7.0, abs=0.01)


def test_fallback_after_the_target_fails() -> None:
    policy = Policy(retry=RetryPolicy(max_attempts=1), fallback=FallbackPolicy(targets=(Target("openai", "gpt-b"),)))
    script = Script(MemoryUpstream(failed(503), OK))
    call = llm_call(policy=policy)
    ending = script.run(call_flow(call))
    assert isinstance(ending, Completed)
    assert script.decisions == ["fallback"]
    assert [s.target for s in script.upstream.sends] == [Target("openai", "gpt-a"), Target("openai", "gpt-b")]
    assert script.sleeps[0][1] == "fallback"
    assert (call.rec.model, call.rec.fallbacks) == ("gpt-b", 1)
    assert script.events[-1].model == "gpt-b"


def test_give_up_after_max_attempts() -> None:
    script = Script(MemoryUpstream(failed(503), failed(502)))
    ending = script.run(call_flow(llm_call(policy=Policy(retry=RetryPolicy(max_attempts=2)))))
    assert isinstance(ending, GaveUp)
    assert ending.reason == "exhausted" and ending.failure is not None and ending.failure.status_code == 502
    assert script.decisions == ["retry", "give_up"]
    assert script.steps == ["give_up"]  # the dead letter, then nothing more
    assert len(script.upstream.sends) == 2


def test_a_failure_that_is_not_retryable_gives_up_at_once() -> None:
    script = Script(MemoryUpstream(failed(400)))
    ending = script.run(call_flow(llm_call()))
    assert isinstance(ending, GaveUp) and ending.reason == "not_retryable"
    assert script.decisions == ["give_up"]


def test_an_open_breaker_refuses_and_the_call_falls_back() -> None:
    """Nothing is sent to a route whose breaker refused: the gate's answer is the failure."""
    eng = engine(breakers=FakeBreakers(("openai:gpt-a",)))
    policy = Policy(fallback=FallbackPolicy(targets=(Target("openai", "gpt-b"),)))
    refused = (Failure.breaker_open("openai:gpt-a", retry_after_s=30.0), 0.0)
    script = Script(MemoryUpstream(OK), gate=[refused])
    ending = script.run(call_flow(llm_call(eng, policy=policy)))
    assert isinstance(ending, Completed)
    assert script.steps == ["gate"]
    assert [s.target for s in script.upstream.sends] == [Target("openai", "gpt-b")]
    assert script.decisions == ["fallback"]
    assert script.events[0].error.type == "CircuitOpenError"


def test_a_rate_limit_paces_the_attempt() -> None:
    policies = PolicySet(rate_limits={"openai": RateLimitPolicy(requests_per_minute=1)})
    script = Script(MemoryUpstream(OK), gate=[(None, 2.5), (None, 0.0)])
    ending = script.run(call_flow(llm_call(engine(policies))))
    assert isinstance(ending, Completed) and ending.attempt == 1
    assert script.sleeps == [(2.5, "paced")]
    assert script.steps == ["gate", "gate"]


def test_a_budget_refusal_sends_nothing() -> None:
    policies = PolicySet(budgets={("run", "*"): BudgetLimits(usd=0.01)})
    refusal = BudgetRefusal("run", "r1", "usd", 0.01, 0.01, 0.002)
    script = Script(admit=[refusal])
    ending = script.run(call_flow(llm_call(engine(policies), runid="r1", runaway=RunawayTracker())))
    assert isinstance(ending, GaveUp) and ending.reason == "budget"
    assert ending.error.message == refusal.message
    assert script.kinds == ["BudgetExceeded"]
    assert script.steps == ["admit", "give_up"]
    assert script.upstream.sends == []


def test_the_runaway_guard_refuses_a_repeated_call() -> None:
    policies = PolicySet(runaway=RunawayGuard(max_calls_per_run=None, max_identical_calls=1))
    tracker = RunawayTracker()
    first = Script(MemoryUpstream(OK))
    assert isinstance(first.run(call_flow(llm_call(engine(policies), runid="r1", runaway=tracker))), Completed)
    again = Script()
    ending = again.run(call_flow(llm_call(engine(policies), runid="r1", runaway=tracker)))
    assert isinstance(ending, GaveUp) and ending.reason == "runaway"
    assert ending.error.message == "run r1 repeated the same call 2 times (runaway.max_identical_calls=1)"
    assert again.steps == ["give_up"] and again.upstream.sends == []


def test_a_worker_counts_runaways_in_the_runs_record() -> None:
    """Without a tracker of its own (a worker), the engine's admission counts the call in KV."""
    script = Script(admit=["run r1 reached its limit of 500 calls (runaway.max_calls_per_run=500)"])
    ending = script.run(call_flow(llm_call(runid="r1")))
    assert isinstance(ending, GaveUp) and ending.reason == "runaway"
    assert script.steps == ["admit", "give_up"]


def test_the_deadline_ends_the_call() -> None:
    script = Script()
    ending = script.run(call_flow(llm_call(deadline_at=time.time() - 1)))
    assert isinstance(ending, GaveUp) and ending.reason == "deadline"
    assert ending.error.message == "the call's deadline passed before it could complete"


def test_a_stream_is_handed_over_at_its_first_chunk() -> None:
    opened = Sent(8.0, status=200, headers=[("content-type", "text/event-stream")], stream=object(),
                  first=[b"data: {}\n\n"])
    script = Script(MemoryUpstream(opened))
    call = llm_call()
    call.kind = "openai"
    ending = script.run(call_flow(call))
    assert isinstance(ending, Streaming) and ending.sent is opened
    assert script.events == []  # its end is recorded when the caller has read it


def test_a_relayed_stream_stopped_by_its_caller() -> None:
    stopped = Sent(9.0, outcome=failed(499, kind="cancelled"), relayed=True,
                   cancelled=("client_closed", "the caller closed the stream"))
    script = Script(MemoryUpstream(stopped))
    ending = script.run(call_flow(llm_call()))
    assert isinstance(ending, Stopped) and ending.attempt == 1
    assert script.steps == ["record_cancelled"]
    assert script.spawned == []  # the closed breaker's count is kept in the caller


def test_a_breaker_outcome_with_kv_work_is_recorded_on_the_bus_loop() -> None:
    """An outcome that trips a closed breaker, or any outcome while it is open or half-open, writes
    the shared state: that is an engine step, spawned; only a closed breaker's count stays in the caller."""
    breakers = FakeBreakers(trips=True)
    script = Script(MemoryUpstream(OK))
    assert isinstance(script.run(call_flow(llm_call(engine(breakers=breakers)))), Completed)
    assert script.spawned == ["record", "account"] and breakers.folded == []


def test_a_relayed_stream_that_broke_midway_is_not_retried() -> None:
    broke = Sent(9.0, outcome=failed(503), relayed=True)
    script = Script(MemoryUpstream(broke, OK))
    ending = script.run(call_flow(llm_call()))
    assert isinstance(ending, GaveUp) and ending.reason == "not_retryable"
    assert len(script.upstream.sends) == 1 and script.decisions == ["give_up"]


def test_a_worker_resumes_the_loop_from_the_record() -> None:
    """A redelivery: admitted already, its last attempt cut by a lost worker, which counts as failed."""
    item = WorkItem(call_id="c1", kind="llm", provider="openai", model="gpt-a", body=BODY)
    rec = CallRecord.new(item, time.time())
    rec.admitted = True
    rec.in_flight = {"attempt": 1, "target": "openai:gpt-a", "started_at": time.time(), "worker": "w1"}
    script = Script(MemoryUpstream(OK))
    call = llm_call(rec=rec, runid="r1")
    ending = script.run(call_flow(call))
    assert isinstance(ending, Completed) and ending.attempt == 2
    assert script.steps == []  # not admitted twice
    assert script.events[0].error.type == "WorkerLost"
    assert script.decisions == ["retry"]


def tool_call(*, idempotent: bool, policies: PolicySet | None = None,
              tracker: RunawayTracker | None = None) -> ToolCall:
    item = WorkItem(call_id="t1", kind="tool", tool="lookup", arguments={"q": 1}, runid="r1")
    policies = policies or PolicySet()

    async def no_engine() -> CallEngine:
        raise AssertionError("scripted")

    return ToolCall(policies, policies.policy_for("tool:lookup"), item, idempotent, engine=no_engine,
                    runaway=tracker if tracker is not None else RunawayTracker(), source="urn:test")


def broken() -> Invoked:
    error = ConnectionError("reset")
    return Invoked(1.0, error=error, failure=Failure(kind="connection", error_type="ConnectionError",
                                                     message="reset"))


def test_tool_flow_retries_an_idempotent_tool() -> None:
    script = Script()
    script.invokes = [broken(), Invoked(2.0, result=3, recorded=3)]
    done = script.run(tool_flow(tool_call(idempotent=True)))
    assert done.result == 3
    assert script.kinds == ["ToolCallRequested", "ToolCallAttemptFailed", "ToolCallCompleted"]
    assert script.decisions == ["retry"]


def test_tool_flow_never_repeats_a_side_effect() -> None:
    script = Script()
    script.invokes = [broken()]
    done = script.run(tool_flow(tool_call(idempotent=False)))
    assert isinstance(done.error, ConnectionError)
    assert script.decisions == ["give_up"] and script.steps == ["give_up"]


def test_tool_flow_runaway() -> None:
    policies = PolicySet(runaway=RunawayGuard(max_calls_per_run=1, max_identical_calls=None))
    tracker = RunawayTracker()
    script = Script()
    script.invokes = [Invoked(1.0, result=1, recorded=1)]
    script.run(tool_flow(tool_call(idempotent=True, policies=policies, tracker=tracker)))
    done = Script().run(tool_flow(tool_call(idempotent=True, policies=policies, tracker=tracker)))
    assert isinstance(done.error, RunawayError)
    assert str(done.error) == "run r1 reached its limit of 1 calls (runaway.max_calls_per_run=1)"


def test_memory_upstream_says_when_its_script_ran_out() -> None:
    upstream = MemoryUpstream()
    with pytest.raises(AssertionError, match="no answer left"):
        asyncio.run(upstream.attempt(Send(None, 1, 1.0)))


def test_terminal_ids_are_the_uuid5_of_the_call_and_what() -> None:
    """The derived event ids are what ``uuid.uuid5`` gives (JetStream dedupes repeats by them,
    and logs written before keep matching): built without a ``UUID`` object now."""
    from tether.middleware._engine import _NS, terminal_id
    rng = random.Random(7)
    for n in range(2000):
        call_id = f"{rng.getrandbits(128):032x}" + "é✓"[: n % 3]
        what = rng.choice(["requested", "completed", "failed", "dead_lettered", "replayed", ""])
        assert terminal_id(call_id, what) == str(uuid.uuid5(_NS, f"{call_id}/{what}"))


@pytest.mark.parametrize(("value", "plain"), [
    ({"a": [1, 2.5, True, None, "x", {"b": []}]}, True), ([], True), ("s", True), (None, True), (10**30, True),
    ({"a": float("nan")}, False), ([float("inf")], False), ({1: "non-string key"}, False), ((1, 2), False),
    ({"a": (1,)}, False), (b"bytes", False), ({"a": {"b": object()}}, False)])
def test_plain_json_is_what_json_loads_makes(value: Any, plain: bool) -> None:
    from tether.schemas import plain_json
    assert plain_json(value) is plain


def test_a_completed_event_not_plain_is_validated_as_before() -> None:
    """What is not tether's plain case (an int latency, a finish reason that is not a string, a NaN)
    goes through validation: converted or refused exactly as before."""
    from tether.schemas import InvalidEvent, LlmCallCompleted
    call = llm_call()
    eng = call.engine
    out = Outcome(True, 5, response={"x": float("nan")}, finish_reason="stop")
    data = eng.completed_event(call.item, call.rec, 1, out).data
    assert isinstance(data, LlmCallCompleted) and type(data.latency_ms) is float and data.response == {"x": "NaN"}
    with pytest.raises(InvalidEvent):
        eng.completed_event(call.item, call.rec, 1, Outcome(True, 5.0, response={}, finish_reason=7))  # type: ignore[arg-type]


@pytest.mark.parametrize("tail", [b"", b'data: {"choices": [], "x": NaN}\n\n'])
def test_a_streams_completed_event_known_plain_is_the_one_built_before(tail: bytes) -> None:
    """The chunks of a stream the accumulator knows to be plain JSON are not walked again: the
    completed event is the one built (and checked) as before; NaN's case is still validated."""
    from tether._redact import DEFAULT as REDACT
    from tether.middleware import StreamAccumulator
    from tether.schemas import LlmCallCompleted
    call = llm_call()
    eng = call.engine
    acc = StreamAccumulator("openai", "chat", capture=True)
    for text in ("Hello", " there"):
        acc.feed(b'data: {"id": "c1", "choices": [{"index": 0, "delta": {"content": "%s"}}]}\n\n' % text.encode())
    acc.feed(tail)
    assert acc.plain is (not tail)
    chunks = REDACT(acc.chunks)
    events = [eng.completed_event(call.item, call.rec, 1, Outcome(True, 5.0, response=acc.response(), chunks=chunks,
                                                                  chunks_plain=known)) for known in (acc.plain, False)]
    assert events[0].data.model_dump_json() == events[1].data.model_dump_json()
    data = events[0].data
    assert isinstance(data, LlmCallCompleted)
    recorded: Any = data.chunks
    assert len(recorded) == 2 + bool(tail)
    if tail:
        assert recorded[-1]["data"]["x"] == "NaN"


@pytest.mark.parametrize(("arguments", "result", "duration", "trusted"), [
    ({"q": 1, "city": "Zürich", "days": [1, 2.5, None, True]}, {"ok": "sunny"}, 2.5, True),
    ({"q": float("nan")}, [float("inf")], 2.5, False),  # recorded as the strings "NaN" and "Infinity"
    ({"q": 1}, 3, 7, False),  # an int duration: converted to a float, as validation does
])
def test_a_tool_calls_events_skip_validation_only_where_it_would_change_nothing(
        arguments: Any, result: Any, duration: Any, trusted: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """A tool call's ``requested`` and ``completed`` are built without validating again when every field is
    tether's own plain value (the arguments and the result as JSON tether made of them): the payloads and their
    JSON are what validation makes; anything else is validated as before."""
    from tether.schemas import ToolCallCompleted, ToolCallRequested

    skipped: list[str] = []
    for cls in (ToolCallRequested, ToolCallCompleted):
        made_by = cls.trusted.__func__  # type: ignore[attr-defined]

        def trusting(cls: Any, _made_by: Any = made_by, **fields: Any) -> Any:
            skipped.append(cls.__name__)
            return _made_by(cls, **fields)

        monkeypatch.setattr(cls, "trusted", classmethod(trusting))
    call = tool_call(idempotent=True)
    call.item = call.item.model_copy(update={"arguments": arguments, "idempotency_key": "r1:0:abc"})
    call.position = 0
    requested = call.requested_event().data
    validated = ToolCallRequested(call_id="t1", tool="lookup", arguments=arguments, idempotent=True,
                                  idempotency_key="r1:0:abc", mode="inline", position=0)
    completed = call.completed_event(2, Invoked(duration, result=result, recorded=result)).data
    validated_end = ToolCallCompleted(call_id="t1", tool="lookup", attempt=2, result=result, duration_ms=duration)
    for made, expected in ((requested, validated), (completed, validated_end)):
        assert made == expected and made.model_dump_json() == expected.model_dump_json()
        assert made.model_fields_set == expected.model_fields_set
    assert type(completed.duration_ms) is float
    assert skipped == (["ToolCallRequested", "ToolCallCompleted"] if trusted else
                       [] if arguments["q"] != 1 else ["ToolCallRequested"])


def test_a_work_item_made_is_what_model_construct_makes() -> None:
    """``WorkItem.made`` (every call's item, its defaults worked out once) gives what ``model_construct``
    gives: the same fields in the same order, the same fields set, the same JSON; a default body of its own."""
    cases: list[dict[str, Any]] = [
        dict(call_id="c1", kind="llm", runid="r", agentid=None, traceparent="00-x", submitted_at=1.5,
             provider="openai", model="gpt-4o-mini", operation="chat", body={"messages": []}),
        dict(call_id="t1", kind="tool", tool="lookup", arguments={"q": [1, None]}, idempotency_key="r:0:ab",
             runid=None, agentid="bot", traceparent="00-y", submitted_at=2.0),
        dict(call_id="t2", kind="tool", submitted_at=3.0)]
    for fields in cases:
        made, constructed = WorkItem.made(**fields), WorkItem.model_construct(**fields)
        assert made == constructed and list(made.__dict__) == list(constructed.__dict__)
        assert made.model_fields_set == constructed.model_fields_set
        assert made.model_dump_json() == constructed.model_dump_json()
        assert (made.__pydantic_extra__, made.__pydantic_private__) == (None, None)
    first, second = WorkItem.made(call_id="a", kind="tool"), WorkItem.made(call_id="b", kind="tool")
    assert first.body == {} and first.body is not second.body
    assert WorkItem.made(call_id="c", kind="tool").submitted_at > 0
    with pytest.raises(TypeError, match="unknown fields"):
        WorkItem.made(call_id="c", kind="tool", colour="red")
