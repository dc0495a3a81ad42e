"""``tether runs``, ``tether trace`` and ``tether cost``: the views, read from their SQLite files.

These commands read ``TETHER_HOME/views`` (written by the projector in ``tether up``,
``tether projector`` or ``tether replay``) read-only, and need no NATS connection (one that
answers is asked for the head of the log, to say how far behind a view is: ``_freshness``).
"""

from __future__ import annotations

import argparse
import json
import re
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tether.bus import tether_home

from ._format import Style

__all__ = ["add_commands", "parse_since", "run"]

NO_VIEWS = "no views yet: run `tether up` (it runs the projector) or `tether replay`"
STATUSES = ("ok", "error", "cancelled", "running", "interrupted", "needs_attention")  # as tether.projections.traces
GROUPS = ("run", "agent", "model", "provider", "day")
_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def add_commands(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    runs = sub.add_parser("runs", help="recent runs: status, calls, tokens, cost",
                          description="List runs from the traces view, newest first.")
    runs.add_argument("--agent", help="only this agent's runs")
    runs.add_argument("--status", choices=STATUSES, help="only runs in this state")
    runs.add_argument("--since", metavar="DATE|7d", help="only runs started since (ISO date or time, or 30m, 12h, 7d)")
    runs.add_argument("--limit", type=int, default=50, metavar="N", help="at most N runs (default 50)")
    runs.add_argument("--heartbeat-s", type=float, default=300.0, metavar="S",
                      help="a run still open with no event for S seconds is `interrupted` (default 300)")
    trace = sub.add_parser("trace", help="a run's span tree with timings, tokens, costs and errors",
                           description="Show the span tree of RUN_ID (or of a call id): every LLM and tool "
                           "call, each failed attempt with the decision that followed, backoffs, fallbacks, "
                           "memory writes, budget refusals and dead letters. A span that started and never "
                           "finished is marked RUNNING: that is what a crash looks like.")
    trace.add_argument("run_id", metavar="RUN_ID")
    cost = sub.add_parser("cost", help="what LLM calls cost, by run, agent, model, provider or day",
                          description="Totals from the cost ledger: calls, tokens and US dollars priced by "
                          "genai-prices. Calls whose model has no known price are counted as unpriced, "
                          "never as free.")
    cost.add_argument("--by", choices=GROUPS, default="model", help="how to group (default: model)")
    cost.add_argument("--since", metavar="DATE|7d", help="only calls since (ISO date or time, or 30m, 12h, 7d)")
    from ._resume import add_resolve

    add_resolve(runs, common)
    for p in (runs, trace, cost):
        common(p)
        p.add_argument("--views", type=Path, metavar="DIR",
                       help="read the views in DIR (default TETHER_HOME/views), e.g. one `tether replay --out` wrote")
        p.add_argument("--json", action="store_true", help="machine-readable output")


def parse_since(text: str, *, now: datetime | None = None) -> datetime:
    """``7d``, ``12h``, ``30m``, ``2w``, ``90s`` ago, or an ISO date or time (UTC if no zone)."""
    match = _RELATIVE.match(text.strip())
    if match:
        return (now or datetime.now(UTC)) - timedelta(seconds=float(match[1]) * _UNITS[match[2]])
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"--since {text!r}: expected an ISO date or time (2026-01-31, 2026-01-31T12:00) "
                         "or a span back from now (30m, 12h, 7d, 2w)") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


async def run(args: argparse.Namespace) -> int:
    """Run ``tether runs``, ``tether trace`` or ``tether cost``; the exit status."""
    command = args.command
    since = None
    if getattr(args, "since", None):
        try:
            since = parse_since(args.since)
        except ValueError as exc:
            print(f"tether {command}: {exc}", file=sys.stderr)
            return 2
    view = "cost" if command == "cost" else "traces"
    db = _open(args, view)
    if db is None:
        return 1
    if args.views is None:  # the live views (a directory given is a replay's, as of its point)
        from ._freshness import note_lag

        await note_lag(tether_home(args.home) / "views", view, url=args.url, home=args.home)
    try:
        if command == "runs":
            return _runs(db, args, since)
        if command == "trace":
            return _trace(db, args)
        if command == "cost":
            return _cost(db, args, since)
        raise ValueError(f"not a views command: {command!r}")
    finally:
        db.close()


