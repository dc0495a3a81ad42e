"""OpenTelemetry export of the traces view.

Decisions and mapping on hand-built runs (in memory, no extra needed); the exporter's
bookkeeping against an in-memory sink; and, with the ``otel`` extra, a real run (executor,
durable calls, fake provider, nats-server, projector) exported over OTLP/HTTP to a real
receiver that decodes the protobuf wire format.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from tether.bus import connect
from tether.middleware import (
    BreakerPolicy,
    CallFailed,
    DurableCalls,
    Executor,
    FallbackPolicy,
    Policy,
    PolicySet,
    ProviderConfig,
    RetryPolicy,
    RunawayGuard,
    Target,
    ToolRegistry,
)
from tether.projections import Item, Projector, TracesView, ViewStore, open_view, view_path
from tether.projections.otel import (
    ExportReport,
    MemoryContent,
    MemorySink,
    OtelExporter,
    OtelSpan,
    RunState,
    Timing,
    capture_from_env,
    content_attributes,
    otel_available,
    otel_span,
    run_failure,
    span_id_of,
    state_path,
    trace_id_of,
    traces_endpoint,
    verdict,
)
from tether.projections.otel._content import content_events
from tether.schemas import (
    CallDeadLettered,
    CircuitOpened,
    ErrorInfo,
    Event,
    LlmCallAttemptFailed,
    LlmCallCompleted,
    LlmCallFailed,
    LlmCallRequested,
    MemoryWritten,
    RunFinished,
    RunStarted,
    ToolCallCompleted,
    ToolCallRequested,
    Usage,
)
from tether.testing import NatsServer
from tether.testing.fake_provider import FakeProvider

from ._runs import T0, TRACEPARENT, Run

TRACE = TRACEPARENT.split("-")[1]
needs_otel = pytest.mark.skipif(not otel_available(), reason="needs the otel extra: pip install 'tether[otel]'")

R = Run("r1", traceparent=TRACEPARENT)
RATE = ErrorInfo(type="RateLimitError", status_code=429, message="slow down")
USAGE = Usage(input_tokens=1000, output_tokens=200, cached_input_tokens=400)


def story() -> list[Event]:
    """A run: a call retried once, a tool, a refused call dead-lettered, a call that never ends."""
    return [
        R(RunStarted(name="answer"), 0),
        R(LlmCallRequested(call_id="c1", provider="openai", model="gpt-4o", parameters={"max_tokens": 50}), 1),
        R(LlmCallAttemptFailed(call_id="c1", provider="openai", model="gpt-4o", attempt=1, error=RATE,
                               latency_ms=200, decision="retry", retry_in_s=0.5), 1.2),
        R(LlmCallCompleted(call_id="c1", provider="openai", model="gpt-4o", attempt=2, usage=USAGE,
                           latency_ms=250, finish_reason="stop"), 2),
        R(ToolCallRequested(call_id="t1", tool="search"), 3),
        R(ToolCallCompleted(call_id="t1", tool="search", result={"hits": 3}, duration_ms=40), 3.1),
        R(LlmCallRequested(call_id="c2", provider="openai", model="gpt-4o"), 4),
        R(LlmCallFailed(call_id="c2", provider="openai", model="gpt-4o", attempts=1,
                        error=ErrorInfo(type="BadRequestError", status_code=400, message="bad temperature")), 4.2),
        R(CallDeadLettered(call_id="c2", call_kind="llm", reason="not_retryable", attempts=1), 4.2),
        R(LlmCallRequested(call_id="lost", provider="openai", model="gpt-4o-mini"), 5),
        R(RunFinished(status="error", error=ErrorInfo(type="AgentError", message="gave up")), 6),
    ]


class Views:
    """A traces view file under ``directory``, fed events batch by batch as the projector would."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.store = ViewStore(TracesView(), view_path(directory, "traces", TracesView.version))
        self.seq = 0

    def add(self, events: Sequence[Event]) -> None:
        items = [Item(self.seq + i, e) for i, e in enumerate(events, 1)]
        self.seq += len(events)
        self.store.apply_batch(items)
        assert self.store.failed_count() == 0

    def rows(self) -> dict[str, dict[str, Any]]:
        cursor = self.store.db.execute("SELECT * FROM spans")
        names = [c[0] for c in cursor.description]
        return {r[0]: dict(zip(names, r, strict=True)) for r in cursor}


@pytest.fixture
def views(tmp_path: Path) -> Iterator[Views]:
    v = Views(tmp_path / "views")
    yield v
    v.store.close()


def at(seconds: float) -> float:
    return T0.timestamp() + seconds


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def exporter(views: Views, sink: MemorySink, clock: Clock, tmp_path: Path, **timing: float) -> OtelExporter:
    return OtelExporter(views.directory, sink, state=tmp_path / "otel" / "state.db", timing=Timing(**timing),
                        clock=clock)


def by_source(spans: Sequence[OtelSpan]) -> dict[str, OtelSpan]:
    return {s.source: s for s in spans}


# -- pure: ids, decisions, the span of a row ----------------------------------------------------


def test_ids_are_derived_not_random() -> None:
    assert span_id_of("c1") == span_id_of("c1") != span_id_of("c2")
    assert 0 < span_id_of("c1") < 2**64
    assert trace_id_of("r1", TRACE) == int(TRACE, 16)
    assert trace_id_of("r1") == trace_id_of("r1") != trace_id_of("r2")
    assert trace_id_of("r1", "0" * 32) == trace_id_of("r1"), "an all-zero trace id is invalid"
    assert 0 < trace_id_of("r1") < 2**128


