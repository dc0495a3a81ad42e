"""``tether otel-export``: the traces view to an OpenTelemetry receiver, over OTLP/HTTP.

It reads ``TETHER_HOME/views`` read-only (the projector keeps it current) and sends each
finished span once (see :mod:`tether.projections.otel`), remembering what it sent in
``TETHER_HOME/otel/export-<hash of the endpoint>.db``. With ``--follow`` it keeps going, and
when NATS is reachable it also listens to the projector's change notifications
(``tether.proj.traces.>``) to send a run as soon as it finishes. :class:`Follower` is the same
loop for ``tether up --otel-endpoint``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tether.bus import Bus, BusConfig, BusUnavailable, connect, tether_home
from tether.projections.otel import (
    CONTENT_ENV,
    DEFAULT_CONTENT_LIMIT,
    ExportReport,
    LogContent,
    OtelExporter,
    OtelUnavailable,
    OtlpHttpSink,
    Timing,
    capture_from_env,
    state_path,
    traces_endpoint,
)

from ._format import Style
from ._process import stop_on_signals

__all__ = ["DEFAULT_ENDPOINT", "Follower", "add_commands", "default_endpoint", "parse_headers", "run"]

DEFAULT_ENDPOINT = "http://127.0.0.1:4318"
NO_VIEWS = "no traces view yet: run `tether up` (it runs the projector) or `tether replay`"
NOTIFICATIONS = "tether.proj.traces.>"
DEFAULTS = Timing()


def default_endpoint() -> str:
    """``$OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``, ``$OTEL_EXPORTER_OTLP_ENDPOINT``, else the local default."""
    env = os.environ
    return env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or DEFAULT_ENDPOINT


def parse_headers(pairs: list[str]) -> dict[str, str]:
    """``NAME=VALUE`` (or ``NAME: VALUE``) pairs as a dict."""
    out = {}
    for pair in pairs:
        name, sep, value = pair.partition("=") if "=" in pair else pair.partition(":")
        if not sep or not name.strip():
            raise ValueError(f"--header {pair!r}: expected NAME=VALUE, e.g. Authorization=Bearer ...")
        out[name.strip()] = value.strip()
    return out


def add_commands(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser(
        "otel-export", help="send finished traces to an OpenTelemetry receiver (OTLP/HTTP)",
        description="Send the traces view's spans to an OTLP/HTTP receiver (an OpenTelemetry Collector, "
        "Jaeger, Langfuse, Phoenix...) with OpenTelemetry GenAI names: invoke_agent, chat {model}, "
        "execute_tool {tool}, and each attempt, backoff, fallback and dead letter. A span is sent once, "
        "when it has finished; one still running after its run has been silent --unfinished-after "
        "seconds is sent unfinished (status ERROR), which is what a crash looks like. What was sent is "
        "remembered, so running this again sends only what is new. Needs tether[otel].")
    common(p)
    p.add_argument("--endpoint", metavar="URL",
                   help="the receiver: http://127.0.0.1:4318 (Jaeger, a Collector), http://127.0.0.1:6006 "
                   "(Phoenix), https://HOST/api/public/otel (Langfuse); /v1/traces is added unless the URL "
                   "ends with it (default: $OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, $OTEL_EXPORTER_OTLP_ENDPOINT, "
                   f"else {DEFAULT_ENDPOINT})")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--once", action="store_true", help="send what has finished, then exit (the default)")
    mode.add_argument("--follow", action="store_true", help="keep sending as runs finish, until Ctrl-C")
    p.add_argument("--header", action="append", default=[], metavar="NAME=VALUE",
                   help="an HTTP header for the receiver, e.g. 'Authorization=Basic ...' (repeatable; "
                   "default: $OTEL_EXPORTER_OTLP_HEADERS)")
    p.add_argument("--service-name", metavar="NAME",
                   help="the resource's service.name, which is also the project Phoenix files the traces "
                   "under (openinference.project.name) (default: $OTEL_SERVICE_NAME, else tether)")
    p.add_argument("--capture-content", action="store_true",
                   help="also send prompts, completions, tool arguments and results (as recorded, redacted) "
                   "as gen_ai.input.messages, gen_ai.output.messages, gen_ai.tool.call.arguments/result and "
                   f"input.value/output.value; reads them from the log, so NATS must be reachable (default: off, "
                   f"or ${CONTENT_ENV}=true)")
    p.add_argument("--content-limit", type=int, default=DEFAULT_CONTENT_LIMIT, metavar="CHARS",
                   help=f"with --capture-content: cut each content attribute at this many characters "
                   f"(default {DEFAULT_CONTENT_LIMIT})")
    p.add_argument("--unfinished-after", type=float, default=DEFAULTS.unfinished_after_s, metavar="S",
                   help="send a span still running once its run has been silent this long, as unfinished "
                   "(default 600)")
    p.add_argument("--run-idle", type=float, default=DEFAULTS.run_idle_s, metavar="S",
                   help="a run that never publishes run.finished ends once quiet this long with no call "
                   "open (default 30)")
    p.add_argument("--interval", type=float, default=2.0, metavar="S",
                   help="with --follow: look for finished spans at least this often (default 2)")
    p.add_argument("--timeout", type=float, default=10.0, metavar="S",
                   help="give up on one request to the receiver after this long, retries included (default 10)")
    p.add_argument("--views", type=Path, metavar="DIR", help="read the views in DIR (default TETHER_HOME/views)")
    p.add_argument("--state", type=Path, metavar="FILE",
                   help="where to remember what was sent (default TETHER_HOME/otel/export-<endpoint hash>.db)")
    p.add_argument("--json", action="store_true", help="print each pass's report as one JSON line")


def _sink(endpoint: str, headers: dict[str, str] | None, timeout: float, service_name: str | None) -> OtlpHttpSink:
    name = service_name or os.environ.get("OTEL_SERVICE_NAME") or "tether"
    return OtlpHttpSink(endpoint, headers=headers, timeout=timeout, service_name=name)


def wants_content(flag: bool) -> bool:
    """Content capture: the flag, else ``$OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT``."""
    return flag or capture_from_env(os.environ)


async def run(args: argparse.Namespace) -> int:
    """Run ``tether otel-export``; the exit status (1 when something could not be sent)."""
    endpoint = args.endpoint or default_endpoint()
    try:
        url = traces_endpoint(endpoint)
        headers = parse_headers(args.header)
    except ValueError as exc:
        print(f"tether otel-export: {exc}", file=sys.stderr)
        return 2
    if args.content_limit < 1:
        print(f"tether otel-export: --content-limit {args.content_limit}: give a number of characters, "
              f"at least 1 (default {DEFAULT_CONTENT_LIMIT})", file=sys.stderr)
        return 2
    home = tether_home(args.home)
    views = args.views or home / "views"
    try:
        sink = _sink(endpoint, headers or None, args.timeout, args.service_name)
    except OtelUnavailable as exc:
        print(f"tether otel-export: {exc}", file=sys.stderr)
        return 1
    bus = None
    if wants_content(args.capture_content):
        try:
            bus = await connect(config=BusConfig.from_env(url=args.url, home=args.home, embedded=False,
                                                          provision=False))
        except BusUnavailable as exc:
            sink.close()
            print(f"tether otel-export: --capture-content reads prompts and results from the log, and NATS is "
                  f"not reachable ({exc}); start `tether up` (or pass --url), or export without content",
                  file=sys.stderr)
            return 1
    exporter = OtelExporter(views, sink, state=args.state or state_path(home, endpoint),
                            timing=Timing(args.unfinished_after, args.run_idle),
                            content=None if bus is None else LogContent(bus, asyncio.get_running_loop()),
                            content_limit=args.content_limit)
    try:
        if not args.follow:
            report = await exporter.aexport()
            if report.view_seq is None and report.error is None:
                print(f"tether otel-export: {NO_VIEWS} (looked in {views})", file=sys.stderr)
                return 1
            _show(report, url, args.json, quiet=False)
            return 1 if report.failed or report.error else 0
        with stop_on_signals() as stop:
            return await _follow(args, exporter, url, stop)
    finally:
        exporter.close()
        sink.close()
        if bus is not None:
            await bus.close()


def _show(report: ExportReport, url: str, as_json: bool, *, quiet: bool) -> None:
    if as_json:
        print(json.dumps({"endpoint": url, **asdict(report)}), flush=True)
        return
    if quiet and not (report.sent or report.failed or report.error):
        return
    s = Style()
    if report.error is not None:
        print(s.red(f"could not read the traces view or record what was sent: {report.error}"), file=sys.stderr,
              flush=True)
        return
    if report.view_seq is None:
        print(s.dim(NO_VIEWS), flush=True)
        return
    extra = [f"{n} {what}" for n, what in ((report.unfinished, "unfinished"), (report.late, "late")) if n]
    line = f"sent {report.sent} span(s) to {url}" + (f" ({', '.join(extra)})" if extra else "")
    if report.waiting:
        line += s.dim(f"; {report.waiting} not finished yet")
    print(line + s.dim(f"  [view at seq {report.view_seq}]"), flush=True)
    if report.failed:
        print(s.red(f"could not send {report.failed} span(s): the receiver refused them or is unreachable "
                    "(see the log above); they are sent next time"), file=sys.stderr, flush=True)


async def _follow(args: argparse.Namespace, exporter: OtelExporter, url: str, stop: asyncio.Event) -> int:
    wake = asyncio.Event()
    listening = asyncio.create_task(_listen(args, wake))
    if not args.json:
        print(Style(sys.stderr).dim(f"sending finished spans to {url} as they come (Ctrl-C to stop)"),
              file=sys.stderr, flush=True)
    try:
        await exporter.follow(stop, interval=args.interval, wake=wake,
                              on_report=lambda r: _show(r, url, args.json, quiet=True))
    finally:
        listening.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listening
    return 0


async def _listen(args: argparse.Namespace, wake: asyncio.Event) -> None:
    """Wake the exporter on the projector's notifications, when NATS is there; else it just polls."""
    try:
        bus = await connect(config=BusConfig.from_env(url=args.url, home=args.home, embedded=False,
                                                      provision=False))
    except BusUnavailable:
        return

    async def note(msg: Any) -> None:
        wake.set()

    try:
        await bus.nc.subscribe(NOTIFICATIONS, cb=note)
        await asyncio.Event().wait()  # until cancelled
    finally:
        await bus.close()