def _open(args: argparse.Namespace, view: str) -> sqlite3.Connection | None:
    from tether.projections import open_view

    directory = args.views or tether_home(getattr(args, "home", None)) / "views"
    path = open_view(directory, view) if directory.is_dir() else None
    if path is None:
        print(f"tether {args.command}: {NO_VIEWS} (looked for the {view} view in {directory})", file=sys.stderr)
        return None
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    row = db.execute("SELECT value FROM _meta WHERE key = 'complete'").fetchone()
    if not (row and row[0] == "1"):
        seq = db.execute("SELECT value FROM _meta WHERE key = 'seq'").fetchone()
        print(Style(sys.stderr).yellow(f"note: the {view} view is still being built (log applied up to seq "
                                       f"{seq[0] if seq else 0}); figures may be incomplete"), file=sys.stderr)
    return db


# -- runs --------------------------------------------------------------------------------------------


def _runs(db: sqlite3.Connection, args: argparse.Namespace, since: datetime | None) -> int:
    from tether.projections.traces import list_runs

    if not args.heartbeat_s > 0:
        print(f"tether runs: --heartbeat-s must be above 0 seconds, got {args.heartbeat_s:g}", file=sys.stderr)
        return 2
    rows = list_runs(db, limit=args.limit, agent=args.agent, status=args.status, since=since,
                     heartbeat_s=args.heartbeat_s)
    if args.json:
        print(json.dumps([_iso(r) for r in rows], indent=2, ensure_ascii=False))
        return 0
    if not rows:
        print("no runs" + (" matching the filters" if args.agent or args.status or since else "") + " yet")
        return 0
    s = Style()
    table = [("RUN", "AGENT", "STATUS", "STARTED", "TOOK", "EVENTS", "LLM", "TOOL", "ERR", "TOKENS IN/OUT", "COST")]
    for r in rows:
        table.append((r["run_id"], r["agent"] or "", r["status"], _local(r["started_at"]), _ms(r["duration_ms"]),
                      str(r["events"]), str(r["llm_calls"]), str(r["tool_calls"]), str(r["errors"] or ""),
                      f"{r['input_tokens']:,}/{r['output_tokens']:,}", _usd(r["cost_usd"], r["unpriced_calls"])))
    colours = {"ok": s.green, "error": s.red, "cancelled": s.yellow, "running": s.cyan, "interrupted": s.red,
               "needs_attention": s.yellow}
    lines = _pad(table, right={4, 5, 6, 7, 8, 9, 10})
    print(s.bold(_join(lines[0])))
    for cells, r in zip(lines[1:], rows, strict=True):
        cells[2] = colours[r["status"]](cells[2])
        print(_join(cells))
    unpriced = sum(r["unpriced_calls"] for r in rows)
    footer = f"{len(rows)} run(s). `tether trace RUN` shows one."
    replayed = sum(r["replayed_calls"] for r in rows)
    if replayed:
        saved = sum(r["saved_usd"] or 0.0 for r in rows)
        footer += f" {replayed} call(s) answered from the record (resumed runs, the cache), {_usd(saved)} saved."
    if unpriced:
        footer += f" * {unpriced} call(s) unpriced: their model has no price in genai-prices."
    if any(r["status"] in ("interrupted", "needs_attention") for r in rows):
        footer += (" `tether resume RUN` resumes an interrupted run; `tether runs resolve RUN` answers one that "
                   "needs attention.")
    print(s.dim(footer))
    return 0


# -- trace -------------------------------------------------------------------------------------------


def _trace(db: sqlite3.Connection, args: argparse.Namespace) -> int:
    from tether.projections.traces import trace

    roots = trace(db, args.run_id)
    if not roots:
        print(f"tether trace: no run or call {args.run_id!r} in the traces view (`tether runs` lists runs)",
              file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps([_iso_tree(r) for r in roots], indent=2, ensure_ascii=False))
        return 0
    s = Style()
    origin = min((r["started_at"] for r in roots if r["started_at"] is not None), default=None)
    running = 0
    for prefix, span in _tree_lines(roots):
        running += span["status"] == "running"
        offset = "" if origin is None or span["started_at"] is None else _offset(span["started_at"] - origin)
        print(f"{s.dim(f'{offset:>8}')}  {prefix}{_span_line(span, s)}")
    first = roots[0]
    notes = [f"trace {first['trace_id']}" if first.get("trace_id") else "",
             f"started {_local(origin)}" if origin is not None else ""]
    if running:
        notes.append(s.yellow(f"{running} span(s) RUNNING: started and never finished (still going, or crashed)"))
    if first["kind"] == "run" and first["status"] in ("interrupted", "needs_attention"):
        how = "resume it: `tether resume" if first["status"] == "interrupted" else "say what became of the call: " \
            "`tether runs resolve"
        notes.append(s.yellow(f"run {first['status']}: {how} {first['span_id']}`"))
    print(s.dim("  ".join(n for n in notes if n)))
    return 0