def test_traces_endpoint_appends_the_signal_path_once() -> None:
    assert traces_endpoint("http://127.0.0.1:4318") == "http://127.0.0.1:4318/v1/traces"
    assert traces_endpoint("http://127.0.0.1:4318/") == "http://127.0.0.1:4318/v1/traces"
    assert traces_endpoint("https://x.example/api/public/otel") == "https://x.example/api/public/otel/v1/traces"
    assert traces_endpoint("http://h:6006/v1/traces") == "http://h:6006/v1/traces"
    with pytest.raises(ValueError, match="http"):
        traces_endpoint("127.0.0.1:4318")
    assert state_path(Path("/h"), "http://a:4318") == state_path(Path("/h"), "http://a:4318/v1/traces")
    assert state_path(Path("/h"), "http://a:4318") != state_path(Path("/h"), "http://b:4318")


def row(**cols: Any) -> dict[str, Any]:
    base = {"span_id": "s", "kind": "llm", "status": "running", "started_at": at(0), "ended_at": None,
            "attributes": "{}"}
    return base | cols


@pytest.mark.parametrize(("span", "run", "now", "expected"), [
    (row(status="ok", ended_at=at(1)), RunState(last_at=at(1)), at(1), "finished"),
    (row(status="error", ended_at=at(1), kind="attempt", attributes=None), None, at(1), "finished"),
    (row(), RunState(last_at=at(100)), at(100 + 599), "wait"),
    (row(), RunState(last_at=at(100)), at(100 + 600), "unfinished"),
    # the outcome folded before the request: wait for the request's attributes, but not forever
    (row(status="ok", ended_at=at(1), attributes=None), RunState(last_at=at(1)), at(2), "wait"),
    (row(status="ok", ended_at=at(1), attributes=None), RunState(last_at=at(1)), at(601), "finished"),
    (row(kind="run", status="ok", ended_at=at(9)), RunState(last_at=at(9), running_calls=1), at(9), "finished"),
    (row(kind="run", status="running"), RunState(last_at=at(9)), at(100), "wait"),
    (row(kind="run", status="running"), RunState(last_at=at(9)), at(609), "unfinished"),
    # a run without lifecycle events: done once quiet with nothing open
    (row(kind="run", status=None), RunState(last_at=at(9)), at(38), "wait"),
    (row(kind="run", status=None), RunState(last_at=at(9)), at(39), "finished"),
    (row(kind="run", status=None), RunState(last_at=at(9), running_calls=1), at(39), "wait"),
    (row(kind="run", status=None), RunState(last_at=at(9), running_calls=1), at(609), "unfinished"),
    # outside any run: silence is measured from the span itself
    (row(started_at=at(5)), None, at(605), "unfinished"),
])
def test_verdict(span: dict[str, Any], run: RunState | None, now: float, expected: str) -> None:
    assert verdict(span, run, now) == expected


def test_a_call_row_becomes_a_genai_client_span(views: Views) -> None:
    views.add(story())
    rows = views.rows()
    call = otel_span(rows["c1"], trace_id=int(TRACE, 16), parent_id=span_id_of("r1"))
    assert (call.name, call.client, call.error, call.parent_id) == ("chat gpt-4o", True, None, span_id_of("r1"))
    assert call.start_ns == round(at(1) * 1e9) and call.end_ns == round(at(2) * 1e9), "request to outcome"
    a = call.attributes
    assert (a["gen_ai.operation.name"], a["gen_ai.provider.name"], a["gen_ai.request.model"],
            a["gen_ai.response.model"]) == ("chat", "openai", "gpt-4o", "gpt-4o")
    assert (a["gen_ai.usage.input_tokens"], a["gen_ai.usage.output_tokens"],
            a["gen_ai.usage.cache_read.input_tokens"]) == (1000, 200, 400)
    assert a["gen_ai.request.max_tokens"] == 50 and a["gen_ai.response.finish_reasons"] == ["stop"]
    assert a["tether.span.id"] == "c1" and "tether.cost.usd" in a

    attempt = otel_span(rows["c1#a1"], trace_id=1, parent_id=span_id_of("c1"))
    # retried, so handled: no error of the call (OTel "Recording errors"), the error kept under tether.*
    assert (attempt.name, attempt.client, attempt.error) == ("attempt 1 gpt-4o", False, None)
    assert "error.type" not in attempt.attributes
    assert (attempt.attributes["tether.error.type"], attempt.attributes["http.response.status_code"],
            attempt.attributes["tether.decision"], attempt.attributes["tether.error.message"]) == (
        "RateLimitError", 429, "retry", "slow down")

    run = otel_span(rows["r1"], trace_id=1, parent_id=None)
    assert (run.name, run.error, run.attributes["gen_ai.operation.name"], run.attributes["gen_ai.agent.name"]) == (
        "invoke_agent bot", "AgentError: gave up", "invoke_agent", "bot")
    assert "gen_ai.usage.input_tokens" not in run.attributes, "tokens once, on the calls: backends add them up"
    tool = otel_span(rows["t1"], trace_id=1, parent_id=None)
    assert (tool.name, tool.attributes["gen_ai.tool.name"], tool.attributes["gen_ai.operation.name"]) == (
        "execute_tool search", "search", "execute_tool")

    lost = otel_span(rows["lost"], trace_id=1, parent_id=None, mode="unfinished", run=RunState(last_at=at(6)))
    assert lost.end_ns == round(at(6) * 1e9) and lost.error is not None and "never finished" in lost.error
    assert lost.attributes["error.type"] == "unfinished" and lost.attributes["tether.unfinished"] is True


# -- the exporter's bookkeeping ---------------------------------------------------------------------


