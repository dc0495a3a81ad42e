"""One valid, fully populated sample payload per catalogue type, shared by the tests.

Every field of every sample is set explicitly (``tests/schemas/test_envelope.py`` checks
this), so a round trip through the wire exercises the whole payload. A new event type
or a new field fails those tests until a sample value is added here.
"""

from __future__ import annotations

from datetime import UTC, datetime

from tether.schemas import (
    BudgetExceeded,
    CallDeadLettered,
    CallRedriven,
    CallReplayed,
    CircuitClosed,
    CircuitHalfOpened,
    CircuitOpened,
    DatasetItemAdded,
    DatasetItemRemoved,
    ErrorInfo,
    Event,
    ExperimentStarted,
    LlmCallAttemptFailed,
    LlmCallCompleted,
    LlmCallFailed,
    LlmCallRequested,
    MemoryCompacted,
    MemoryDeleted,
    MemoryEmbedded,
    MemoryWritten,
    Payload,
    RunFinished,
    RunNeedsAttention,
    RunStarted,
    ScoreRecorded,
    ToolCallAttemptFailed,
    ToolCallCompleted,
    ToolCallFailed,
    ToolCallRequested,
    ToolCallResolved,
    TrialCompleted,
    Usage,
    UsageReported,
)

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
WHEN = datetime(2026, 3, 14, 15, 9, 26, 535897, tzinfo=UTC)

_ERROR = ErrorInfo(
    type="RateLimitError",
    message="slow down: « trop de requêtes » 🐢",
    status_code=429,
    code="rate_limit_exceeded",
    retryable=True,
    retry_after_s=1.5,
)
_LLM = {"call_id": "call-0001", "provider": "openai", "model": "gpt-4.1-mini"}
_TOOL = {"call_id": "call-0002", "tool": "web.search"}
_MEMORY = {"namespace": "team:search", "key": "fact/42"}

