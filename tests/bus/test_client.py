"""tether's NATS client parses headers exactly as nats-py does, only faster."""

from __future__ import annotations

import random
from pathlib import Path

import nats.errors
import pytest
from nats.aio.client import Client as NatsClient
from nats.protocol.command import hpub_cmd

from tether.bus import connect, event_filter
from tether.bus._client import Client, parse_headers
from tether.bus._headers import HeaderBlock, header_block, message_headers
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


async def nats_hpub(headers: dict[str, str]) -> bytes | None:
    """The HPUB nats-py's own _send_publish writes for ``headers`` (None if it refuses them)."""
    nc = NatsClient()
    sent: list[bytes] = []

    async def keep(cmd: bytes, priority: bool = False) -> None:
        sent.append(cmd)

    nc._send_command = keep  # type: ignore[method-assign]
    try:
        await NatsClient._send_publish(nc, "s.t", "r.1", b"body", 4, headers)
    except nats.errors.BadHeaderError:
        return None
    return sent[0]


HEADERS = [
    {},
    {"ce-id": "01a2", "ce-type": "tether.tool.call.completed", "Nats-Msg-Id": "01a2"},
    {"k": " leading space"}, {"k": "trailing space "}, {"k": "tab\t"}, {"k": "\xa0nbsp"},
    {"k": "cr\rinside"}, {"k": "lf\ninside"}, {"k": ""}, {"k": "a:  two spaces after a colon"},
    {" k ": "padded name"}, {"": "empty name"}, {"bad name": "v"}, {"k:": "colon in name"},
    {"k": "café"}, {"k": "v\x1c"}, {"k": "%41 percent"},
]


@pytest.mark.anyio
@pytest.mark.parametrize("headers", HEADERS)
async def test_a_header_block_is_what_nats_py_writes_or_none(headers: dict[str, str]) -> None:
    block = header_block(headers)
    if block is not None:
        assert hpub_cmd("s.t", "r.1", block, b"body") == await nats_hpub(headers)


@pytest.mark.anyio
async def test_a_header_block_is_what_nats_py_writes_on_random_headers() -> None:
    rng = random.Random(7)
    alphabet = "ab-_: \t\r\n\x00\x1c\x7f\xa0é%\""
    written = 0
    for _ in range(3_000):
        headers = {"".join(rng.choice(alphabet) for _ in range(rng.randint(0, 6))):
                   "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
                   for _ in range(rng.randint(0, 4))}
        block = header_block(headers)
        if block is not None:
            written += 1
            assert hpub_cmd("s.t", "r.1", block, b"body") == await nats_hpub(headers), headers
    assert written > 100  # the quick way was taken often enough to be tested


@pytest.mark.anyio
@pytest.mark.nats
async def test_the_publisher_sends_its_headers_as_a_ready_block(nats_server: NatsServer, tether_home: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # nats-py encodes a dozen headers one by one (about 9 us an event); tether's do not need it.
    encoded_by_nats_py: list[object] = []
    send_publish = NatsClient._send_publish

    async def spy(self: NatsClient, subject: str, reply: str, payload: bytes, size: int, headers: object) -> None:
        if subject.startswith("tether.evt."):
            encoded_by_nats_py.append(headers)
        await send_publish(self, subject, reply, payload, size, headers)  # type: ignore[arg-type]

    monkeypatch.setattr(NatsClient, "_send_publish", spy)
    bus = await connect(url=nats_server.url, home=tether_home)
    try:
        run = f"run-{uuid7()}"
        events = [Event.of(ToolCallCompleted(call_id=f"c{i}", tool="search", result={"q": "é"}),
                           runid=run, agentid="a1", extensions={"note": "two words"}) for i in range(3)]
        for event in events:
            await bus.emit(event)
        await bus.publish(Event.of(ToolCallCompleted(call_id="c3", tool="search"), runid=run, agentid="a1"))
        await bus.flush()
        assert encoded_by_nats_py == []
        read = [r.event for r in await collect(bus, event_filter(run=run))]
        assert [e.id for e in read if e is not None][:3] == [e.id for e in events]
        assert all(e is not None and e.extensions == {"note": "two words"} for e in read[:3])
    finally:
        await bus.close()


def test_a_header_block_is_still_the_headers_for_any_other_client() -> None:
    headers = {"ce-id": "1", "k": "v"}
    block = HeaderBlock.of(headers)
    assert isinstance(block, HeaderBlock) and block == headers
    assert HeaderBlock.of({"k": " padded"}) == {"k": " padded"} and not isinstance(
        HeaderBlock.of({"k": " padded"}), HeaderBlock)


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


STATUS_BLOCKS = [
    b"NATS/1.0 503\r\n\r\n",  # no responders: no stream holds the subject
    b"NATS/1.0 503 No Responders\r\n\r\n",
    b"NATS/1.0 408 Request Timeout\r\n\r\n",
    b"NATS/1.0 100 Idle Heartbeat\r\nNats-Last-Consumer: 1016\r\nNats-Last-Stream: 1024\r\n\r\n",
    b"NATS/1.0\r\nNats-Msg-Id: abc\r\nk: v\r\n\r\n",
    b"NATS/1.0\r\n\r\n",
]


@pytest.mark.anyio
@pytest.mark.parametrize("block", STATUS_BLOCKS)
async def test_a_whole_header_block_reads_as_nats_py_reads_it(block: bytes) -> None:
    """What the publisher's raw ack sink gets (a reply's header block as bytes, status line first)
    is read into the dict nats-py's client builds for its Msg: the status and description too."""
    assert message_headers(block) == (await NatsClient()._process_headers(block) or None)