def test_each_finished_span_is_sent_once_and_a_restart_sends_nothing(views: Views, tmp_path: Path) -> None:
    views.add(story())
    sink, clock = MemorySink(), Clock(at(7))
    with exporter(views, sink, clock, tmp_path) as ex:
        report = ex.export()
        sent = by_source(sink.spans)
        assert set(sent) == {"r1", "c1", "c1#a1", "c1#a1/backoff", "c1#a2", "t1", "c2", "c2#dead_letter"}
        assert (report.sent, report.waiting, report.failed, report.view_seq) == (8, 1, 0, 11), "lost is running"
        assert {s.trace_id for s in sink.spans} == {int(TRACE, 16)}
        assert sent["c1#a1"].parent_id == span_id_of("c1") and sent["c1"].parent_id == span_id_of("r1")
        assert sent["r1"].parent_id is None
        assert ex.export().sent == 0
    with exporter(views, sink, clock, tmp_path) as again:
        assert again.export().sent == 0 and len(sink.spans) == 8


def test_a_span_silent_too_long_goes_unfinished_and_a_late_end_becomes_its_child(views: Views,
                                                                                 tmp_path: Path) -> None:
    views.add(story())
    sink, clock = MemorySink(), Clock(at(7))
    with exporter(views, sink, clock, tmp_path) as ex:
        ex.export()
        clock.now = at(6 + 600)
        report = ex.export()
        assert (report.sent, report.unfinished, report.waiting) == (1, 1, 0)
        lost = sink.spans[-1]
        assert (lost.source, lost.parent_id, lost.end_ns) == ("lost", span_id_of("r1"), round(at(6) * 1e9))
        assert ex.export().sent == 0, "still open: nothing new to say"

        views.add([R(LlmCallCompleted(call_id="lost", provider="openai", model="gpt-4o-mini",
                                      usage=Usage(input_tokens=7, output_tokens=3), latency_ms=1000), 700)])
        report = ex.export()
        assert (report.sent, report.late) == (1, 1)
        late = sink.spans[-1]
        assert (late.name, late.parent_id, late.trace_id, late.error) == (
            "chat gpt-4o-mini", span_id_of("lost"), int(TRACE, 16), None)
        assert late.attributes["tether.late"] is True and late.attributes["gen_ai.usage.input_tokens"] == 7
        assert late.span_id != span_id_of("lost")
        assert ex.export().sent == 0
        assert ex.exported()["lost"] == "late"


def test_a_refused_batch_is_sent_next_time(views: Views, tmp_path: Path) -> None:
    views.add(story())
    sink, clock = MemorySink(), Clock(at(7))
    with exporter(views, sink, clock, tmp_path) as ex:
        sink.down = True
        report = ex.export()
        assert (report.sent, report.failed) == (0, 8)
        sink.down = False
        assert ex.export().sent == 8 and len(sink.spans) == 8


def test_batches(views: Views, tmp_path: Path) -> None:
    views.add(story())
    sink = MemorySink()
    with OtelExporter(views.directory, sink, state=tmp_path / "s.db", batch=3, clock=Clock(at(7))) as ex:
        assert ex.export().sent == 8
    assert sink.batches == 3


def test_spans_are_sent_as_they_finish_and_the_run_last(views: Views, tmp_path: Path) -> None:
    events = story()
    sink, clock = MemorySink(), Clock(at(2.5))
    with exporter(views, sink, clock, tmp_path) as ex:
        views.add(events[:4])
        ex.export()
        assert set(by_source(sink.spans)) == {"c1", "c1#a1", "c1#a1/backoff", "c1#a2"}
        views.add(events[4:])
        clock.now = at(7)
        ex.export()
        assert "r1" in by_source(sink.spans) and len(sink.spans) == 8


def test_a_rebuilt_view_resends_nothing(views: Views, tmp_path: Path) -> None:
    views.add(story())
    sink, clock = MemorySink(), Clock(at(7))
    with exporter(views, sink, clock, tmp_path) as ex:
        ex.export()
        views.store.close()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{views.store.path}{suffix}").unlink(missing_ok=True)
        rebuilt = Views(views.directory)
        rebuilt.add(story()[:5])  # shorter than what was read before: the exporter looks at everything again
        views.store = rebuilt.store
        assert ex.export().sent == 0


def test_a_run_without_lifecycle_events_ends_when_quiet(tmp_path: Path) -> None:
    bare = Run("r2", traceparent=None)
    views = Views(tmp_path / "views")
    views.add([bare(LlmCallRequested(call_id="k1", provider="openai", model="gpt-4o"), 0),
               bare(LlmCallFailed(call_id="k1", provider="openai", model="gpt-4o", attempts=1, error=RATE), 1)])
    sink, clock = MemorySink(), Clock(at(2))
    with exporter(views, sink, clock, tmp_path) as ex:
        ex.export()
        assert set(by_source(sink.spans)) == {"k1"}
        clock.now = at(1 + 30)
        ex.export()
        run = by_source(sink.spans)["r2"]
        assert (run.name, run.error, run.end_ns) == ("invoke_agent bot", "1 call failed: RateLimitError: slow down "
                                                     "(chat gpt-4o)", round(at(1) * 1e9))
        assert run.attributes["error.type"] == "RateLimitError"
        assert run.trace_id == trace_id_of("r2") == by_source(sink.spans)["k1"].trace_id
    views.store.close()


def test_a_sub_agent_joins_its_parent_trace_and_the_trace_is_pinned(tmp_path: Path) -> None:
    parent, child = Run("p", traceparent=None), Run("p-sub", agent="helper", traceparent=None)
    views = Views(tmp_path / "views")
    views.add([parent(RunStarted(), 0), child(RunStarted(parent_run_id="p"), 1), child(RunFinished(status="ok"), 2)])
    sink, clock = MemorySink(), Clock(at(3))
    with exporter(views, sink, clock, tmp_path) as ex:
        ex.export()
        [sub] = sink.spans
        assert (sub.source, sub.trace_id, sub.parent_id) == ("p-sub", trace_id_of("p"), span_id_of("p"))
        # the parent run's traceparent turns up late: the trace it was exported in stays
        views.add([Run("p", traceparent=TRACEPARENT)(RunFinished(status="ok"), 4)])
        ex.export()
        assert by_source(sink.spans)["p"].trace_id == trace_id_of("p")
    views.store.close()


