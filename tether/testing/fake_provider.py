"""A fake OpenAI- and Anthropic-compatible provider with seeded, scriptable faults.

Tests, the demo and the benchmarks run against it; users run it to rehearse outages::

    async with FakeProvider(seed=1, faults="429:0.1,500:0.05") as fp:
        client = openai.AsyncOpenAI(base_url=fp.url, api_key="x")          # .../v1
        claude = anthropic.AsyncAnthropic(base_url=fp.anthropic_url, api_key="x")

    fp = FakeProvider(faults=[FaultRule(ErrorResponse(429, retry_after=0.5), times=2)]).start_in_thread()
    ...
    fp.stop()

Endpoints: ``POST /v1/chat/completions``, ``/v1/responses``, ``/v1/embeddings``,
``/v1/messages`` (Anthropic), ``/v1beta/models/{model}:generateContent`` and
``:streamGenerateContent`` (Gemini, SSE chunks), ``GET /v1/models`` (and ``/v1/models/{id}``),
each streaming where the API streams, with usage, tool calls and each API's error bodies. Any model name is accepted
unless ``models=`` lists them (then an unknown one is a 404 ``model_not_found``).

Control endpoints, for a separate process: ``GET|POST /_fake/faults`` (``{"spec": "...",
"latency": "..."}``), ``POST /_fake/down`` (``{"seconds": 10, "mode": "503"|"reset"}``),
``GET /_fake/log`` (counts by outcome and API, and the requests; ``?limit=N`` keeps the last N),
``POST /_fake/reset`` (``{"seed": 2}``, optional). They are neither logged nor faulted.

Fault spec
----------
Rules separated by commas; the first rule that fires wins::

    SPEC     := RULE ("," RULE)*
    RULE     := EFFECT ["(" ARGS ")"] [":" PROB] ["@" START [":" LENGTH]]
                ["#" N ["-" M]] ["/" API] ["=" MODEL]
    EFFECT   := 400..599            an error status with the API's error body;
                                    ARGS = Retry-After (429 advertises 1s by default)
              | "hang"              never answer; ARGS = how long before resetting (default 300s)
              | "slow_first_byte"   wait before the status line; ARGS = the wait (default 2s)
              | "reset"             reset the connection without a response
              | "reset_mid_stream"  send ARGS events (default 3), or half the body, then reset
              | "stall_mid_stream"  send N events (default 3), pause DURATION (default 2s), then
                                    the rest; ARGS = N, DURATION, e.g. stall_mid_stream(2,5s)
              | "linger"            send the whole stream, then keep it open DURATION (default
                                    300ms) before ending it, e.g. linger(1s); a JSON answer as usual
              | "malformed_json"    200 with a truncated JSON body (or a truncated event)
              | "down"              503 for every request; ARGS = LENGTH and/or "reset" (resets
                                    instead of 503), e.g. down(10s) or down(reset)@5s:10s
    PROB     := 0..1, default 1; rules below 1 share one draw per request, so the mix is exact
    START, LENGTH := a window after the faults were set: "@5s:10s" is from 5 s to 15 s
    N-M      := only the Nth (to Mth) request matching the rule's API, model and window
    API      := chat | responses | embeddings | models | messages | gemini
    MODEL    := a model name or glob, e.g. gpt-4o*   (last, so it may contain any character)
    DURATION := 250ms | 1.5s | 2m | 3 (seconds)

For example ``429(2s):0.1/chat,500:0.05,hang:0.01,reset_mid_stream(2):0.02=gpt-4o,down@5s:10s``.

Latency spec: ``20ms`` (or ``fixed:20ms``), ``uniform:10ms:50ms``, ``lognormal:MEAN:P99`` such as
``lognormal:30ms:200ms``. Latency delays the start of each successful response (errors, resets
and hangs are immediate); it draws from its own RNG, so adding it does not change which requests
fail. A run is reproducible: the same seed and the same sequence of requests give the same faults
and the same replies.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Literal, TextIO, TypeVar

import uvicorn

from tether._loop import run as run_loop
from tether._sockets import listen
from tether._uvicornpriv import StoppingServer

from ._fake_app import DEFAULT_MODELS, LoggedRequest, ProviderState, build_app
from ._fake_faults import (
    ErrorResponse,
    FaultRule,
    FixedLatency,
    Hang,
    Latency,
    Linger,
    LogNormalLatency,
    MalformedJSON,
    Reset,
    ResetMidStream,
    SlowFirstByte,
    StallMidStream,
    UniformLatency,
    down,
    format_faults,
    format_latency,
    parse_faults,
    parse_latency,
)
from ._fake_wire import reply_text

__all__ = [
    "DEFAULT_MODELS",
    "ErrorResponse",
    "FakeProvider",
    "FaultRule",
    "FixedLatency",
    "Hang",
    "Linger",
    "LogNormalLatency",
    "LoggedRequest",
    "MalformedJSON",
    "Reset",
    "ResetMidStream",
    "SlowFirstByte",
    "StallMidStream",
    "UniformLatency",
    "build_parser",
    "main",
    "parse_faults",
    "parse_latency",
    "reply_text",
    "run",
]

T = TypeVar("T")
_GRACE = 2.0  # seconds a stopping server waits for responses in flight before resetting them


class FakeProvider:
    """An OpenAI- and Anthropic-compatible HTTP server on a loopback port, with fault injection.

    ``faults`` and ``latency`` take rule/latency objects or their text spec (see the module
    docstring). ``log_limit`` bounds the kept request log; counts stay exact regardless.
    """

    def __init__(
        self,
        *,
        seed: int = 0,
        faults: str | Iterable[FaultRule] = (),
        latency: Latency | str | None = None,
        models: Iterable[str] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        log_limit: int | None = 100_000,
    ) -> None:
        self.host = host
        self._port = port
        self._state = ProviderState(seed=seed, faults=_rules(faults), latency=_latency(latency),
                                    models=models, log_limit=log_limit)
        self.app = build_app(self._state)
        self._server: StoppingServer | None = None
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    # --- addresses ---

    @property
    def port(self) -> int:
        """The bound port (kept after ``stop``, so a test can see the connection refused)."""
        if not self._port:
            raise RuntimeError("the fake provider has not started")
        return self._port

    @property
    def origin(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def url(self) -> str:
        """The OpenAI base URL, ``http://127.0.0.1:PORT/v1``."""
        return self.origin + "/v1"

    @property
    def anthropic_url(self) -> str:
        """The Anthropic base URL (the SDK adds ``/v1/messages``): ``http://127.0.0.1:PORT``."""
        return self.origin

    # --- running inside an event loop ---

    async def start(self) -> FakeProvider:
        if self._server is not None:
            raise RuntimeError("the fake provider is already running")
        sock = listen(self.host, self._port)
        self._port = sock.getsockname()[1]
        config = uvicorn.Config(self.app, log_config=None, log_level="warning", access_log=False,
                                lifespan="off", proxy_headers=False, server_header=False,
                                timeout_keep_alive=30)
        self._server = server = StoppingServer(config, grace_s=_GRACE)
        self._loop = asyncio.get_running_loop()
        self._state.stopping = asyncio.Event()
        self._state.rearm()  # fault windows count from the start
        self._task = asyncio.create_task(server.serve(sockets=[sock]), name=f"fake-provider:{self._port}")
        while not server.started:
            if self._task.done():
                self._server = None
                sock.close()
                await self._task  # raises what stopped it
                raise RuntimeError("the fake provider did not start")
            await asyncio.sleep(0.001)
        return self

    async def aclose(self) -> None:
        """Stop: responses in flight get ``_GRACE`` seconds, hangs are reset at once."""
        server, task = self._server, self._task
        if server is None or task is None:
            return
        if self._thread is not None:
            raise RuntimeError("this fake provider runs in a thread: stop it with stop()")
        self._request_stop()
        try:
            await task
        finally:
            self._server = self._task = self._loop = None

    def _request_stop(self) -> None:
        if self._server is not None:
            self._state.stopping.set()
            self._server.should_exit = True
            self._server.wake.set()

    async def __aenter__(self) -> FakeProvider:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # --- running beside synchronous code ---

    def start_in_thread(self) -> FakeProvider:
        """Serve from a daemon thread with its own event loop; ``stop()`` ends it."""
        if self._thread is not None:
            raise RuntimeError("the fake provider is already running")
        started: concurrent.futures.Future[None] = concurrent.futures.Future()

        async def serve() -> None:
            try:
                await self.start()
            except BaseException as exc:
                started.set_exception(exc)
                return
            started.set_result(None)
            assert self._task is not None
            await self._task
            self._server = self._task = self._loop = None

        self._thread = threading.Thread(target=asyncio.run, args=(serve(),), name="fake-provider",
                                        daemon=True)
        self._thread.start()
        try:
            started.result(timeout=30)
        except BaseException:
            self._thread.join(timeout=5)
            self._thread = None
            raise
        return self

    def stop(self) -> None:
        """Stop a provider started with ``start_in_thread()`` and wait for its thread."""
        thread, loop = self._thread, self._loop
        if thread is None:
            if self._server is not None:
                raise RuntimeError("this fake provider runs in an event loop: stop it with aclose()")
            return
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop already closed
                loop.call_soon_threadsafe(self._request_stop)
        thread.join(timeout=_GRACE + 10)
        self._thread = None

    def __enter__(self) -> FakeProvider:
        return self.start_in_thread()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = self.url if self._port else "not started"
        return f"<FakeProvider {where} seed={self._state.seed} faults={format_faults(self.faults)!r}>"

    # --- control ---

    def _on_loop(self, action: Callable[[], T]) -> T:
        """Run a state change on the server's loop (waiting for it when called from another thread)."""
        loop = self._loop
        if loop is None or not loop.is_running() or _running_loop() is loop:
            return action()

        async def run() -> T:
            return action()

        return asyncio.run_coroutine_threadsafe(run(), loop).result(timeout=10)

    def set_faults(self, faults: str | Iterable[FaultRule]) -> None:
        """Replace the fault rules; their windows count from now."""
        rules = _rules(faults)
        self._on_loop(lambda: self._state.set_faults(rules))

    def add_fault(self, rule: FaultRule) -> None:
        """Add a rule after the current ones; its window counts from now."""
        self._on_loop(lambda: self._state.add_fault(rule))

    def clear_faults(self) -> None:
        self._on_loop(lambda: self._state.set_faults(()))

    def down_for(self, seconds: float | None, *, mode: Literal["503", "reset"] = "503") -> None:
        """From now, every request gets a 503 (or a connection reset) for ``seconds`` (``None``: until
        the faults are cleared)."""
        self.add_fault(down(seconds, mode=mode))

    def set_latency(self, latency: Latency | str | None) -> None:
        value = _latency(latency)
        self._on_loop(lambda: setattr(self._state, "latency", value))

    def reset(self, seed: int | None = None) -> None:
        """Back to the constructor's faults and latency, an empty log and freshly seeded RNGs."""
        self._on_loop(lambda: self._state.reset(seed))

    @property
    def faults(self) -> list[FaultRule]:
        return self._state.plan.rules

    @property
    def log(self) -> list[LoggedRequest]:
        """Every request so far (the last ``log_limit``), in arrival order."""
        return list(self._state.log)

    @property
    def outcomes(self) -> dict[str, int]:
        """Requests by outcome: ``{"200": 95, "429": 4, "hang": 1}``."""
        return dict(self._state.outcomes)

    def summary(self, limit: int | None = None) -> dict[str, object]:
        """What ``GET /_fake/log`` returns: counts by outcome and API, and the last ``limit`` requests
        (all by default) as dicts."""
        return self._on_loop(lambda: self._state.summary(limit))



