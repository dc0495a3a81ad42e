"""The dashboard's Starlette app: pages, the fragments htmx refreshes, the SSE stream, the actions.

Reads go to the views read-only (``ViewFiles``), to the log for a span's events and to memory
through its API (``MemorySource``); the actions (redrive, purge; memory put and delete) go to the
DLQ stream and to memory. Every request passes the :class:`~tether.ui._security.Guard` first.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from tether.bus import EVENTS_STREAM, Bus

from . import _experiments as experiment_pages
from . import _memorypage as memory_pages
from . import _pages as pages
from . import _queries as q
from ._live import Live
from ._memory import MemorySource
from ._security import AUTH_COOKIE, CSRF_COOKIE, Denied, Guard, new_csrf
from ._views import NoView, ViewFiles

__all__ = ["build_app"]

STATIC = Path(__file__).parent / "static"
SECURITY_HEADERS = {
    "content-security-policy": "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
                               "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
                               "form-action 'self'",
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}


def _since(text: str) -> float | None:
    if not text.strip():
        return None
    import re
    from datetime import UTC, datetime, timedelta

    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", text)
    if match:
        units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
        return (datetime.now(UTC) - timedelta(seconds=float(match[1]) * units[match[2]])).timestamp()
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"since {text!r}: give an ISO date or time (2026-01-31, 2026-01-31T12:00) or a span back "
                         "from now (30m, 12h, 7d)") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


class _Guarded:
    """Pure ASGI middleware: the Host and token checks before anything, and ``?token=`` taken into a cookie."""

    def __init__(self, app: ASGIApp, guard: Guard) -> None:
        self.app = app
        self.guard = guard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        try:
            token = request.query_params.get("token")
            if token is not None and request.method == "GET":
                self.guard.check_host(request.headers)
                if not self.guard.authenticated({AUTH_COOKIE: token}, {}):
                    raise Denied(401, "wrong token: use the URL `tether ui` printed, or its --token")
                rest = urlencode([(k, v) for k, v in request.query_params.multi_items() if k != "token"])
                response: Response = RedirectResponse(request.url.path + (f"?{rest}" if rest else ""), 303)
                response.set_cookie(AUTH_COOKIE, token, httponly=True, samesite="strict", path="/")
                await response(scope, receive, send)
                return
            if request.method == "GET" and not request.url.path.startswith("/static/"):
                self.guard.check_read(request.cookies, request.headers)
            elif request.method == "GET":
                self.guard.check_host(request.headers)
        except Denied as denied:
            await _denied(denied)(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _denied(denied: Denied) -> Response:
    return PlainTextResponse(f"tether ui: {denied.message}\n", denied.status, headers=SECURITY_HEADERS)


def build_app(bus: Bus, views_dir: Path, guard: Guard, live: Live | None = None,
              memory: MemorySource | None = None) -> Starlette:
    """The dashboard for the views in ``views_dir`` and the log and DLQ on ``bus``; memory through ``memory``
    (default: a client with tether.toml's ``[memory]`` settings, as no agent)."""
    views = ViewFiles(views_dir)
    hub = live if live is not None else Live(bus, views)
    source = memory if memory is not None else MemorySource(bus)
    source.on_change(hub.broadcast)

    def page(request: Request, title: str, body: str, *, active: str, live_views: str,
             status: int = 200) -> Response:
        csrf = request.cookies.get(CSRF_COOKIE) or new_csrf()
        can_act = guard.authenticated(request.cookies, request.headers)
        response = HTMLResponse(pages.layout(title, body, active=active, csrf=csrf, live=live_views,
                                             can_act=can_act), status, headers=SECURITY_HEADERS)
        if CSRF_COOKIE not in request.cookies:
            response.set_cookie(CSRF_COOKIE, csrf, httponly=True, samesite="strict", path="/")
        return response

    def fragment(html: str, status: int = 200, trigger: str | None = None) -> Response:
        headers = dict(SECURITY_HEADERS)
        if trigger:
            headers["hx-trigger"] = trigger
        return HTMLResponse(html, status, headers=headers)

    async def read(view: str, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        return await views.read(view, fn)

    # -- runs ----------------------------------------------------------------------------------------

    def filters(request: Request) -> dict[str, str]:
        return {k: request.query_params.get(k, "").strip() for k in ("q", "agent", "status", "since")}

    async def runs_table(request: Request) -> str:
        f = filters(request)
        try:
            since = _since(f["since"])
            status = f["status"] if f["status"] in pages.STATUSES else None
            rows = await read("traces", lambda db: q.runs(db, agent=f["agent"] or None, status=status, since=since,
                                                          search=f["q"] or None))
        except (ValueError, NoView) as exc:
            return pages.runs_table([], filtered=False, error=str(exc))
        return pages.runs_table(rows, filtered=any(f.values()))

    async def runs_index(request: Request) -> Response:
        body = pages.runs_page(filters(request), await runs_table(request))
        return page(request, "Runs", body, active="/", live_views="traces")

    async def runs_fragment(request: Request) -> Response:
        return fragment(await runs_table(request))

    # -- a run ---------------------------------------------------------------------------------------

    async def trace_html(run_id: str) -> str:
        try:
            roots = await read("traces", lambda db: q.run_trace(db, run_id))
        except NoView as exc:
            return f"<p class='err'>{pages.e(exc)}</p>"
        return pages.trace_view(run_id, roots)

    async def run_page(request: Request) -> Response:
        run_id = request.path_params["run_id"]
        body = pages.run_page(run_id, await trace_html(run_id))
        return page(request, f"Run {run_id}", body, active="/", live_views="traces")

    async def run_fragment(request: Request) -> Response:
        return fragment(await trace_html(request.path_params["run_id"]))

    async def span_fragment(request: Request) -> Response:
        run_id, span_id = request.path_params["run_id"], request.path_params["span_id"]
        roots = await read("traces", lambda db: q.run_trace(db, run_id))
        span = q.find_span(roots, span_id)
        if span is None:
            return fragment(f"<p class='err'>no span {pages.e(span_id)} in run {pages.e(run_id)}</p>", 404)
        events, note = await _span_events(bus, span)
        return fragment(pages.span_detail(span, events, note))

    # -- dead letters --------------------------------------------------------------------------------

    async def dlq_html(request: Request) -> str:
        from tether.middleware import deadletter

        try:
            letters = await deadletter.list_dead_letters(bus)
        except Exception as exc:  # NATS away, or no DLQ stream yet: say so, keep serving
            return (f"<p class='err'>the DLQ stream could not be read ({pages.e(type(exc).__name__)}: "
                    f"{pages.e(exc)}): is NATS up, and has `tether up` provisioned the streams?</p>")
        return pages.dlq_table([d.summary() | {"error_type": d.error_type, "error_message": d.error_message}
                                for d in reversed(letters)],
                               can_act=guard.authenticated(request.cookies, request.headers))

    async def dlq_index(request: Request) -> Response:
        return page(request, "Dead letters", pages.dlq_page(await dlq_html(request)), active="/dlq",
                    live_views="traces")

    async def dlq_fragment(request: Request) -> Response:
        return fragment(await dlq_html(request))

    async def dlq_show(request: Request) -> Response:
        from tether.middleware import DeadLetterError, deadletter

        seq = int(request.path_params["seq"])
        try:
            d = await deadletter.get_dead_letter(bus, str(seq))
        except DeadLetterError as exc:
            return fragment(f"<p class='err'>{pages.e(exc)}</p>", 404)
        return fragment(pages.dlq_detail(seq, dict(d.doc)))

    async def dlq_act(request: Request) -> Response:
        from tether.middleware import DeadLetterError, deadletter

        try:
            guard.check_action(request.cookies, request.headers, await _form_csrf(request), _same_origin(request))
        except Denied as denied:
            return _denied(denied)
        seq, action = int(request.path_params["seq"]), request.path_params["action"]
        try:
            d = await deadletter.get_dead_letter(bus, str(seq))
            if action == "redrive":
                new_id = await deadletter.redrive(bus, d)
                run = (d.doc.get("item") or {}).get("runid") or new_id
                html = (f"<p class='ok'>dead letter {seq} redriven as call <a href='/runs/{pages.e(run)}'>"
                        f"<code>{pages.e(new_id)}</code></a></p>")
            else:
                n = await deadletter.purge(bus, [d])
                html = f"<p class='ok'>purged {n} dead letter ({seq}, call <code>{pages.e(d.call_id)}</code>)</p>"
        except DeadLetterError as exc:
            return fragment(f"<p class='err'>{pages.e(exc)}</p>", 409)
        return fragment(html, trigger="tether:dlq")

    # -- cost, latency, errors, breakers -------------------------------------------------------------

    def since_of(request: Request) -> tuple[str, float | None, str]:
        text = request.query_params.get("since", "").strip()
        try:
            return text, _since(text), ""
        except ValueError as exc:
            return text, None, str(exc)

    async def guarded_page(request: Request, title: str, active: str, live_views: str,
                           build: Callable[[], Awaitable[str]]) -> Response:
        try:
            body = await build()
        except NoView as exc:
            body = f"<h1>{pages.e(title)}</h1><p class='err'>{pages.e(exc)}</p>"
        return page(request, title, body, active=active, live_views=live_views)

    async def cost(request: Request) -> Response:
        text, since, error = since_of(request)

        async def build() -> str:
            data = await read("cost", lambda db: q.cost_data(db, since))
            return (f"<p class=err>{pages.e(error)}</p>" if error else "") + pages.cost_page(data, text)

        return await guarded_page(request, "Cost", "/cost", "cost", build)

    async def latency(request: Request) -> Response:
        text, since, error = since_of(request)

        async def build() -> str:
            buckets, by_model = await read("metrics", lambda db: q.latency_data(db, since))
            return (f"<p class=err>{pages.e(error)}</p>" if error else "") + pages.latency_page(buckets, by_model, text)

        return await guarded_page(request, "Latency", "/latency", "metrics", build)

    async def errors(request: Request) -> Response:
        text, since, error = since_of(request)

        async def build() -> str:
            groups = await read("errors", lambda db: q.error_groups(db, since))
            return (f"<p class=err>{pages.e(error)}</p>" if error else "") + pages.errors_page(groups, text)

        return await guarded_page(request, "Errors", "/errors", "errors", build)

    async def breakers(request: Request) -> Response:
        async def build() -> str:
            return pages.breakers_page(await read("traces", q.breaker_transitions))

        return await guarded_page(request, "Breakers", "/breakers", "traces", build)

    # -- experiments ---------------------------------------------------------------------------------

    async def experiments(request: Request) -> Response:
        from tether.projections.eval import experiment_names, scores_of

        def load(db: sqlite3.Connection) -> tuple[list[dict[str, Any]], dict[str, dict[str, str]]]:
            found = experiment_names(db)
            names = [x["experiment"] for x in found] + [row[0] for row in db.execute(
                "SELECT DISTINCT experiment FROM scores WHERE experiment LIKE 'online:%' ORDER BY experiment")]
            return found, {n: experiment_pages.summarise(scores_of(db, n)) for n in names}

        async def build() -> str:
            return experiment_pages.experiments_page(*await read("eval", load))

        return await guarded_page(request, "Experiments", "/experiments", "eval", build)

    async def experiment(request: Request) -> Response:
        from tether.projections.eval import experiment_info, scores_of, trials_of

        name = request.path_params["name"]

        async def build() -> str:
            info, trials, scores = await read("eval", lambda db: (experiment_info(db, name), trials_of(db, name),
                                                                  scores_of(db, name)))
            return experiment_pages.experiment_page(name, info, trials, scores)

        return await guarded_page(request, f"Experiment {name}", "/experiments", "eval", build)

    # -- memory --------------------------------------------------------------------------------------

    async def memory_state(request: Request) -> tuple[memory_pages.MemoryState, int]:
        """What the Memory page shows for ``?ns=&key=&as_of=&now=``, and its HTTP status (403: not readable)."""
        from tether.memory import InvalidMemory, MemoryAccessDenied, MemoryNotFound

        params = request.query_params
        try:
            who = source.describe()
        except ValueError as exc:  # a bad [memory] in tether.toml (`tether ui` refuses it at start; `tether up` not)
            state = memory_pages.MemoryState(identity="", error=f"memory settings: {exc}")
            return state, 200
        state = memory_pages.MemoryState(identity=who, namespace=params.get("ns", "").strip(),
                                         key=params.get("key", "").strip(),
                                         can_act=guard.authenticated(request.cookies, request.headers))
        text = params.get("as_of", "").strip()
        try:
            state.as_of = None if params.get("now") == "1" or not text else int(text)
        except ValueError:
            state.error = f"as_of {text!r}: give a log position (a whole number), or leave it out for now"
            return state, 400
        try:
            client = await source.client()
            try:
                state.head = await client.catch_up(timeout=3.0)
            except TimeoutError as exc:  # far behind (a rebuild, a stalled leader): show what it has, say so
                from tether.memory import last_memory_seq

                state.behind = str(exc)
                state.head = await last_memory_seq(bus)
            state.namespaces = await client.namespaces()
        except Exception as exc:  # NATS away, or the view cannot be opened: say so, keep serving
            state.error = (f"memory could not be read ({type(exc).__name__}: {exc}): is NATS up, and is this the "
                           "TETHER_HOME (or tether.toml [memory] view_dir and keyfile) your agents use?")
            return state, 200
        if not state.namespace:
            return state, 200
        ns = state.namespace
        try:
            state.entries = await client.entries(ns, state.as_of, limit=200)
            now = state.entries if state.as_of is None else await client.entries(ns, limit=200)
            seen: dict[int, float | None] = {}
            for key in dict.fromkeys([*(x.key for x in now), *([state.key] if state.key else [])]):
                try:
                    versions = await client.history(ns, key)
                except MemoryNotFound as exc:
                    if key == state.key:
                        state.key_error = (f"no entry {key} in {ns}: never written, or erased (an erased "
                                           f"entry's text is gone for good) ({exc})")
                    continue
                if key == state.key:
                    state.history = versions
                seen.update((v.seq, v.time.timestamp() if v.time else None) for v in versions)
            state.positions = sorted(seen.items())
        except MemoryAccessDenied:
            state.namespace, state.key, state.entries = "", "", []
            state.error = (f"namespace {ns} is not readable as this identity (its grants do not include it); "
                           "nothing of it is shown")
            return state, 403
        except InvalidMemory as exc:
            state.namespace, state.key = "", ""
            state.error = str(exc)
            return state, 400
        return state, 200

    async def memory_index(request: Request) -> Response:
        state, status = await memory_state(request)
        return page(request, "Memory", memory_pages.memory_page(state), active="/memory", live_views="memory",
                    status=status)

    async def memory_fragment(request: Request) -> Response:
        state, status = await memory_state(request)
        return fragment(memory_pages.memory_body(state), status)

    async def memory_act(request: Request) -> Response:
        from tether.memory import InvalidMemory, MemoryAccessDenied, MemoryNotFound, VersionConflict

        form = await _form(request)
        try:
            guard.check_action(request.cookies, request.headers, form.get("csrf"), _same_origin(request))
        except Denied as denied:
            return _denied(denied)
        action, ns, key = request.path_params["action"], form.get("ns", "").strip(), form.get("key", "").strip()
        if action not in ("put", "delete"):
            return fragment(f"<p class='err'>no memory action {pages.e(action)}: put or delete</p>", 404)
        try:
            client = await source.client()
            if action == "put":
                written = await client.write(ns, form.get("text", ""), key or None)
                html = (f"<p class='ok'>wrote {pages.e(ns)}/{pages.e(written.key)} v{written.version} at seq "
                        f"{written.seq}{' (merged into a near-duplicate)' if written.merged_into else ''}</p>")
            else:
                if not key:
                    raise InvalidMemory("name the key to delete")
                gone = await client.delete(ns, key)
                html = f"<p class='ok'>deleted {pages.e(ns)}/{pages.e(key)} (v{gone.version}) at seq {gone.seq}</p>"
        except MemoryAccessDenied as exc:
            return fragment(f"<p class='err'>{pages.e(exc)}</p>", 403)
        except (InvalidMemory, VersionConflict) as exc:
            return fragment(f"<p class='err'>{pages.e(exc)}</p>", 400)
        except MemoryNotFound as exc:
            return fragment(f"<p class='err'>{pages.e(exc)}</p>", 404)
        return fragment(html, trigger="tether:memory-edit")

    # -- live ----------------------------------------------------------------------------------------

    async def live_stream(request: Request) -> Response:
        return StreamingResponse(hub.stream(), media_type="text/event-stream",
                                 headers={**SECURITY_HEADERS, "x-accel-buffering": "no"})

    async def action_refused(request: Request) -> Response:
        return PlainTextResponse("tether ui: actions are POST requests\n", 405, headers=SECURITY_HEADERS)

    app = Starlette(routes=[
        Route("/", runs_index),
        Route("/fragments/runs", runs_fragment),
        Route("/runs/{run_id}", run_page),
        Route("/fragments/runs/{run_id}", run_fragment),
        Route("/fragments/runs/{run_id}/spans/{span_id:path}", span_fragment),
        Route("/dlq", dlq_index),
        Route("/fragments/dlq", dlq_fragment),
        Route("/fragments/dlq/{seq:int}", dlq_show),
        Route("/dlq/{seq:int}/{action:str}", dlq_act, methods=["POST"]),
        Route("/memory", memory_index),
        Route("/fragments/memory", memory_fragment),
        Route("/memory/{action:str}", memory_act, methods=["POST"]),
        Route("/cost", cost),
        Route("/latency", latency),
        Route("/errors", errors),
        Route("/breakers", breakers),
        Route("/experiments", experiments),
        Route("/experiments/{name:path}", experiment),
        Route("/live", live_stream),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ])
    app.state.live = hub
    app.state.memory = source
    app.state.views = views
    return _Guarded(app, guard)  # type: ignore[return-value]


async def _form(request: Request) -> dict[str, str]:
    """An action's form fields (urlencoded, the first value of each; the first 256 KiB)."""
    if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        return {}
    body = await request.body()
    return {k: v[0] for k, v in parse_qs(body[:262144].decode("utf-8", "replace"), keep_blank_values=True).items()}


async def _form_csrf(request: Request) -> str | None:
    """The ``csrf`` field of a form post (a page without scripts); htmx sends the header instead."""
    if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        return None
    body = await request.body()
    values = parse_qs(body[:65536].decode("utf-8", "replace")).get("csrf")
    return values[0] if values else None


def _same_origin(request: Request) -> bool:
    """No ``Origin`` (a non-browser client), or the dashboard's own."""
    origin = request.headers.get("origin")
    if origin is None:
        return True
    return origin == f"{request.url.scheme}://{request.headers.get('host', '')}"


async def _span_events(bus: Bus, span: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
    """The events that opened and closed ``span`` (its first and last log sequence), as stored."""
    from nats.js.errors import NotFoundError

    from tether.schemas import EventError

    seqs = sorted({s for s in (span.get("first_seq"), span.get("last_seq")) if s})
    out: list[dict[str, Any]] = []
    missing = 0
    for seq in seqs:
        try:
            msg = await bus.js.get_msg(EVENTS_STREAM, seq)
            event = await bus.reader.read(msg.headers, msg.data or b"")
        except (NotFoundError, EventError):
            missing += 1
            continue
        except Exception as exc:  # NATS away: the span's columns still show
            return out, f"the log could not be read for this span's events ({type(exc).__name__}: {exc})"
        data: Any = event.data
        with contextlib.suppress(AttributeError):
            data = event.data.model_dump(mode="json")
        out.append({"seq": seq, "type": event.type, "data": data})
    note = f"{missing} event(s) of this span are no longer in the log (purged)" if missing else ""
    return out, note