def test_memory_writes_go_with_their_run_and_breaker_transitions_stay_home(tmp_path: Path) -> None:
    views = Views(tmp_path / "views")
    worker = Run(None, agent=None)
    views.add([R(RunStarted(), 0), R(MemoryWritten(namespace="agent:bot", key="q1", version=1, text="hi"), 1),
               worker(CircuitOpened(route="openai:gpt-4o", reason="5 failures in a row", cooldown_s=30), 1.5),
               R(RunFinished(status="ok"), 2)])
    sink = MemorySink()
    with exporter(views, sink, Clock(at(3)), tmp_path) as ex:
        report = ex.export()
        assert (report.sent, report.waiting) == (2, 0)
        memory = by_source(sink.spans)["mem:agent:bot/q1@1"]
        assert (memory.name, memory.parent_id) == ("write_memory agent:bot", span_id_of("r1"))
        assert memory.attributes["tether.memory.key"] == "q1"
    views.store.close()


def test_what_backends_group_price_and_draw_by(tmp_path: Path) -> None:
    """Session and user from the root run (tags first), the answering model and tether's cost
    on a call that fell back, and a span kind for every kind of span."""
    root, sub = Run("r9", tenant="acme"), Run("r9-sub", agent="helper", tenant="acme")
    bare = Run("r8", tenant="acme")
    views = Views(tmp_path / "views")
    views.add([
        root(RunStarted(tags=("demo", "session:chat-42", "user:ana")), 0),
        sub(RunStarted(parent_run_id="r9"), 0.5),
        sub(LlmCallRequested(call_id="f1", provider="openai", model="gpt-4o"), 1),
        sub(LlmCallAttemptFailed(call_id="f1", provider="openai", model="gpt-4o", attempt=1, error=RATE,
                                 decision="fallback", next_provider="openai", next_model="gpt-4o-mini"), 1.1),
        sub(LlmCallCompleted(call_id="f1", provider="openai", model="gpt-4o-mini", attempt=2, usage=USAGE), 1.5),
        sub(RunFinished(status="ok"), 2),
        root(MemoryWritten(namespace="agent:bot", key="k", version=1, text="hi"), 2.5),
        root(LlmCallRequested(call_id="e1", provider="openai", model="text-embedding-3-small",
                              operation="embeddings"), 2.6),
        root(LlmCallCompleted(call_id="e1", provider="openai", model="text-embedding-3-small",
                              usage=Usage(input_tokens=8)), 2.7),
        root(RunFinished(status="ok"), 3),
        bare(RunStarted(), 0), bare(RunFinished(status="ok"), 1),
    ])
    sink = MemorySink()
    with exporter(views, sink, Clock(at(9)), tmp_path) as ex:
        ex.export()
    sent = by_source(sink.spans)
    assert {s.attributes["session.id"] for s in sink.spans if s.source != "r8"} == {"chat-42"}, "the root's tag"
    assert {s.attributes["user.id"] for s in sink.spans if s.source != "r8"} == {"ana"}
    assert (sent["r8"].attributes["session.id"], sent["r8"].attributes["user.id"]) == ("r8", "acme"), \
        "untagged: the run, the tenant"
    assert sent["r8"].attributes["gen_ai.conversation.id"] == "r8"
    call = sent["f1"].attributes
    assert (call["gen_ai.request.model"], call["gen_ai.response.model"], call["llm.model_name"]) == (
        "gpt-4o", "gpt-4o-mini", "gpt-4o-mini"), "priced by the model that answered"
    assert call["llm.cost.total"] == call["gen_ai.usage.cost"] == call["tether.cost.usd"] == \
        views.rows()["f1"]["cost_usd"]
    assert isinstance(call["llm.cost.total"], float) and call["llm.cost.total"] > 0
    assert {s.source: s.attributes["openinference.span.kind"] for s in sink.spans} == {
        "r9": "AGENT", "r9-sub": "AGENT", "r8": "AGENT", "f1": "LLM", "f1#a1": "CHAIN", "f1#a1/fallback": "CHAIN",
        "f1#a2": "CHAIN", "mem:agent:bot/k@1": "CHAIN", "e1": "EMBEDDING"}
    assert sent["e1"].attributes["embedding.model_name"] == "text-embedding-3-small"
    assert "llm.model_name" not in sent["e1"].attributes
    assert not [s.name for s in sink.spans if s.error is not None], "a fallback that answered is no error"
    views.store.close()


def test_a_failed_run_says_what_failed(tmp_path: Path) -> None:
    run = Run("r7")
    refused = ErrorInfo(type="BadRequestError", status_code=400, message="temperature must be at most 2")
    views = Views(tmp_path / "views")
    views.add([run(RunStarted(), 0),
               run(LlmCallRequested(call_id="x1", provider="openai", model="o3-mini"), 1),
               run(LlmCallAttemptFailed(call_id="x1", provider="openai", model="o3-mini", attempt=1, error=refused,
                                        decision="give_up"), 1.1),
               run(LlmCallFailed(call_id="x1", provider="openai", model="o3-mini", attempts=1, error=refused), 1.1),
               run(CallDeadLettered(call_id="x1", call_kind="llm", reason="not_retryable", attempts=1), 1.2),
               run(RunFinished(status="error"), 2)])
    sink = MemorySink()
    with exporter(views, sink, Clock(at(9)), tmp_path) as ex:
        ex.export()
    sent = by_source(sink.spans)
    assert sent["r7"].error == "1 call dead-lettered: BadRequestError: temperature must be at most 2 (chat o3-mini)"
    assert sent["r7"].attributes["error.type"] == "BadRequestError"
    assert sent["x1#a1"].error is not None and sent["x1#a1"].attributes["error.type"] == "BadRequestError", \
        "the attempt it gave up on failed"
    assert run_failure(RunState(failed_calls=2, dead_lettered=1, failures=("A (chat a)", "B (chat b, dead-lettered)"))
                       ) == "2 calls failed (1 dead-lettered): A (chat a); B (chat b, dead-lettered)"
    views.store.close()


