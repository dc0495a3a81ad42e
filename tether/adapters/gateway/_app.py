"""The gateway's HTTP application: OpenAI-, Anthropic- and Gemini-compatible endpoints over the interceptor.

Every LLM request goes the same way: authenticate the gateway key (the agent), read the body
(with a size limit), check it is JSON with a model, resolve the model to an upstream, then
hand it to the :class:`~tether.adapters.Interceptor` of that provider and agent, inside the
caller's run, with an upstream that adds the provider's key. The interceptor applies the
policy (retries, breaker, fallbacks, budgets) and publishes the events; the answer (a body,
or a stream passed on chunk by chunk) goes back to the agent in the provider's own format.

The LLM endpoints are plain ASGI callables (Starlette routes to them): they watch for the
client going away for the whole request, so a disconnect while the gateway is still
retrying, or mid-stream, cancels the call and releases the upstream connection, and the
events say the caller closed it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any
from urllib.parse import unquote_to_bytes

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from tether.bus import Bus, event_filter, read_subject
from tether.memory import MemorySettings
from tether.middleware import Cursor, breaker_retry_in
from tether.schemas import (
    Event,
    LlmCallCompleted,
    LlmCallFailed,
    LlmCallRequested,
    RunFinished,
    ToolCallRequested,
    UsageReported,
)

from .._core import Interceptor, ProxyResponse, call_digest
from .._hub import Hub
from .._redact import DEFAULT_PATTERNS, Redactor
from .._runs import RunContext, bound, new_traceparent
from .._wire import Kind, Operation, parse_request, stream_error_event
from ._attempts import Attempts
from ._config import GatewayConfig
from ._errors import Headers, problem, with_retry_after
from ._identity import STRIPPED, Caller, Refused, identify
from ._ingest import IngestError, decode, validate
from ._memory import MemoryApi
from ._requests import Routed, route_request
from ._routing import resolve_model
from ._runbook import Followed, Out, answered, asked, begin, call_ended, failed, operation_kind, reported, run_summary
from ._runstore import RunStore
from ._toolcalls import calls_before, tool_results
from ._upstream import Upstreams
from ._usagecheck import mismatch, recorded_usage

__all__ = ["KEY_SHAPE", "Gateway"]

log = logging.getLogger("tether.gateway")
SOURCE = "urn:tether:gateway"
KEY_SHAPE = next(p for p in DEFAULT_PATTERNS if "tg-" in p)
"""The shape of keys ``tether gateway --new-key`` makes: one of the default patterns every
path redacts (``tether._redact``), wherever such a key appears."""
_DROP_REPLY = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive", "date", "server"})
_INTERCEPTORS = 10_000
_BATCH_S = 0.025


class _TooLarge(Exception):
    pass


class _Gone(Exception):
    """The client went away while sending its request."""


class Gateway:
    """The gateway's state and its Starlette ``app``. Serve it with :class:`GatewayServer`.

    One :class:`~tether.adapters.Interceptor` per (provider, agent); ``upstreams`` (the
    providers' HTTP side) is made from the configuration unless given.
    """

    def __init__(self, config: GatewayConfig, bus: Bus, *, upstreams: Upstreams | None = None,
                 memory: MemorySettings | None = None) -> None:
        self.config = config
        self.bus = bus
        self.memory = MemoryApi(bus, memory)
        self.hub = Hub.of(bus)
        self.upstreams = upstreams if upstreams is not None else Upstreams(config.providers)
        secrets = [re.escape(k) for k in (*config.plain_keys, *config.upstream_keys())]
        self.redactor = Redactor(fields=config.redact, patterns=secrets)  # and the defaults, as on every path
        self._interceptors: dict[tuple[str, str | None], Interceptor] = {}
        self.store = RunStore(bus, idle_s=config.run_idle_s)
        self.infer_tools = config.infer_tools and config.capture
        self.attempts: Attempts | None = None
        self._calls: OrderedDict[str, tuple[str, dict[str, int]]] = OrderedDict()
        """This gateway's LLM calls in flight: call id -> operation, and the calls of each function their
        conversation held (Gemini's calls without ids are named by their place: ``_toolcalls``)."""
        self._inbox: deque[Event | _Ended | _Reported] = deque()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.app = Starlette(
            routes=[
                Route("/v1/chat/completions", _Llm(self, "openai", "chat", "/chat/completions"), methods=["POST"]),
                Route("/v1/responses", _Llm(self, "openai", "responses", "/responses"), methods=["POST"]),
                Route("/v1/embeddings", _Llm(self, "openai", "embeddings", "/embeddings"), methods=["POST"]),
                Route("/v1/messages", _Llm(self, "anthropic", "messages", "/messages"), methods=["POST"]),
                Route("/v1/messages/count_tokens", _Llm(self, "anthropic", None, "/messages/count_tokens"),
                      methods=["POST"]),
                Route("/v1beta/models/{rest:path}", _Gemini(self), methods=["POST"]),
                Route("/v1/models", self.models, methods=["GET"]),
                Route("/v1/models/{model:path}", self.model, methods=["GET"]),
                Route("/v1/events", self.events, methods=["POST"]),
                Route("/v1/memory/{operation}", self.memory_op, methods=["POST"]),
                Route("/v1/runs", self.runs, methods=["GET"]),
                Route("/v1/runs/{run_id}", self.run, methods=["GET"]),
                Route("/healthz", self.health, methods=["GET"]),
            ],
            exception_handlers={HTTPException: self._http_error},
        )

    async def start(self) -> Gateway:
        """Open what the first call would otherwise wait for (the engine's KV buckets), and start
        following runs (ends, idle ends, inferred tool calls)."""
        await self.hub.engine(self.config.policies)
        await self.store.open()
        assert self.store.kv is not None
        self.attempts = Attempts(self.bus, self.store.kv, SOURCE)
        if not self._tasks:
            self.hub.observers.append(self._observe)
            self._tasks = [asyncio.create_task(self._following(), name="tether-gateway-runs"),
                           asyncio.create_task(self._sweeping(), name="tether-gateway-idle")]
        return self

    async def aclose(self) -> None:
        if self._observe in self.hub.observers:
            self.hub.observers.remove(self._observe)
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(Exception):  # what the last calls told: published with the rest by the owner's flush
            await asyncio.wait_for(self._drain(), 5.0)
        await self.store.aclose()
        await self.memory.aclose()
        await self.upstreams.aclose()

    # -- following runs: off the calls' path --------------------------------------------------------

    def _observe(self, event: Event) -> None:
        """Every event the hub queues (on its loop): the gateway's calls' go to their runs."""
        if event.runid is not None and event.type in _OBSERVED and event.runid in self.store.busy:
            self._follow(event)

    def _follow(self, item: Event | _Ended | _Reported) -> None:
        self._inbox.append(item)
        self._wake.set()

    async def _following(self) -> None:
        while True:
            await self._wake.wait()
            await asyncio.sleep(_BATCH_S)  # a run's calls in the meantime: one compare-and-set for them all
            self._wake.clear()
            await self._drain()

    async def _drain(self) -> None:
        """What the calls told since the last time, one compare-and-set per run."""
        inbox = self._inbox
        while inbox:
            steps: dict[str, list[Callable[[Followed], list[Out]]]] = {}
            while inbox:
                item = inbox.popleft()
                try:
                    step = self._step(item)
                except Exception:  # one odd conversation must not stop the others
                    log.exception("could not follow the run of %r", item)
                    continue
                if step is not None:
                    steps.setdefault(step[0], []).append(step[1])
            await asyncio.gather(*(self._apply(run_id, its) for run_id, its in steps.items()))

    async def _apply(self, run_id: str, steps: list[Callable[[Followed], list[Out]]]) -> None:
        try:
            outs = await self.store.apply(run_id, steps)
        except Exception:
            log.exception("could not follow run %s", run_id)
            return
        for out in outs:
            self.hub.emit(out.event(SOURCE))

    def _step(self, item: Event | _Ended | _Reported) -> tuple[str, Callable[[Followed], list[Out]]] | None:
        """What one item changes in its run (``None``: nothing)."""
        if isinstance(item, _Ended):
            self.store.call_done(item.run_id)
            return item.run_id, partial(_call_ended, item, self.store.touch_s)
        if isinstance(item, _Reported):
            assert item.event.runid is not None
            return item.event.runid, partial(reported, event=item.event)
        event, data = item, item.data
        assert event.runid is not None
        if isinstance(data, LlmCallRequested):
            kind = operation_kind(data.operation)
            self._calls[data.call_id] = (data.operation, calls_before(kind, data.request) if self.infer_tools else {})
            if len(self._calls) > _INTERCEPTORS:
                self._calls.popitem(last=False)
            if not self.infer_tools or not tool_results(kind, data.operation, data.request):
                return None
            return event.runid, partial(asked, event=event, kind=kind)
        if isinstance(data, LlmCallFailed):
            self._calls.pop(data.call_id, None)
            return event.runid, _failed
        if isinstance(data, LlmCallCompleted):
            found = self._calls.pop(data.call_id, None)
            if found is None:
                return None
            if not self.infer_tools:
                return event.runid, _succeeded
            operation, before = found
            return event.runid, partial(answered, event=event, kind=operation_kind(operation), operation=operation,
                                        before=before)
        return None

    async def _sweeping(self) -> None:
        every = min(5.0, self.config.run_idle_s / 4)
        while True:
            await asyncio.sleep(every)
            try:
                outs = await self.store.sweep(time.time(), every)
            except Exception:
                log.exception("could not look for idle runs")
                continue
            for out in outs:
                self.hub.emit(out.event(SOURCE))

    def interceptor(self, provider: str, agent: str | None) -> Interceptor:
        found = self._interceptors.get((provider, agent))
        if found is None:
            if len(self._interceptors) >= _INTERCEPTORS:  # sub-agent names are the agents' to choose
                self._interceptors.clear()
            kind = self.config.providers[provider].kind
            reachable = [name for name, p in self.config.providers.items() if p.kind == kind and name != provider]
            found = self._interceptors[(provider, agent)] = Interceptor(
                bus=self.bus, policies=self.config.policies, provider=provider, agent=agent,
                capture=self.config.capture, redact=self.redactor, fallback_providers=reachable)
        return found

    # -- the LLM endpoints ---------------------------------------------------------------------

    async def llm(self, scope: Scope, receive: Receive, send: Send, kind: Kind, operation: Operation | None,
                  suffix: str, model: str | None = None) -> None:
        """One LLM request (``operation`` None: passed through); ``suffix``: the path after ``/v1``, or
        after Gemini's ``/v1beta/models/{model}`` (its ``:method``), the model then given as ``model``."""
        named: dict[str, str] = {}
        forward: Headers = []
        for raw_name, raw_value in scope["headers"]:
            name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
            named[name] = value
            if name not in STRIPPED:
                forward.append((name, value))
        caller = identify(named, self.config.keys)
        if isinstance(caller, Refused):
            return await _reply(send, *problem(kind, caller.status, caller.message, code=caller.code))
        try:
            body = await _read_body(receive, named.get("content-length"), self.config.max_body_bytes)
        except _Gone:
            return
        except _TooLarge:
            limit = self.config.max_body_bytes
            return await _reply(send, *problem(kind, 413, f"Request too large: the body is over {limit} bytes, "
                                               "this gateway's limit", code="request_too_large"))
        routed = route_request(kind, body, self.config, model=model)
        if not isinstance(routed, Routed):
            return await _reply(send, *routed)
        target = routed.target
        version = "/v1"
        if kind == "gemini":  # the model is in the path: the provider's name for it goes there
            if "/" in target.model:
                return await _reply(send, *problem(kind, 404, f"models/{target.model} is not a Gemini model name "
                                                   "this gateway can send (it has a '/')", code="model_not_found"))
            version, suffix = "/v1beta", f"/models/{target.model}{suffix}"
        ctx = None
        run_id = caller.run_id
        followed = run_id is not None and operation is not None
        started = time.time()
        if run_id is not None:
            assert caller.trace_id is not None
            journal = None
            if caller.resume is not None and operation is not None:
                try:
                    journal = await self._journal(caller, kind, operation, routed.body, version + suffix)
                except Exception as exc:
                    log.warning("could not read the journal of run %s (%s): its calls run live", run_id, exc)
            ctx = RunContext(run_id, caller.agent, caller.trace_id,
                             caller.traceparent or new_traceparent(caller.trace_id), None, self.hub, journal)
            if followed:  # the run starts (or resumes) before its call's first event
                for out in await self.store.call_started(run_id, caller.agent, caller.trace_id, caller.traceparent,
                                                         started, derived=caller.derived_run):
                    await self.hub.aemit(out.event(SOURCE))
        query = scope.get("query_string") or b""  # Anthropic's beta client sends ?beta=true, Gemini's ?alt=sse
        upstream = self.upstreams.call(target.provider, suffix + ("?" + query.decode("latin-1") if query else ""))
        path = version + suffix  # count_tokens is no LLM call: the interceptor passes it through
        try:
            await self._proxy(receive, send, kind, operation, self.interceptor(target.provider, caller.agent), path,
                              forward, routed.body, upstream, ctx, target.route)
        finally:
            if followed:
                assert run_id is not None
                self._follow(_Ended(run_id, caller, started, time.time()))

    async def _proxy(self, receive: Receive, send: Send, kind: Kind, operation: Operation | None,
                     interceptor: Interceptor, path: str, headers: Headers, body: bytes, upstream: Any,
                     ctx: RunContext | None, route: str) -> None:
        task = asyncio.current_task()
        assert task is not None
        state = _Watch()
        watcher = asyncio.create_task(_watch(receive, task, state))
        proxied: ProxyResponse | None = None
        try:
            with bound(ctx) if ctx is not None else contextlib.nullcontext():
                proxied = await interceptor.handle("POST", path, headers, body, upstream)
            reply = _reply_headers(proxied.headers)
            if proxied.status >= 400:
                reply = with_retry_after(proxied.status, reply, breaker_wait_s=self._breaker_wait(route),
                                         default_s=self.config.retry_after_s)
            stream = proxied.stream
            if stream is None:
                content = proxied.content or b""
                state.complete = True
                await _reply(send, proxied.status, reply, content)
                return
            await send({"type": "http.response.start", "status": proxied.status, "headers": _raw(reply)})
            try:
                async for chunk in stream:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            except Exception as exc:  # broken after the first byte: recorded by the tee; say so in-stream
                log.warning("upstream stream broke after the first byte (%s); ending the agent's stream with an "
                            "error event", type(exc).__name__)
                tail = _stream_error(kind, operation, f"the upstream stream broke: {type(exc).__name__}")
                await send({"type": "http.response.body", "body": tail, "more_body": True})
            state.complete = True
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not state.disconnected:
                raise
            task.uncancel()  # the client went away: that cancel was ours, and it is handled
        finally:
            watcher.cancel()
            if proxied is not None and proxied.stream is not None:
                await proxied.stream.aclose()  # a no-op once ended; before that: recorded as closed by the caller

    def _breaker_wait(self, route: str) -> float | None:
        engine = self.hub.engine_nowait(self.config.policies)
        if engine is None:
            return None
        state = engine.breakers.state(route)
        if state.state == "closed":
            return None
        return breaker_retry_in(self.config.policies.policy_for(route).breaker, state, now=time.time())

    async def _journal(self, caller: Caller, kind: Kind, operation: Operation, body: bytes, path: str) -> Cursor:
        """The journal of a resumed run's attempt, placed for this call: after the calls of the
        attempt that came before it, through any gateway (``_attempts``)."""
        run_id, attempt = caller.run_id, caller.resume
        assert run_id is not None and attempt is not None and self.attempts is not None
        digest = call_digest(parse_request(kind, operation, body, path), body)
        return await self.attempts.cursor(run_id, attempt, caller.agent, caller.traceparent, digest)

    # -- models, events, health -----------------------------------------------------------------

    def _caller(self, request: Request, kind: Kind) -> Caller | Response:
        caller = identify(request.headers, self.config.keys)
        if isinstance(caller, Refused):
            return _response(*problem(kind, caller.status, caller.message, code=caller.code))
        return caller

    async def models(self, request: Request) -> Response:
        """The models this gateway names (``[gateway.models]``), in the format of the asker;
        with none named, the default provider's own list."""
        kind: Kind = "anthropic" if "anthropic-version" in request.headers else "openai"
        caller = self._caller(request, kind)
        if isinstance(caller, Response):
            return caller
        config = self.config
        names = sorted({r.pattern for r in config.models
                        if not r.is_glob and config.providers[r.provider].kind == kind})
        default = config.default_provider
        if not names and default is not None and config.providers[default].kind == kind:
            return await self._pass_get(request, default, "/models")
        created = int(time.time())
        if kind == "anthropic":
            data: list[dict[str, Any]] = [{"type": "model", "id": n, "display_name": n,
                                           "created_at": "1970-01-01T00:00:00Z"} for n in names]
            return JSONResponse({"data": data, "has_more": False, "first_id": names[0] if names else None,
                                 "last_id": names[-1] if names else None})
        data = [{"id": n, "object": "model", "created": created, "owned_by": self._owner(n)} for n in names]
        return JSONResponse({"object": "list", "data": data})

    def _owner(self, model: str) -> str:
        target = resolve_model(model, self.config.models, self.config.providers, self.config.default_provider)
        return target.provider if target is not None else "tether"

    async def model(self, request: Request) -> Response:
        kind: Kind = "anthropic" if "anthropic-version" in request.headers else "openai"
        caller = self._caller(request, kind)
        if isinstance(caller, Response):
            return caller
        name = request.path_params["model"]
        config = self.config
        target = resolve_model(name, config.models, config.providers, config.default_provider)
        if target is None or config.providers[target.provider].kind != kind:
            return _response(*problem(kind, 404, f"The model `{name}` does not exist or you do not have access to "
                                      "it.", code="model_not_found"))
        if kind == "anthropic":
            return JSONResponse({"type": "model", "id": name, "display_name": name,
                                 "created_at": "1970-01-01T00:00:00Z"})
        return JSONResponse({"id": name, "object": "model", "created": int(time.time()), "owned_by": target.provider})

    async def _pass_get(self, request: Request, provider: str, suffix: str) -> Response:
        headers = [(k.lower(), v) for k, v in request.headers.items() if k.lower() not in STRIPPED]
        resp = await self.upstreams.send("GET", provider, suffix, headers, b"", None)
        try:
            parts = []
            while (chunk := await resp.next_chunk()) is not None:
                parts.append(chunk)
        finally:
            await resp.aclose()
        return _response(resp.status, _reply_headers(resp.headers), b"".join(parts))

    async def events(self, request: Request) -> Response:
        """CloudEvents from the agent (structured, binary or batch): validated, all or nothing,
        then published; 202 with their ids."""
        caller = self._caller(request, "openai")
        if isinstance(caller, Response):
            return caller
        try:
            body = await _read_body(request.receive, request.headers.get("content-length"),
                                    self.config.max_body_bytes)
        except _Gone:
            return Response(status_code=400)  # nobody reads it
        except _TooLarge:
            return _response(*problem("openai", 413, f"Request too large: over {self.config.max_body_bytes} bytes",
                                      code="request_too_large"))
        headers = {k.lower(): v for k, v in request.headers.items()}
        try:
            events = validate(decode(headers, body), caller, trusted=caller.trusted, redactor=self.redactor)
        except IngestError as exc:
            return _response(*problem("openai", exc.status, exc.message, code=exc.code,
                                      extra={"events": [i.to_json() for i in exc.invalid]}))
        events = [await self._checked(e) if isinstance(e.data, UsageReported) else e for e in events]
        for event in events:
            await self.bus.publish(event)
        for event in events:
            if event.runid is not None and event.type in _REPORTED:
                self._follow(_Reported(event))
        return JSONResponse({"accepted": len(events), "ids": [e.id for e in events]}, status_code=202)

    async def _checked(self, event: Event) -> Event:
        """An agent's count of its run's usage, with what this gateway's calls of the run recorded
        (the run's completed calls in the log, once what this gateway queued is in) and what differs."""
        data = event.data
        assert isinstance(data, UsageReported)
        if event.runid is None:  # no run to compare with: what the agent says tether recorded is not kept
            return event.model_copy(update={"data": data.model_copy(update={"recorded": None, "recorded_calls": None,
                                                                           "mismatch": ()})})
        try:
            await self.hub.flush()
            found = await read_subject(self.bus, event_filter(run=event.runid, kind="llm", action="completed"),
                                       timeout=10.0)
        except Exception as exc:  # the count is kept; the comparison is not made
            log.warning("could not read the calls of run %s to check its usage (%s)", event.runid, exc)
            return event
        recorded, calls = recorded_usage(r.event for r in found if r.event is not None)
        checked = data.model_copy(update={"recorded": recorded, "recorded_calls": calls,
                                          "mismatch": mismatch(data.usage, recorded, data.reporter)})
        return event.model_copy(update={"data": checked})

    async def memory_op(self, request: Request) -> Response:
        """``POST /v1/memory/<operation>``: tether memory as the key's agent (see ``_memory``)."""
        caller = self._caller(request, "openai")
        if isinstance(caller, Response):
            return caller
        try:
            body = await _read_body(request.receive, request.headers.get("content-length"),
                                    self.config.max_body_bytes)
        except _Gone:
            return Response(status_code=400)
        except _TooLarge:
            return _response(*problem("openai", 413, f"Request too large: over {self.config.max_body_bytes} bytes",
                                      code="request_too_large"))
        try:
            doc = json.loads(body) if body else None
        except ValueError as exc:
            return JSONResponse({"error": {"code": "invalid_json", "message": f"the body is not JSON: {exc}"}},
                                status_code=400)
        status, answer = await self.memory.handle(request.path_params["operation"], caller, doc)
        return JSONResponse(answer, status_code=status)

    async def runs(self, request: Request) -> Response:
        """``GET /v1/runs``: the runs of the key's agent this gateway follows, newest first."""
        caller = self._caller(request, "openai")
        if isinstance(caller, Response):
            return caller
        asked = request.query_params.get("limit", "50")
        if not asked.isdigit() or not 1 <= int(asked) <= 500:
            return JSONResponse({"error": {"code": "invalid_limit", "message": "limit is a whole number from 1 to "
                                           f"500, not {asked!r}"}}, status_code=400)
        limit = int(asked)
        mine = [r for r in self.store.followed()
                if (caller.trusted and caller.agent is None) or r.agent == caller.agent][:limit]
        return JSONResponse({"runs": [self._summary(r) for r in mine]})

    def _summary(self, run: Followed) -> dict[str, Any]:
        run.in_flight = self.store.busy.get(run.run_id, 0)
        return run_summary(run)

    async def run(self, request: Request) -> Response:
        """``GET /v1/runs/{run_id}``: the run's events of the key's agent (at most 1,000), and its state."""
        caller = self._caller(request, "openai")
        if isinstance(caller, Response):
            return caller
        run_id = request.path_params["run_id"]
        agent = None if caller.trusted and caller.agent is None else caller.agent
        try:
            found = await read_subject(self.bus, event_filter(agent=agent, run=run_id), timeout=10.0)
        except Exception as exc:  # a long run of large bodies: too much to read in one answer
            log.warning("reading run %s failed: %s", run_id, type(exc).__name__)
            return JSONResponse({"error": {"code": "run_unreadable", "message": f"could not read the events of run "
                                           f"{run_id!r} in time ({type(exc).__name__}); read it with "
                                           f"`tether trace {run_id}` or `tether tail --run {run_id}`"}},
                                status_code=504)
        events = [r.event for r in found if r.event is not None][:1000]
        try:
            followed = await self.store.read(run_id)
        except Exception:
            followed = None
        if not events and (followed is None or (followed.agent != agent and agent is not None)):
            return JSONResponse({"error": {"code": "run_not_found", "message": f"no run {run_id!r} of agent "
                                           f"{agent!r} (an agent sees its own runs only)"}}, status_code=404)
        return JSONResponse({"run": self._summary(followed) if followed is not None else {"run_id": run_id},
                             "events": [e.to_json() for e in events]})

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok", "providers": sorted(self.config.providers),
                             "nats": self.bus.nc.is_connected})

    async def _http_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        path = request.url.path
        kind: Kind = "anthropic" if path.startswith("/v1/messages") else "gemini" if path.startswith("/v1beta/") \
            else "openai"
        if exc.status_code == 404:
            message = f"Invalid URL ({request.method} {request.url.path})"
        elif exc.status_code == 405:
            message = f"Method not allowed ({request.method} {request.url.path})"
        else:
            message = str(exc.detail)
        return _response(*problem(kind, exc.status_code, message))


