"""The event catalogue: one frozen payload model per event type.

Type names read ``tether.<kind>.<what>``; ``kind`` and ``action`` place each event in
the subject scheme. A new optional field bumps ``schema_version``; a breaking change
gets a new type instead.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, JsonValue, StringConstraints

from ._envelope import Payload
from ._finite import json_safe

__all__ = [
    "BudgetExceeded",
    "CallDeadLettered",
    "CallRedriven",
    "CallReplayed",
    "CircuitClosed",
    "CircuitHalfOpened",
    "CircuitOpened",
    "DatasetItemAdded",
    "DatasetItemRemoved",
    "ErrorInfo",
    "ExperimentStarted",
    "LlmCallAttemptFailed",
    "LlmCallCompleted",
    "LlmCallFailed",
    "LlmCallRequested",
    "MemoryCompacted",
    "MemoryDeleted",
    "MemoryWritten",
    "RunFinished",
    "RunNeedsAttention",
    "RunStarted",
    "ScoreRecorded",
    "ToolCallAttemptFailed",
    "ToolCallCompleted",
    "ToolCallFailed",
    "ToolCallRequested",
    "ToolCallResolved",
    "TrialCompleted",
    "Usage",
    "UsageReported",
    "ids_fit",
]

Id = Annotated[str, StringConstraints(min_length=1, max_length=1024)]


def ids_fit(*values: Any) -> bool:
    """Whether each value is what an ``Id`` field takes as it is (a string of 1 to 1,024 characters)."""
    return all(type(v) is str and 0 < len(v) <= 1024 for v in values)


Recorded = Annotated[JsonValue, BeforeValidator(json_safe)]
"""A body tether records of someone else's call: NaN and infinities are kept as strings
("NaN", "Infinity"), since recording must never fail the call. Elsewhere they are refused."""
Decision = Literal["retry", "fallback", "give_up"]


class _Part(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ErrorInfo(_Part):
    """What went wrong, normalised across providers and tools."""

    type: str = Field(min_length=1, description="Error class, e.g. 'RateLimitError', 'Timeout'.")
    message: str = ""
    status_code: int | None = Field(None, ge=100, le=599)
    code: str | None = Field(None, description="Provider error code, e.g. 'rate_limit_exceeded'.")
    retryable: bool | None = None
    retry_after_s: float | None = Field(None, ge=0)


class Usage(_Part):
    """Token usage of one LLM call. Cached and reasoning tokens are subsets, not extras."""

    input_tokens: int = Field(0, ge=0)
    output_tokens: int = Field(0, ge=0)
    cached_input_tokens: int = Field(0, ge=0, description="Part of input_tokens read from cache.")
    cache_write_tokens: int = Field(0, ge=0, description="Part of input_tokens written to cache.")
    reasoning_tokens: int = Field(0, ge=0, description="Part of output_tokens spent reasoning.")


# -- runs ------------------------------------------------------------------------------


class RunStarted(Payload):
    """An agent run began. The run id is the envelope's ``runid``.

    v2 adds ``resumed``: the run started again after it was interrupted, replaying what
    its calls recorded (see docs/resume.md).
    """

    event_type: ClassVar[str] = "tether.run.started"
    schema_version: ClassVar[int] = 2
    kind: ClassVar[str] = "run"
    action: ClassVar[str] = "started"

    name: str | None = None
    parent_run_id: str | None = Field(None, description="Set for a sub-agent's run.")
    input: Recorded = None
    tags: tuple[str, ...] = ()
    metadata: dict[str, JsonValue] = {}
    resumed: bool = False


class RunFinished(Payload):
    """An agent run ended, well or badly."""

    event_type: ClassVar[str] = "tether.run.finished"
    kind: ClassVar[str] = "run"
    action: ClassVar[str] = "finished"

    schema_version: ClassVar[int] = 2

    status: Literal["ok", "error", "cancelled"]
    duration_ms: float | None = Field(None, ge=0)
    output: Recorded = None
    error: ErrorInfo | None = None
    ended_by: Literal["agent", "header", "idle"] | None = Field(
        None, description="How the end was seen (v2): 'agent' (the agent said so: its own run.finished, e.g. "
        "tether.run or the OpenClaw plugin), 'header' (x-tether-run-end on a gateway call), 'idle' (the gateway "
        "saw no call for its run_idle_s).")


class RunNeedsAttention(Payload):
    """A resumed run stopped before a tool call whose start was recorded and whose end was not
    (the process died inside it) and which is not idempotent: a person or code says whether its
    effect happened (``tether runs resolve``), then the run is resumed."""

    event_type: ClassVar[str] = "tether.run.needs_attention"
    kind: ClassVar[str] = "run"
    action: ClassVar[str] = "needs_attention"

    call_id: Id = Field(description="The tool call whose outcome is unknown (its ``tool.call.requested``).")
    tool: Id
    position: int = Field(ge=0, description="The call's place among the run's tool calls, from 0.")
    arguments: Recorded = None
    idempotency_key: str | None = None
    reason: str


# -- LLM calls -------------------------------------------------------------------------


class _LlmCall(Payload):
    call_id: Id
    provider: Id
    model: Id

    def subject_key(self) -> str | None:
        return self.provider


class LlmCallRequested(_LlmCall):
    """An LLM call was asked for (before any attempt).

    v2 adds ``request_hash``: the request's canonical hash (``tether.journal.request_hash``),
    what a resumed run and the response cache match calls by.
    """

    event_type: ClassVar[str] = "tether.llm.call.requested"
    schema_version: ClassVar[int] = 2
    kind: ClassVar[str] = "llm"
    action: ClassVar[str] = "requested"

    operation: Literal["chat", "responses", "messages", "embeddings", "completions", "generate_content"] = "chat"
    mode: Literal["inline", "durable"] = "inline"
    stream: bool = False
    route: str | None = None
    parameters: dict[str, Recorded] = {}
    request: Recorded = Field(None, description="The request body; None when capture is off.")
    deadline: datetime | None = None
    request_hash: str | None = Field(None, description="The canonical request hash (see docs/resume.md).")


class LlmCallAttemptFailed(_LlmCall):
    """One attempt failed, and what tether decided to do next."""

    event_type: ClassVar[str] = "tether.llm.call.attempt_failed"
    kind: ClassVar[str] = "llm"
    action: ClassVar[str] = "attempt_failed"

    attempt: int = Field(ge=1)
    error: ErrorInfo
    latency_ms: float | None = Field(None, ge=0)
    decision: Decision
    retry_in_s: float | None = Field(None, ge=0)
    next_provider: str | None = None
    next_model: str | None = None


class LlmCallCompleted(_LlmCall):
    """An attempt succeeded; its output is recorded so replay never calls the model.

    v2 adds ``chunks``: a stream's events as its caller got them, so a resumed run replays
    the stream event for event.
    """

    event_type: ClassVar[str] = "tether.llm.call.completed"
    schema_version: ClassVar[int] = 2
    kind: ClassVar[str] = "llm"
    action: ClassVar[str] = "completed"

    attempt: int = Field(1, ge=1)
    usage: Usage = Usage()
    latency_ms: float | None = Field(None, ge=0)
    ttft_ms: float | None = Field(None, ge=0, description="Time to first token, streams only.")
    finish_reason: str | None = None
    response: Recorded = Field(None, description="The response body; None when capture is off.")
    chunks: Recorded = Field(None, description="A stream's events, ``[{event, data}]``; None unless streamed "
                                                "and captured.")


class LlmCallFailed(_LlmCall):
    """The call gave up: every attempt and fallback allowed by the policy failed."""

    event_type: ClassVar[str] = "tether.llm.call.failed"
    kind: ClassVar[str] = "llm"
    action: ClassVar[str] = "failed"

    attempts: int = Field(ge=0)
    error: ErrorInfo


class UsageReported(Payload):
    """The tokens a run's model calls used, as the agent itself counted them (the OpenClaw
    plugin's ``llm_output``: OpenClaw's own usage of a turn), beside what tether recorded for
    the same calls: the gateway fills ``recorded`` (the run's completed calls, summed) and
    ``mismatch`` (one line per count that differs) when it takes the event in."""

    event_type: ClassVar[str] = "tether.llm.usage.reported"
    kind: ClassVar[str] = "llm"
    action: ClassVar[str] = "reported"

    reporter: str | None = Field(None, description="Who counted: e.g. 'openclaw'.")
    provider: str | None = None
    model: str | None = None
    usage: Usage = Usage()
    recorded: Usage | None = Field(None, description="What tether recorded for the run's calls (the gateway's).")
    recorded_calls: int | None = Field(None, ge=0)
    mismatch: tuple[str, ...] = Field((), description="Each count that differs, in words; empty when they agree.")

    def subject_key(self) -> str | None:
        return self.provider


# -- tool calls ------------------------------------------------------------------------


class _ToolCall(Payload):
    call_id: Id
    tool: Id

    def subject_key(self) -> str | None:
        return self.tool


class ToolCallRequested(_ToolCall):
    """A tool call starts. v2 adds ``position``: its place among its run's tool calls (from 0),
    which a resumed run matches its calls against."""

    event_type: ClassVar[str] = "tether.tool.call.requested"
    schema_version: ClassVar[int] = 2
    kind: ClassVar[str] = "tool"
    action: ClassVar[str] = "requested"

    arguments: Recorded = None
    idempotent: bool = False
    idempotency_key: str | None = None
    mode: Literal["inline", "durable"] = "inline"
    tool_call_id: str | None = Field(None, max_length=1024, description="The id the model gave the call (v2).")
    inferred: bool = Field(False, description="Seen by the gateway in the conversation, not reported by the "
                           "agent (v2).")
    position: int | None = Field(None, ge=0, description="The call's place among its run's tool calls (v2).")


class ToolCallAttemptFailed(_ToolCall):
    event_type: ClassVar[str] = "tether.tool.call.attempt_failed"
    kind: ClassVar[str] = "tool"
    action: ClassVar[str] = "attempt_failed"

    attempt: int = Field(ge=1)
    error: ErrorInfo
    duration_ms: float | None = Field(None, ge=0)
    decision: Decision
    retry_in_s: float | None = Field(None, ge=0)


class ToolCallCompleted(_ToolCall):
    event_type: ClassVar[str] = "tether.tool.call.completed"
    kind: ClassVar[str] = "tool"
    action: ClassVar[str] = "completed"

    schema_version: ClassVar[int] = 2

    attempt: int = Field(1, ge=1)
    result: Recorded = None
    duration_ms: float | None = Field(None, ge=0)
    inferred: bool = Field(False, description="Seen by the gateway in the conversation (v2).")


class ToolCallFailed(_ToolCall):
    event_type: ClassVar[str] = "tether.tool.call.failed"
    schema_version: ClassVar[int] = 2
    kind: ClassVar[str] = "tool"
    action: ClassVar[str] = "failed"

    attempts: int = Field(ge=0)
    error: ErrorInfo
    duration_ms: float | None = Field(None, ge=0, description="From the call to its end (v2).")
    result: Recorded = Field(None, description="What the tool answered, when it answered with an error (v2).")
    inferred: bool = Field(False, description="Seen by the gateway in the conversation (v2).")


class ToolCallResolved(_ToolCall):
    """Someone said what became of a tool call whose outcome was unknown (``tether runs resolve``):
    it ``happened`` (with ``result``, which a resumed run returns), or it did not (it runs again)."""

    event_type: ClassVar[str] = "tether.tool.call.resolved"
    kind: ClassVar[str] = "tool"
    action: ClassVar[str] = "resolved"

    happened: bool
    result: Recorded = None
    note: str | None = None


# -- memory ----------------------------------------------------------------------------


class _Memory(Payload):
    namespace: Id
    key: Id

    def subject_key(self) -> str | None:
        return self.namespace


class MemoryWritten(_Memory):
    """A new version of a memory entry. ``text`` may be ciphertext (see ``key_id``).

    v2 adds ``embedding`` and ``embedder``: the vector recorded at write time, so replay
    never calls an embedding model.
    """

    event_type: ClassVar[str] = "tether.memory.written"
    schema_version: ClassVar[int] = 2
    kind: ClassVar[str] = "memory"
    action: ClassVar[str] = "written"

    version: int = Field(ge=1)
    text: str
    metadata: dict[str, JsonValue] = {}
    expires_at: datetime | None = None
    key_id: str | None = Field(None, description="Namespace key that encrypted ``text``.")
    content_hash: str | None = None
    source_call_id: str | None = None
    source_message_id: str | None = None
    embedding: str | None = Field(None, description="Base64 float32 vector (ciphertext when ``key_id`` is set).")
    embedder: str | None = Field(None, description="The model that produced ``embedding``.")


class MemoryDeleted(_Memory):
    event_type: ClassVar[str] = "tether.memory.deleted"
    kind: ClassVar[str] = "memory"
    action: ClassVar[str] = "deleted"

    version: int | None = Field(None, ge=1)
    reason: Literal["deleted", "expired", "erased", "merged"] = "deleted"


class MemoryCompacted(_Memory):
    """Entries were summarised into ``key``; the originals stay in the log.

    v2 adds ``key_id`` (``summary`` is then ciphertext), ``embedding`` and ``embedder``.
    """

    event_type: ClassVar[str] = "tether.memory.compacted"
    schema_version: ClassVar[int] = 2
    kind: ClassVar[str] = "memory"
    action: ClassVar[str] = "compacted"

    version: int = Field(ge=1)
    summary: str
    replaced: tuple[str, ...] = Field(description="Keys (or key@version) the summary replaces.")
    token_budget: int | None = Field(None, ge=1)
    summarizer: str = "extractive"
    source_call_id: str | None = None
    key_id: str | None = Field(None, description="Namespace key that encrypted ``summary``.")
    embedding: str | None = Field(None, description="Base64 float32 vector (ciphertext when ``key_id`` is set).")
    embedder: str | None = None


class MemoryEmbedded(_Memory):
    """A version's vector made again by another embedder (``AsyncMemory.reembed``): its text, version
    and times stay; search compares it in the new embedder's space from then on."""

    event_type: ClassVar[str] = "tether.memory.embedded"
    kind: ClassVar[str] = "memory"
    action: ClassVar[str] = "embedded"

    version: int = Field(ge=1)
    of_seq: int = Field(ge=1, description="Stream sequence of the version (``memory.written``) embedded again.")
    embedding: str = Field(description="Base64 float32 vector (ciphertext when ``key_id`` is set).")
    embedder: str = Field(description="The model that produced ``embedding``.")
    key_id: str | None = Field(None, description="Key that encrypted ``embedding``.")


# -- dead letters ----------------------------------------------------------------------


class CallDeadLettered(Payload):
    """A call ended in the DLQ stream with its request, attempts and final error."""

    event_type: ClassVar[str] = "tether.call.dead_lettered"
    kind: ClassVar[str] = "call"
    action: ClassVar[str] = "dead_lettered"

    call_id: Id
    call_kind: Literal["llm", "tool", "unknown"]
    reason: Literal["exhausted", "not_retryable", "malformed", "max_deliveries", "deadline", "budget",
                    "runaway"]
    attempts: int = Field(ge=0)
    error: ErrorInfo | None = None
    dlq_seq: int | None = Field(None, ge=1)

    def subject_key(self) -> str | None:
        return self.call_kind


class CallRedriven(Payload):
    event_type: ClassVar[str] = "tether.call.redriven"
    kind: ClassVar[str] = "call"
    action: ClassVar[str] = "redriven"

    call_id: Id
    new_call_id: Id
    dlq_seq: int | None = Field(None, ge=1)


class CallReplayed(Payload):
    """A call answered from the record instead of the provider or the tool: from its run's
    journal (a resumed run, ``via="journal"``) or from the response cache (``via="cache"``).

    It costs nothing; ``usage`` is what the original call used (what was saved). The call's
    terminal event: ``original_call_id`` (and ``original_event_id``, its completion) link
    the call that paid.
    """

    event_type: ClassVar[str] = "tether.call.replayed"
    kind: ClassVar[str] = "call"
    action: ClassVar[str] = "replayed"

    call_id: Id
    call_kind: Literal["llm", "tool"]
    via: Literal["journal", "cache"]
    original_call_id: Id
    original_event_id: str | None = None
    original_run_id: str | None = None
    position: int | None = Field(None, ge=0, description="The call's place in the journal.")
    request_hash: str | None = None
    provider: str | None = None
    model: str | None = None
    tool: str | None = None
    stream: bool = False
    usage: Usage = Usage()
    response: Recorded = Field(None, description="The answer given (an LLM response, a tool's result).")
    chunks: Recorded = None

    def subject_key(self) -> str | None:
        return self.call_kind


# -- circuit breaker -------------------------------------------------------------------


class _Circuit(Payload):
    route: Id

    def subject_key(self) -> str | None:
        return self.route


class CircuitOpened(_Circuit):
    event_type: ClassVar[str] = "tether.circuit.opened"
    kind: ClassVar[str] = "circuit"
    action: ClassVar[str] = "opened"

    reason: str
    failures: int = Field(0, ge=0)
    failure_rate: float | None = Field(None, ge=0, le=1)
    cooldown_s: float = Field(ge=0)


class CircuitHalfOpened(_Circuit):
    event_type: ClassVar[str] = "tether.circuit.half_opened"
    kind: ClassVar[str] = "circuit"
    action: ClassVar[str] = "half_opened"

    probe_call_id: str | None = None


class CircuitClosed(_Circuit):
    event_type: ClassVar[str] = "tether.circuit.closed"
    kind: ClassVar[str] = "circuit"
    action: ClassVar[str] = "closed"

    open_for_s: float | None = Field(None, ge=0)


# -- budgets ---------------------------------------------------------------------------


class BudgetExceeded(Payload):
    """A call was refused before dispatch because it would exceed a budget."""

    event_type: ClassVar[str] = "tether.budget.exceeded"
    kind: ClassVar[str] = "budget"
    action: ClassVar[str] = "exceeded"

    scope: Literal["run", "agent", "tenant"]
    scope_id: Id
    unit: Literal["usd", "tokens", "calls"]
    limit: float = Field(ge=0)
    spent: float = Field(ge=0)
    requested: float | None = Field(None, ge=0)
    call_id: str | None = None

    def subject_key(self) -> str | None:
        return self.scope


# -- evaluation ------------------------------------------------------------------------


class _DatasetItem(Payload):
    dataset: Id
    item_id: Id

    def subject_key(self) -> str | None:
        return self.dataset


class DatasetItemAdded(_DatasetItem):
    """A new version of an evaluation dataset's item (the first one adds it)."""

    event_type: ClassVar[str] = "tether.eval.item.added"
    kind: ClassVar[str] = "eval"
    action: ClassVar[str] = "added"

    input: Recorded = None
    expected: Recorded = Field(None, description="The expected output, if there is one.")
    tags: tuple[str, ...] = ()
    source_run_id: str | None = Field(None, description="The recorded run the item was taken from.")
    metadata: dict[str, JsonValue] = {}


class DatasetItemRemoved(_DatasetItem):
    """An item left a dataset (its versions stay in the log and in the dataset's history)."""

    event_type: ClassVar[str] = "tether.eval.item.removed"
    kind: ClassVar[str] = "eval"
    action: ClassVar[str] = "removed"


class _Experiment(Payload):
    experiment: Id

    def subject_key(self) -> str | None:
        return self.experiment


class ExperimentStarted(_Experiment):
    """An experiment began: a dataset as of a log position, run with one variant."""

    event_type: ClassVar[str] = "tether.eval.experiment.started"
    kind: ClassVar[str] = "eval"
    action: ClassVar[str] = "started"

    dataset: str | None = None
    dataset_seq: int | None = Field(None, ge=0, description="The dataset as of this stream sequence.")
    variant: dict[str, JsonValue] = {}
    agent: str | None = Field(None, description="What ran: the entry point or callable's name.")
    replay: bool = Field(False, description="Tool results were read from each item's source run.")


class TrialCompleted(_Experiment):
    """One dataset item was run in an experiment: its run, output (or error), latency and cost."""

    event_type: ClassVar[str] = "tether.eval.trial.completed"
    kind: ClassVar[str] = "eval"
    action: ClassVar[str] = "completed"

    item_id: Id
    run_id: str | None = None
    output: Recorded = None
    error: ErrorInfo | None = None
    latency_ms: float | None = Field(None, ge=0)
    cost_usd: float | None = Field(None, ge=0)
    tokens: int = Field(0, ge=0)


class ScoreRecorded(_Experiment):
    """A scorer's verdict on one item's output (``experiment`` is ``online:<name>`` for live traffic)."""

    event_type: ClassVar[str] = "tether.eval.score.recorded"
    kind: ClassVar[str] = "eval"
    action: ClassVar[str] = "recorded"

    item_id: Id
    scorer: Id
    run_id: str | None = None
    value: float | None = Field(None, description="The score; None when the scorer could not score.")
    passed: bool | None = Field(None, description="Set by pass/fail scorers.")
    reason: str | None = None
    metadata: dict[str, JsonValue] = Field({}, description="E.g. an LLM judge's rubric, reasoning and cost.")