CAPTURED = {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "what is a span?"}],
            "max_tokens": 50}
ANSWER = {"id": "chatcmpl-1", "model": "gpt-4o", "choices": [{"index": 0, "finish_reason": "stop", "message": {
    "role": "assistant", "content": "A timed operation.",
    "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "search", "arguments": "{\"q\":1}"}}]}}]}


def test_content_is_opt_in_and_cut_at_its_limit(tmp_path: Path) -> None:
    run = Run("r6")
    events = [run(RunStarted(input={"question": "what is a span?"}), 0),
              run(LlmCallRequested(call_id="k1", provider="openai", model="gpt-4o", request=CAPTURED), 1),
              run(LlmCallCompleted(call_id="k1", provider="openai", model="gpt-4o", response=ANSWER,
                                   finish_reason="stop", usage=Usage(input_tokens=5, output_tokens=4)), 2),
              run(ToolCallRequested(call_id="t9", tool="search", arguments={"q": 1}), 3),
              run(ToolCallCompleted(call_id="t9", tool="search", result={"hits": ["x" * 100]}), 4),
              run(RunFinished(status="ok", output={"answer": "A timed operation."}), 5)]
    content = MemoryContent({seq: e for seq, e in enumerate(events, 1)})

    def export(state: str, **options: Any) -> dict[str, OtelSpan]:
        sink = MemorySink()
        views = Views(tmp_path / state)
        views.add(events)
        with OtelExporter(views.directory, sink, state=tmp_path / f"{state}.db", clock=Clock(at(9)),
                          **options) as ex:
            ex.export()
        views.store.close()
        return by_source(sink.spans)

    off = export("off")
    assert not [k for s in off.values() for k in s.attributes if k.startswith(("input.", "output.", "gen_ai.input",
                                                                               "gen_ai.output", "gen_ai.tool.call.a",
                                                                               "gen_ai.tool.call.r"))]
    on = export("on", content=content)
    call, tool, top = on["k1"].attributes, on["t9"].attributes, on["r6"].attributes
    assert json.loads(str(call["gen_ai.input.messages"])) == [
        {"role": "system", "parts": [{"type": "text", "content": "be brief"}]},
        {"role": "user", "parts": [{"type": "text", "content": "what is a span?"}]}]
    assert json.loads(str(call["gen_ai.output.messages"])) == [{"role": "assistant", "finish_reason": "stop", "parts": [
        {"type": "text", "content": "A timed operation."},
        {"type": "tool_call", "id": "call_1", "name": "search", "arguments": {"q": 1}}]}]
    assert (json.loads(str(call["input.value"])), call["input.mime_type"]) == (CAPTURED, "application/json")
    assert json.loads(str(call["output.value"])) == ANSWER
    assert (tool["gen_ai.tool.call.arguments"], tool["input.value"]) == ('{"q":1}', '{"q":1}')
    assert json.loads(str(tool["gen_ai.tool.call.result"])) == {"hits": ["x" * 100]}
    assert (top["input.value"], top["output.value"]) == ('{"question":"what is a span?"}',
                                                         '{"answer":"A timed operation."}')
    assert "tether.content.truncated" not in call

    cut = export("cut", content=content, content_limit=60)
    call, tool = cut["k1"].attributes, cut["t9"].attributes
    assert len(str(call["input.value"])) == 60 and call["input.mime_type"] == "text/plain"
    assert "gen_ai.input.messages" not in call, "a cut JSON document is none: left out"
    assert set(call["tether.content.truncated"]) == {"input.value", "gen_ai.input.messages", "output.value",
                                                      "gen_ai.output.messages"}
    assert tool["gen_ai.tool.call.arguments"] == '{"q":1}' and len(str(tool["gen_ai.tool.call.result"])) == 60
    with pytest.raises(ValueError, match="content_limit"):
        OtelExporter(tmp_path, MemorySink(), state=tmp_path / "x.db", content=content, content_limit=0)


def test_a_log_that_cannot_be_read_sends_nothing_until_it_can(tmp_path: Path) -> None:
    """With content capture on, a log away (NATS down) is no reason to send spans without it."""
    run = Run("r4")
    events = [run(RunStarted(), 0), run(LlmCallRequested(call_id="k1", provider="openai", model="gpt-4o",
                                                         request=CAPTURED), 1),
              run(LlmCallCompleted(call_id="k1", provider="openai", model="gpt-4o", response=ANSWER), 2),
              run(RunFinished(status="ok"), 3)]

    class Away(MemoryContent):
        down = True

        def events(self, seqs: Sequence[int]) -> Mapping[int, Event]:
            if self.down:
                raise ConnectionError("nats: no servers available for connection")
            return super().events(seqs)

    content = Away({seq: e for seq, e in enumerate(events, 1)})
    views = Views(tmp_path / "views")
    views.add(events)
    sink = MemorySink()
    with exporter(views, sink, Clock(at(9)), tmp_path) as ex:
        ex.content = content
        report = ex.export()
        assert report.sent == 0 and report.error is not None and "ConnectionError" in report.error
        assert sink.spans == []
        content.down = False
        assert ex.export().sent == 2
    assert "gen_ai.input.messages" in by_source(sink.spans)["k1"].attributes
    views.store.close()


