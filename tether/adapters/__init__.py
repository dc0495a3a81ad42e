"""Adapters: tether in front of the SDKs and frameworks agents already use.

* :func:`instrument` an ``openai`` or ``anthropic`` client (sync or async, built on
  ``httpx2`` or ``httpx``): every LLM call is recorded and runs under the reliability
  policy, with tether owning the retries. :func:`http_client` and
  :func:`async_http_client` are ready-made HTTP clients for frameworks that take one.
* :func:`tool` records a function's calls and retries it only when it is idempotent; in a run
  resumed after a crash (``run(run_id=..., resume=True)``) a completed call is answered from the
  log, and :func:`once` makes a tool's own SQLite effect exactly-once (docs/resume.md);
  :func:`entrypoint` registers what ``tether resume`` calls, :func:`unresolved` lists the calls a
  run stopped at (``needs_attention``). :class:`FrameworkTools` does the same for a tool a
  framework runs itself, handed over at the framework's wrap point (the framework adapters).
* :func:`run` puts the calls inside it under one run, with W3C trace context;
  :func:`conversation` reads a run's messages back from its events.
* :class:`Interceptor` is the core they share with the gateway (``tether.adapters.gateway``,
  ``tether gateway``): one raw request in, one response (maybe a stream) out, policy applied
  and events published.
* :func:`recorded_tools`: tool calls answered from a recorded run's results (an evaluation's replay).
* :class:`Redactor`: what is kept out of the log (headers never enter it).
* :func:`init` (``tether.init()``) installs the adapter of each agent framework installed beside
  tether: ``tether.adapters.langgraph``, ``tether.adapters.openai_agents`` (docs/frameworks/).

See docs/adapters.md.
"""

from ._autoinit import init
from ._conversation import conversation
from ._core import (
    AsyncUpstream,
    AsyncUpstreamResponse,
    Interceptor,
    ProxyResponse,
    RoutedUpstream,
    SyncProxyResponse,
    SyncUpstream,
    SyncUpstreamResponse,
)
from ._entrypoints import Entrypoint, FinishedMeanwhile, ResumeSection, entrypoint, entrypoint_for
from ._httpx import AsyncTetherTransport, TetherTransport
from ._hub import Hub, LoopThreadError, background_hub, flush, shutdown
from ._instrument import async_http_client, http_client, instrument
from ._lease import LEASE_BUCKET, LeaseHeld, RunLease
from ._once import once
from ._recorded import RecordedResult, RecordedToolError, RecordedTools, ReplayMismatch, recorded_tools
from ._redact import ASSIGNED_NAMES, DEFAULT_FIELDS, DEFAULT_PATTERNS, REDACTED, SECRET_HEADERS, Redactor
from ._runs import NeedsAttention, Run, RunContext, bound, current_run, read_run, run
from ._tooljournal import unresolved
from ._tools import FrameworkTools, RunawayError, tool

__all__ = [
    "ASSIGNED_NAMES",
    "DEFAULT_FIELDS",
    "DEFAULT_PATTERNS",
    "LEASE_BUCKET",
    "REDACTED",
    "SECRET_HEADERS",
    "AsyncTetherTransport",
    "AsyncUpstream",
    "AsyncUpstreamResponse",
    "Entrypoint",
    "FinishedMeanwhile",
    "FrameworkTools",
    "Hub",
    "Interceptor",
    "LeaseHeld",
    "LoopThreadError",
    "NeedsAttention",
    "ProxyResponse",
    "RecordedResult",
    "RecordedToolError",
    "RecordedTools",
    "Redactor",
    "ReplayMismatch",
    "ResumeSection",
    "RoutedUpstream",
    "Run",
    "RunContext",
    "RunLease",
    "RunawayError",
    "SyncProxyResponse",
    "SyncUpstream",
    "SyncUpstreamResponse",
    "TetherTransport",
    "async_http_client",
    "background_hub",
    "bound",
    "conversation",
    "current_run",
    "entrypoint",
    "entrypoint_for",
    "flush",
    "http_client",
    "init",
    "instrument",
    "once",
    "read_run",
    "recorded_tools",
    "run",
    "shutdown",
    "tool",
    "unresolved",
]
