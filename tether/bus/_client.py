"""tether's NATS client: nats-py's, reading headers at less cost per message, with raw
subscriptions for the projector's pull feed.

A *raw sink* (:meth:`Client.add_raw_sink`) takes a subscription's messages as the
protocol parser hands them over (subject, reply, payload, header bytes), without building
a header dict, a ``Msg`` and a queue entry for each: the projector reads JetStream that
way (``tether.bus.PullFeed``) and parses only the headers it needs. Both rest on nats-py
internals, kept with the others in :mod:`._natspriv`.
"""

from __future__ import annotations

from ._headers import parse_headers
from ._natspriv import HookedClient, RawSink

__all__ = ["Client", "RawSink", "parse_headers"]


class Client(HookedClient):
    """nats-py's client, reading message headers with :func:`parse_headers`."""

    def add_raw_sink(self, sid: int, sink: RawSink) -> None:
        """Hand the messages of subscription ``sid`` to ``sink`` as they are parsed."""
        self._raw_sinks[sid] = sink

    def remove_raw_sink(self, sid: int) -> None:
        self._raw_sinks.pop(sid, None)
