"""nats-py's private API as tether uses it (``tether/bus/_natspriv.py``), checked against the installed nats-py.

These run in ``make test`` and ``make test-lowest``: a nats-py release that renames or changes
one of the hooks fails here, with a message naming the attribute and what tether uses it for.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import Callable
from typing import Any

import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig
from nats.js.kv import KeyValue

from tether.bus import open_bucket
from tether.bus._client import Client, parse_headers
from tether.bus._headers import HeaderBlock
from tether.bus._natspriv import (
    HOOKS,
    HookedClient,
    api_prefix,
    forget_unflushed,
    reads_direct,
    server_info,
    subscription_id,
)
from tether.testing import NatsServer

from .. import _hooks as hooks

HOOK = {hook.name: hook for hook in HOOKS}
BLOCK = b"NATS/1.0\r\nce-id: 1\r\nk: v\r\n\r\n"


def relied_on(*names: str) -> contextlib.AbstractContextManager[None]:
    return hooks.relied_on(HOOKS, *names)


# -- without a server: the attributes are where tether reads and writes them -----------------------------


def _parse_header_lines() -> None:
    hook = vars(NatsClient).get("_parse_header_lines")
    assert isinstance(hook, staticmethod), f"no static method _parse_header_lines on nats-py's client: {hook!r}"
    assert NatsClient._parse_header_lines(BLOCK[10:]) == parse_headers(BLOCK[10:])
    assert HookedClient._parse_header_lines is parse_headers


def _process_msg() -> None:
    hook = vars(NatsClient).get("_process_msg")
    assert inspect.iscoroutinefunction(hook), f"no coroutine _process_msg on nats-py's client: {hook!r}"
    params = list(inspect.signature(hook).parameters)
    assert len(params) == 6, f"takes {params}, tether's override takes (self, sid, subject, reply, data, headers)"


def _send_publish() -> None:
    hook = vars(NatsClient).get("_send_publish")
    assert inspect.iscoroutinefunction(hook), f"no coroutine _send_publish on nats-py's client: {hook!r}"
    params = list(inspect.signature(hook).parameters)
    assert params == ["self", "subject", "reply", "payload", "payload_size", "headers"], (
        f"takes {params}, tether's override takes (self, subject, reply, payload, payload_size, headers)")
    assert "_send_publish(" in inspect.getsource(NatsClient.publish), "publish() no longer calls _send_publish"


def _send_command() -> None:
    hook = vars(NatsClient).get("_send_command")
    assert inspect.iscoroutinefunction(hook), f"no coroutine _send_command on nats-py's client: {hook!r}"
    assert list(inspect.signature(hook).parameters)[:2] == ["self", "cmd"]


def _flush_pending() -> None:
    hook = vars(NatsClient).get("_flush_pending")
    assert inspect.iscoroutinefunction(hook), f"no coroutine _flush_pending on nats-py's client: {hook!r}"
    assert NatsClient()._flush_queue is None, "_flush_queue is not None before connect"


def _id() -> None:
    sub = Subscription(NatsClient(), id=7, subject="x")
    assert sub._id == 7 and subscription_id(sub) == 7


def _pending() -> None:
    nc = NatsClient()
    assert nc._pending == [], f"_pending is {nc._pending!r}, not an empty list"
    nc._pending.append(b"PUB x 1\r\na\r\n")
    nc._pending_data_size = 12
    forget_unflushed(nc)
    assert nc._pending == []


def _pending_data_size() -> None:
    nc = NatsClient()
    assert nc._pending_data_size == 0
    nc._pending_data_size = 5
    assert nc.pending_data_size == 5, "the public pending_data_size no longer reads _pending_data_size"
    nc._pending.append(b"x")
    forget_unflushed(nc)
    assert nc.pending_data_size == 0


def _server_info() -> None:
    nc = NatsClient()
    assert nc._server_info == {}, f"_server_info of a new client is {nc._server_info!r}, not {{}}"
    assert server_info(nc) is nc._server_info


def _prefix() -> None:
    nc = NatsClient()
    assert JetStreamContext(nc)._prefix == api_prefix(JetStreamContext(nc)) == "$JS.API"
    assert api_prefix(JetStreamContext(nc, domain="hub")) == "$JS.hub.API"
    assert api_prefix(JetStreamContext(nc, prefix="$JS.other.API")) == "$JS.other.API"


def _direct() -> None:
    js = JetStreamContext(NatsClient())
    for direct in (True, False):
        kv = KeyValue(name="b", stream="KV_b", pre="$KV.b.", js=js, direct=direct)
        assert kv._direct is direct and reads_direct(kv) is direct


def _flush_queue() -> None:
    assert NatsClient()._flush_queue is None, "_flush_queue is not None before connect"
    source = inspect.getsource(NatsClient._flush_pending)
    assert "self._flush_queue.put(future)" in source, "_flush_pending no longer kicks the flusher with a future"
    assert "self._flush_queue.get()" in inspect.getsource(NatsClient._flusher), "the flusher reads another queue"


def _flusher_task() -> None:
    assert NatsClient()._flusher_task is None, "_flusher_task is not None before connect"
    assert "self._flusher_task" in inspect.getsource(NatsClient._flush_pending)


def _max_pending_size() -> None:
    assert NatsClient()._max_pending_size == 0 or isinstance(NatsClient()._max_pending_size, int)
    assert "self._max_pending_size" in inspect.getsource(NatsClient._send_command)


def _max_payload() -> None:
    assert isinstance(NatsClient()._max_payload, int)
    assert "payload_size > self._max_payload" in inspect.getsource(NatsClient.publish)


def _skip_subject_validation() -> None:
    assert NatsClient()._skip_subject_validation is False
    assert "self._skip_subject_validation" in inspect.getsource(NatsClient.publish)


def _validate_subject() -> None:
    import nats.aio.client as module
    import nats.errors

    assert "_validate_subject(subject)" in inspect.getsource(NatsClient.publish)
    module._validate_subject("tether.evt.run")
    for bad in ("", "a b", "a\r\nPUB x 0"):
        with pytest.raises(nats.errors.BadSubjectError):
            module._validate_subject(bad)


def _transport() -> None:
    assert NatsClient()._transport is None, "_transport is not None before connect"
    source = inspect.getsource(NatsClient._flusher)
    assert "self._transport.writelines(self._pending[:])" in source, "the flusher writes its buffer another way"


def _io_writer() -> None:
    from nats.aio.transport import TcpTransport

    transport = TcpTransport()
    assert transport._io_writer is None, "a new TcpTransport's _io_writer is not None"
    assert "self._io_writer.writelines(" in inspect.getsource(TcpTransport.writelines)


CHECKS: dict[str, Callable[[], None]] = {f.__name__: f for f in (
    _transport, _io_writer,
    _parse_header_lines, _process_msg, _send_publish, _send_command, _flush_pending, _flush_queue, _flusher_task,
    _max_pending_size, _max_payload, _skip_subject_validation, _validate_subject, _id, _pending,
    _pending_data_size, _server_info, _prefix, _direct)}


def test_every_hook_has_a_check() -> None:
    assert set(CHECKS) == set(HOOK)
    assert all(hook.module == "tether.bus._natspriv" and hook.distribution == "nats-py" for hook in HOOKS)


@pytest.mark.parametrize("name", sorted(HOOK))
def test_the_hook_is_where_tether_uses_it(name: str) -> None:
    with relied_on(name):
        CHECKS[name]()


def test_a_failure_says_which_attribute_and_what_for() -> None:
    with pytest.raises(pytest.fail.Exception) as failed, relied_on("_pending"):
        raise AttributeError("'Client' object has no attribute '_pending'")
    message = str(failed.value)
    assert "nats-py 2." in message and "nats.aio.client.Client._pending" in message
    assert "outbox" in message and "tether.bus._natspriv" in message


# -- against a server: nats-py calls the hooks as tether expects --------------------------------------


class _Spy(Client):
    parsed: list[bytes] = []

    @staticmethod
    def _parse_header_lines(raw: bytes) -> dict[str, str]:
        _Spy.parsed.append(raw)
        return parse_headers(raw)


class _Inbox:
    """What a subscription (or a raw sink) was given, and a way to wait for it."""

    def __init__(self) -> None:
        self.items: list[Any] = []
        self._changed = asyncio.Event()

    def put(self, *item: Any) -> None:
        self.items.append(item[0] if len(item) == 1 else item)
        self._changed.set()

    async def cb(self, msg: Msg) -> None:
        self.put(msg)

    async def wait(self, count: int, timeout: float = 20.0) -> list[Any]:
        async with asyncio.timeout(timeout):
            while len(self.items) < count:
                self._changed.clear()
                await self._changed.wait()
        return self.items


@pytest.mark.anyio
@pytest.mark.nats
async def test_nats_py_calls_the_hooks_as_tether_expects(nats_server: NatsServer) -> None:
    nc = _Spy()
    await nc.connect(servers=[nats_server.url], allow_reconnect=False)
    try:
        with relied_on("_server_info"):
            info = server_info(nc)
            assert isinstance(info.get("version"), str) and info.get("max_payload") == nc.max_payload

        with relied_on("_parse_header_lines", "_process_msg"):
            got = _Inbox()
            await nc.subscribe("hooks.parsed", cb=got.cb)
            await nc.publish("hooks.parsed", b"x", headers={"ce-id": "1", "k": "v"})
            await nc.flush()
            [msg] = await got.wait(1)
            assert msg.headers == {"ce-id": "1", "k": "v"}
            assert _Spy.parsed, "nats-py read the headers without calling _parse_header_lines"

        with relied_on("_process_msg", "_id"):
            sink = _Inbox()
            sub = await nc.subscribe("hooks.raw")
            nc.add_raw_sink(subscription_id(sub), sink.put)
            await nc.publish("hooks.raw", b"with", headers={"ce-id": "1", "k": "v"}, reply="r")
            await nc.publish("hooks.raw", b"without")
            await nc.flush()
            raw = await sink.wait(2)
            assert raw[0][:3] == (b"hooks.raw", b"r", b"with") and parse_headers((raw[0][3] or b"")[10:]) == {
                "ce-id": "1", "k": "v"}
            assert raw[1] == (b"hooks.raw", b"", b"without", None)
            assert sub.pending_msgs == 0, "a raw sink's messages reached the subscription's queue too"

        with relied_on("_send_publish", "_send_command", "_flush_pending"):
            # A HeaderBlock goes out as the very bytes nats-py writes for the same headers.
            sent: list[bytes] = []
            send_command = nc._send_command

            async def spy(cmd: bytes, priority: bool = False) -> None:
                sent.append(cmd)
                await send_command(cmd, priority)

            nc._send_command = spy  # type: ignore[method-assign]
            got = _Inbox()
            await nc.subscribe("hooks.block", cb=got.cb)
            headers = {"ce-id": "1", "ce-type": "x.y", "Nats-Msg-Id": "1"}
            block = HeaderBlock.of(headers)
            assert isinstance(block, HeaderBlock)
            await nc.publish("hooks.block", b"body", reply="r.1", headers=headers)
            await nc.publish("hooks.block", b"body", reply="r.1", headers=block)
            await nc.flush()
            del nc._send_command
            msgs = await got.wait(2)
            hpubs = [cmd for cmd in sent if cmd.startswith(b"HPUB hooks.block ")]
            assert len(hpubs) == 2 and hpubs[0] == hpubs[1], "a HeaderBlock was not sent as nats-py sends its headers"
            assert nc.stats["out_msgs"] >= 2 and [m.headers for m in msgs] == [headers, headers]

        with relied_on("_pending", "_pending_data_size"):
            seen = _Inbox()
            await nc.subscribe("hooks.forgotten", cb=seen.cb)
            await nc.flush()
            await nc.publish("hooks.forgotten", b"forgotten")
            assert nc.pending_data_size > 0, "a publish no longer waits in the write buffer"
            forget_unflushed(nc)
            assert nc.pending_data_size == 0
            await nc.publish("hooks.forgotten", b"sent")
            await nc.flush()
            await seen.wait(1)
            await nc.publish("hooks.forgotten", b"last")  # in order after anything sent before it
            await nc.flush()
            await seen.wait(2)
            assert [m.data for m in seen.items] == [b"sent", b"last"], "a message dropped from _pending was sent"
    finally:
        await nc.close()


@pytest.mark.anyio
@pytest.mark.nats
async def test_open_bucket_reads_direct_on_a_bucket_made_without(nats_server: NatsServer) -> None:
    nc = Client()
    await nc.connect(servers=[nats_server.url], allow_reconnect=False)
    try:
        js = nc.jetstream()
        with relied_on("_direct"):
            made: Any = await js.create_key_value(KeyValueConfig(bucket="hooks-plain", history=1))
            assert not reads_direct(made)
            upgraded = await open_bucket(js, "hooks-plain")
            assert reads_direct(upgraded) and (await js.stream_info("KV_hooks-plain")).config.allow_direct
            assert reads_direct(await open_bucket(js, "hooks-new"))
        with relied_on("_prefix"):
            assert api_prefix(js) == "$JS.API"
    finally:
        with contextlib.suppress(Exception):
            await nc.jetstream().delete_key_value("hooks-plain")
            await nc.jetstream().delete_key_value("hooks-new")
        await nc.close()
