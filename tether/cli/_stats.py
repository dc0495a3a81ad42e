"""``tether errors`` and ``tether stats``: the errors and metrics views as tables (or JSON).

Both read the view files under ``TETHER_HOME/views`` (SQLite, read-only), which the projector
keeps current (``tether up`` runs one); they need no NATS connection (see ``_freshness``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sqlite3
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tether.bus import tether_home

from ._format import Style
from ._views import _join, _pad

__all__ = ["add_commands", "parse_duration", "parse_since", "run"]

NO_VIEWS = "no views yet: run `tether up` (it runs the projector) or `tether replay`"
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|h|d|w)$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def add_commands(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    since = ("only what happened since then: a duration back from now (90s, 15m, 1h, 7d) or a date/time "
             "(2026-01-31, 2026-01-31T14:00, UTC unless it names a zone)")
    errors = sub.add_parser("errors", help="failures grouped by fingerprint",
                            description="Failures (failed attempts, calls that gave up, dead letters, failed "
                            "runs, budget refusals) grouped by error type, provider or tool, status and "
                            "message with its numbers and ids masked; most frequent first.")
    common(errors)
    errors.add_argument("--since", metavar="WHEN", help=since)
    errors.add_argument("--limit", type=int, default=50, metavar="N", help="show at most N groups (default 50)")
    errors.add_argument("--source", metavar="SOURCE",
                        help="only this source (llm:openai, tool:search) or kind (llm, tool, dlq, run, budget)")
    errors.add_argument("--json", action="store_true", help="machine-readable output")

    stats = sub.add_parser("stats", help="latency percentiles, throughput, tokens and retry rates",
                           description="Per model, provider or tool: calls (that ended there), attempts, "
                           "calls/s, latency p50/p95/p99, time to first token, tokens, retry and fallback rates "
                           "(per attempt), calls that gave up and breaker transitions, and their TOTAL (every "
                           "LLM call, or with --by tool every tool call), from the metrics view (1-minute "
                           "buckets). docs/cli.md says what each column counts.")
    common(stats)
    stats.add_argument("--by", choices=["model", "provider", "tool"], default="model",
                       help="one row per model (default), provider or tool")
    stats.add_argument("--since", metavar="WHEN", help=since)
    stats.add_argument("--bucket", metavar="DURATION",
                       help="one row per dimension and time bucket of this size (1m, 5m, 1h)")
    stats.add_argument("--json", action="store_true", help="machine-readable output")


def parse_duration(text: str) -> float:
    m = _DURATION.match(text.strip().lower())
    if m is None:
        raise ValueError(f"not a duration: {text!r} (try 90s, 15m, 1h, 7d)")
    return float(m[1]) * _UNITS[m[2]]


def parse_since(text: str, *, now: float | None = None) -> float:
    """``1h`` (back from ``now``) or an ISO 8601 date/time (UTC unless it names a zone), as epoch seconds."""
    try:
        return (time.time() if now is None else now) - parse_duration(text)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"--since {text!r}: give a duration (15m, 1h, 7d) or a date/time (2026-01-31T14:00)")\
            from None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def _iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, UTC).isoformat().replace("+00:00", "Z")


def _local(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))


def _open(args: argparse.Namespace, name: str) -> tuple[sqlite3.Connection, bool] | None:
    from tether.projections import open_view

    path: Path | None = open_view(tether_home(args.home) / "views", name)
    if path is None:
        return None
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    row = db.execute("SELECT value FROM _meta WHERE key = 'complete'").fetchone()
    return db, bool(row and row[0] == "1")


async def run(args: argparse.Namespace) -> int:
    """``tether errors`` or ``tether stats`` (by ``args.command``)."""
    command = "errors" if args.command == "errors" else "stats"
    try:
        since = parse_since(args.since) if args.since else None
        bucket = parse_duration(args.bucket) if getattr(args, "bucket", None) else None
    except ValueError as exc:
        print(f"tether {command}: {exc}", file=sys.stderr)
        return 2
    if bucket is not None and (bucket < 60 or bucket % 60):
        print(f"tether {command}: --bucket must be whole minutes (1m, 5m, 1h), got {args.bucket}", file=sys.stderr)
        return 2
    view = "errors" if command == "errors" else "metrics"
    from ._freshness import note_lag

    await note_lag(tether_home(args.home) / "views", view, url=args.url, home=args.home)
    try:
        return await asyncio.to_thread(_errors if command == "errors" else _stats, args, view, since,
                                       int(bucket) if bucket else None)
    except sqlite3.Error as exc:
        print(f"tether {command}: cannot read the {view} view: {exc}", file=sys.stderr)
        return 1


def _note_incomplete(view: str, complete: bool) -> None:
    if not complete:
        print(f"note: the {view} view is still catching up with the log; figures may be incomplete",
              file=sys.stderr)


def _errors(args: argparse.Namespace, view: str, since: float | None, _bucket: int | None) -> int:
    from tether.projections.errors import list_groups

    opened = _open(args, view)
    if opened is None:
        print(f"tether errors: {NO_VIEWS}", file=sys.stderr)
        return 1
    db, complete = opened
    try:
        groups = list_groups(db, since=since, limit=args.limit, source=args.source)
    finally:
        db.close()
    _note_incomplete(view, complete)
    if args.json:
        print(json.dumps([{**g, "first_seen": _iso(g["first_seen"]), "last_seen": _iso(g["last_seen"])}
                          for g in groups], indent=2, ensure_ascii=False))
        return 0
    s = Style()
    if not groups:
        print("no errors" + (" in that window" if since is not None else "") + (
            f" from {args.source}" if args.source else ""))
        return 0
    print(s.bold(f"{'COUNT':>6}  {'FIRST SEEN':<19}  {'LAST SEEN':<19}  {'SOURCE':<20} {'TYPE':<24} "
                 f"{'STATUS':>6} {'RUNS':>5}  MESSAGE"))
    for g in groups:
        decisions = g["decisions"]
        detail = [f"{k.replace('_', ' ')} {v}" for k, v in decisions.items() if v]
        detail += [f"{label} {g[key]}" for key, label in (("failed", "calls failed"), ("dead_letters", "dead letters"),
                                                          ("budget_refusals", "budget refusals")) if g[key]]
        runs = ", ".join(g["run_ids"][:3]) + (" …" if g["runs"] > 3 else "")
        error_type = s.red(f"{_cut(g['error_type'], 24):<24}")
        print(f"{g['count']:>6}  {_local(g['first_seen']):<19}  {_local(g['last_seen']):<19}  "
              f"{_cut(g['source'], 20):<20} {error_type} "
              f"{g['status_code'] or '':>6} {g['runs']:>5}  {_cut(g['message'], 80)}")
        print(s.dim(f"{'':>8}fp {g['fingerprint']}" + (f" · {' · '.join(detail)}" if detail else "")
                    + (f" · runs {runs}" if runs else "")))
    print(s.dim(f"{len(groups)} group(s)" + (f" (showing the first {args.limit})" if len(groups) == args.limit
                                             else "") + ". `--json` for everything, incl. a sample message."))
    return 0


def _stats(args: argparse.Namespace, view: str, since: float | None, bucket: int | None) -> int:
    from tether.projections.metrics import stats, total

    opened = _open(args, view)
    if opened is None:
        print(f"tether stats: {NO_VIEWS}", file=sys.stderr)
        return 1
    db, complete = opened
    tools = args.by == "tool"
    try:
        rows = stats(db, since=since, by=args.by, bucket=bucket)
        # What the rows add up to: LLM calls for models and providers, tool calls for tools.
        sums = total(db, "tool" if tools else "llm", since=since) if not bucket else []
    finally:
        db.close()
    _note_incomplete(view, complete)
    if args.json:
        print(json.dumps({"by": args.by, "since": _iso(since), "rows": rows, "total": sums[0] if sums else None},
                         indent=2, ensure_ascii=False))
        return 0
    if not rows:
        print(f"no {args.by} calls recorded" + (" in that window" if since is not None else ""))
        return 0
    s = Style()
    head = ["BUCKET"] if bucket else []
    head += [args.by.upper(), "CALLS", "ATTEMPTS", "CALLS/S", "P50", "P95", "P99"]
    head += [] if tools else ["TTFT P50", "TOKENS IN→OUT"]
    head += ["RETRIED", "FELL BACK", "GAVE UP", "BREAKER"]
    recorded = any(r["replayed"] or r["cache_hits"] for r in [*rows, *sums])  # shown when there are some
    head += ["REPLAYED", "CACHE HITS"] if recorded else []
    table = [head]
    for r in [*rows, *sums]:
        cells = [time.strftime("%Y-%m-%d %H:%M", time.localtime(r["bucket"]))] if bucket else []
        cells += ["TOTAL" if r["dim"] == "*" else _cut(r["dim"], 40), f"{r['calls']:,}", f"{r['attempts']:,}",
                  _rate(r["calls_per_s"]), _ms(r["latency_p50_ms"]), _ms(r["latency_p95_ms"]),
                  _ms(r["latency_p99_ms"])]
        cells += [] if tools else [_ms(r["ttft_p50_ms"]), _tokens(r["input_tokens"], r["output_tokens"])]
        cells += [_pct(r["retry_rate"]), _pct(r["fallback_rate"]), f"{r['dead_letters']:,}",
                  f"{r['breaker_transitions']:,}"]
        cells += [f"{r['replayed']:,}", f"{r['cache_hits']:,}"] if recorded else []
        table.append(cells)
    first = 2 if bucket else 1  # the label columns read left-aligned, the figures right-aligned
    lines = [_join(cells) for cells in _pad(table, right=set(range(first, len(head))))]
    print(s.bold(lines[0]))
    for line, r in zip(lines[1:], [*rows, *sums], strict=True):
        print(s.bold(line) if r["dim"] == "*" else line)
    what = "tool" if tools else "LLM"
    fell_back = "" if tools else "; a call that fell back counts under the model that answered it"
    print(s.dim(f"CALLS: calls that ended on it, answered or given up (GAVE UP){fell_back}. ATTEMPTS: requests "
                f"sent to it; RETRIED and FELL BACK are shares of them. "
                + ("REPLAYED, CACHE HITS: calls answered from the record (no attempt). " if recorded else "")
                + f"TOTAL: every {what} call"
                + ("." if tools else " (tools: --by tool).")))
    return 0


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.0f}ms" if value < 1000 else f"{value / 1000:.2f}s"


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}" if value >= 0.01 or value == 0 else f"{value:.1e}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.0f}%"


def _tokens(tokens_in: int, tokens_out: int) -> str:
    def short(n: int) -> str:
        return f"{n / 1_000_000:.1f}M" if n >= 1_000_000 else f"{n / 1000:.1f}k" if n >= 10_000 else str(n)

    return f"{short(tokens_in)}→{short(tokens_out)}"
