"""OpenTelemetry export of the traces view: each finished span sent once, over OTLP/HTTP.

:class:`OtelExporter` reads the traces view read-only (as ``tether trace`` does) and sends
its spans to an OTLP receiver (an OpenTelemetry Collector, Jaeger, Langfuse, Phoenix...)
as OpenTelemetry spans with the GenAI convention names the view already uses:
``invoke_agent {agent}``, ``chat {model}``, ``execute_tool {tool}``, and under a call
its attempts, backoffs, fallbacks, budget refusals and dead letters.

When a span goes (the decision is pure: :func:`verdict`):

* **once, when it has finished.** An OpenTelemetry span is immutable once ended, and a
  span id sent twice is undefined across backends (Jaeger shows both, others keep either);
* a span still **running when its run has been silent** for ``unfinished_after_s``
  (default 10 minutes) is what a crash looks like: it is sent *unfinished*, ended at the
  run's last sign of life, status ERROR, ``error.type=unfinished``, ``tether.unfinished``;
* if that span finishes after all, it cannot be changed: a child span of the same name
  with ``tether.late=true`` carries its real end, status and tokens;
* a run that never publishes ``run.finished`` ends (ERROR if a call failed) once no call
  of it is running and it has been quiet for ``run_idle_s`` (default 30 s);
* breaker transitions belong to a route, not a run: they are not exported.

What backends read (pure: :func:`otel_span`): every span has an ``openinference.span.kind``;
a call is priced by the model that answered (``llm.model_name``, ``llm.cost.total``); a failed
attempt tether retried or fell back from is handled, not an error (status UNSET); a failed
run says what failed; ``session.id``, ``user.id`` and the project (the service name) are set.
Prompts, completions, tool arguments and results go only when asked for (a
:class:`ContentSource`, e.g. :class:`LogContent`), each cut at a size limit.

Ids are derived, never random, so any exporter sends the same ids: the trace id is the
run's ``traceparent`` trace, else its parent run's, else from the run id (SHA-256); it is
pinned at the run's first export so a trace never splits. A span id is the first 8 bytes
of the SHA-256 of tether's span id.

What was sent lives in a small SQLite file of the exporter's own (one per receiver, by
default under ``TETHER_HOME/otel``) with the view sequence it has read up to: a restart or
a rebuilt view (``tether replay``) resends nothing, and each pass reads only the spans that
changed since, plus those still waiting. A batch the receiver refuses is sent again on the
next pass; a crash between a send and its record may send that batch twice.
"""

from ._content import (
    CONTENT_ENV,
    DEFAULT_CONTENT_LIMIT,
    ContentSource,
    LogContent,
    MemoryContent,
    capture_from_env,
    content_attributes,
)
from ._exporter import ExportReport, OtelExporter
from ._sinks import (
    OTEL_EXTRA,
    MemorySink,
    OtelUnavailable,
    OtlpHttpSink,
    SpanSink,
    otel_available,
    state_path,
    traces_endpoint,
)
from ._spans import OtelSpan, RunState, Timing, handled, otel_span, run_failure, span_id_of, trace_id_of, verdict

__all__ = [
    "CONTENT_ENV",
    "DEFAULT_CONTENT_LIMIT",
    "OTEL_EXTRA",
    "ContentSource",
    "ExportReport",
    "LogContent",
    "MemoryContent",
    "MemorySink",
    "OtelExporter",
    "OtelSpan",
    "OtelUnavailable",
    "OtlpHttpSink",
    "RunState",
    "SpanSink",
    "Timing",
    "capture_from_env",
    "content_attributes",
    "handled",
    "otel_available",
    "otel_span",
    "run_failure",
    "span_id_of",
    "state_path",
    "trace_id_of",
    "traces_endpoint",
    "verdict",
]
