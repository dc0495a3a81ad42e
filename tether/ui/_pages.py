"""The dashboard's HTML: pure functions from rows to markup, every value escaped.

Pages are whole documents (:func:`layout`); the parts the browser refreshes live are the
fragments (``runs_table``, ``trace_view``, ...), fetched again by htmx when the SSE stream
says their view changed (``data-live="traces"``: see ``static/app.js``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping, Sequence
from html import escape
from typing import Any
from urllib.parse import quote, urlencode

__all__ = ["breakers_page", "cost_page", "dlq_detail", "dlq_page", "dlq_table", "errors_page", "latency_page",
           "layout", "message_page", "run_page", "runs_page", "runs_table", "span_detail", "trace_view"]

NAV = (("/", "Runs"), ("/cost", "Cost"), ("/latency", "Latency"), ("/errors", "Errors"), ("/breakers", "Breakers"),
       ("/dlq", "Dead letters"), ("/memory", "Memory"), ("/experiments", "Experiments"))
STATUSES = ("ok", "error", "cancelled", "running", "interrupted", "needs_attention")
MOMENTS = frozenset({"backoff", "fallback", "circuit", "memory", "budget", "dead_letter", "redrive", "replay"})


def e(value: Any) -> str:
    return escape("" if value is None else str(value), quote=True)


def when(epoch: float | None) -> str:
    return "" if epoch is None else time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(epoch))


def ms(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:.0f} ms" if value < 1000 else f"{value / 1000:.2f} s"


def usd(value: float | None, unpriced: int = 0) -> str:
    text = ("" if value is None else "$0" if value == 0 else f"${value:.6f}" if value < 0.01
            else f"${value:.4f}" if value < 1 else f"${value:,.2f}")
    return text + (f" <span class='dim' title='calls whose model has no price'>+{unpriced} unpriced</span>"
                   if unpriced else "")


def layout(title: str, body: str, *, active: str, csrf: str, live: str = "", can_act: bool = False) -> str:
    """A whole page: the navigation, the views' lag (kept current by the SSE stream), ``body``."""
    nav = "".join(f'<a href="{href}"{" class=on" if href == active else ""}>{e(name)}</a>' for href, name in NAV)
    badge = ("<span class='tag ok' title='this browser holds the token: actions are allowed'>token</span>"
             if can_act else "<span class='tag dim' title='open the URL tether ui printed (with ?token=) to "
             "redrive or purge'>read-only</span>")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{e(title)} · tether</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="csrf-token" content="{e(csrf)}">
<meta name="htmx-config" content='{{"includeIndicatorStyles": false, "allowEval": false, "historyCacheSize": 0}}'>
<link rel="stylesheet" href="/static/app.css"><link rel="stylesheet" href="/static/vendor/uplot/uPlot.min.css">
<script src="/static/vendor/htmx/htmx.min.js" defer></script>
<script src="/static/vendor/uplot/uPlot.iife.min.js" defer></script>
<script src="/static/app.js" defer></script>
</head><body>
<header><b class="brand">tether</b><nav>{nav}</nav>{badge}
<span id="live" class="tag dim" title="live updates from the projection streams">connecting…</span></header>
<div id="lag" class="lag" data-views="{e(live)}"></div>
<main>{body}</main></body></html>"""


def live_box(box: str, view: str, url: str, inner: str, *, whole: bool = False, also: str = "") -> str:
    """A part of a page htmx fetches again from ``url`` when ``view`` changes (``whole``: ``url`` is the
    page, and this box is taken out of it). One request at a time, the last change queued."""
    select = f' hx-select="#{box}" hx-swap="outerHTML"' if whole else ""
    return (f'<div id="{box}" data-live="{view}" hx-get="{e(url)}" hx-trigger="tether:{view}{also}"{select} '
            f'hx-sync="this:queue last">{inner}</div>')


def message_page(title: str, text: str) -> str:
    return f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{e(title)}</title>" \
           f"<link rel='stylesheet' href='/static/app.css'></head><body><main><h1>{e(title)}</h1>" \
           f"<p>{e(text)}</p></main></body></html>"


# -- runs --------------------------------------------------------------------------------------------


def runs_page(filters: Mapping[str, str], table: str) -> str:
    status = "".join(f'<option value="{s}"{" selected" if filters.get("status") == s else ""}>{s}</option>'
                     for s in STATUSES)
    return f"""<h1>Runs</h1>
