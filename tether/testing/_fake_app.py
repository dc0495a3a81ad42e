"""The fake provider's Starlette app: routes, the fault and latency each request gets, the
request log, and the control endpoints under ``/_fake/``.

Everything mutable lives in ``ProviderState``, touched only from the server's event loop (the
``FakeProvider`` marshals calls from other threads there).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import random
import socket
import struct
import time
from collections import Counter, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from tether._uvicornpriv import request_transport

from . import _fake_wire as wire
from ._fake_faults import (
    ErrorResponse,
    Fault,
    FaultPlan,
    FaultRule,
    Hang,
    Latency,
    Linger,
    MalformedJSON,
    Reset,
    ResetMidStream,
    SlowFirstByte,
    StallMidStream,
    down,
    format_faults,
    format_latency,
    parse_faults,
    parse_latency,
)

__all__ = ["DEFAULT_MODELS", "LoggedRequest", "ProviderState", "build_app"]

DEFAULT_MODELS = ("gpt-4o-mini", "gpt-4o", "text-embedding-3-small", "claude-haiku-4-5", "claude-sonnet-4-6")
_CACHEABLE = 4096  # bytes; a shorter body cannot hold the 1,024 tokens prompt caching needs


@dataclass(frozen=True, slots=True)
class LoggedRequest:
    """One request as the fake provider saw it.

    ``outcome`` is what the client got: a status (``"200"``, ``"429"``) or, when no complete
    response was sent, the fault (``"hang"``, ``"reset"``, ``"reset_mid_stream"``,
    ``"malformed_json"``). ``fault`` names the rule that fired, if any (``"slow_first_byte"``
    has outcome ``"200"``; a ``down`` window has ``"503"`` or ``"reset"``).
    """

    number: int
    time: float  # seconds since the provider started
    path: str
    api: str
    model: str | None
    stream: bool
    outcome: str
    fault: str | None
    status: int | None
    retry_count: int | None  # x-stainless-retry-count
    idempotency_key: str | None
    traceparent: str | None


class ProviderState:
    """Configuration, fault plan, seeded RNGs and the request log."""

    def __init__(self, *, seed: int, faults: Iterable[FaultRule], latency: Latency | None,
                 models: Iterable[str] | None, log_limit: int | None) -> None:
        self.initial = (seed, tuple(faults), latency)
        self.models = None if models is None else frozenset(models)
        self.listed = DEFAULT_MODELS if models is None else tuple(models)
        self.log_limit = log_limit
        self.stopping = asyncio.Event()
        self.reset()

    def reset(self, seed: int | None = None) -> None:
        """Back to the constructor's faults and latency, an empty log, and freshly seeded RNGs."""
        initial_seed, faults, latency = self.initial
        self.seed = initial_seed if seed is None else seed
        self.rng = random.Random(self.seed)
        self.latency_rng = random.Random(f"{self.seed}/latency")
        self.started = time.monotonic()
        self.plan = FaultPlan(faults, epoch=self.started)
        self.latency = latency
        self.log: deque[LoggedRequest] = deque(maxlen=self.log_limit)
        self.outcomes: Counter[str] = Counter()
        self.by_api: dict[str, Counter[str]] = {}
        self.number = 0
        self.prompts: set[int] = set()

    def rearm(self) -> None:
        """Restart the fault windows (and, before the first request, the log's clock) from now."""
        now = time.monotonic()
        self.plan = FaultPlan(self.plan.rules, epoch=now)
        if self.number == 0:
            self.started = now

    def set_faults(self, rules: Iterable[FaultRule]) -> None:
        self.plan = FaultPlan(rules, epoch=time.monotonic())

    def add_fault(self, rule: FaultRule) -> None:
        self.plan.add(rule, epoch=time.monotonic())

    def summary(self, limit: int | None = None) -> dict[str, Any]:
        requests = list(self.log)
        if limit is not None:
            requests = requests[-limit:] if limit > 0 else []
        return {
            "total": self.number,
            "outcomes": dict(self.outcomes),
            "by_api": {api: dict(counts) for api, counts in self.by_api.items()},
            "faults": format_faults(self.plan.rules),
            "latency": format_latency(self.latency) if self.latency else None,
            "requests": [dataclasses.asdict(r) for r in requests],
        }

    def record(self, entry: LoggedRequest) -> None:
        self.log.append(entry)
        self.outcomes[entry.outcome] += 1
        counts = self.by_api.get(entry.api)
        if counts is None:
            counts = self.by_api[entry.api] = Counter()
        counts[entry.outcome] += 1


# --- responses that misbehave --------------------------------------------------------------

