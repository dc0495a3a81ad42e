"""``tether up``: the embedded nats-server (or a given one), the streams, a worker, the projector, and
optionally the gateway, the OpenTelemetry follower and the demo, until Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from pathlib import Path
from typing import Any

from tether import __version__
from tether.bus import Bus, connect, find_cluster

from ._format import Style
from ._process import bus_config, stop_on_signals

__all__ = ["run_up"]


async def run_up(args: argparse.Namespace) -> int:
    s = Style()
    lone = [flag for flag, given in (("--otel-service-name", args.otel_service_name),
                                     ("--otel-capture-content", args.otel_capture_content)) if given]
    if lone and not args.otel_endpoint:
        print(f"tether up: {' and '.join(lone)} go with --otel-endpoint URL (where the traces are sent), "
              "e.g. --otel-endpoint http://127.0.0.1:6006 for Phoenix", file=sys.stderr)
        return 2
    extra: dict[str, Any] = {"update_streams": args.update_streams}
    if args.replicas:
        extra["replicas"] = args.replicas
    cfg = bus_config(args, **extra)
    cluster = find_cluster(cfg.home) if not cfg.url else None
    where = cfg.url or (f"the cluster in {cfg.home / 'cluster'}" if cluster else f"embedded nats-server in {cfg.home}")
    # Signals are handled from the very start (before the first line is printed): Ctrl-C
    # while the server is still coming up stops it too, instead of leaving an orphan that
    # no later `tether up` owns.
    with stop_on_signals() as stop:
        print(f"tether {__version__} starting: {where}", flush=True)
        connecting = asyncio.create_task(connect(config=cfg))
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({connecting, stopper}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        if not connecting.done():
            connecting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                late = await connecting
                await late.close()  # the cancel came as it finished: close what it opened
            print("stopped before tether was up.", flush=True)
            return 0
        bus = connecting.result()
        try:
            if bus.server is not None:
                print(f"  nats-server pid {bus.server.pid} listening on {bus.url} "
                      f"(JetStream, data in {cfg.home / 'nats'})")
            else:
                print(f"  connected to {bus.url}")
            rep = bus.provision_report
            if rep is not None:
                made = ", ".join(rep.created) or "none"
                print(f"  streams: EVENTS, WORK, DLQ ready (created: {made})")
                for drift in rep.drift:
                    print(s.yellow(f"  drift: {drift}"))
            left = bus.publisher.outbox_depth()
            if left:
                print(s.yellow(f"  flushing {left} event(s) left in the outbox by an earlier process"))
            executor, fake = await _start_services(args, bus, s)
            if executor is None:
                return 2
            projector = await _start_projector(bus, cfg.home, s, args.processes)
            gateway = None
            if args.gateway_port is not None:
                from ._gateway import start_in_up

                gateway = await start_in_up(bus, args.config, host=args.gateway_host, port=args.gateway_port)
                if gateway is None:
                    await executor.stop()
                    if projector is not None:
                        await projector.stop()
                    return 2
            otel = None
            if args.otel_endpoint:
                from tether.projections.otel import OtelUnavailable

                from ._otel import Follower

                try:
                    otel = await Follower.start(bus, cfg.home, args.otel_endpoint,
                                                service_name=args.otel_service_name,
                                                capture_content=args.otel_capture_content)
                except (OtelUnavailable, ValueError) as exc:
                    print(f"tether up: --otel-endpoint: {exc}", file=sys.stderr)
                    if gateway is not None:
                        await gateway.stop()
                    await executor.stop()
                    if projector is not None:
                        await projector.stop()
                    return 2
                content = "with prompts and results" if otel.exporter.content is not None else "without content"
                print(f"  otel: finished traces to {otel.endpoint} (service and project {otel.service_name}, "
                      f"{content})")
            ui = None
            if not args.no_ui:
                from ._ui import start_in_up as start_ui

                ui = await start_ui(bus, cfg.home, args.ui_port)
            print(s.bold("tether is up.") + " In another terminal: `tether tail` to watch events, "
                  "`tether status` for counts, `tether dlq ls` for dead letters. Ctrl-C stops everything.",
                  flush=True)
            try:
                if not args.demo or fake is None:
                    await stop.wait()
                    return 0
                from ._demo import play_demo

                return await play_demo(args, bus, fake, stop, s)
            finally:
                if ui is not None:
                    await ui.stop()
                if gateway is not None:
                    await gateway.stop()
                await executor.stop()
                if fake is not None:
                    await fake.aclose()
                if projector is not None:
                    with contextlib.suppress(Exception):  # best effort: views current at exit
                        await projector.catch_up(timeout=10)
                    await projector.stop()
                if otel is not None:
                    await otel.stop()  # one last pass
        finally:
            _say("stopping tether...")
            await bus.close()
            _say("stopped cleanly.")


async def _start_services(args: argparse.Namespace, bus: Bus, s: Style) -> tuple[Any, Any]:
    """The worker (and, for the demo, the fake provider it calls). (None, None) on a config error."""
    from tether._config import worker_config
    from tether.middleware import Executor, PolicyConfigError, tools

    fake = None
    if args.demo:
        from tether.testing.fake_provider import FakeProvider

        from ._demo import demo_policies, demo_providers, demo_tools

        fake = await FakeProvider(seed=0).start()
        executor = Executor(bus, policies=demo_policies(), providers=demo_providers(fake), tools=demo_tools())
        print(f"  fake provider (demo) on {fake.url}")
    else:
        try:
            wcfg = worker_config(args.config)
            wcfg.import_tools()
        except PolicyConfigError as exc:
            print(f"tether up: {exc}", file=sys.stderr)
            return None, None
        executor = Executor(bus, policies=wcfg.policies, providers=wcfg.providers, tools=tools,
                            concurrency=wcfg.concurrency)
    await executor.start()
    print(f"  worker: durable calls from WORK, {len(executor.providers)} provider(s) "
          f"[{', '.join(executor.providers) or 'none: add [providers.*] to tether.toml'}], "
          f"{len(executor.tools.names())} tool(s)")
    return executor, fake


async def _start_projector(bus: Bus, home: Path, s: Style, processes: int) -> Any:
    """The projector for the views under ``home/views``; None (with a note) if one already runs."""
    from tether.projections import ProjectorBusy

    from ._projector import describe_views, start_views

    try:
        projector = await start_views(bus, home / "views", processes)
    except ProjectorBusy:
        print(s.yellow("  projector: another one already serves these views; not starting a second"))
        return None
    from ._freshness import catch_up_words

    print(f"  projector: {describe_views(projector)}, from the log into {home / 'views'}: "
          f"{catch_up_words(projector.applied_seq, projector.head_seq)}")
    return projector


def _say(text: str) -> None:
    """Print during shutdown: a closed stdout (``tether up | head``) must not skip the cleanup."""
    with contextlib.suppress(OSError, ValueError):
        print(text, flush=True)
