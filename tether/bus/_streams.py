"""Idempotent provisioning of tether's streams and object store, with drift reporting.

* ``EVENTS``: the log, ``tether.evt.>``; file storage, limits retention (kept forever
  unless you set limits), dedupe window on ``Nats-Msg-Id``.
* ``WORK``: durable calls, ``tether.work.>``; work-queue retention (a message is gone
  once a worker acks it).
* ``DLQ``: dead letters, ``tether.dlq.>``; kept until purged.
* object store ``tether-payloads``: event data too large for a message.
* KV buckets (:func:`open_bucket`, for the middleware's shared state): read with direct gets.

Provisioning creates what is missing and compares what exists with what tether
expects. A difference is *drift*: reported, and changed in place only when asked
(``update=True``) and when NATS allows it (retention and storage never change in place).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from nats.js import JetStreamContext
from nats.js.api import (
    DiscardPolicy,
    KeyValueConfig,
    ObjectStoreConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import BucketNotFoundError, NotFoundError
from nats.js.kv import KeyValue

from ._acked import TRANSIENT_PUBLISH_ERRORS
from ._natspriv import reads_direct
from ._subjects import DLQ_SUBJECTS, EVENT_SUBJECTS, WORK_SUBJECTS

log = logging.getLogger(__name__)

__all__ = [
    "DLQ_STREAM",
    "EVENTS_STREAM",
    "OBJECT_BUCKET",
    "WORK_STREAM",
    "Drift",
    "ProvisionReport",
    "ensure_streams",
    "open_bucket",
    "stream_configs",
]

EVENTS_STREAM = "EVENTS"
WORK_STREAM = "WORK"
DLQ_STREAM = "DLQ"
OBJECT_BUCKET = "tether-payloads"
MAX_MSG_SIZE = 1024 * 1024
_UPDATABLE = {"subjects", "duplicate_window", "num_replicas", "max_msg_size", "description"}


def stream_configs(*, replicas: int = 1, dedupe_window_s: float = 120.0) -> list[StreamConfig]:
    """The stream configurations tether expects."""
    common: dict[str, Any] = {
        "storage": StorageType.FILE,
        "num_replicas": replicas,
        "duplicate_window": dedupe_window_s,
        "max_msg_size": MAX_MSG_SIZE,
        "discard": DiscardPolicy.OLD,
    }
    return [
        StreamConfig(name=EVENTS_STREAM, subjects=[EVENT_SUBJECTS],
                     retention=RetentionPolicy.LIMITS,
                     description="tether event log (source of truth)", **common),
        StreamConfig(name=WORK_STREAM, subjects=[WORK_SUBJECTS],
                     retention=RetentionPolicy.WORK_QUEUE,
                     description="tether durable calls", **common),
        StreamConfig(name=DLQ_STREAM, subjects=[DLQ_SUBJECTS],
                     retention=RetentionPolicy.LIMITS,
                     description="tether dead letters", **common),
    ]


@dataclass(frozen=True)
class Drift:
    stream: str
    field: str
    expected: Any
    actual: Any
    fixable: bool

    def __str__(self) -> str:
        how = ("update with --update-streams" if self.fixable
               else "cannot change in place: recreate the stream")
        return f"{self.stream}.{self.field}: expected {self.expected!r}, found {self.actual!r} ({how})"


@dataclass
class ProvisionReport:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    drift: list[Drift] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.drift


def _value(v: Any) -> Any:
    return v.value if hasattr(v, "value") else v


def _compare(expected: StreamConfig, actual: StreamConfig) -> list[Drift]:
    checks = {
        "subjects": (sorted(expected.subjects or []), sorted(actual.subjects or [])),
        "retention": (_value(expected.retention), _value(actual.retention)),
        "storage": (_value(expected.storage), _value(actual.storage)),
        "num_replicas": (expected.num_replicas, actual.num_replicas),
        "duplicate_window": (float(expected.duplicate_window), float(actual.duplicate_window or 0)),
        "max_msg_size": (expected.max_msg_size, actual.max_msg_size),
    }
    return [
        Drift(expected.name or "?", name, want, have, name in _UPDATABLE)
        for name, (want, have) in checks.items()
        if want != have
    ]


async def ready(js: JetStreamContext, stream: str, replicas: int, timeout: float = 10.0) -> None:
    """Wait until a stream just made on a cluster has a leader: until then every write to it fails
    (no responders), and the first calls of a new deployment would be retried for nothing."""
    if replicas <= 1:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            info = await js.stream_info(stream)
            if info.cluster is not None and info.cluster.leader:
                return
        await asyncio.sleep(0.05)


async def ensure_streams(
    js: JetStreamContext,
    *,
    replicas: int = 1,
    dedupe_window_s: float = 120.0,
    update: bool = False,
) -> ProvisionReport:
    """Create missing streams and the object store; report (and optionally fix) drift."""
    report = ProvisionReport()
    for config in stream_configs(replicas=replicas, dedupe_window_s=dedupe_window_s):
        name = config.name or "?"
        try:
            info = await js.stream_info(name)
        except NotFoundError:
            await js.add_stream(config)
            await ready(js, name, replicas)
            report.created.append(name)
            continue
        drift = _compare(config, info.config)
        if drift and update and all(d.fixable for d in drift):
            await js.update_stream(config)
            report.updated.append(name)
        elif drift:
            report.drift.extend(drift)
        else:
            report.unchanged.append(name)
    try:
        await js.object_store(OBJECT_BUCKET)
    except (BucketNotFoundError, NotFoundError):
        await js.create_object_store(
            OBJECT_BUCKET,
            config=ObjectStoreConfig(
                description="tether: event data too large for a message",
                storage=StorageType.FILE,
                replicas=replicas,
            ),
        )
        await ready(js, f"OBJ_{OBJECT_BUCKET}", replicas)
        report.created.append(f"object store {OBJECT_BUCKET}")
    return report


async def open_bucket(js: JetStreamContext, name: str, *, replicas: int = 1, ttl: float | None = None,
                      patience: float = 20.0) -> KeyValue:
    """A KV bucket, created if missing, read with direct gets.

    Waits out, for up to ``patience`` seconds, what a cluster does for a while after it starts or
    loses a node (a JetStream API request unanswered, no leader yet, 503): services started
    together on a new cluster open their buckets while the meta leader is still busy. Past that,
    the last error is raised.

    Direct gets (``allow_direct``, what the NATS CLI and Go client give a new bucket) answer
    a read with the raw message instead of a JSON document with the value in base64 and
    headers run through an e-mail parser: a round trip and some 0.1 ms of client CPU less
    per read on the executor's path. A bucket made by an earlier version gets it on open.
    A direct get may be served by a replica a moment behind; every write tether makes to a
    bucket is a compare-and-set, so a stale read costs a retry, never a lost update.
    """
    deadline = time.monotonic() + patience
    while True:
        try:
            return await _open_bucket(js, name, replicas=replicas, ttl=ttl)
        except TRANSIENT_PUBLISH_ERRORS as exc:
            if time.monotonic() > deadline:
                raise
            log.info("opening bucket %s: %r; trying again", name, exc)
        await asyncio.sleep(0.25)


async def _open_bucket(js: JetStreamContext, name: str, *, replicas: int, ttl: float | None) -> KeyValue:
    try:
        kv = await js.key_value(name)
    except (BucketNotFoundError, NotFoundError):
        made = await js.create_key_value(KeyValueConfig(bucket=name, history=1, storage=StorageType.FILE,
                                                        replicas=replicas, ttl=ttl, direct=True))
        await ready(js, f"KV_{name}", replicas)
        return made
    if not reads_direct(kv):
        stream = f"KV_{name}"
        with contextlib.suppress(Exception):  # not allowed (permissions, an old server): plain gets
            config = (await js.stream_info(stream)).config
            config.allow_direct = True
            await js.update_stream(config)
            kv = await js.key_value(name)
    return kv
