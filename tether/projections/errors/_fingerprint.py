"""Error fingerprints: what makes two failures the same problem, and the failure an event reports.

A fingerprint hashes the error type, where it happened (``llm:<provider>``, ``tool:<name>``,
``dlq:<call kind>``, ``run`` or ``run:<agent>``, ``budget:<scope>``), the status code and the
message with its variable parts replaced (:func:`normalise_message`).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from tether.schemas import (
    BudgetExceeded,
    CallDeadLettered,
    ErrorInfo,
    Event,
    LlmCallAttemptFailed,
    LlmCallFailed,
    RunFinished,
    ToolCallAttemptFailed,
    ToolCallFailed,
)

__all__ = ["Occurrence", "fingerprint", "normalise_message", "occurrence_of"]

_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>()\[\]{}]*[^\s'\"<>()\[\]{},.;:!?]")
_EMAIL = re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b")
_QUOTED = re.compile(r"\"[^\"\n]*\"|(?<![\w])'[^'\n]*'(?![\w])|`[^`\n]*`")
_UUID = re.compile(r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b")
_TOKEN = re.compile(r"[A-Za-z0-9_](?:[\w.\-]*[A-Za-z0-9_])?")
_NUMBER = re.compile(r"^[+-]?\d[\d,.]*(?:e[+-]?\d+)?(?:ms|us|ns|s|m|h|d|k|kb|mb|gb|x|%)?$", re.IGNORECASE)
_HEX = re.compile(r"^(?:0x[0-9a-fA-F]+|(?=[0-9a-fA-F]*\d)[0-9a-fA-F]{8,})$")
_ID_PREFIX = re.compile(
    r"^(?:org|req|request|user|proj|project|sk|key|call|msg|run|chatcmpl|cmpl|resp|toolu|file|asst|thread|batch"
    r"|ft|ftjob|job|sess|session|trace|span|tenant|acct)[-_][\w.\-]+$", re.IGNORECASE)
_SPACES = re.compile(r"\s+")
_MAX_MESSAGE = 500


def _token(m: re.Match[str]) -> str:
    word = m[0]
    if _NUMBER.match(word):
        return "<n>"
    if _HEX.match(word):
        return "<hex>"
    if _ID_PREFIX.match(word) or (any(c.isdigit() for c in word) and any(c.isalpha() for c in word)):
        return "<id>"
    return word


def normalise_message(message: str) -> str:
    """The message with its variable parts replaced, so sibling failures read the same.

    URLs become ``<url>``, e-mail addresses ``<email>``, quoted values ``<val>``, UUIDs and
    ids (``org-abc``, ``req_123``, ``gpt-4o``: a known id prefix, or letters mixed with
    digits) ``<id>``, long hex ``<hex>``, numbers (with a unit such as ``120ms``) ``<n>``.
    """
    text = _URL.sub("<url>", message)
    text = _EMAIL.sub("<email>", text)
    text = _QUOTED.sub("<val>", text)
    text = _UUID.sub("<id>", text)
    text = _TOKEN.sub(_token, text)
    text = _SPACES.sub(" ", text).strip()
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 1] + "…"


def fingerprint(error_type: str, source: str, status_code: int | None, message: str) -> str:
    """16 hex digits naming a group; ``message`` is the normalised one."""
    raw = "\x1f".join((error_type, source, "" if status_code is None else str(status_code), message))
    return hashlib.sha256(raw.encode()).hexdigest()[:16]



@dataclass(frozen=True, slots=True)
class Occurrence:
    """One failure event, as the errors view sees it."""

    kind: str
    """``attempt``, ``final`` (a call gave up), ``dead_letter``, ``budget`` or ``run``."""
    source: str
    error_type: str
    status_code: int | None
    raw_message: str
    message: str
    """Normalised: the part of the message that goes into the fingerprint."""
    decision: str | None = None
    call_id: str | None = None

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.error_type, self.source, self.status_code, self.message)


def _of(kind: str, source: str, error: ErrorInfo, *, decision: str | None = None,
        call_id: str | None = None) -> Occurrence:
    return Occurrence(kind, source, error.type, error.status_code, error.message,
                      normalise_message(error.message), decision, call_id)


def occurrence_of(event: Event) -> Occurrence | None:
    """The failure an event reports, or None (not a failure, or a type this view does not read)."""
    match event.data:
        case LlmCallAttemptFailed() as d:
            return _of("attempt", f"llm:{d.provider}", d.error, decision=d.decision, call_id=d.call_id)
        case ToolCallAttemptFailed() as d:
            return _of("attempt", f"tool:{d.tool}", d.error, decision=d.decision, call_id=d.call_id)
        case LlmCallFailed() as d:
            return _of("final", f"llm:{d.provider}", d.error, call_id=d.call_id)
        case ToolCallFailed() as d:
            return _of("final", f"tool:{d.tool}", d.error, call_id=d.call_id)
        case CallDeadLettered() as d:
            error = d.error or ErrorInfo(type="DeadLettered", message=d.reason)
            return _of("dead_letter", f"dlq:{d.call_kind}", error, call_id=d.call_id)
        case RunFinished() as d if d.error is not None or d.status == "error":
            error = d.error or ErrorInfo(type="RunFailed")
            return _of("run", f"run:{event.agentid}" if event.agentid else "run", error)
        case BudgetExceeded() as d:
            raw = (f"{d.scope} {d.scope_id}: {d.unit} budget {d.limit:g} exceeded (spent {d.spent:g}"
                   + (f", requested {d.requested:g}" if d.requested is not None else "") + ")")
            # Grouped by scope and unit: which run or agent it was is in the sample and the runs.
            return Occurrence("budget", f"budget:{d.scope}", "BudgetExceeded", None, raw,
                              f"{d.unit} budget exceeded", call_id=d.call_id)
    return None