def _tree_lines(spans: Sequence[Mapping[str, Any]], indent: str | None = None) -> Iterator[
        tuple[str, Mapping[str, Any]]]:
    """``(prefix, span)`` per line; ``indent`` is None for the roots, drawn without branches."""
    for n, span in enumerate(spans):
        last = n == len(spans) - 1
        if indent is None:
            yield "", span
            yield from _tree_lines(span["children"], "")
        else:
            yield indent + ("└─ " if last else "├─ "), span
            yield from _tree_lines(span["children"], indent + ("   " if last else "│  "))


def _span_line(span: Mapping[str, Any], s: Style) -> str:
    status = span["status"] or "?"
    kind = span["kind"]
    attrs = span["attributes"]
    moment = kind in _MOMENTS
    if status == "running":
        state = s.yellow("RUNNING (never finished)")
    elif moment and status == "ok":
        state = ""  # a decision or a write: it happened, there is nothing to add
    else:
        state = {"ok": s.green, "error": s.red}.get(status, s.yellow)(status)
    parts = [s.bold(span["name"]), state]
    if status != "running" and not moment:
        parts.append(_ms(span["duration_ms"]))
    if kind in ("run", "llm") and (span["input_tokens"] or span["output_tokens"]):
        cached = span.get("cached_tokens")
        parts.append(f"{span['input_tokens'] or 0:,} in{f' ({cached:,} cached)' if cached else ''} / "
                     f"{span['output_tokens'] or 0:,} out")
    if kind == "llm":
        if span["provider"]:
            parts.append(s.dim(f"{span['provider']}:{span['model']}"))
        if status == "ok":
            parts.append(_usd(span["cost_usd"], 1 if span["priced"] == 0 else 0))
        if (span["attempt"] or 0) > 1:
            parts.append(f"{span['attempt']} attempts")
    elif kind == "run" and span["cost_usd"] is not None:
        parts.append(_usd(span["cost_usd"], 0))
    elif kind == "tool" and (span["attempt"] or 0) > 1:
        parts.append(f"{span['attempt']} attempts")
    elif kind == "attention":
        parts.append(s.yellow(str(attrs.get("tether.attention.reason") or "")))
    elif kind in ("backoff", "fallback") and attrs.get("tether.retry_in_s"):
        parts.append(f"wait {_ms(attrs['tether.retry_in_s'] * 1000)}")
    elif kind == "memory":
        parts.append(s.dim(f"{attrs.get('tether.memory.key')} v{attrs.get('tether.memory.version')}"))
    elif kind == "replay" and attrs.get("tether.cost.saved_usd") is not None:
        parts.append(s.green(f"saved {_usd(attrs['tether.cost.saved_usd'])}"))
    elif kind == "circuit" and attrs.get("tether.circuit.reason"):
        parts.append(s.dim(str(attrs["tether.circuit.reason"])))
    if span["error_type"]:
        code = attrs.get("http.response.status_code")
        message = _short(span["error_message"] or "")
        parts.append(s.red(f"{span['error_type']}{f' ({code})' if code else ''}{': ' + message if message else ''}"))
    if kind == "attempt" and span["decision"]:
        decision = span["decision"]
        parts.append(s.cyan("→ give up" if decision == "give_up" else f"→ {decision}"))
    if kind in ("llm", "tool") and span["call_id"]:
        parts.append(s.dim(f"call {span['call_id']}"))
    return "  ".join(p for p in parts if p)


# -- cost --------------------------------------------------------------------------------------------