def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _rules(faults: str | Iterable[FaultRule]) -> list[FaultRule]:
    return parse_faults(faults) if isinstance(faults, str) else list(faults)


def _latency(latency: Latency | str | None) -> Latency | None:
    return parse_latency(latency) if isinstance(latency, str) else latency


# --- command line --------------------------------------------------------------------------

def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """The ``tether fake-provider`` options, added to ``parser`` (a subcommand's) or a new one."""
    if parser is None:
        parser = argparse.ArgumentParser(
            prog="tether fake-provider",
            description="Run a fake OpenAI/Anthropic-compatible provider with seeded fault injection.",
        )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port (default 0: a free one)")
    parser.add_argument("--seed", type=int, default=0, help="seed for faults and replies (default 0)")
    parser.add_argument("--faults", default="", metavar="SPEC",
                        help="fault rules, e.g. '429:0.1,500:0.05,hang:0.01,down@5s:10s'")
    parser.add_argument("--latency", metavar="SPEC",
                        help="response latency: 20ms, uniform:10ms:50ms or lognormal:MEAN:P99")
    parser.add_argument("--models", metavar="A,B",
                        help="the only models served (others get 404 model_not_found); default: any")
    return parser


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None) -> int:
    """Serve until SIGINT/SIGTERM. The first line printed is the OpenAI base URL."""
    return run(build_parser().parse_args(argv), out=out)


