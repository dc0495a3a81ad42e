"""Typed CloudEvents: the envelope, the event catalogue and its JSON Schemas.

JSON has no NaN or infinity: :func:`non_finite` finds one in data about to be kept (every way
in refuses it, saying :data:`NON_FINITE_HINT`), :func:`finite_or_none` scrubs old data.
:func:`plain_json` and :func:`ids_fit` say when a payload tether builds of what it parsed itself
may skip validation (:meth:`Payload.trusted`).

This package imports nothing else of tether.
"""

from ._catalogue import (
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
    ExperimentStarted,
    LlmCallAttemptFailed,
    LlmCallCompleted,
    LlmCallFailed,
    LlmCallRequested,
    MemoryCompacted,
    MemoryDeleted,
    MemoryEmbedded,
    MemoryWritten,
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
    ids_fit,
)
from ._envelope import SCHEMA_URN, Event, Payload, catalogue, default_source, payload_class
from ._errors import EventError, InvalidEvent, UnknownEventType
from ._export import envelope_schema, export_schemas, payload_schema
from ._finite import NON_FINITE_HINT, finite_or_none, non_finite, plain_json
from ._ids import uuid7, uuid7_time

__all__ = [
    "NON_FINITE_HINT",
    "SCHEMA_URN",
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
    "Event",
    "EventError",
    "ExperimentStarted",
    "InvalidEvent",
    "LlmCallAttemptFailed",
    "LlmCallCompleted",
    "LlmCallFailed",
    "LlmCallRequested",
    "MemoryCompacted",
    "MemoryDeleted",
    "MemoryEmbedded",
    "MemoryWritten",
    "Payload",
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
    "UnknownEventType",
    "Usage",
    "UsageReported",
    "catalogue",
    "default_source",
    "envelope_schema",
    "export_schemas",
    "finite_or_none",
    "ids_fit",
    "non_finite",
    "payload_class",
    "payload_schema",
    "plain_json",
    "uuid7",
    "uuid7_time",
]
