"""The durable-call message on the WORK stream, and the call's state record in KV."""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from tether.bus import encode_token

from ._decide import AttemptRecord
from ._failures import Failure
from ._policy import Target

__all__ = ["CALLS_BUCKET", "CallRecord", "RelaySpec", "WorkItem", "work_subject"]

CALLS_BUCKET = "tether-calls"
CALL_ID_PATTERN = r"^[-/_=A-Za-z0-9]+(\.[-/_=A-Za-z0-9]+)*$"
Operation = Literal["chat", "responses", "messages", "embeddings", "generate_content"]
SUBJECT_PATTERN = r"^[^\s.*>]+(\.[^\s.*>]+)*$"


class RelaySpec(BaseModel):
    """A streamed durable call: where the worker relays the answer as it comes (see ``_relay``).

    ``subject`` is the caller's (it subscribed before submitting); ``heartbeat_s`` how often
    the worker says it is alive while relaying; ``drop_usage_chunk``: tether, not the caller,
    asked for ``stream_options.include_usage``, so the usage-only chunk is not relayed.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    subject: str = Field(min_length=1, max_length=512, pattern=SUBJECT_PATTERN)
    heartbeat_s: float = Field(default=3.0, gt=0, le=60)
    drop_usage_chunk: bool = False


class WorkItem(BaseModel):
    """One durable call: what to run, for whom, and where to say it is done.

    Published on ``tether.work.<kind>.<provider|tool>`` with ``Nats-Msg-Id`` = call id,
    so submitting the same call twice runs it once.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    v: Literal[1] = 1
    call_id: str = Field(min_length=1, max_length=200, pattern=CALL_ID_PATTERN)
    """Keys the call's record in KV and travels in headers, hence KV key characters only."""
    kind: Literal["llm", "tool"]
    runid: str | None = None
    agentid: str | None = None
    tenant: str | None = None
    traceparent: str | None = None
    reply_to: str | None = None
    submitted_at: float = Field(default_factory=time.time)
    deadline_at: float | None = None
    # LLM calls
    provider: str | None = None
    model: str | None = None
    operation: Operation = "chat"
    body: dict[str, JsonValue] = {}
    relay: RelaySpec | None = Field(default=None, exclude_if=lambda relay: relay is None)
    """Set for a streamed call: the worker streams from the provider and relays the chunks.
    Left out of the JSON when unset, so other work messages are as they were."""
    # tool calls
    tool: str | None = None
    arguments: JsonValue = None
    idempotency_key: str | None = None
    redrive_of: str | None = None

    @classmethod
    def made(cls, **fields: Any) -> WorkItem:
        """What ``model_construct(**fields)`` makes (every value the caller's own, and valid: not
        validated), with the fields' defaults worked out once: an adapter makes one for every call."""
        spec = _MADE.get(cls)
        if spec is None:
            if cls.__pydantic_post_init__ or cls.__private_attributes__:  # not this class's case: pydantic's way
                return cls.model_construct(**fields)
            spec = _MADE[cls] = tuple((name, field.is_required(), field.default, field.default_factory)
                                      for name, field in cls.model_fields.items())
        values: dict[str, Any] = {}
        given = 0
        for name, required, default, factory in spec:  # in the fields' order, as model_construct
            if name in fields:
                values[name] = fields[name]
                given += 1
            elif required:
                continue  # left out, as model_construct leaves it
            elif factory is not None:
                values[name] = factory()
            else:
                values[name] = copy.deepcopy(default) if isinstance(default, dict | list) else default
        if given != len(fields):
            raise TypeError(f"WorkItem.made() got unknown fields {sorted(set(fields) - set(values))}")
        item = cls.__new__(cls)
        object.__setattr__(item, "__dict__", values)
        object.__setattr__(item, "__pydantic_fields_set__", set(fields))
        object.__setattr__(item, "__pydantic_extra__", None)
        object.__setattr__(item, "__pydantic_private__", None)
        return item

    @property
    def target(self) -> Target | None:
        if self.kind == "llm" and self.provider and self.model:
            return Target(self.provider, self.model)
        return None

    @property
    def route(self) -> str:
        return f"{self.provider}:{self.model}" if self.kind == "llm" else f"tool:{self.tool}"


_MADE: dict[type[WorkItem], tuple[tuple[str, bool, Any, Any], ...]] = {}


def work_subject(item: WorkItem) -> str:
    key = item.provider if item.kind == "llm" else item.tool
    return f"tether.work.{item.kind}.{encode_token(key)}"


@dataclass
class CallRecord:
    """A call's progress, kept in the ``tether-calls`` KV bucket under its id.

    Every worker reads it before an attempt, so any worker can take the next attempt
    of any call; an attempt that started but has no outcome was cut short (its worker
    died) and counts as failed.
    """

    call_id: str
    kind: str
    route: str
    started_at: float
    state: Literal["running", "completed", "failed"] = "running"
    provider: str | None = None
    model: str | None = None
    fallbacks: int = 0
    attempts: list[dict[str, Any]] = field(default_factory=list)
    in_flight: dict[str, Any] | None = None
    admitted: bool = False
    terminal_seq: int | None = None
    terminal_event_id: str | None = None
    error: dict[str, Any] | None = None
    reason: str | None = None
    """Why a failed call ended: its dead-letter reason, or ``cancelled`` (``CallFailed.reason``)."""

    @classmethod
    def new(cls, item: WorkItem, now: float) -> CallRecord:
        return cls(item.call_id, item.kind, item.route, started_at=now, provider=item.provider,
                   model=item.model)

    @property
    def terminal(self) -> bool:
        return self.state != "running"

    @property
    def target(self) -> Target | None:
        return Target(self.provider, self.model) if self.provider and self.model else None

    def history(self) -> list[AttemptRecord]:
        out = []
        for a in self.attempts:
            f = a.get("failure")
            out.append(AttemptRecord(
                attempt=a["attempt"],
                target=Target.parse(a["target"]) if a.get("target") else None,
                failure=Failure(**f) if f else None,
                started_at=a["started_at"],
                duration_s=a["duration_s"],
            ))
        return out

    def record_attempt(self, record: AttemptRecord) -> None:
        self.attempts.append({
            "attempt": record.attempt,
            "target": record.target.route if record.target else None,
            "failure": asdict(record.failure) if record.failure else None,
            "started_at": record.started_at,
            "duration_s": record.duration_s,
        })
        self.in_flight = None

    def to_json(self) -> bytes:
        # Every field is already JSON (attempts and errors are stored as dicts): no deep copy.
        return json.dumps(self.__dict__, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> CallRecord:
        doc = json.loads(raw)
        return cls(**{k: v for k, v in doc.items() if k in _FIELDS})  # a newer version's extras: ignored


_FIELDS = frozenset(f.name for f in fields(CallRecord))