<form id="filters" class="filters" hx-get="/fragments/runs" hx-target="#runs" hx-push-url="false"
      hx-trigger="input delay:250ms, change" action="/" method="get">
<input type="search" name="q" placeholder="search run id, agent, name" value="{e(filters.get("q"))}">
<input type="text" name="agent" placeholder="agent" value="{e(filters.get("agent"))}">
<select name="status"><option value="">any status</option>{status}</select>
<input type="text" name="since" placeholder="since (30m, 12h, 7d, 2026-01-31)" value="{e(filters.get("since"))}">
<noscript><button>filter</button></noscript></form>
{live_box("runs", "traces", "/fragments/runs", table).replace(" hx-get=", ' hx-include="#filters" hx-get=', 1)}"""


def runs_table(rows: Sequence[Mapping[str, Any]], *, filtered: bool, error: str = "") -> str:
    if error:
        return f"<p class='err'>{e(error)}</p>"
    if not rows:
        return "<p class='dim'>no runs" + (" match the filters" if filtered else " yet: start an agent, or "
                                           "`tether up --demo`") + "</p>"
    out = ["<table class='runs'><thead><tr><th>run</th><th>agent</th><th>status</th><th>started (UTC)</th>"
           "<th class=r>took</th><th class=r>LLM</th><th class=r>tools</th><th class=r>errors</th>"
           "<th class=r>tokens in/out</th><th class=r>cost</th></tr></thead><tbody>"]
    for r in rows:
        run_id = str(r["run_id"])
        out.append(
            f"<tr data-run='{e(run_id)}'><td><a href='/runs/{quote(run_id, safe='')}'>{e(run_id)}</a>"
            f"{' <span class=dim>' + e(r.get('name')) + '</span>' if r.get('name') else ''}</td>"
            f"<td>{e(r['agent'])}</td><td><span class='st {e(r['status'])}'>{e(r['status'])}</span></td>"
            f"<td>{when(r['started_at'])}</td><td class=r>{ms(r['duration_ms'])}</td>"
            f"<td class=r>{r['llm_calls']}</td><td class=r>{r['tool_calls']}</td>"
            f"<td class=r>{r['errors'] or ''}</td>"
            f"<td class=r>{r['input_tokens']:,}/{r['output_tokens']:,}</td>"
            f"<td class=r>{usd(r['cost_usd'], r['unpriced_calls'])}</td></tr>")
    out.append("</tbody></table>")
    out.append(f"<p class='dim'>{len(rows)} run(s), newest first.</p>")
    return "".join(out)


# -- a run -------------------------------------------------------------------------------------------


def _flatten(spans: Sequence[Mapping[str, Any]], depth: int = 0) -> Iterator[tuple[int, Mapping[str, Any]]]:
    for span in spans:
        yield depth, span
        yield from _flatten(span["children"], depth + 1)


def run_page(run_id: str, view: str) -> str:
    return f"""<h1>Run <code>{e(run_id)}</code></h1>
