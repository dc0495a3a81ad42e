"""``tether gateway``: the OpenAI/Anthropic/Gemini-compatible gateway, and its part in ``tether up``.

``add_commands`` adds the subcommand; ``run`` serves until SIGINT/SIGTERM; ``start_in_up``
starts it inside ``tether up`` (which owns the bus and the signals); ``main`` runs it on its
own (``python -m tether.cli._gateway``, as the benchmark does).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from tether.bus import Bus, BusConfig, BusUnavailable, connect

__all__ = ["add_commands", "describe", "main", "new_key", "run", "start_in_up"]


def add_commands(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser(
        "gateway", help="an OpenAI/Anthropic/Gemini-compatible gateway any agent can point its base URL at",
        description="Serve POST /v1/chat/completions, /v1/responses, /v1/embeddings (OpenAI), /v1/messages "
        "(Anthropic), /v1beta/models/{model}:generateContent and :streamGenerateContent (Gemini), GET /v1/models "
        "and POST /v1/events (CloudEvents) on HOST:PORT. Agents authenticate "
        "with gateway keys ([gateway.keys] in tether.toml, each mapped to an agent id); calls go to the "
        "[providers.*] upstreams under the reliability policy, with every step recorded. Needs a running "
        "tether (`tether up`) or --url. Docs: docs/gateway.md.")
    common(p)
    add_options(p)


def add_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path,
                   help="configuration file (default: ./tether.toml or [tool.tether] in pyproject.toml)")
    p.add_argument("--host", help="address to listen on (default: [gateway] host, else 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default: [gateway] port, else 8400; 0: a free one)")
    p.add_argument("--new-key", action="store_true",
                   help="print a new gateway key and the lines to put in tether.toml, then exit")
    p.add_argument("--agent", default="my-agent", help="with --new-key: the agent id the key maps to")


def new_key() -> str:
    """A fresh gateway key: ``tg-`` and 32 URL-safe characters (redacted wherever it appears)."""
    return "tg-" + secrets.token_urlsafe(24)


def describe(server: Any) -> list[str]:
    """What a running gateway serves, as lines to print."""
    config = server.config
    providers = ", ".join(f"{name} ({p.kind}{_key_note(p)})" for name, p in config.providers.items()) \
        or "none: add [providers.*] to tether.toml"
    models = ", ".join(f"{r.pattern}->{r.provider}{':' + r.model if r.model else ''}" for r in config.models)
    return [
        f"gateway listening on {server.url}: OpenAI base URL {server.url}/v1, Anthropic and Gemini base URL "
        f"{server.url}",
        f"  providers: {providers}",
        f"  models: {models or 'none named'}; default provider: {config.default_provider or 'none (others: 404)'}",
        f"  {len(config.keys)} gateway key(s); body limit {config.max_body_bytes // (1024 * 1024)} MB; "
        f"capture {'on' if config.capture else 'off'}" + (f"; config {config.source}" if config.source else ""),
    ]


def _key_note(provider: Any) -> str:
    if provider.api_key or not provider.api_key_env:
        return ""
    return f", ${provider.api_key_env} is not set: calls will be refused upstream"


def _load(args: argparse.Namespace, err: TextIO) -> Any:
    from tether._config import gateway_config
    from tether.middleware import PolicyConfigError

    try:
        return gateway_config(getattr(args, "config", None))
    except PolicyConfigError as exc:
        print(f"tether gateway: {exc}", file=err)
        return None


async def start_in_up(bus: Bus, config_path: Path | None, *, host: str | None, port: int,
                      out: TextIO | None = None) -> Any:
    """Start the gateway inside ``tether up`` (on its bus); ``None`` after printing why it could not.
    Stop it with ``await server.stop()``."""
    from tether.adapters.gateway import GatewayServer

    err = sys.stderr
    config = _load(argparse.Namespace(config=config_path), err)
    if config is None:
        return None
    try:
        server = await GatewayServer(config, bus, host=host, port=port).start()
    except OSError as exc:
        print(f"tether up: the gateway cannot listen on {host or config.host}:{port}: {exc}", file=err)
        return None
    for line in describe(server):
        print("  " + line, file=out or sys.stdout, flush=True)
    return server


async def run(args: argparse.Namespace, *, out: TextIO | None = None) -> int:
    """``tether gateway``: serve until SIGINT/SIGTERM. 2 on a configuration error, 1 when the
    address cannot be bound or NATS cannot be reached."""
    from tether.adapters import Hub
    from tether.adapters.gateway import GatewayServer, digest

    stream = out or sys.stdout
    if getattr(args, "new_key", False):
        key = new_key()
        print(f"{key}\n\n# tether.toml (the hashed form keeps the key out of the file):\n[gateway.keys]\n"
              f'"sha256:{digest(key)}" = "{args.agent}"', file=stream)
        return 0
    config = _load(args, sys.stderr)
    if config is None:
        return 2
    try:
        bus = await connect(config=BusConfig.from_env(url=args.url, home=args.home, embedded=False))
    except BusUnavailable as exc:
        print(f"tether gateway: {exc} (start tether with `tether up`, or pass --url)", file=sys.stderr)
        return 1
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):  # not the main thread
            loop.add_signal_handler(sig, stop.set)
    try:
        try:
            server = await GatewayServer(config, bus, host=args.host, port=args.port).start()
        except OSError as exc:
            print(f"tether gateway: cannot listen on {args.host or config.host}:{args.port or config.port}: {exc}",
                  file=sys.stderr)
            return 1
        for line in describe(server):
            print(line, file=stream, flush=True)
        print("Ctrl-C stops it.", file=stream, flush=True)
        try:
            await stop.wait()
        finally:
            print("gateway stopping (requests in flight get a few seconds)...", file=stream, flush=True)
            await server.stop()
        return 0
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):
                loop.remove_signal_handler(sig)
        await Hub.of(bus).aclose()
        await bus.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``tether gateway`` on its own, on the loop ``tether gateway`` runs on (uvloop where installed)."""
    parser = argparse.ArgumentParser(prog="tether gateway", description="Serve the tether gateway.")
    parser.add_argument("--url", help="NATS server URL (default: $TETHER_NATS_URL, else the local tether server)")
    parser.add_argument("--home", type=Path, help="tether home directory (default: $TETHER_HOME or ./.tether)")
    add_options(parser)
    from tether._loop import run as run_loop

    return run_loop(run(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
