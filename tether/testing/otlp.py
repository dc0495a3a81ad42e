"""A real OTLP/HTTP trace receiver for tests (needs the ``otel`` extra).

It speaks what an OpenTelemetry Collector speaks on port 4318: ``POST /v1/traces`` with an
``application/x-protobuf`` body (gzip or deflate too), decoded with the protocol's own
``ExportTraceServiceRequest``, answered with an ``ExportTraceServiceResponse``::

    with OtlpReceiver() as receiver:
        OtelExporter(views, OtlpHttpSink(receiver.url), state=tmp / "otel.db").export()
        [root] = [s for s in receiver.spans() if s.parent_id is None]

``refuse(n, status)`` answers the next ``n`` requests with an error status instead
(a collector that is away, or that rejects the payload).
"""

from __future__ import annotations

import contextlib
import gzip
import socket
import threading
import zlib
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

__all__ = ["OtlpReceiver", "ReceivedRequest", "ReceivedSpan", "decode"]

PROTOBUF = "application/x-protobuf"


@dataclass(frozen=True)
class ReceivedSpan:
    """One span as the receiver decoded it (ids in lowercase hex, as W3C trace context writes them)."""

    trace_id: str
    span_id: str
    parent_id: str | None
    name: str
    kind: str
    """``INTERNAL``, ``CLIENT``, ``SERVER``, ``PRODUCER`` or ``CONSUMER``."""
    start_ns: int
    end_ns: int
    status: str
    """``UNSET``, ``OK`` or ``ERROR``."""
    status_message: str
    attributes: dict[str, Any]
    resource: dict[str, Any] = field(repr=False)
    scope: str = ""


@dataclass(frozen=True)
class ReceivedRequest:
    """One accepted export request: its headers and its spans."""

    headers: dict[str, str]
    spans: list[ReceivedSpan]


def _value(value: AnyValue) -> Any:
    which = value.WhichOneof("value")
    if which is None:
        return None
    if which == "array_value":
        return [_value(v) for v in value.array_value.values]
    if which == "kvlist_value":
        return _attributes(value.kvlist_value.values)
    return getattr(value, which)


def _attributes(pairs: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    kv: KeyValue
    for kv in pairs:
        out[kv.key] = _value(kv.value)
    return out


def decode(body: bytes) -> list[ReceivedSpan]:
    """The spans of an ``ExportTraceServiceRequest`` body."""
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    out = []
    for resource_spans in request.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                out.append(ReceivedSpan(
                    trace_id=span.trace_id.hex(), span_id=span.span_id.hex(),
                    parent_id=span.parent_span_id.hex() or None, name=span.name,
                    kind=Span.SpanKind.Name(span.kind).removeprefix("SPAN_KIND_"),
                    start_ns=span.start_time_unix_nano, end_ns=span.end_time_unix_nano,
                    status=Status.StatusCode.Name(span.status.code).removeprefix("STATUS_CODE_"),
                    status_message=span.status.message, attributes=_attributes(span.attributes),
                    resource=resource, scope=scope_spans.scope.name))
    return out


class _Server(ThreadingHTTPServer):
    """Joins its connection threads on close, after shutting their sockets (keep-alive ones included)."""

    daemon_threads = False
    block_on_close = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(address, handler)
        self._open: set[socket.socket] = set()
        self._guard = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._guard:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._guard:
            self._open.discard(request)
        super().shutdown_request(request)

    def server_close(self) -> None:
        with self._guard:
            connections = list(self._open)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        super().server_close()


class OtlpReceiver:
    """An OTLP/HTTP receiver on a free loopback port, served from a thread until ``stop()``."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.requests: list[ReceivedRequest] = []
        self.rejected: list[tuple[int, str]] = []
        """Requests answered with an error: (status, why)."""
        self._refusals: list[int] = []
        self._guard = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = 30  # an idle keep-alive connection is closed after this

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                status, reply = receiver._receive(self.path, dict(self.headers.items()), body)
                self.send_response(status)
                self.send_header("content-type", PROTOBUF if status == 200 else "text/plain")
                self.send_header("content-length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = _Server((host, port), Handler)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The base URL (``/v1/traces`` is where spans go)."""
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> OtlpReceiver:
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="otlp-receiver", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> OtlpReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def refuse(self, count: int = 1, status: int = 503) -> None:
        """Answer the next ``count`` export requests with ``status``."""
        with self._guard:
            self._refusals.extend([status] * count)

    def spans(self) -> list[ReceivedSpan]:
        """Every span received so far, in arrival order."""
        with self._guard:
            return [s for r in self.requests for s in r.spans]

    def _receive(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
        lower = {k.lower(): v for k, v in headers.items()}
        if path.split("?", 1)[0] != "/v1/traces":
            return self._reject(404, f"no such path: {path}")
        if lower.get("content-type", "").split(";", 1)[0].strip() != PROTOBUF:
            return self._reject(415, f"expected {PROTOBUF}, got {lower.get('content-type')!r}")
        with self._guard:
            refusal = self._refusals.pop(0) if self._refusals else None
        if refusal is not None:
            return self._reject(refusal, "refused (as asked by the test)")
        encoding = lower.get("content-encoding", "")
        try:
            if encoding == "gzip":
                body = gzip.decompress(body)
            elif encoding == "deflate":
                body = zlib.decompress(body)
            spans = decode(body)
        except Exception as exc:  # a body that is not an ExportTraceServiceRequest
            return self._reject(400, f"undecodable body: {exc!r}")
        with self._guard:
            self.requests.append(ReceivedRequest(lower, spans))
        return 200, ExportTraceServiceResponse().SerializeToString()

    def _reject(self, status: int, why: str) -> tuple[int, bytes]:
        with self._guard:
            self.rejected.append((status, why))
        return status, why.encode()