<p><a href="/">← runs</a></p>
{live_box("trace", "traces", f"/fragments/runs/{quote(run_id, safe='')}", view)}
<aside id="detail" class="detail"><p class="dim">Click a span for its request, response and attributes.</p></aside>"""


def _span_words(span: Mapping[str, Any]) -> str:
    kind, attrs = span["kind"], span["attributes"]
    parts: list[str] = []
    if kind in ("run", "llm") and (span.get("input_tokens") or span.get("output_tokens")):
        cached = span.get("cached_tokens")
        parts.append(f"{span.get('input_tokens') or 0:,} in{f' ({cached:,} cached)' if cached else ''} / "
                     f"{span.get('output_tokens') or 0:,} out")
    if kind == "llm":
        if span.get("provider"):
            parts.append(f"<span class=dim>{e(span['provider'])}:{e(span['model'])}</span>")
        if span.get("status") == "ok" or span.get("cost_usd") is not None:
            parts.append(usd(span.get("cost_usd"), 1 if span.get("priced") == 0 else 0))
        if attrs.get("tether.ttft_ms") is not None:
            parts.append(f"TTFT {ms(attrs['tether.ttft_ms'])}")
    if kind in ("llm", "tool") and (span.get("attempt") or 0) > 1:
        parts.append(f"{span['attempt']} attempts")
    if kind == "run" and span.get("cost_usd") is not None:
        parts.append(usd(span["cost_usd"]))
    if kind in ("backoff", "fallback") and attrs.get("tether.retry_in_s"):
        parts.append(f"wait {ms(attrs['tether.retry_in_s'] * 1000)}")
    if kind == "memory":
        parts.append(f"<span class=dim>{e(attrs.get('tether.memory.key'))} v{e(attrs.get('tether.memory.version'))}"
                     "</span>")
    if kind == "circuit" and attrs.get("tether.circuit.reason"):
        parts.append(f"<span class=dim>{e(attrs['tether.circuit.reason'])}</span>")
    if span.get("error_type"):
        code = attrs.get("http.response.status_code")
        parts.append(f"<span class=err>{e(span['error_type'])}{f' ({e(code)})' if code else ''}"
                     f"{': ' + e(str(span.get('error_message') or '')[:160]) if span.get('error_message') else ''}"
                     "</span>")
    if kind == "attempt" and span.get("decision"):
        decision = span["decision"]
        parts.append(f"<span class='decision {e(decision)}'>→ {'give up' if decision == 'give_up' else e(decision)}"
                     "</span>")
    return " · ".join(p for p in parts if p)


def trace_view(run_id: str, roots: Sequence[Mapping[str, Any]]) -> str:
    """The span tree, each row with its bar on the run's time line (the waterfall)."""
    if not roots:
        return (f"<p class='err'>no run or call {e(run_id)!s} in the traces view (yet): it appears here as soon "
                "as the projector folds its first event.</p>")
    flat = list(_flatten(roots))
    starts = [s["started_at"] for _, s in flat if s.get("started_at") is not None]
    ends = [float(s.get("ended_at") or s["started_at"]) for _, s in flat if s.get("started_at") is not None]
    origin = min(starts) if starts else 0.0
    total = max(max(ends, default=origin) - origin, 1e-3)
    kinds: dict[str, int] = {}
    for _, s in flat:
        kinds[s["kind"]] = kinds.get(s["kind"], 0) + 1
    summary = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
    first = roots[0]
    out = [f"<p class='dim'>{len(flat)} spans ({e(summary)}) · started {when(origin)} UTC · "
           f"{ms(total * 1000)}{' · trace ' + e(first.get('trace_id')) if first.get('trace_id') else ''}</p>",
           "<table class='trace'><thead><tr><th>span</th><th>status</th><th class=r>took</th>"
           f"<th class='wf'>0 — {ms(total * 1000)}</th></tr></thead><tbody>"]
    for depth, s in flat:
        kind, status = s["kind"], s.get("status") or "?"
        start = (s.get("started_at") or origin) - origin
        end = (s.get("ended_at") or s.get("started_at") or origin) - origin
        left = 100 * start / total
        if kind in MOMENTS or status == "running":
            width = 0.0 if kind in MOMENTS else 100 - left
        else:
            width = max(100 * (end - start) / total, 0.4)
        bar = (f"<i class='mark {e(kind)}' style='left:{left:.2f}%'></i>" if kind in MOMENTS else
               f"<i class='bar {e(kind)} {e(status)}' style='left:{left:.2f}%;width:{width:.2f}%'></i>")
        took = "" if kind in MOMENTS or status == "running" else ms(s.get("duration_ms"))
        state = "RUNNING (never finished)" if status == "running" else ("" if kind in MOMENTS and status == "ok"
                                                                        else status)
        chip = f"<span class='st {e(status)}'>{e(state)}</span>" if state else ""
        out.append(
            f"<tr class='span {e(kind)}' data-kind='{e(kind)}' data-span='{e(s['span_id'])}' "
            f"hx-get='/fragments/runs/{quote(run_id, safe='')}/spans/{quote(str(s['span_id']), safe='')}' "
            f"hx-target='#detail' hx-trigger='click'>"
            f"<td style='padding-left:{0.4 + depth * 1.1:.1f}em'><b>{e(s['name'])}</b> {_span_words(s)}</td>"
            f"<td>{chip}</td><td class=r>{took}</td>"
            f"<td class='wf'><div class='lane'>{bar}</div></td></tr>")
    out.append("</tbody></table>")
    return "".join(out)