SAMPLES: dict[str, Payload] = {
    p.event_type: p
    for p in [
        RunStarted(
            name="support triage",
            parent_run_id="run-parent-1",
            input={"question": "Où est ma commande ? 📦", "n": 3, "ok": True, "x": [1, 2.5, None]},
            tags=("prod", "eu-west"),
            metadata={"tenant": "acme", "weights": [0.25, 0.75]},
            resumed=True,
        ),
        RunFinished(
            status="error",
            duration_ms=1234.5,
            output={"answer": "四十二"},
            error=ErrorInfo(type="Timeout", message="deadline", status_code=504, code="deadline",
                            retryable=False, retry_after_s=0.0),
            ended_by="idle",
        ),
        RunNeedsAttention(call_id="call-0002", tool="bank.transfer", position=3, arguments={"amount": 12.5},
                          idempotency_key="run-1:3", reason="the process died inside the call"),
        LlmCallRequested(
            **_LLM,
            operation="responses",
            mode="durable",
            stream=True,
            route="primary",
            parameters={"temperature": 0.2, "max_tokens": 256},
            request={"messages": [{"role": "user", "content": "héllo\nworld"}]},
            deadline=datetime(2026, 3, 14, 15, 10, 0, 250000, tzinfo=UTC),
            request_hash="sha256:" + "ab" * 32,
        ),
        LlmCallAttemptFailed(
            **_LLM,
            attempt=2,
            error=_ERROR,
            latency_ms=87.25,
            decision="fallback",
            retry_in_s=0.5,
            next_provider="anthropic",
            next_model="claude-haiku",
        ),
        LlmCallCompleted(
            **_LLM,
            attempt=3,
            usage=Usage(input_tokens=120, output_tokens=40, cached_input_tokens=100,
                        cache_write_tokens=20, reasoning_tokens=8),
            latency_ms=812.0,
            ttft_ms=95.5,
            finish_reason="stop",
            response={"output_text": "Bonjour 👋", "id": "resp_1"},
            chunks=[{"event": "response.output_text.delta", "data": {"delta": "Bonjour 👋"}}],
        ),
        LlmCallFailed(**_LLM, attempts=4, error=_ERROR),
        UsageReported(reporter="openclaw", provider="openai", model="gpt-4.1-mini",
                      usage=Usage(input_tokens=120, output_tokens=40, cached_input_tokens=100),
                      recorded=Usage(input_tokens=118, output_tokens=40), recorded_calls=2,
                      mismatch=("input_tokens: openclaw counted 120, tether recorded 118",)),
        ToolCallRequested(
            **_TOOL,
            arguments={"q": "nats \"jetstream\" 100%"},
            idempotent=True,
            idempotency_key="idem-7",
            mode="durable",
            tool_call_id="call_7",
            inferred=True,
            position=4,
        ),
        ToolCallAttemptFailed(
            **_TOOL, attempt=1, error=_ERROR, duration_ms=15.0, decision="retry", retry_in_s=2.0
        ),
        ToolCallCompleted(**_TOOL, attempt=2, result=["one", 2, {"three": 3.0}], duration_ms=33.5, inferred=True),
        ToolCallFailed(**_TOOL, attempts=3, error=_ERROR, duration_ms=12.5, result={"error": "no"}, inferred=True),
        ToolCallResolved(**_TOOL, happened=True, result={"id": 7}, note="checked the bank's ledger"),
        MemoryWritten(
            **_MEMORY,
            version=2,
            text="The customer prefers email. Ünïcödé ✓",
            metadata={"confidence": 0.9},
            expires_at=datetime(2027, 1, 1, tzinfo=UTC),
            key_id="ns-key-1",
            content_hash="sha256:abc123",
            source_call_id="call-0001",
            source_message_id="msg-9",
            embedding="AACAPwAAAEA=",
            embedder="sentence-transformers/all-MiniLM-L6-v2",
        ),
        MemoryDeleted(**_MEMORY, version=3, reason="expired"),
        MemoryCompacted(
            **_MEMORY,
            version=4,
            summary="Prefers email; lives in Lyon.",
            replaced=("fact/40", "fact/41@2"),
            token_budget=512,
            summarizer="llm",
            source_call_id="call-0003",
            key_id="ns-key-1",
            embedding="AACAPwAAAEA=",
            embedder="sentence-transformers/all-MiniLM-L6-v2",
        ),
        MemoryEmbedded(**_MEMORY, version=4, of_seq=1234, embedding="AACAPwAAAEA=", key_id="ns-key-1",
                       embedder="tether-static/all-MiniLM-L6-v2/256/0123456789ab"),
        CallDeadLettered(
            call_id="call-0004",
            call_kind="tool",
            reason="max_deliveries",
            attempts=5,
            error=_ERROR,
            dlq_seq=17,
        ),
        CallRedriven(call_id="call-0004", new_call_id="call-0005", dlq_seq=17),
        CallReplayed(
            call_id="call-0007",
            call_kind="llm",
            via="journal",
            original_call_id="call-0001",
            original_event_id="evt-0001",
            original_run_id="run-0000",
            position=3,
            request_hash="sha256:" + "cd" * 32,
            provider="openai",
            model="gpt-4.1-mini",
            tool="search",
            stream=True,
            usage=Usage(input_tokens=120, output_tokens=40),
            response={"output_text": "Bonjour 👋"},
            chunks=[{"event": None, "data": "[DONE]"}],
        ),
        CircuitOpened(
            route="openai/gpt-4.1-mini",
            reason="5 failures in 10 s",
            failures=5,
            failure_rate=0.5,
            cooldown_s=30.0,
        ),
        CircuitHalfOpened(route="openai/gpt-4.1-mini", probe_call_id="call-0006"),
        CircuitClosed(route="openai/gpt-4.1-mini", open_for_s=31.25),
        BudgetExceeded(
            scope="tenant",
            scope_id="acme",
            unit="usd",
            limit=10.0,
            spent=9.75,
            requested=0.5,
            call_id="call-0007",
        ),
        DatasetItemAdded(dataset="support-qa", item_id="q-1", input={"question": "Where is my parcel?"},
                         expected="It left the depot today.", tags=("from-run", "error"), source_run_id="run-41",
                         metadata={"note": "from a failed run"}),
        DatasetItemRemoved(dataset="support-qa", item_id="q-1"),
        ExperimentStarted(experiment="exp-1", dataset="support-qa", dataset_seq=12,
                          variant={"model": "gpt-4o-mini", "prompt": "Be brief."}, agent="bots:answer", replay=True),
        TrialCompleted(experiment="exp-1", item_id="q-1", run_id="run-43", output="It left today.", error=_ERROR,
                       latency_ms=812.5, cost_usd=0.00042, tokens=120),
        ScoreRecorded(experiment="exp-1", item_id="q-1", scorer="contains", run_id="run-43", value=1.0, passed=True,
                      reason="found 'today'", metadata={"rubric": "mentions when"}),
    ]
}


def sample_event(event_type: str, **envelope: object) -> Event:
    """The sample payload of ``event_type`` in a fully populated envelope."""
    kwargs: dict[str, object] = {
        "source": "urn:tether:test-host",
        "runid": "run-42",
        "agentid": "support-bot",
        "traceparent": TRACEPARENT,
        "subject": "ticket/1234",
        "time": WHEN,
        "extensions": {"tenant": "acme", "region": "eu1"},
    }
    kwargs.update(envelope)
    return Event.of(SAMPLES[event_type], **kwargs)  # type: ignore[arg-type]