def run(args: argparse.Namespace, *, out: TextIO | None = None) -> int:
    """Serve with options parsed by ``build_parser`` (for a CLI that parses its own arguments).
    Returns 2 for a bad fault or latency spec and 1 when the address cannot be bound."""
    try:
        rules = parse_faults(args.faults)
        latency = parse_latency(args.latency) if args.latency else None
    except ValueError as exc:
        print(f"tether fake-provider: {exc}", file=sys.stderr)
        return 2
    models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else None
    provider = FakeProvider(seed=args.seed, faults=rules, latency=latency, models=models,
                            host=args.host, port=args.port)
    stream = out or sys.stdout

    async def serve() -> None:
        await provider.start()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):  # not the main thread
                loop.add_signal_handler(sig, provider._request_stop)
        print(provider.url, file=stream)
        shown = format_latency(latency) if latency else "none"
        print(f"  anthropic base URL {provider.anthropic_url}; seed {args.seed}; "
              f"faults {format_faults(rules) or 'none'}; latency {shown}", file=stream)
        print(f"  control: {provider.origin}/_fake/log | /_fake/faults | /_fake/down | /_fake/reset; "
              "Ctrl-C stops", file=stream, flush=True)
        assert provider._task is not None
        await provider._task

    try:
        run_loop(serve())  # the loop of every tether command: uvloop where installed
    except OSError as exc:  # the address is taken or cannot be bound
        print(f"tether fake-provider: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0
