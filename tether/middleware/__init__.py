"""The reliability policy engine: pure decisions about calls, without I/O.

Given a policy, the history of a call and its latest failure, decide whether to retry,
fall back or give up (:func:`decide`); keep a route's circuit breaker
(:func:`breaker_admit`, :func:`breaker_record`), a provider's rate limit
(:func:`rate_acquire`), budgets (:func:`check_budgets`) and the runaway guard
(:func:`runaway_count`, kept per process by a :class:`RunawayTracker`). Policies come from code or from ``tether.toml``
(:func:`load_policies`). Time is always passed in as ``now`` (epoch seconds) and
randomness as a ``random.Random``; the executor supplies both, stores the shared
states, and publishes the events.

One call loop applies them: :func:`call_flow` (admit, attempt, retry, fall back, give up)
is a generator of effects (:class:`Emit`, :class:`Run`, :class:`Spawn`, :class:`Sleep`,
:class:`Send`) whose drivers do the I/O; an attempt's answer or stream is a :class:`Sent`,
from an :class:`Upstream` (:class:`MemoryUpstream` in tests).

Around that pure core: :class:`Executor` (``tether worker``) runs durable calls from the
WORK stream; :class:`DurableCalls` submits them and waits for the outcome;
:class:`InlineCalls` runs the same engine in the caller's process; ``deadletter``
reads, redrives and purges the DLQ.

What the adapters need to drive that engine themselves (``instrument``, the gateway):
:class:`CallEngine` (one attempt, its :class:`Outcome` and events, :func:`terminal_id` for
the terminal ones, :data:`DeadLetterReason`) over the states every process shares in KV
(:class:`Breakers`, :class:`RateLimiter`, :class:`SpendBook`); a streamed durable call's
relay (:class:`RelaySpec`, :func:`relay_subject`, :class:`RelayListener`,
:class:`RelayBroken`); reading an answer (:class:`SSEParser`, :class:`StreamAccumulator`,
:func:`usage_of`), whose shape a :data:`ProviderKind` (``"openai"``, ``"anthropic"`` or ``"gemini"``) and
an :data:`Operation` (``"chat"``, ``"responses"``, ``"messages"``, ``"embeddings"``, ``"generate_content"``) name.
"""

# The executor and the caller side (these do I/O: NATS, HTTP).
from . import _deadletter as deadletter
from ._breaker import BreakerState, Transition, breaker_admit, breaker_record, breaker_retry_in
from ._budget import (
    MAX_FINGERPRINTS,
    VOLATILE_KEYS,
    BudgetCheck,
    BudgetRefusal,
    BudgetUnit,
    RunawayTracker,
    Spend,
    check_budget,
    check_budgets,
    request_fingerprint,
    runaway_count,
)
from ._cache import CACHE_BUCKET, ResponseCache, cacheable
from ._calls import CallFailed, CallResult, DurableCalls, InlineCalls
from ._config import ELSEWHERE, WorkerConfig, WorkerFile, WorkerSection, load_worker_config
from ._deadletter import DeadLetter, DeadLetterError
from ._decide import (
    AttemptRecord,
    Decision,
    Fallback,
    GiveUp,
    GiveUpReason,
    Retry,
    backoff_delay,
    decide,
    is_retryable,
    tool_decision,
)
from ._engine import CallEngine, DeadLetterReason, Outcome, terminal_id
from ._executor import WORKERS_DURABLE, Executor
from ._failures import (
    Failure,
    FailureCategory,
    FailureKind,
    classify_exception,
    classify_http,
    parse_retry_after,
)
from ._flow import (
    Call,
    Completed,
    Effect,
    Emit,
    Ending,
    GaveUp,
    Invoke,
    Invoked,
    Replayed,
    Run,
    RunawayError,
    Sleep,
    Spawn,
    Stopped,
    Streaming,
    ToolCall,
    cache_answer,
    call_flow,
    drive,
    drive_sync,
    read_answer,
    replay_of,
    tool_flow,
)
from ._journal import (
    REQUEST_VOLATILE_KEYS,
    Cursor,
    Entry,
    Journal,
    Lookup,
    load_journal,
    request_digests,
    request_hash,
    tool_hash,
)
from ._policy import (
    BreakerPolicy,
    BudgetLimits,
    BudgetScope,
    CachePolicy,
    FallbackPolicy,
    Policy,
    PolicyConfigError,
    PolicyFile,
    PolicySet,
    RateLimitPolicy,
    RetryPolicy,
    RunawayGuard,
    Target,
    load_policies,
    read_table,
)
from ._providers import ProviderConfig, ProviderConfigError, ProviderTable, usage_of
from ._ratelimit import WINDOW_S, RateState, rate_acquire, rate_adjust
from ._relay import RelayBroken, RelayListener, relay_subject
from ._shared import Breakers, RateLimiter, SpendBook
from ._sse import Kind as ProviderKind
from ._sse import SSEParser, StreamAccumulator
from ._tools import ToolRegistry, UnknownTool, tools
from ._upstream import MemoryUpstream, ProviderUpstream, Send, Sent, Upstream
from ._work import CallRecord, Operation, RelaySpec, WorkItem

