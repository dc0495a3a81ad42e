"""Who is calling, and in which run: pure functions of a request's headers.

* The **gateway key** comes as ``Authorization: Bearer <key>`` (OpenAI clients),
  ``x-api-key: <key>`` (Anthropic clients), ``x-goog-api-key: <key>`` (Google's) or ``api-key: <key>``
  (Azure-style clients), and
  maps to an agent id. Keys are looked up by their SHA-256, so the configuration may hold
  hashes only. A trusted key (agent ``"*"``) takes the agent from ``x-tether-agent``.
* ``x-tether-agent`` may otherwise only name the key's agent or one of its sub-agents
  (``<agent>/<name>``): an agent cannot act as another.
* The **run**: ``x-tether-run-id`` names it; else a W3C ``traceparent`` does, since agents
  such as OpenClaw keep one trace id for a whole run: the run id is a UUID derived from the
  agent and the trace id (the same on every gateway, and after restarts); else the call
  belongs to no run. ``x-tether-resume: <attempt>`` resumes that run: its calls are matched
  against what it recorded (a new value starts matching from the run's first call again).
* Headers that carry the agent's credentials or are the gateway's own never go upstream.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

from .._runs import trace_of
from ._config import TRUSTED

__all__ = [
    "AGENT_HEADER",
    "RESUME_HEADER",
    "RUN_ENDS",
    "RUN_END_HEADER",
    "RUN_HEADER",
    "STRIPPED",
    "Caller",
    "Refused",
    "identify",
    "run_for_trace",
    "started_id",
    "trace_for_run",
]

RUN_HEADER = "x-tether-run-id"
AGENT_HEADER = "x-tether-agent"
RUN_END_HEADER = "x-tether-run-end"
RUN_ENDS = ("ok", "error", "cancelled")
RESUME_HEADER = "x-tether-resume"
STRIPPED = frozenset({
    "authorization", "proxy-authorization", "x-api-key", "api-key", "x-goog-api-key", "cookie", "openai-organization",
    "openai-project", "host", "expect", "te", "upgrade", "keep-alive", "proxy-connection", RUN_HEADER,
    AGENT_HEADER, RUN_END_HEADER, RESUME_HEADER,
})
"""Request headers the gateway never forwards (the caller's credentials, hop-by-hop, its own)."""

_NAMESPACE = uuid.UUID("5d0c6a4e-9a8f-4c55-8f0e-7e1f3b0b7a11")


@dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated request: its agent, run and trace."""

    agent: str | None
    run_id: str | None
    trace_id: str | None
    traceparent: str | None
    derived_run: bool = False
    """The run id was derived from the trace (the gateway frames the run: ``run.started``)."""
    trusted: bool = False
    """A trusted key's call: it may act, and publish events, as any agent."""
    run_end: str | None = None
    """``x-tether-run-end``: this call is the run's last; the run ends with this status once it is answered."""
    resume: str | None = None
    """The run resumes: calls are replayed from its journal (``x-tether-resume``'s value names the attempt)."""


@dataclass(frozen=True, slots=True)
class Refused:
    status: int  # 401 or 403 or 400
    message: str
    code: str


def credential(headers: Mapping[str, str]) -> str | None:
    """The key a request presents (lower-case header names)."""
    auth = headers.get("authorization")
    if auth:
        scheme, _, value = auth.strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return headers.get("x-api-key") or headers.get("x-goog-api-key") or headers.get("api-key") or None


def lookup(keys: Mapping[str, str], key: str | None) -> str | None:
    """The agent a key maps to (by its SHA-256), or ``None``."""
    if not key:
        return None
    # by hash: what a timing difference could reveal is a prefix of a hash, not of a key
    return keys.get(hashlib.sha256(key.encode()).hexdigest())


def run_for_trace(agent: str | None, trace_id: str) -> str:
    """The run id of an agent's trace: a UUID that every gateway derives the same way."""
    return str(uuid.uuid5(_NAMESPACE, f"{agent or ''}:{trace_id}"))


def started_id(run_id: str) -> str:
    """The id of the ``run.started`` event the gateway sends for a run it derived."""
    return str(uuid.uuid5(_NAMESPACE, f"run.started:{run_id}"))


def trace_for_run(run_id: str) -> str:
    """The trace id of a run named by ``x-tether-run-id`` without a ``traceparent``."""
    return hashlib.sha256(run_id.encode()).hexdigest()[:32]


def _valid_id(value: str) -> bool:
    return 0 < len(value) <= 200 and value.isprintable() and not any(c.isspace() for c in value)


def identify(headers: Mapping[str, str], keys: Mapping[str, str]) -> Caller | Refused:
    """Authenticate a request and place it in its run (``headers``: lower-case names)."""
    key_agent = lookup(keys, credential(headers))
    if key_agent is None:
        missing = credential(headers) is None
        return Refused(401, "No API key provided: use Authorization: Bearer <gateway key>, x-api-key or x-goog-api-key"
                       if missing else "Incorrect API key provided (not a key of this tether gateway)",
                       "missing_api_key" if missing else "invalid_api_key")
    asked = headers.get(AGENT_HEADER)
    agent: str | None = key_agent
    trusted = key_agent == TRUSTED
    if trusted:
        agent = asked or None
    elif asked and asked != key_agent and not asked.startswith(key_agent + "/"):
        return Refused(403, f"this key belongs to agent {key_agent!r}, which may not act as {asked!r} "
                       f"(only as itself or a sub-agent {key_agent + '/<name>'!r})", "agent_not_allowed")
    elif asked:
        agent = asked
    if agent is not None and not _valid_id(agent):
        return Refused(400, f"{AGENT_HEADER} must be printable, without spaces, at most 200 characters",
                       "invalid_agent")
    traceparent = headers.get("traceparent")
    trace_id = trace_of(traceparent)
    if trace_id is None:
        traceparent = None
    run_end = headers.get(RUN_END_HEADER)
    if run_end is not None:
        run_end = run_end.strip().lower()
        if run_end not in RUN_ENDS:
            return Refused(400, f"{RUN_END_HEADER} must be one of {', '.join(RUN_ENDS)} (the status the run ends "
                           f"with), not {run_end!r}", "invalid_run_end")
        if headers.get(RUN_HEADER) is None and trace_id is None:
            return Refused(400, f"{RUN_END_HEADER} ends a run: name it with {RUN_HEADER} or send the run's "
                           "traceparent", "invalid_run_end")
    run_id = headers.get(RUN_HEADER)
    resume = headers.get(RESUME_HEADER)
    if resume is not None and not _valid_id(resume):
        return Refused(400, f"{RESUME_HEADER} must be printable, without spaces, at most 200 characters "
                       "(it names the attempt: 1, 2...)", "invalid_resume")
    if run_id is not None:
        if not _valid_id(run_id):
            return Refused(400, f"{RUN_HEADER} must be printable, without spaces, at most 200 characters",
                           "invalid_run_id")
        return Caller(agent, run_id, trace_id or trace_for_run(run_id), traceparent, trusted=trusted,
                      run_end=run_end, resume=resume)
    if trace_id is not None:
        return Caller(agent, run_for_trace(agent, trace_id), trace_id, traceparent, derived_run=True, trusted=trusted,
                      run_end=run_end, resume=resume)
    if resume is not None:
        return Refused(400, f"{RESUME_HEADER} needs the run to resume: send {RUN_HEADER} with its id (or the "
                       "traceparent its calls had)", "resume_without_run")
    return Caller(agent, None, None, None, trusted=trusted)