_OBSERVED = frozenset(c.event_type for c in (LlmCallRequested, LlmCallCompleted, LlmCallFailed))
_REPORTED = frozenset(c.event_type for c in (ToolCallRequested, RunFinished))


@dataclass(frozen=True, slots=True)
class _Ended:
    """A call of a followed run, started at ``started``, was answered at ``at``."""

    run_id: str
    caller: Caller
    started: float
    at: float


def _call_ended(item: _Ended, touch_s: float, run: Followed) -> list[Out]:
    """The call's end (and the run's, with ``x-tether-run-end``). A run another gateway ended
    before the call began, unknown to this one then, resumes now."""
    out: list[Out] = []
    if not run.running and run.ended_at is not None and run.ended_at < item.started:
        caller = item.caller
        assert caller.trace_id is not None
        out = begin(run, run.run_id, caller.agent, caller.trace_id, caller.traceparent, item.started,
                    derived=caller.derived_run)[1]
    return out + call_ended(run, item.at, end=item.caller.run_end, touch_s=touch_s)  # type: ignore[arg-type]


def _failed(run: Followed) -> list[Out]:
    failed(run)
    return []


def _succeeded(run: Followed) -> list[Out]:
    run.last_failed = False
    return []


@dataclass(frozen=True, slots=True)
class _Reported:
    """An event the agent posted about its run."""

    event: Event