__all__ = [
    "CACHE_BUCKET",
    "ELSEWHERE",
    "MAX_FINGERPRINTS",
    "REQUEST_VOLATILE_KEYS",
    "VOLATILE_KEYS",
    "WINDOW_S",
    "WORKERS_DURABLE",
    "AttemptRecord",
    "BreakerPolicy",
    "BreakerState",
    "Breakers",
    "BudgetCheck",
    "BudgetLimits",
    "BudgetRefusal",
    "BudgetScope",
    "BudgetUnit",
    "CachePolicy",
    "Call",
    "CallEngine",
    "CallFailed",
    "CallRecord",
    "CallResult",
    "Completed",
    "Cursor",
    "DeadLetter",
    "DeadLetterError",
    "DeadLetterReason",
    "Decision",
    "DurableCalls",
    "Effect",
    "Emit",
    "Ending",
    "Entry",
    "Executor",
    "Failure",
    "FailureCategory",
    "FailureKind",
    "Fallback",
    "FallbackPolicy",
    "GaveUp",
    "GiveUp",
    "GiveUpReason",
    "InlineCalls",
    "Invoke",
    "Invoked",
    "Journal",
    "Lookup",
    "MemoryUpstream",
    "Operation",
    "Outcome",
    "Policy",
    "PolicyConfigError",
    "PolicyFile",
    "PolicySet",
    "ProviderConfig",
    "ProviderConfigError",
    "ProviderKind",
    "ProviderTable",
    "ProviderUpstream",
    "RateLimitPolicy",
    "RateLimiter",
    "RateState",
    "RelayBroken",
    "RelayListener",
    "RelaySpec",
    "Replayed",
    "ResponseCache",
    "Retry",
    "RetryPolicy",
    "Run",
    "RunawayError",
    "RunawayGuard",
    "RunawayTracker",
    "SSEParser",
    "Send",
    "Sent",
    "Sleep",
    "Spawn",
    "Spend",
    "SpendBook",
    "Stopped",
    "StreamAccumulator",
    "Streaming",
    "Target",
    "ToolCall",
    "ToolRegistry",
    "Transition",
    "UnknownTool",
    "Upstream",
    "WorkItem",
    "WorkerConfig",
    "WorkerFile",
    "WorkerSection",
    "backoff_delay",
    "breaker_admit",
    "breaker_record",
    "breaker_retry_in",
    "cache_answer",
    "cacheable",
    "call_flow",
    "check_budget",
    "check_budgets",
    "classify_exception",
    "classify_http",
    "deadletter",
    "decide",
    "drive",
    "drive_sync",
    "is_retryable",
    "load_journal",
    "load_policies",
    "load_worker_config",
    "parse_retry_after",
    "rate_acquire",
    "rate_adjust",
    "read_answer",
    "read_table",
    "relay_subject",
    "replay_of",
    "request_digests",
    "request_fingerprint",
    "request_hash",
    "runaway_count",
    "terminal_id",
    "tool_decision",
    "tool_flow",
    "tool_hash",
    "tools",
    "usage_of",
]