def test_content_of_events_that_are_not_the_spans_own_is_left_out() -> None:
    run = Run("r5")
    other = run(LlmCallRequested(call_id="other", provider="openai", model="gpt-4o", request=CAPTURED), 1)
    span = {"kind": "llm", "span_id": "k1", "first_seq": 1, "last_seq": 2}
    assert content_events(span, {1: other}) == (None, None)
    assert content_attributes("llm", None, None) == {}
    assert capture_from_env({"OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "true"})
    assert not capture_from_env({})


@pytest.mark.anyio
async def test_follow_sends_when_woken_and_stops(views: Views, tmp_path: Path) -> None:
    events = story()
    views.add(events[:4])
    sink = MemorySink()
    stop, wake = asyncio.Event(), asyncio.Event()
    reports: asyncio.Queue[ExportReport] = asyncio.Queue()
    with exporter(views, sink, Clock(at(7)), tmp_path) as ex:
        task = asyncio.create_task(ex.follow(stop, interval=60, wake=wake, on_report=reports.put_nowait))
        assert (await asyncio.wait_for(reports.get(), 30)).sent == 4
        views.add(events[4:])
        wake.set()  # as a notification from the projector would
        assert (await asyncio.wait_for(reports.get(), 30)).sent == 4
        stop.set()
        await asyncio.wait_for(task, 30)
    assert len(sink.spans) == 8


def test_no_view_yet_or_an_unreadable_one(tmp_path: Path) -> None:
    with OtelExporter(tmp_path / "nothing", MemorySink(), state=tmp_path / "s.db") as ex:
        assert ex.export().view_seq is None
    broken = tmp_path / "broken"
    broken.mkdir()
    view_path(broken, "traces", TracesView.version).write_bytes(b"not a database" * 100)
    with OtelExporter(broken, MemorySink(), state=tmp_path / "s.db") as ex:
        report = ex.export()
        assert report.error is not None and "DatabaseError" in report.error and report.sent == 0


# -- a real run, a real receiver ---------------------------------------------------------------------

CHAT = {"messages": [{"role": "user", "content": "what is a span?"}], "max_tokens": 20}
RUN, SUB = "run-otel", "run-otel-sub"


def policies() -> PolicySet:
    retry = RetryPolicy(max_attempts=3, base_delay_s=0.01, max_delay_s=0.05)
    off = BreakerPolicy(enabled=False)
    return PolicySet(routes={
        "*": Policy(retry=retry, timeout_s=5.0, breaker=off),
        "fake:gpt-a": Policy(retry=RetryPolicy(max_attempts=2, base_delay_s=0.01, max_delay_s=0.02), timeout_s=5.0,
                             breaker=off, fallback=FallbackPolicy(targets=(Target("fake", "gpt-4o-mini"),),
                                                                  max_fallbacks=1)),
    }, runaway=RunawayGuard(max_calls_per_run=None, max_identical_calls=None))


@needs_otel
@pytest.mark.anyio
@pytest.mark.nats
async def test_a_real_run_reaches_a_real_otlp_receiver(fresh_nats_server: NatsServer, tmp_path: Path) -> None:
    from tether.projections.otel import OtlpHttpSink
    from tether.testing.otlp import OtlpReceiver

    tools = ToolRegistry()
    tries: list[int] = []

    @tools.tool("add", idempotent=True)
    def add(a: int, b: int) -> int:
        tries.append(1)
        if len(tries) == 1:
            raise ConnectionError("flaky")
        return a + b

    views = tmp_path / "views"
    clock = Clock(0.0)
    async with FakeProvider(seed=7) as fake, await connect(fresh_nats_server.url, home=tmp_path / "home") as bus:
        executor = Executor(bus, policies=policies(), providers={"fake": ProviderConfig("fake", "openai", fake.url)},
                            tools=tools, concurrency=8, seed=1)
        await executor.start()
        durable = await DurableCalls(bus).start()
        who = {"runid": RUN, "agentid": "bot"}
        try:
            await bus.publish(Event.of(RunStarted(name="otel"), traceparent=TRACEPARENT, **who))
            fake.set_faults("429(0.05s)#1")
            retried = await durable.llm("fake", "gpt-4o-mini", CHAT, traceparent=TRACEPARENT, **who)
            fake.set_faults("503=gpt-a")
            fell_back = await durable.llm("fake", "gpt-a", CHAT, **who)
            fake.clear_faults()
            await durable.tool("add", {"a": 2, "b": 3}, **who)
            sub = {"runid": SUB, "agentid": "helper"}  # a sub-agent, no traceparent of its own
            await bus.publish(Event.of(RunStarted(name="helper", parent_run_id=RUN), **sub))
            helped = await durable.llm("fake", "gpt-4o-mini", CHAT, **sub)
            await bus.publish(Event.of(RunFinished(status="ok"), **sub))
            fake.set_faults("400#1")
            with pytest.raises(CallFailed) as refused:
                await durable.llm("fake", "gpt-4o", CHAT, **who)
            fake.clear_faults()
            # a call whose worker died before reporting anything: requested, then silence
            await bus.publish(Event.of(LlmCallRequested(call_id="lost-1", provider="fake", model="gpt-4o-mini",
                                                        mode="durable"), **who))
            await bus.publish(Event.of(RunFinished(status="error"), **who))
            await bus.flush()
        finally:
            await durable.close()
            await executor.stop()

        with OtlpReceiver() as receiver:
            sink = OtlpHttpSink(receiver.url, timeout=5.0)
            async with Projector(bus, [TracesView()], views, durable=None) as projector:
                await projector.catch_up()
                ex = OtelExporter(views, sink, state=tmp_path / "otel.db", clock=clock)
                try:
                    clock.now = _last_event_time(views) + 1
                    report = await ex.aexport()
                    assert receiver.rejected == [] and report.failed == 0
                    spans = receiver.spans()
                    assert report.sent == len(spans) and report.waiting == 1, "all but the lost call"
                    _check_tree(spans, retried.call_id, fell_back.call_id, helped.call_id, refused.value.call_id,
                                retried.usage, fell_back.usage)
                    assert {s.resource["service.name"] for s in spans} == {"tether"}
                    assert {s.resource["openinference.project.name"] for s in spans} == {"tether"}
                    assert {s.scope for s in spans} == {"tether"}
                    assert receiver.requests[0].headers["content-type"] == "application/x-protobuf"

                    requests = len(receiver.requests)
                    assert (await ex.aexport()).sent == 0
                    ex.close()
                    ex = OtelExporter(views, sink, state=tmp_path / "otel.db", clock=clock)  # a restart
                    assert (await ex.aexport()).sent == 0
                    assert len(receiver.requests) == requests, "nothing new: nothing sent"

                    clock.now += 600  # the run has been silent ten minutes: the lost call is a crash
                    assert (await ex.aexport()).unfinished == 1
                    [lost] = receiver.spans()[len(spans):]
                    root = _one(spans, "invoke_agent bot")
                    assert (lost.name, lost.status, lost.parent_id, lost.trace_id) == (
                        "chat gpt-4o-mini", "ERROR", root.span_id, TRACE)
                    assert lost.attributes["tether.unfinished"] is True
                    assert lost.attributes["error.type"] == "unfinished"

                    # ... and it finishes after all: a late child carries the real end and the tokens
                    await bus.publish(Event.of(LlmCallCompleted(call_id="lost-1", provider="fake", model="gpt-4o-mini",
                                                                usage=Usage(input_tokens=11, output_tokens=5),
                                                                latency_ms=20), **who))
                    await bus.flush()
                    await projector.catch_up()
                    assert (await ex.aexport()).late == 1
                    late = receiver.spans()[-1]
                    assert (late.name, late.status, late.parent_id, late.trace_id) == (
                        "chat gpt-4o-mini", "UNSET", lost.span_id, TRACE)
                    assert late.attributes["gen_ai.usage.input_tokens"] == 11
                    assert late.attributes["tether.late"] is True
                    assert (await ex.aexport()).sent == 0
                finally:
                    ex.close()
                    sink.close()


@needs_otel
@pytest.mark.anyio
@pytest.mark.nats
async def test_content_is_read_back_from_the_log_when_asked(fresh_nats_server: NatsServer, tmp_path: Path) -> None:
    """Opt-in content capture on a real run: bodies read from the EVENTS stream by sequence
    (LogContent, from the exporter's thread), sent over OTLP/HTTP to a real receiver."""
    from tether.projections.otel import LogContent, OtlpHttpSink
    from tether.testing.otlp import OtlpReceiver

    tools = ToolRegistry()

    @tools.tool("add", idempotent=True)
    def add(a: int, b: int) -> int:
        return a + b

    views = tmp_path / "views"
    async with FakeProvider(seed=7) as fake, await connect(fresh_nats_server.url, home=tmp_path / "home") as bus:
        executor = Executor(bus, policies=policies(), providers={"fake": ProviderConfig("fake", "openai", fake.url)},
                            tools=tools, concurrency=4, seed=1)
        await executor.start()
        durable = await DurableCalls(bus).start()
        who = {"runid": RUN, "agentid": "bot"}
        try:
            await bus.publish(Event.of(RunStarted(name="otel", input={"q": "what is a span?"}), **who))
            asked = await durable.llm("fake", "gpt-4o-mini", CHAT, **who)
            summed = await durable.tool("add", {"a": 2, "b": 3}, **who)
            await bus.publish(Event.of(RunFinished(status="ok", output={"a": "a timed operation"}), **who))
            await bus.flush()
        finally:
            await durable.close()
            await executor.stop()
        with OtlpReceiver() as receiver:
            sink = OtlpHttpSink(receiver.url, timeout=5.0)
            async with Projector(bus, [TracesView()], views, durable=None) as projector:
                await projector.catch_up()
                with OtelExporter(views, sink, state=tmp_path / "otel.db", clock=Clock(_last_event_time(views) + 1),
                                  content=LogContent(bus, asyncio.get_running_loop())) as ex:
                    refused = ex.export()  # from the loop's own thread it would wait on itself: refused
                    assert refused.sent == 0 and "another thread" in str(refused.error)
                    report = await ex.aexport()
            sink.close()
            assert report.sent == 3 and report.failed == 0
            spans = {s.attributes["tether.span.id"]: s.attributes for s in receiver.spans()}
    call, tool, run = spans[asked.call_id], spans[summed.call_id], spans[RUN]
    assert json.loads(call["gen_ai.input.messages"]) == [
        {"role": "user", "parts": [{"type": "text", "content": "what is a span?"}]}]
    assert json.loads(call["input.value"]) == CHAT and call["input.mime_type"] == "application/json"
    [answer] = json.loads(call["gen_ai.output.messages"])
    assert answer["role"] == "assistant" and answer["parts"][0]["type"] == "text" and answer["parts"][0]["content"]
    assert json.loads(call["output.value"])["choices"][0]["message"]["content"] == answer["parts"][0]["content"]
    assert (json.loads(tool["gen_ai.tool.call.arguments"]), tool["gen_ai.tool.call.result"]) == ({"a": 2, "b": 3},
                                                                                                  "5")
    assert (json.loads(run["input.value"]), json.loads(run["output.value"])) == ({"q": "what is a span?"},
                                                                                 {"a": "a timed operation"})


def _last_event_time(views: Path) -> float:
    path = open_view(views, "traces")
    assert path is not None
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return float(db.execute("SELECT max(last_at) FROM runs").fetchone()[0])
    finally:
        db.close()


def _one(spans: Sequence[Any], name: str) -> Any:
    found = [s for s in spans if s.name == name]
    assert len(found) == 1, (name, [s.name for s in spans])
    return found[0]


def _check_tree(spans: Sequence[Any], retried: str, fell_back: str, helped: str, refused: str,
                retried_usage: Any, fell_back_usage: Any) -> None:
    by_id = {s.span_id: s for s in spans}
    assert len(by_id) == len(spans), "span ids are unique"
    assert {s.trace_id for s in spans} == {TRACE}, "one trace, the traceparent's, the sub-agent's included"
    root = _one(spans, "invoke_agent bot")
    assert root.parent_id is None and root.status == "ERROR"
    assert (root.attributes["gen_ai.operation.name"], root.attributes["gen_ai.agent.name"]) == ("invoke_agent", "bot")
    for s in spans:
        assert s.parent_id is None or s.parent_id in by_id, f"{s.name}: its parent was sent too"
        assert s.start_ns <= s.end_ns

    def call(call_id: str) -> Any:
        return by_id[f"{span_id_of(call_id):016x}"]

    def children(span: Any) -> list[Any]:
        return sorted((s for s in spans if s.parent_id == span.span_id), key=lambda s: (s.start_ns, s.name))

    one = call(retried)
    assert (one.name, one.kind, one.status, one.parent_id) == ("chat gpt-4o-mini", "CLIENT", "UNSET", root.span_id)
    a = one.attributes
    assert (a["gen_ai.operation.name"], a["gen_ai.provider.name"], a["gen_ai.request.model"],
            a["gen_ai.response.model"]) == ("chat", "fake", "gpt-4o-mini", "gpt-4o-mini")
    assert (a["gen_ai.usage.input_tokens"], a["gen_ai.usage.output_tokens"]) == (
        retried_usage.input_tokens, retried_usage.output_tokens)
    assert a["gen_ai.request.max_tokens"] == 20
    kids = children(one)
    assert [k.name for k in kids] == ["attempt 1 gpt-4o-mini", "backoff", "attempt 2 gpt-4o-mini"]
    assert (kids[0].status, kids[0].attributes["tether.error.type"], kids[0].attributes["http.response.status_code"],
            kids[0].attributes["tether.decision"]) == ("UNSET", "RateLimitError", 429, "retry"), "retried: handled"
    assert "error.type" not in kids[0].attributes
    assert kids[1].end_ns - kids[1].start_ns == pytest.approx(50_000_000, abs=1_000_000), "the Retry-After wait"
    assert kids[2].status == "UNSET"

    hop = call(fell_back)
    assert (hop.name, hop.attributes["gen_ai.request.model"], hop.attributes["gen_ai.response.model"]) == (
        "chat gpt-a", "gpt-a", "gpt-4o-mini")
    assert hop.attributes["gen_ai.usage.input_tokens"] == fell_back_usage.input_tokens
    assert [k.name for k in children(hop)] == ["attempt 1 gpt-a", "backoff", "attempt 2 gpt-a",
                                               "fallback fake:gpt-4o-mini", "attempt 3 gpt-4o-mini"]
    assert [k.status for k in children(hop) if k.name.startswith("attempt")] == ["UNSET", "UNSET", "UNSET"]
    assert hop.attributes["llm.model_name"] == "gpt-4o-mini", "the answering model prices the call"
    assert hop.attributes.get("llm.cost.total") == hop.attributes.get("tether.cost.usd")

    tool = _one(spans, "execute_tool add")
    assert (tool.kind, tool.status, tool.parent_id, tool.attributes["gen_ai.tool.name"]) == (
        "INTERNAL", "UNSET", root.span_id, "add")
    assert [(k.name, k.status) for k in children(tool)] == [("attempt 1", "UNSET"), ("backoff", "UNSET"),
                                                            ("attempt 2", "UNSET")]

    bad = call(refused)
    assert (bad.name, bad.status, bad.attributes["error.type"]) == ("chat gpt-4o", "ERROR", "BadRequestError")
    assert "BadRequestError" in bad.status_message
    assert [(k.name, k.status) for k in children(bad)] == [("attempt 1 gpt-4o", "ERROR"),
                                                           ("dead_letter not_retryable", "ERROR")], "gave up: failed"
    # only what failed is an error: the run, the call and its last attempt, the dead letter
    assert sorted(s.name for s in spans if s.status == "ERROR") == [
        "attempt 1 gpt-4o", "chat gpt-4o", "dead_letter not_retryable", "invoke_agent bot"]
    assert root.status_message.startswith("1 call dead-lettered: BadRequestError"), root.status_message
    assert root.status_message.endswith("(chat gpt-4o)") and root.attributes["error.type"] == "BadRequestError"
    kinds = {s.name.split(" ")[0]: s.attributes["openinference.span.kind"] for s in spans}
    assert kinds == {"invoke_agent": "AGENT", "chat": "LLM", "execute_tool": "TOOL", "attempt": "CHAIN",
                     "backoff": "CHAIN", "fallback": "CHAIN", "dead_letter": "CHAIN"}
    assert {s.attributes["session.id"] for s in spans} == {RUN}, "one session: the root run's, sub-agent included"
    assert {s.attributes["gen_ai.conversation.id"] for s in spans} == {RUN}
    assert not any("user.id" in s.attributes for s in spans), "no tenant, no user tag: no user"
    assert not any(k in s.attributes for s in spans for k in ("input.value", "gen_ai.input.messages")), \
        "content is opt-in"

    helper = _one(spans, "invoke_agent helper")
    assert (helper.parent_id, helper.status) == (root.span_id, "UNSET")
    assert call(helped).parent_id == helper.span_id
    assert f"{span_id_of('lost-1'):016x}" not in by_id, "still running: not sent yet"
    assert json.dumps(root.attributes)  # plain values only