class _Llm:
    """The ASGI endpoint of one LLM API (``operation`` None: a pass-through, e.g. count_tokens)."""

    def __init__(self, gateway: Gateway, kind: Kind, operation: Operation | None, suffix: str) -> None:
        self.gateway = gateway
        self.kind: Kind = kind
        self.operation = operation
        self.suffix = suffix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.gateway.llm(scope, receive, send, self.kind, self.operation, self.suffix)


class _Gemini:
    """The ASGI endpoint of Gemini's ``/v1beta/models/{model}:<method>``: ``generateContent`` and
    ``streamGenerateContent`` are LLM calls, ``countTokens`` is passed through. A key sent as
    ``?key=`` (Google's other way) is taken as the gateway key when no header brings one, and never
    sent upstream."""

    METHODS: dict[str, Operation | None] = {"generateContent": "generate_content",
                                            "streamGenerateContent": "generate_content", "countTokens": None}

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        model, _, method = str(scope["path_params"]["rest"]).rpartition(":")
        if not model or method not in self.METHODS:
            served = ", ".join(f":{m}" for m in self.METHODS)
            return await _reply(send, *problem("gemini", 404, f"Invalid URL (POST {scope['path']}): this gateway "
                                               f"serves /v1beta/models/{{model}} with {served}", code="not_found"))
        await self.gateway.llm(_without_query_key(scope), receive, send, "gemini", self.METHODS[method],
                               ":" + method, model=model)