async def _pause(receive: Receive, seconds: float, stopping: asyncio.Event) -> bool:
    """Sleep, unless the client disconnects or the server stops first; True if it slept through."""
    if seconds <= 0:
        return True

    async def disconnected() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    waiters = {asyncio.ensure_future(disconnected()), asyncio.ensure_future(stopping.wait())}
    try:
        done, _ = await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
    return not done


async def _abort(receive: Receive) -> None:
    """Reset the TCP connection under this request (RST, not FIN)."""
    transport = request_transport(receive)
    if not callable(getattr(transport, "abort", None)):  # not uvicorn: fail the request loudly instead
        raise ConnectionResetError("the fake provider reset the connection")
    assert transport is not None
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()
    await asyncio.sleep(0)  # uvicorn notices the lost connection and does not complain


class _Abort(Response):
    def __init__(self) -> None:
        self.status_code = 200

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await _abort(receive)


class _Hang(Response):
    def __init__(self, seconds: float, stopping: asyncio.Event) -> None:
        self.status_code = 200
        self.seconds, self.stopping = seconds, stopping

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await _pause(receive, self.seconds, self.stopping)
        await _abort(receive)


class _Delayed(Response):
    def __init__(self, inner: Response, seconds: float, stopping: asyncio.Event) -> None:
        self.status_code = inner.status_code
        self.inner, self.seconds, self.stopping = inner, seconds, stopping

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if await _pause(receive, self.seconds, self.stopping):
            await self.inner(scope, receive, send)
        elif self.stopping.is_set():
            await _abort(receive)


class _Stream(Response):
    """Server-sent events, one write each; optionally reset the connection after the last."""

    media_type = "text/event-stream"

    def __init__(self, events: list[bytes], headers: Mapping[str, str], *, reset: bool = False,
                 stall: tuple[int, float, asyncio.Event] | None = None,
                 linger: tuple[float, asyncio.Event] | None = None) -> None:
        self.status_code = 200
        self.events, self.reset, self.stall, self.linger = events, reset, stall, linger
        self.init_headers({"cache-control": "no-cache", **headers})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        for n, event in enumerate(self.events):
            if self.stall is not None and n == self.stall[0]:
                _, seconds, stopping = self.stall
                if not await _pause(receive, seconds, stopping):
                    if stopping.is_set():
                        await _abort(receive)
                    return  # the client went away
            await send({"type": "http.response.body", "body": event, "more_body": True})
        if self.reset:
            await _abort(receive)
        elif self.linger is not None and not await _pause(receive, *self.linger):
            if self.linger[1].is_set():
                await _abort(receive)  # stopping: no more lingering
        else:
            await send({"type": "http.response.body", "body": b"", "more_body": False})


