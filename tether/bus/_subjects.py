"""The subject scheme: where each event, work item and dead letter lives on NATS.

Events::

    tether.evt.<agent>.<run>.<kind>.<action>.<key>

``kind`` is run | llm | tool | memory | call | circuit | budget | eval; ``action`` is the last
part of the event type (``completed``, ``attempt_failed``...); ``key`` is the event's
routing key: the provider of an LLM call, the tool name, the memory namespace, the
breaker route, the budget scope. A missing agent, run or key is ``_``. Every subject
has exactly seven tokens, so wildcards line up::

    tether.evt.*.*.llm.>                   every LLM event
    tether.evt.support-bot.>               everything agent support-bot did
    tether.evt.*.run-42.>                  one run
    tether.evt.*.*.memory.*.team:search    writes to one memory namespace

and NATS permissions can confine an agent: allow ``tether.evt.<agent>.>`` minus the
memory namespaces it has no grant for (see ``docs/subjects.md``).

Ids are encoded into tokens, never rejected: characters outside ``[A-Za-z0-9_:@+=~-]``
become ``%XX`` (UTF-8), a lone ``_`` becomes ``%5F`` (``_`` alone means "none"), and an
id whose encoding would exceed 128 bytes is cut and suffixed with a hash of the whole id.
The true ids always travel in the event's attributes; tokens are for routing.
"""

from __future__ import annotations

import hashlib
import re

from tether.schemas import Event

__all__ = [
    "DLQ_SUBJECTS",
    "EVENT_SUBJECTS",
    "NONE_TOKEN",
    "PROJECTION_SUBJECTS",
    "WORK_SUBJECTS",
    "decode_token",
    "encode_token",
    "event_filter",
    "event_subject",
]

PREFIX = "tether"
EVENT_SUBJECTS = f"{PREFIX}.evt.>"
WORK_SUBJECTS = f"{PREFIX}.work.>"
DLQ_SUBJECTS = f"{PREFIX}.dlq.>"
PROJECTION_SUBJECTS = f"{PREFIX}.proj.>"
NONE_TOKEN = "_"
MAX_TOKEN = 128

_SAFE = re.compile(r"[A-Za-z0-9_:@+=~\-]+")
_UNSAFE_CHAR = re.compile(r"[^A-Za-z0-9_:@+=~\-]")
_cache: dict[str, str] = {}


def encode_token(value: str | None) -> str:
    """One subject token for an id; ``_`` for None or the empty string."""
    if not value:
        return NONE_TOKEN
    cached = _cache.get(value)
    if cached is not None:
        return cached
    if value == NONE_TOKEN:
        token = "%5F"
    elif _SAFE.fullmatch(value):
        token = value
    else:
        token = _UNSAFE_CHAR.sub(lambda m: "".join(f"%{b:02X}" for b in m[0].encode()), value)
    if len(token) > MAX_TOKEN:
        digest = hashlib.sha256(value.encode()).hexdigest()[:16]
        head = token[: MAX_TOKEN - 17]
        half = head.rfind("%", len(head) - 2)  # an escape cut in two, if any
        token = (head if half < 0 else head[:half]) + "~" + digest
    if len(_cache) < 10_000:
        _cache[value] = token
    return token


def decode_token(token: str) -> str | None:
    """The id a token stands for (None for ``_``). Hash-cut tokens cannot be reversed."""
    if token == NONE_TOKEN:
        return None
    if "%" not in token:
        return token
    return re.sub(
        r"(?:%[0-9A-F]{2})+",
        lambda m: bytes.fromhex(m[0].replace("%", "")).decode("utf-8", errors="replace"),
        token,
    )


def event_subject(event: Event) -> str:
    """The subject an event is published on."""
    data = event.data
    return ".".join((
        PREFIX, "evt",
        encode_token(event.agentid),
        encode_token(event.runid),
        data.kind,
        data.action,
        encode_token(data.subject_key()),
    ))


def event_filter(
    *,
    agent: str | None = None,
    run: str | None = None,
    kind: str | None = None,
    action: str | None = None,
    key: str | None = None,
) -> str:
    """A subject filter for events; unset parts match anything.

    >>> event_filter(kind="llm")
    'tether.evt.*.*.llm.*.*'
    >>> event_filter(agent="bot", run="r 1")
    'tether.evt.bot.r%201.*.*.*'
    """
    parts = [
        encode_token(agent) if agent else "*",
        encode_token(run) if run else "*",
        kind or "*",
        action or "*",
        encode_token(key) if key else "*",
    ]
    if all(p == "*" for p in parts):
        return EVENT_SUBJECTS
    return ".".join((PREFIX, "evt", *parts))
