"""``tether memory write | get | search | history | context | delete | erase | reembed``.

Each command connects to NATS (like every tether command), brings the memory view up to
date (or follows the process that keeps it), and prints readable lines, or JSON with
``--json``. The agent named by ``--agent`` (default ``$TETHER_AGENT``) is the one whose
grants apply; without one, the command acts as an operator (only the ``"*"`` grants
apply when ``[memory.grants]`` is configured).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from tether.bus import BusConfig, connect, tether_home

from ._format import Style

if TYPE_CHECKING:
    from tether.memory import MemorySettings

__all__ = ["add_commands", "memory_settings", "parse_as_of", "parse_duration", "parse_pairs", "run"]

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw]?)$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def add_commands(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    memory = sub.add_parser("memory", help="agent memory: write, search, get, history, erase",
                            description="Read and write tether's event-sourced memory. Writes are events on the "
                            "log; reads come from the memory view (kept current by this command if nothing "
                            "else does). Docs: docs/memory.md.")
    cmds = memory.add_subparsers(dest="memory_command", metavar="COMMAND")

    write = cmds.add_parser("write", help="write a memory (a new entry, or a new version of --key)")
    write.add_argument("namespace", metavar="NAMESPACE", help="e.g. agent:support-bot, user:42, team:docs, global")
    write.add_argument("text", metavar="TEXT", help="what to remember ('-' reads standard input)")
    write.add_argument("--key", help="the entry's key (default: a new one, or a near-duplicate's)")
    write.add_argument("--meta", action="append", default=[], metavar="K=V",
                       help="metadata (repeatable); V is JSON if it parses, else a string")
    write.add_argument("--ttl", metavar="DURATION", help="expire after this long (90s, 30m, 12h, 7d)")
    write.add_argument("--expected-version", type=int, metavar="N",
                       help="write only if the entry is at version N (0: does not exist)")
    write.add_argument("--valid-from", metavar="TIME",
                       help="when the fact became true (ISO 8601); an earlier one than the current version's "
                       "is recorded as history")
    write.add_argument("--observed-at", metavar="TIME", help="when the fact was observed (ISO 8601), for imports")

    get = cmds.add_parser("get", help="one entry, now or as of a point in the log")
    get.add_argument("namespace", metavar="NAMESPACE")
    get.add_argument("key", metavar="KEY")

    search = cmds.add_parser("search", help="the most relevant entries for a query")
    search.add_argument("query", metavar="QUERY")
    search.add_argument("-k", type=int, default=5, help="how many (default 5)")
    search.add_argument("--filter", action="append", default=[], metavar="K=V", help="metadata must match (repeatable)")
    search.add_argument("--valid-at", metavar="TIME|query",
                        help="search what was true then (ISO 8601), or 'query' to read it from the query "
                        "('before March'; 'now' favours what became true last)")

    context = cmds.add_parser("context", help="prompt-ready text for a query, within a token budget")
    context.add_argument("query", metavar="QUERY")
    context.add_argument("--budget", type=int, default=500, metavar="TOKENS", help="token budget (default 500)")

    for p in (search, context):
        p.add_argument("-n", "--namespace", action="append", metavar="NS",
                       help="search this namespace (repeatable; default: every readable one)")
    for p in (get, search, context):
        p.add_argument("--as-of", metavar="SEQ|TIME", help="as of a stream sequence or an ISO time")

    history = cmds.add_parser("history", help="every version of an entry, with provenance")
    history.add_argument("namespace", metavar="NAMESPACE")
    history.add_argument("key", metavar="KEY")

    delete = cmds.add_parser("delete", help="delete an entry (it stays in the log and in history)")
    delete.add_argument("namespace", metavar="NAMESPACE")
    delete.add_argument("key", metavar="KEY")

    erase = cmds.add_parser("erase", help="destroy a namespace's (or one entry's) keys: unreadable for good",
                            description="Crypto-shred NAMESPACE (or, with --key, one entry of it): the encryption "
                            "keys are destroyed, so the content can never be read again, not even by replaying "
                            "the log. Cannot be undone.")
    erase.add_argument("namespace", metavar="NAMESPACE")
    erase.add_argument("--key", help="erase only this entry (every version of it)")
    erase.add_argument("--yes", action="store_true", help="confirm (required)")

    reembed = cmds.add_parser("reembed", help="embed older entries again with the configured embedder",
                              description="Give every live entry whose vector was made by another embedder (or "
                              "none) a vector of the embedder [memory] embedder names (or --embedder), so "
                              "semantic and hybrid search find it by meaning. Text, versions and history stay; "
                              "each vector is a memory.embedded event. Run it again to finish an interrupted run.")
    reembed.add_argument("-n", "--namespace", metavar="NS", help="only this namespace (default: every one the "
                         "agent may write)")
    reembed.add_argument("--embedder", choices=("static", "minilm", "asymmetric"),
                         help="the embedder to use (default: [memory] embedder in tether.toml)")
    reembed.add_argument("--batch", type=int, default=256, metavar="N", help="texts embedded at a time (256)")

    for p in (write, get, search, context, history, delete, erase, reembed):
        common(p)
        p.add_argument("--agent", default=os.environ.get("TETHER_AGENT"),
                       help="act as this agent: its grants apply, and writes carry its id (default $TETHER_AGENT)")
        p.add_argument("--run", help="the run id writes are recorded under")
        p.add_argument("--json", action="store_true", help="machine-readable output")


def parse_duration(text: str) -> float:
    match = _DURATION.match(text.strip())
    if not match or float(match[1]) <= 0:
        raise ValueError(f"--ttl {text!r}: expected a positive duration such as 90s, 30m, 12h, 7d")
    return float(match[1]) * _UNITS[match[2]]


def parse_as_of(text: str | None) -> int | datetime | None:
    if text is None:
        return None
    if text.strip().isdigit():
        return int(text)
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"--as-of {text!r}: expected a stream sequence (123) or an ISO time "
                         "(2026-01-31T12:00)") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def parse_pairs(pairs: list[str], flag: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise ValueError(f"{flag} {pair!r}: expected KEY=VALUE")
        try:
            out[name] = json.loads(value)
        except ValueError:
            out[name] = value
    return out


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def _when(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def memory_settings(home: str | None) -> MemorySettings:
    """``[memory]`` of tether.toml, with its view, keystore and embedder table under ``--home`` when one is given.
    Raises ``PolicyConfigError`` (a ValueError) for a bad configuration anywhere in the file."""
    from tether._config import memory_settings as read_settings

    settings = read_settings()
    if home is not None:
        root = tether_home(home)
        settings = dataclasses.replace(settings, view_dir=root / "memory", keyfile=root / "keys" / "memory-keys.json",
                                       home=root)
    return settings


async def run(args: argparse.Namespace) -> int:
    """Run one ``tether memory`` command; the exit status."""
    from tether.memory import (
        AsyncMemory,
        BulkWriteFailed,
        InvalidMemory,
        MemoryAccessDenied,
        MemoryNotFound,
        VersionConflict,
    )

    command = args.memory_command
    if command is None:
        print("tether memory: name a command (write, get, search, context, history, delete, erase, reembed)",
              file=sys.stderr)
        return 2
    if command == "erase" and not args.yes:
        print(f"tether memory erase: this destroys {args.namespace}'s keys for good; add --yes to confirm",
              file=sys.stderr)
        return 2
    try:
        ttl = parse_duration(args.ttl) if getattr(args, "ttl", None) else None
        as_of = parse_as_of(getattr(args, "as_of", None))
        meta = parse_pairs(getattr(args, "meta", []), "--meta")
        filters = parse_pairs(getattr(args, "filter", []), "--filter")
        valid_at = _valid_at(getattr(args, "valid_at", None))
        settings = memory_settings(args.home)
        if command == "reembed":
            settings = _reembed_settings(args, settings)
    except (ValueError, InvalidMemory) as exc:
        print(f"tether memory {command}: {exc}", file=sys.stderr)
        return 2
    text = getattr(args, "text", None)
    if text == "-":
        text = sys.stdin.read()
    style = Style()
    bus = await connect(config=BusConfig.from_env(url=args.url, home=args.home))
    try:
        memory = await AsyncMemory(bus, agent=args.agent, run=args.run, settings=settings).start()
    except InvalidMemory as exc:  # [memory] embedder names a model that is not installed
        await bus.close()
        print(f"tether memory {command}: {exc}", file=sys.stderr)
        return 2
    try:
        if command in ("get", "history"):
            await memory.catch_up()  # a new process: its view may lag the log (a home of its own, another host)
        if command == "write":
            result: Any = await memory.write(args.namespace, text or "", args.key, meta or None, ttl,
                                             args.expected_version, valid_from=args.valid_from,
                                             observed_at=args.observed_at)
            line = f"wrote {result.namespace}/{result.key} v{result.version} at seq {result.seq}"
            if result.merged_into:
                line += " (merged into a near-duplicate)"
            if result.outboxed:
                line += " (NATS unreachable: in the local outbox)"
            return _out(args, result, [style.green(line)])
        if command == "get":
            entry = await memory.get(args.namespace, args.key, as_of)
            return _out(args, entry, _entry_lines(style, entry))
        if command in ("search", "context"):
            await memory.catch_up()
            if command == "context":
                ctx = await memory.context(args.query, args.namespace, args.budget, as_of=as_of)
                return _out(args, ctx, [ctx.text or style.dim("(nothing relevant)")])
            hits = await memory.search(args.query, args.namespace, args.k, filters or None, as_of,
                                       valid_at=valid_at)
            lines = [f"{style.bold(f'{h.score:6.3f}')}  {h.entry.citation}  {_short(h.entry.text)}" for h in hits]
            return _out(args, hits, lines or [style.dim("no matches")])
        if command == "history":
            versions = await memory.history(args.namespace, args.key)
            lines = []
            for v in versions:
                what = style.red(f"deleted ({v.reason})") if v.action == "deleted" else _short(v.text or "")
                who = " ".join(x for x in (f"agent={v.agent}" if v.agent else "", f"run={v.run}" if v.run else "",
                                            f"call={v.source_call_id}" if v.source_call_id else "") if x)
                lines.append(f"v{v.version:<3} seq {v.seq:<7} {_when(v.time)}  {v.action:<9} {what}"
                             + (f"  {style.dim(who)}" if who else ""))
            return _out(args, versions, lines)
        if command == "reembed":
            def progress(done: int, total: int) -> None:
                print(f"re-embedded {done:,}/{total:,}", file=sys.stderr, flush=True)

            redone = await memory.reembed(args.namespace, batch=args.batch, progress=progress)
            where = ", ".join(redone.namespaces) or "(no namespace)"
            noun = "entry" if redone.count == 1 else "entries"
            return _out(args, redone, [style.green(f"re-embedded {redone.count:,} {noun} with {redone.embedder} "
                                                   f"in {where}")])
        if command == "delete":
            result = await memory.delete(args.namespace, args.key)
            return _out(args, result, [f"deleted {args.namespace}/{args.key} v{result.version} at seq {result.seq}"])
        erased = await memory.erase(args.namespace, args.key)
        what = erased.namespace + (f"/{erased.key}" if erased.key else "")
        return _out(args, erased, [style.yellow(f"erased {what}: destroyed key(s) "
                                                f"{', '.join(erased.keys_destroyed) or '(none left)'}; "
                                                f"recorded at seq {erased.seq}")])
    except (InvalidMemory, MemoryAccessDenied, VersionConflict) as exc:
        print(f"tether memory {command}: {exc}", file=sys.stderr)
        return 2
    except (MemoryNotFound, BulkWriteFailed) as exc:
        print(f"tether memory {command}: {exc}", file=sys.stderr)
        return 1
    finally:
        await memory.close()
        await bus.close()


def _short(text: str, width: int = 100) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def _entry_lines(style: Style, entry: Any) -> list[str]:
    lines = [style.bold(entry.citation) + (f"  {style.yellow('compacted into ' + str(entry.compacted_into))}"
                                           if entry.status == "compacted" else ""),
             entry.text,
             style.dim(f"seq {entry.seq}  written {_when(entry.updated_at)}  created {_when(entry.created_at)}"
                       + (f"  expires {_when(entry.expires_at)}" if entry.expires_at else ""))]
    who = [f"{k}={v}" for k, v in (("agent", entry.agent), ("run", entry.run), ("call", entry.source_call_id),
                                   ("message", entry.source_message_id)) if v]
    if who:
        lines.append(style.dim("  ".join(who)))
    if entry.metadata:
        lines.append(style.dim("metadata " + json.dumps(entry.metadata, ensure_ascii=False, sort_keys=True)))
    if entry.replaced:
        lines.append(style.dim("replaces " + ", ".join(entry.replaced)))
    return lines


def _reembed_settings(args: argparse.Namespace, settings: MemorySettings) -> MemorySettings:
    """``--embedder`` over ``[memory] embedder``; ``ValueError`` saying what to do when neither names one."""
    if args.embedder is not None:
        return dataclasses.replace(settings, embedder=args.embedder)
    if settings.embedder == "none":
        raise ValueError('no embedder to re-embed with: set [memory] embedder = "static", "minilm" or "asymmetric" '
                         "in tether.toml (what search will use), or pass --embedder")
    return settings


def _valid_at(value: str | None) -> Any:
    """``--valid-at``: None, ``query``, or an ISO time; ``ValueError`` naming the flag otherwise."""
    if value is None or value == "query":
        return value
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"--valid-at {value!r} is not an ISO 8601 time (e.g. 2026-03-01) or 'query'") from None


def _out(args: argparse.Namespace, value: Any, lines: list[str]) -> int:
    if args.json:
        print(json.dumps(_plain(value), ensure_ascii=False, indent=2, default=str))
    else:
        for line in lines:
            print(line)
    return 0