class _HalfBody(Response):
    """Headers announcing the whole body, half of it, then a connection reset."""

    media_type = "application/json"

    def __init__(self, body: bytes, headers: Mapping[str, str]) -> None:
        self.status_code = 200
        self.body = body
        self.init_headers(headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        await send({"type": "http.response.body", "body": self.body[:len(self.body) // 2], "more_body": True})
        await _abort(receive)


def _truncate_event(event: bytes) -> bytes:
    data = event.find(b"data: ") + 6
    return event[:data + (len(event) - data) // 2] + b"\n\n"


# --- the app -------------------------------------------------------------------------------

_BUILDERS = {"chat": wire.chat_completion, "responses": wire.responses, "messages": wire.anthropic_message}


class _Handlers:
    def __init__(self, state: ProviderState) -> None:
        self.state = state

    async def chat(self, request: Request) -> Response:
        return await self._serve(request, "chat")

    async def responses(self, request: Request) -> Response:
        return await self._serve(request, "responses")

    async def embeddings(self, request: Request) -> Response:
        return await self._serve(request, "embeddings")

    async def messages(self, request: Request) -> Response:
        return await self._serve(request, "messages")

    async def gemini(self, request: Request) -> Response:
        model, _, method = str(request.path_params["rest"]).rpartition(":")
        if method not in ("generateContent", "streamGenerateContent") or not model:
            raise HTTPException(404)
        return await self._serve(request, "gemini", model=model, stream=method == "streamGenerateContent")

    async def models(self, request: Request) -> Response:
        return await self._serve(request, "models")

    async def model(self, request: Request) -> Response:
        return await self._serve(request, "models", model=request.path_params["model"])

    async def _serve(self, request: Request, api: str, *, model: str | None = None, stream: bool = False) -> Response:
        state = self.state
        dialect = "anthropic" if api == "messages" else "gemini" if api == "gemini" else "openai"
        raw = await request.body() if request.method == "POST" else b""
        # from here to the response nothing awaits, so control calls never land mid-request
        now = time.monotonic()
        state.number += 1
        number = state.number
        payload: dict[str, Any] = {}
        if request.method == "POST":
            try:
                parsed = json.loads(raw)
            except ValueError:
                parsed = None
            if not isinstance(parsed, dict):
                message = ("We could not parse the JSON body of your request. The API expects a JSON payload."
                           if dialect == "openai" else "Request body is not valid JSON.")
                return self._answer(request, number, now, api, None, False, None, None,
                                    self._error(dialect, 400, number, message))
            payload = parsed
            if api != "gemini":  # Gemini's model is in the path
                model = payload.get("model") if isinstance(payload.get("model"), str) else None
        stream = stream or payload.get("stream") is True
        rule = state.plan.decide(api, model, now, state.rng.random())
        fault = rule.fault if rule else None
        label = rule.label if rule else None

        response: Response
        if isinstance(fault, ErrorResponse):
            response = self._error(dialect, fault.status, number, retry_after=fault.advertised_retry_after,
                                   extra=fault.headers)
        elif isinstance(fault, Hang):
            response = _Hang(fault.seconds, state.stopping)
        elif isinstance(fault, Reset):
            response = _Abort()
        else:
            try:
                response = self._build(request, api, payload, raw, model, number, fault, stream)
            except wire.Invalid as problem:
                return self._answer(request, number, now, api, model, stream, None, None,
                                    self._error(dialect, problem.status, number, problem.message,
                                                code=problem.code, param=problem.param))
            delay = state.latency.sample(state.latency_rng) if state.latency else 0.0
            if isinstance(fault, SlowFirstByte) or (isinstance(fault, StallMidStream) and not stream):
                delay += fault.seconds
            if delay > 0:
                response = _Delayed(response, delay, state.stopping)
        return self._answer(request, number, now, api, model, stream, fault, label, response)

    def _build(self, request: Request, api: str, payload: dict[str, Any], raw: bytes, model: str | None,
               number: int, fault: Fault | None, stream: bool = False) -> Response:
        """The normal answer, shaped by a fault that still sends one (reset mid-stream, malformed)."""
        state = self.state
        anthropic = api == "messages"
        if model is None and not (api == "models" and request.method == "GET"):
            message = "model: Field required" if anthropic else "You must provide a model parameter."
            raise wire.Invalid(400, message, param="model")
        if model is not None and state.models is not None and model not in state.models:
            raise wire.Invalid(404, f"model: {model}" if anthropic else
                               f"The model `{model}` does not exist or you do not have access to it.",
                               code="model_not_found")
        request_id = f"req_fake{state.seed}x{number}"
        headers = {"request-id": request_id} if anthropic else {"x-request-id": request_id}
        body: bytes | None
        events: list[bytes] | None = None
        if api == "models":
            if model is not None:
                body = json.dumps(wire.openai_model(model)).encode()
            elif "anthropic-version" in request.headers:
                body = wire.anthropic_models(state.listed)
            else:
                body = wire.openai_models(state.listed)
        elif api == "embeddings":
            assert model is not None
            body = wire.embeddings(payload, wire.Turn(state.seed, number, model, int(time.time())))
        else:
            assert model is not None
            repeated = False
            if not anthropic and len(raw) >= _CACHEABLE:
                key = hash(raw)
                repeated = key in state.prompts
                if len(state.prompts) >= 100_000:
                    state.prompts.clear()
                state.prompts.add(key)
            turn = wire.Turn(state.seed, number, model, int(time.time()), repeated)
            if api == "gemini":
                body, events = wire.gemini_content(payload, turn, stream=stream)
            else:
                body, events = _BUILDERS[api](payload, turn)
        if events is not None:
            if isinstance(fault, ResetMidStream):
                return _Stream(events[:fault.after_chunks], headers, reset=True)
            if isinstance(fault, StallMidStream):
                return _Stream(events, headers, stall=(fault.after_chunks, fault.seconds, state.stopping))
            if isinstance(fault, Linger):
                return _Stream(events, headers, linger=(fault.seconds, state.stopping))
            if isinstance(fault, MalformedJSON):
                return _Stream([*events[:1], _truncate_event(events[min(1, len(events) - 1)])], headers)
            return _Stream(events, headers)
        assert body is not None
        if isinstance(fault, ResetMidStream):
            return _HalfBody(body, headers)
        if isinstance(fault, MalformedJSON):
            body = body[:len(body) // 2]
        return Response(body, 200, headers, media_type="application/json")

    def _error(self, dialect: str, status: int, number: int, message: str | None = None, *,
               code: str | None = None, param: str | None = None, retry_after: float | None = None,
               extra: Iterable[tuple[str, str]] = ()) -> Response:
        request_id = f"req_fake{self.state.seed}x{number}"
        if dialect == "gemini":  # no rate-limit headers: the wait is a RetryInfo in the body
            body = wire.gemini_error(status, message, retry_after=retry_after)
            return Response(body, status, {"x-request-id": request_id} | dict(extra), media_type="application/json")
        if dialect == "anthropic":
            headers = {"request-id": request_id}
            body = wire.anthropic_error(status, message, request_id=request_id)
        else:
            headers = {"x-request-id": request_id}
            body = wire.openai_error(status, message, code=code, param=param)
        if retry_after is not None:
            headers |= wire.retry_headers(dialect, retry_after, time.time())
        headers |= dict(extra)
        return Response(body, status, headers, media_type="application/json")

    def _answer(self, request: Request, number: int, now: float, api: str, model: str | None, stream: bool,
                fault: Fault | None, label: str | None, response: Response) -> Response:
        if isinstance(fault, Hang | Reset | ResetMidStream | MalformedJSON):
            status, outcome = (None if isinstance(fault, Hang | Reset) else 200), fault.kind
        else:
            status = response.status_code
            outcome = str(status)
        headers = request.headers
        retries = headers.get("x-stainless-retry-count")
        self.state.record(LoggedRequest(
            number, round(now - self.state.started, 6), request.scope["path"], api, model, stream, outcome,
            label, status, int(retries) if retries and retries.isdigit() else None,
            headers.get("idempotency-key"), headers.get("traceparent"),
        ))
        return response

    # --- control endpoints: not logged, never faulted ---

    async def get_faults(self, request: Request) -> Response:
        return JSONResponse(self._config())

    async def post_faults(self, request: Request) -> Response:
        try:
            body = await _json_object(request)
            if "spec" in body:
                self.state.set_faults(parse_faults(str(body["spec"] or "")))
            if "latency" in body:
                self.state.latency = parse_latency(str(body["latency"])) if body["latency"] else None
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, 400)
        return JSONResponse(self._config())

    async def post_down(self, request: Request) -> Response:
        try:
            body = await _json_object(request)
            seconds = body.get("seconds")
            mode = body.get("mode", "503")
            if (seconds is not None and not isinstance(seconds, int | float)) or mode not in ("503", "reset"):
                raise ValueError('expected {"seconds": number or null, "mode": "503" or "reset"}')
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, 400)
        self.state.add_fault(down(None if seconds is None else float(seconds), mode=mode))
        return JSONResponse(self._config())

    async def get_log(self, request: Request) -> Response:
        limit = request.query_params.get("limit")
        if limit is not None and not limit.isdigit():
            return JSONResponse({"error": "limit must be a whole number"}, 400)
        return JSONResponse(self.state.summary(None if limit is None else int(limit)))

    async def post_reset(self, request: Request) -> Response:
        try:
            body = await _json_object(request)
            seed = body.get("seed")
            if seed is not None and not isinstance(seed, int):
                raise ValueError("seed must be an integer")
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, 400)
        self.state.reset(seed)
        return JSONResponse(self._config())

    def _config(self) -> dict[str, Any]:
        state = self.state
        return {"seed": state.seed, "faults": format_faults(state.plan.rules),
                "latency": format_latency(state.latency) if state.latency else None}


async def _json_object(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw.strip():
        return {}
    body = json.loads(raw)
    if not isinstance(body, dict):
        raise ValueError("expected a JSON object")
    return body


async def _not_found(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 404
    message = f"Invalid URL ({request.method} {request.url.path})"
    if request.url.path.startswith("/v1beta/"):
        return Response(wire.gemini_error(status, message), status, media_type="application/json")
    if request.url.path.startswith("/v1/messages"):
        return Response(wire.anthropic_error(status, message), status, media_type="application/json")
    return Response(wire.openai_error(status, message), status, media_type="application/json")


def build_app(state: ProviderState) -> Starlette:
    h = _Handlers(state)
    return Starlette(
        routes=[
            Route("/v1/chat/completions", h.chat, methods=["POST"]),
            Route("/v1/responses", h.responses, methods=["POST"]),
            Route("/v1/embeddings", h.embeddings, methods=["POST"]),
            Route("/v1/models", h.models, methods=["GET"]),
            Route("/v1/models/{model:path}", h.model, methods=["GET"]),
            Route("/v1/messages", h.messages, methods=["POST"]),
            Route("/v1beta/models/{rest:path}", h.gemini, methods=["POST"]),
            Route("/_fake/faults", h.get_faults, methods=["GET"]),
            Route("/_fake/faults", h.post_faults, methods=["POST"]),
            Route("/_fake/down", h.post_down, methods=["POST"]),
            Route("/_fake/log", h.get_log, methods=["GET"]),
            Route("/_fake/reset", h.post_reset, methods=["POST"]),
        ],
        exception_handlers={404: _not_found, 405: _not_found},
    )
