"""tether's NATS client parses headers exactly as nats-py does, only faster."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from nats.aio.client import Client as NatsClient

from tether.bus import connect, event_filter
from tether.bus._client import Client, parse_headers
from tether.schemas import Event, ToolCallCompleted, uuid7
from tether.testing import NatsServer, collect

nats_parse = NatsClient._parse_header_lines

BLOCKS = [
    b"",
    b"\r\n",
    b"ce-specversion: 1.0\r\nce-id: 0199\r\nce-type: tether.run.started\r\n\r\n",
    b"Nats-Msg-Id:abc\r\nNats-Expected-Stream:\tEVENTS\r\n\r\n",
    b"x: a: b: c\r\n",  # the value keeps its colons
    b"  padded  :  value  \r\n",
    b"bad name: dropped\r\nok: kept\r\n",
    b"tab\tname: dropped\r\n",
    b"\xffname: non-ascii name dropped\r\nk: v\r\n",
    b"k: caf\xc3\xa9 and \xff broken\r\n",
    b"no colon at all\r\nk: v\r\n",
    b"dup: 1\r\ndup: 2\r\n",
    b"ctl\x01name: control chars are not whitespace\r\n",
    b"fs\x1cname: \\x1c is whitespace to str.isspace\r\n",
    b": empty name\r\n",
    b"k: bare\nnewline: stays in the value\r\n",
    b"ce-source: urn%3Atether%3Ahost\r\nce-time: 2026-01-01T00:00:00Z\r\n",
]


@pytest.mark.parametrize("block", BLOCKS)
def test_same_dict_as_nats_py(block: bytes) -> None:
    assert parse_headers(block) == nats_parse(block)


def test_same_dict_as_nats_py_on_random_blocks() -> None:
    rng = random.Random(11)
    alphabet = b"ab:-_ \t\r\n\x00\x01\x1c\x1f\x7f\xc3\xa9\xff%=."
    for _ in range(5_000):
        block = bytes(rng.choice(alphabet) for _ in range(rng.randint(0, 60)))
        assert parse_headers(block) == nats_parse(block), block


def test_the_client_overrides_the_parser_nats_py_calls() -> None:
    # If nats-py renames or drops the hook, this fails rather than silently losing the speed-up.
    assert "_parse_header_lines" in vars(NatsClient)
    assert Client._parse_header_lines is parse_headers


@pytest.mark.anyio
@pytest.mark.nats
async def test_the_bus_connects_with_it_and_events_round_trip(nats_server: NatsServer, tether_home: Path) -> None:
    bus = await connect(url=nats_server.url, home=tether_home)
    try:
        assert isinstance(bus.nc, Client)
        run = f"run-{uuid7()}"
        event = Event.of(ToolCallCompleted(call_id="c1", tool="search", attempt=1, result={"q": "é"}),
                         runid=run, agentid="a1")
        await bus.emit(event)
        await bus.flush()
        [read] = [r.event for r in await collect(bus, event_filter(run=run))]
        assert read is not None and read.id == event.id and read.data == event.data
        assert read.runid == run and read.agentid == "a1"
    finally:
        await bus.close()
