"""The bus: NATS connection, embedded server, streams and KV buckets, subjects, publisher, outbox.

An outbox directory can be read without a connection: :func:`outbox_depth` counts what waits
there, :func:`set_aside` lists the newest events NATS refused (:class:`SetAside`).

Imports only :mod:`tether.schemas`.
"""

from ._acked import TRANSIENT_PUBLISH_ERRORS, publish_until_acked, until_answered
from ._batch import Batch
from ._binding import (
    STRUCTURED_CONTENT_TYPE,
    WireEvent,
    decode,
    decode_block,
    decode_event,
    encode_binary,
    encode_structured,
    percent_decode,
    percent_encode,
)
from ._cluster import ClusterNode, LocalCluster, find_cluster
from ._config import BusConfig
from ._connect import Bus, BusUnavailable, connect, server_urls
from ._feed import FeedError, FeedMessage, PullFeed
from ._jwt import AuthUnavailable
from ._outbox import Outbox, OutboxFull, PendingMessage, SetAside, outbox_depth, set_aside
from ._publisher import PayloadTooLarge, Publisher, PublisherStats, PublishRejected, Receipt, Undeliverable
from ._reader import EventReader, ReadResult
from ._realm import AgentPermissions, Realm, agent_permissions
from ._scoped import PermissionDenied, find_event, read_subject
from ._server import EmbeddedServer, ServerError, find_running, nats_server_binary, tether_home
from ._streams import (
    DLQ_STREAM,
    EVENTS_STREAM,
    OBJECT_BUCKET,
    WORK_STREAM,
    Drift,
    ProvisionReport,
    ensure_streams,
    open_bucket,
    stream_configs,
)
from ._subjects import (
    DLQ_SUBJECTS,
    EVENT_SUBJECTS,
    PROJECTION_SUBJECTS,
    WORK_SUBJECTS,
    decode_token,
    encode_token,
    event_filter,
    event_subject,
)

__all__ = [
    "DLQ_STREAM",
    "DLQ_SUBJECTS",
    "EVENTS_STREAM",
    "EVENT_SUBJECTS",
    "OBJECT_BUCKET",
    "PROJECTION_SUBJECTS",
    "STRUCTURED_CONTENT_TYPE",
    "TRANSIENT_PUBLISH_ERRORS",
    "WORK_STREAM",
    "WORK_SUBJECTS",
    "AgentPermissions",
    "AuthUnavailable",
    "Batch",
    "Bus",
    "BusConfig",
    "BusUnavailable",
    "ClusterNode",
    "Drift",
    "EmbeddedServer",
    "EventReader",
    "FeedError",
    "FeedMessage",
    "LocalCluster",
    "Outbox",
    "OutboxFull",
    "PayloadTooLarge",
    "PendingMessage",
    "PermissionDenied",
    "ProvisionReport",
    "PublishRejected",
    "Publisher",
    "PublisherStats",
    "PullFeed",
    "ReadResult",
    "Realm",
    "Receipt",
    "ServerError",
    "SetAside",
    "Undeliverable",
    "WireEvent",
    "agent_permissions",
    "connect",
    "decode",
    "decode_block",
    "decode_event",
    "decode_token",
    "encode_binary",
    "encode_structured",
    "encode_token",
    "ensure_streams",
    "event_filter",
    "event_subject",
    "find_cluster",
    "find_event",
    "find_running",
    "nats_server_binary",
    "open_bucket",
    "outbox_depth",
    "percent_decode",
    "percent_encode",
    "publish_until_acked",
    "read_subject",
    "server_urls",
    "set_aside",
    "stream_configs",
    "tether_home",
    "until_answered",
]