def _without_query_key(scope: Scope) -> Scope:
    """The request without ``key=`` in its query; the key as ``x-goog-api-key`` if no header has one."""
    query: bytes = scope.get("query_string") or b""
    parts = [p for p in query.split(b"&") if p]
    keys = [p.partition(b"=")[2] for p in parts if p.partition(b"=")[0] == b"key"]
    if not keys:
        return scope
    headers = list(scope["headers"])
    if not any(name.lower() in _KEY_HEADERS for name, _ in headers):
        headers.append((b"x-goog-api-key", unquote_to_bytes(keys[0])))
    return {**scope, "headers": headers, "query_string": b"&".join(p for p in parts if p.partition(b"=")[0] != b"key")}


_KEY_HEADERS = frozenset({b"authorization", b"x-api-key", b"x-goog-api-key", b"api-key"})


class _Watch:
    __slots__ = ("complete", "disconnected")

    def __init__(self) -> None:
        self.disconnected = False
        self.complete = False


async def _watch(receive: Receive, task: asyncio.Task[Any], state: _Watch) -> None:
    """Cancel ``task`` when the client goes away before its answer is complete."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            if not state.complete:
                state.disconnected = True
                task.cancel()
            return


async def _read_body(receive: Callable[[], Awaitable[Any]], length: str | None, limit: int) -> bytes:
    """The request body, refused (``_TooLarge``) as soon as it is known to be over ``limit``."""
    if length is not None and length.isdigit() and int(length) > limit:
        raise _TooLarge
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Gone
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise _TooLarge
            parts.append(chunk)
        if not message.get("more_body", False):
            return parts[0] if len(parts) == 1 else b"".join(parts)


def _reply_headers(headers: Headers) -> Headers:
    return [(k, v) for k, v in headers if k.lower() not in _DROP_REPLY]


def _raw(headers: Headers) -> list[tuple[bytes, bytes]]:
    return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]


async def _reply(send: Send, status: int, headers: Headers, body: bytes) -> None:
    raw = _raw(headers)
    raw.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def _response(status: int, headers: Headers, body: bytes) -> Response:
    out = {k: v for k, v in headers if k.lower() != "content-type"}
    media = next((v for k, v in headers if k.lower() == "content-type"), "application/json")
    return Response(body, status, out, media_type=media)


def _stream_error(kind: Kind, operation: Operation | None, message: str) -> bytes:
    """An error event in the stream's own format, after a stream broke past its first byte."""
    if kind == "gemini":
        return b"\n\n" + stream_error_event("gemini", message, code="upstream_stream_broke")
    if kind == "anthropic":
        doc: dict[str, Any] = {"type": "error", "error": {"type": "api_error", "message": message}}
        return b"\n\nevent: error\ndata: " + json.dumps(doc).encode() + b"\n\n"
    if operation == "responses":
        doc = {"type": "error", "code": "server_error", "message": message, "param": None}
        return b"\n\nevent: error\ndata: " + json.dumps(doc).encode() + b"\n\n"
    doc = {"error": {"message": message, "type": "server_error", "param": None, "code": "upstream_stream_broke"}}
    return b"\n\ndata: " + json.dumps(doc).encode() + b"\n\n"