def _cost(db: sqlite3.Connection, args: argparse.Namespace, since: datetime | None) -> int:
    from tether.projections.ledger import totals

    rows = totals(db, by=args.by, since=since)
    total = {k: sum(r[k] or 0 for r in rows) for k in ("calls", "input_tokens", "output_tokens", "cached_tokens",
                                                       "cache_write_tokens", "reasoning_tokens", "unpriced",
                                                       "replayed", "cache_hits", "saved_usd")}
    priced = [r["usd"] for r in rows if r["usd"] is not None]
    total["usd"] = sum(priced) if priced else None
    if args.json:
        print(json.dumps({"by": args.by, "since": since.isoformat() if since else None,
                          "rows": [_iso({args.by: r.pop("key"), **r}) for r in rows], "total": total}, indent=2,
                         ensure_ascii=False))
        return 0
    if not rows:
        print("no priced calls" + (" since " + since.isoformat(timespec="minutes") if since else "") + " yet")
        return 0
    s = Style()
    recorded = bool(total["replayed"] or total["cache_hits"])  # columns of their own only when there are some
    extra: tuple[str, ...] = ("REPLAYED", "CACHE HITS", "SAVED") if recorded else ()
    table: list[tuple[str, ...]] = [(args.by.upper(), "CALLS", "INPUT", "CACHED", "OUTPUT", "USD", "UNPRICED", *extra)]
    for r in [*rows, {**total, "key": "TOTAL"}]:
        saved = (str(r["replayed"] or ""), str(r["cache_hits"] or ""), _usd(r["saved_usd"]) if r["saved_usd"] else "")
        table.append((str(r["key"] if r["key"] is not None else "(none)"), f"{r['calls']:,}",
                      f"{r['input_tokens']:,}", f"{r['cached_tokens']:,}", f"{r['output_tokens']:,}",
                      _usd(r["usd"], r["unpriced"]), str(r["unpriced"] or ""), *(saved if recorded else ())))
    lines = [_join(cells) for cells in _pad(table, right=set(range(1, len(table[0]))))]
    print(s.bold(lines[0]))
    for line in lines[1:-1]:
        print(line)
    print(s.bold(lines[-1]))
    notes = [f"since {since.isoformat(timespec='minutes')}" if since else "all time",
             "cached tokens are part of input, priced at the cache rate"]
    if recorded:
        notes.append("replayed calls (resumed runs) and cache hits cost nothing; SAVED is what they would have")
    if total["unpriced"]:
        notes.append(s.yellow(f"* {total['unpriced']} call(s) unpriced: their model has no price in genai-prices, "
                              "so USD leaves them out (`tether replay cost` after updating genai-prices)"))
    print(s.dim("; ".join(notes)))
    return 0


# -- formatting --------------------------------------------------------------------------------------


def _pad(rows: Sequence[Sequence[str]], *, right: set[int]) -> list[list[str]]:
    """Cells padded to their column's width (right-aligned for the columns in ``right``)."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [[c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))]
            for row in rows]


def _join(cells: Sequence[str]) -> str:
    return "  ".join(cells).rstrip()


def _usd(value: float | None, unpriced: int = 0) -> str:
    if value is None:
        return "unpriced" if unpriced else "-"
    text = f"${value:.4f}" if value >= 0.01 or value == 0 else f"${value:.6f}"
    return text + ("*" if unpriced else "")


def _ms(value: float | None) -> str:
    if value is None:
        return ""
    if value < 1000:
        return f"{value:.0f}ms"
    return f"{value / 1000:.2f}s" if value < 60_000 else f"{value / 60_000:.1f}min"


def _offset(seconds: float) -> str:
    return "+" + _ms(max(0.0, seconds) * 1000) if seconds else "+0ms"


def _local(epoch: float | None) -> str:
    return "" if epoch is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))


def _short(text: str, limit: int = 80) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


_MOMENTS = frozenset({"backoff", "fallback", "dead_letter", "budget", "circuit", "redrive", "memory", "replay"})
_TIMES = ("started_at", "ended_at", "last_at", "at", "first_at")


def _iso(row: Mapping[str, Any]) -> dict[str, Any]:
    """Epoch-second columns as ISO 8601 UTC, for ``--json``."""
    return {k: datetime.fromtimestamp(v, UTC).isoformat() if k in _TIMES and isinstance(v, int | float) else v
            for k, v in row.items()}


def _iso_tree(span: Mapping[str, Any]) -> dict[str, Any]:
    return {**_iso(span), "children": [_iso_tree(c) for c in span["children"]]}