def span_detail(span: Mapping[str, Any], events: Sequence[Mapping[str, Any]], note: str = "") -> str:
    """A span's columns, attributes and the events that opened and closed it (as stored: redacted)."""
    cols = {k: f"{when(v)} UTC" if k in ("started_at", "ended_at") else v for k, v in span.items()
            if k not in ("attributes", "children") and v is not None}
    out = [f"<h2>{e(span['name'])}</h2><table class='kv'>"]
    out += [f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in cols.items()]
    out.append("</table>")
    if span.get("attributes"):
        out.append("<h3>attributes</h3><pre>" + e(json.dumps(span["attributes"], indent=2, ensure_ascii=False))
                   + "</pre>")
    for event in events:
        out.append(f"<h3>{e(event['type'])} <span class=dim>seq {e(event['seq'])}</span></h3><pre>"
                   + e(json.dumps(event["data"], indent=2, ensure_ascii=False, default=str)) + "</pre>")
    if note:
        out.append(f"<p class=dim>{e(note)}</p>")
    return "".join(out)


# -- dead letters ------------------------------------------------------------------------------------


def dlq_page(table: str) -> str:
    return f"""<h1>Dead letters</h1>
<p class="dim">Calls tether gave up on. Redrive sends one to the worker again as a new call; purge deletes it.</p>
<div id="result" role="status"></div>
{live_box("dlq", "traces", "/fragments/dlq", table, also=", tether:dlq from:body")}
<aside id="detail" class="detail"></aside>"""


def dlq_table(letters: Sequence[Mapping[str, Any]], *, can_act: bool) -> str:
    if not letters:
        return "<p class='dim'>no dead letters</p>"
    out = ["<table class='dlq'><thead><tr><th class=r>seq</th><th>when (UTC)</th><th>reason</th><th>route</th>"
           "<th class=r>tries</th><th>error</th><th>call</th><th></th></tr></thead><tbody>"]
    for d in letters:
        seq = d["seq"]
        actions = ""
        if can_act:
            actions = (f"<button class='redrive' hx-post='/dlq/{seq}/redrive' hx-target='#result'>redrive</button> "
                       f"<button class='purge' hx-post='/dlq/{seq}/purge' hx-target='#result' "
                       f"hx-confirm='Delete dead letter {seq} for good?'>purge</button>")
        out.append(
            f"<tr data-seq='{seq}' data-call='{e(d['call_id'])}'><td class=r>"
            f"<a href='#' hx-get='/fragments/dlq/{seq}' hx-target='#detail'>{seq}</a></td>"
            f"<td>{when(d['dead_lettered_at'])}</td><td>{e(d['reason'])}</td><td>{e(d['route'])}</td>"
            f"<td class=r>{e(d['attempts'])}</td><td class=err>{e(d['error_type'])}: "
            f"{e(str(d['error_message'])[:120])}</td><td><code>{e(d['call_id'])}</code></td><td>{actions}</td></tr>")
    out.append("</tbody></table>")
    if not can_act:
        out.append("<p class='dim'>Read-only: open the URL <code>tether ui</code> printed (with its token) to "
                   "redrive or purge.</p>")
    return "".join(out)