class Follower:
    """The exporter inside ``tether up --otel-endpoint``: woken by the projector, until :meth:`stop`."""

    def __init__(self, exporter: OtelExporter, sink: OtlpHttpSink, bus: Bus, *, interval: float = 2.0,
                 on_report: Callable[[ExportReport], None] | None = None) -> None:
        self.exporter = exporter
        self.sink = sink
        self.endpoint = sink.endpoint
        self.service_name = sink.service_name
        self._bus = bus
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()
        self._sub: Any = None
        self._interval = interval
        self._on_report = on_report
        self._task: asyncio.Task[None] | None = None

    @classmethod
    async def start(cls, bus: Bus, home: Path, endpoint: str, *, headers: dict[str, str] | None = None,
                    service_name: str | None = None, timing: Timing = DEFAULTS, interval: float = 2.0,
                    capture_content: bool = False, content_limit: int = DEFAULT_CONTENT_LIMIT,
                    on_report: Callable[[ExportReport], None] | None = None) -> Follower:
        """Raises :class:`OtelUnavailable` without the extra, ``ValueError`` for a bad endpoint."""
        sink = _sink(endpoint, headers, 10.0, service_name)
        content = LogContent(bus, asyncio.get_running_loop()) if wants_content(capture_content) else None
        exporter = OtelExporter(home / "views", sink, state=state_path(home, endpoint), timing=timing,
                                content=content, content_limit=content_limit)
        self = cls(exporter, sink, bus, interval=interval, on_report=on_report)

        async def note(msg: Any) -> None:
            self._wake.set()

        self._sub = await bus.nc.subscribe(NOTIFICATIONS, cb=note)
        self._task = asyncio.create_task(exporter.follow(self._stop, interval=interval, wake=self._wake,
                                                         on_report=on_report), name="tether-otel-export")
        return self

    async def stop(self, *, final: bool = True) -> ExportReport | None:
        """Stop; with ``final``, one last pass first (call it after the projector caught up)."""
        self._stop.set()
        if self._task is not None:
            with contextlib.suppress(Exception):
                await self._task
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
        report = None
        try:
            if final:
                report = await self.exporter.aexport()
                if self._on_report is not None:
                    self._on_report(report)
        finally:
            self.exporter.close()
            self.sink.close()
        return report
