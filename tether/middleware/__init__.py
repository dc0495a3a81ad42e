"""The reliability policy engine: pure decisions about calls, without I/O.

Given a policy, the history of a call and its latest failure, decide whether to retry,
fall back or give up (:func:`decide`); keep a route's circuit breaker
(:func:`breaker_admit`, :func:`breaker_record`), a provider's rate limit
(:func:`rate_acquire`), budgets (:func:`check_budgets`) and the runaway guard
(:class:`RunawayTracker`). Policies come from code or from ``tether.toml``
(:func:`load_policies`). Time is always passed in as ``now`` (epoch seconds) and
randomness as a ``random.Random``; the executor supplies both, stores the shared
states, and publishes the events.

Around that pure core: :class:`Executor` (``tether worker``) runs durable calls from the
WORK stream; :class:`DurableCalls` submits them and waits for the outcome;
:class:`InlineCalls` runs the same engine in the caller's process; ``deadletter``
reads, redrives and purges the DLQ.
"""

# The executor and the caller side (these do I/O: NATS, HTTP).
from . import _deadletter as deadletter
from ._breaker import BreakerState, Transition, breaker_admit, breaker_record, breaker_retry_in
from ._budget import (
    VOLATILE_KEYS,
    BudgetCheck,
    BudgetRefusal,
    BudgetUnit,
    RunawayTracker,
    Spend,
    check_budget,
    check_budgets,
    request_fingerprint,
)
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
)
from ._executor import WORKERS_DURABLE, Executor
from ._failures import (
    Failure,
    FailureCategory,
    FailureKind,
    classify_exception,
    classify_http,
    parse_retry_after,
)
from ._policy import (
    BreakerPolicy,
    BudgetLimits,
    BudgetScope,
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
from ._providers import ProviderConfig, ProviderConfigError, ProviderTable
from ._ratelimit import WINDOW_S, RateState, rate_acquire, rate_adjust
from ._tools import ToolRegistry, UnknownTool, tools
from ._work import CallRecord, WorkItem

__all__ = [
    "ELSEWHERE",
    "VOLATILE_KEYS",
    "WINDOW_S",
    "WORKERS_DURABLE",
    "AttemptRecord",
    "BreakerPolicy",
    "BreakerState",
    "BudgetCheck",
    "BudgetLimits",
    "BudgetRefusal",
    "BudgetScope",
    "BudgetUnit",
    "CallFailed",
    "CallRecord",
    "CallResult",
    "DeadLetter",
    "DeadLetterError",
    "Decision",
    "DurableCalls",
    "Executor",
    "Failure",
    "FailureCategory",
    "FailureKind",
    "Fallback",
    "FallbackPolicy",
    "GiveUp",
    "GiveUpReason",
    "InlineCalls",
    "Policy",
    "PolicyConfigError",
    "PolicyFile",
    "PolicySet",
    "ProviderConfig",
    "ProviderConfigError",
    "ProviderTable",
    "RateLimitPolicy",
    "RateState",
    "Retry",
    "RetryPolicy",
    "RunawayGuard",
    "RunawayTracker",
    "Spend",
    "Target",
    "ToolRegistry",
    "Transition",
    "UnknownTool",
    "WorkItem",
    "WorkerConfig",
    "WorkerFile",
    "WorkerSection",
    "backoff_delay",
    "breaker_admit",
    "breaker_record",
    "breaker_retry_in",
    "check_budget",
    "check_budgets",
    "classify_exception",
    "classify_http",
    "deadletter",
    "decide",
    "is_retryable",
    "load_policies",
    "load_worker_config",
    "parse_retry_after",
    "rate_acquire",
    "rate_adjust",
    "read_table",
    "request_fingerprint",
    "tools",
]