def dlq_detail(seq: int, doc: Mapping[str, Any]) -> str:
    return (f"<h2>dead letter {seq}</h2><pre>" + e(json.dumps(doc, indent=2, ensure_ascii=False, default=str))
            + "</pre>")


# -- cost, latency, errors, breakers ------------------------------------------------------------------


def _chart(name: str, title: str, x: Sequence[float], series: Mapping[str, Sequence[float | None]],
           unit: str) -> str:
    data = {"title": title, "unit": unit, "x": list(x), "series": {k: list(v) for k, v in series.items()}}
    payload = json.dumps(data).replace("</", "<\\/")  # never ends the script element
    return f"<div class='chart' id='chart-{e(name)}'><script type='application/json'>{payload}</script></div>"


def _totals_table(label: str, rows: Sequence[Mapping[str, Any]], link_runs: bool = False) -> str:
    out = [f"<table class='totals'><thead><tr><th>{e(label)}</th><th class=r>calls</th><th class=r>tokens in</th>"
           "<th class=r>tokens out</th><th class=r>cost</th></tr></thead><tbody>"]
    for r in rows:
        key = e(r["key"])
        if link_runs and r["key"]:
            key = f"<a href='/runs/{quote(str(r['key']), safe='')}'>{key}</a>"
        out.append(f"<tr><td>{key}</td><td class=r>{r['calls']:,}</td><td class=r>{r['input_tokens'] or 0:,}</td>"
                   f"<td class=r>{r['output_tokens'] or 0:,}</td><td class=r>{usd(r['usd'], r['unpriced'])}</td></tr>")
    out.append("</tbody></table>")
    return "".join(out)


def cost_page(data: Mapping[str, Any], since: str) -> str:
    hours = data["hours"]
    chart = _chart("cost", "cost per hour (USD)", [h["hour"] for h in hours], {"USD": [h["usd"] for h in hours]},
                   "$") if hours else "<p class=dim>no priced calls yet</p>"
    parts = [f"<h1>Cost</h1><form class='filters' method='get'><input name='since' value='{e(since)}' "
             "placeholder='since (30m, 12h, 7d)'><button>show</button></form>", chart, "<div class='grid'>"]
    for by, label in (("model", "model"), ("provider", "provider"), ("agent", "agent"), ("run", "run (top 20)")):
        parts.append(f"<section><h2>by {e(label)}</h2>{_totals_table(label, data[by], by == 'run')}</section>")
    parts.append("</div>")
    return live_box("cost", "cost", f"/cost?since={quote(since)}", "".join(parts), whole=True)


def latency_page(buckets: Sequence[Mapping[str, Any]], by_model: Sequence[Mapping[str, Any]], since: str) -> str:
    x = [b["bucket"] for b in buckets]
    charts = (_chart("latency", "LLM latency (ms)", x, {
        "p50": [b["latency_p50_ms"] for b in buckets], "p95": [b["latency_p95_ms"] for b in buckets],
        "p99": [b["latency_p99_ms"] for b in buckets]}, "ms")
        + _chart("rates", "calls per second", x, {"calls/s": [b["calls_per_s"] for b in buckets]}, "/s")
        + _chart("retries", "retry and fallback rate (per attempt)", x, {
            "retry": [b["retry_rate"] for b in buckets], "fallback": [b["fallback_rate"] for b in buckets]}, ""))
    if not buckets:
        charts = "<p class=dim>no calls measured yet</p>"
    rows = ["<table class='totals'><thead><tr><th>model</th><th class=r>calls</th><th class=r>p50</th>"
            "<th class=r>p95</th><th class=r>p99</th><th class=r>TTFT p50</th><th class=r>retry rate</th>"
            "<th class=r>fallback rate</th><th class=r>dead letters</th></tr></thead><tbody>"]
    for r in by_model:
        rows.append(f"<tr><td>{e(r['dim'])}</td><td class=r>{r['calls']:,}</td><td class=r>{ms(r['latency_p50_ms'])}"
                    f"</td><td class=r>{ms(r['latency_p95_ms'])}</td><td class=r>{ms(r['latency_p99_ms'])}</td>"
                    f"<td class=r>{ms(r['ttft_p50_ms'])}</td><td class=r>{_pct(r['retry_rate'])}</td>"
                    f"<td class=r>{_pct(r['fallback_rate'])}</td><td class=r>{r['dead_letters']}</td></tr>")
    rows.append("</tbody></table>")
    body = (f"<h1>Latency</h1><form class='filters' method='get'><input name='since' value='{e(since)}'>"
            f"<button>show</button></form>{charts}<h2>by model</h2>{''.join(rows)}")
    return live_box("latency", "metrics", f"/latency?since={quote(since)}", body, whole=True)


def _pct(value: float | None) -> str:
    return "" if value is None else f"{value * 100:.1f}%"


def errors_page(groups: Sequence[Mapping[str, Any]], since: str) -> str:
    out = [f"<h1>Errors</h1><p class=dim>Failures grouped by fingerprint (type, source, status, normalised "
           f"message){', since ' + e(since) if since else ''}.</p>"]
    if not groups:
        out.append("<p class=dim>no errors</p>")
    else:
        out.append("<table class='errors'><thead><tr><th>error</th><th>source</th><th class=r>count</th>"
                   "<th class=r>runs</th><th>last seen (UTC)</th><th>sample</th></tr></thead><tbody>")
        for g in groups:
            runs = g.get("run_ids") or []
            links = " ".join(f"<a href='/runs/{quote(str(r), safe='')}'>{e(r)}</a>" for r in runs[:3])
            code = f" ({e(g['status_code'])})" if g.get("status_code") else ""
            out.append(f"<tr><td class=err>{e(g.get('error_type'))}{code}"
                       f"<br><span class=dim>{e(str(g.get('message') or '')[:160])}</span></td>"
                       f"<td>{e(g.get('source'))}</td><td class=r>{g.get('count', 0):,}</td>"
                       f"<td class=r>{g.get('runs', 0):,}</td><td>{when(g.get('last_seen'))}</td>"
                       f"<td>{links}<pre class='sample'>{e(str(g.get('sample_message') or '')[:400])}</pre></td></tr>")
        out.append("</tbody></table>")
    return live_box("errors", "errors", f"/errors?since={quote(since)}", "".join(out), whole=True)


def breakers_page(transitions: Sequence[Mapping[str, Any]]) -> str:
    state: dict[str, Mapping[str, Any]] = {}
    for t in transitions:  # oldest first: the last one is each route's state
        state[str(t["route"])] = t
    out = ["<h1>Breakers</h1>"]
    if not transitions:
        out.append("<p class=dim>no circuit breaker has changed state</p>")
    else:
        out.append("<h2>now</h2><table class='totals'><thead><tr><th>route</th><th>state</th><th>since (UTC)</th>"
                   "</tr></thead><tbody>")
        for route, t in sorted(state.items()):
            out.append(f"<tr><td>{e(route)}</td><td><span class='st {e(t['action'])}'>{e(t['action'])}</span></td>"
                       f"<td>{when(t['started_at'])}</td></tr>")
        out.append("</tbody></table><h2>transitions</h2><table class='totals'><thead><tr><th>when (UTC)</th>"
                   "<th>route</th><th>to</th><th>why</th></tr></thead><tbody>")
        for t in reversed(transitions[-200:]):
            out.append(f"<tr><td>{when(t['started_at'])}</td><td>{e(t['route'])}</td><td>{e(t['action'])}</td>"
                       f"<td class=dim>{e(t.get('reason'))}</td></tr>")
        out.append("</tbody></table>")
    return live_box("breakers", "traces", "/breakers", "".join(out), whole=True)


def query_string(filters: Mapping[str, str]) -> str:
    return urlencode({k: v for k, v in filters.items() if v})
