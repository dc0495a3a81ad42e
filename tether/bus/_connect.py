"""``connect()``: a ready bus with no arguments, and the :class:`Bus` it returns."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import ssl
import time
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import nats
import nats.errors
from nats.js import JetStreamContext

from tether.schemas import Event

from ._acked import TRANSIENT_PUBLISH_ERRORS
from ._batch import Batch
from ._client import Client
from ._cluster import find_cluster
from ._config import BusConfig
from ._natspriv import server_info
from ._outbox import outbox_depth, set_aside
from ._publisher import Publisher, Receipt
from ._reader import EventReader
from ._server import EmbeddedServer, ServerError, find_running
from ._streams import DLQ_STREAM, EVENTS_STREAM, WORK_STREAM, ProvisionReport, ensure_streams

__all__ = ["Bus", "BusUnavailable", "connect", "server_urls"]

log = logging.getLogger("tether.bus")


_DENIED = re.compile(r'permissions violation for publish to "([^"]+)"', re.I)


async def _bounded(seconds: float, errors: list[Exception], connecting: Any) -> None:
    """``connecting`` within ``seconds``; past that, the last error nats-py reported, or a timeout.

    ``asyncio.timeout``, not ``wait_for``: on Python 3.11, ``wait_for`` returns normally when it is
    cancelled just as ``connecting`` completes, losing the cancel (Ctrl-C during ``tether up``).
    """
    try:
        async with asyncio.timeout(seconds):
            await connecting
    except TimeoutError:
        if errors:
            raise errors[-1] from None
        raise


def _said(exc: BaseException, errors: list[Exception]) -> str:
    """The failure, with what the server said last if nats-py kept it apart (in its error callback)."""
    last = errors[-1] if errors else None
    return f"{exc!r}" if last is None or last is exc else f"{exc!r}, the server said: {last}"


_CHECK_CREDENTIALS = ("check TETHER_NATS_CREDS (a .creds file `tether auth` issued for this server's operator), "
                      "TETHER_NATS_NKEY, TETHER_NATS_USER/PASSWORD or TETHER_NATS_TOKEN. ")


def _auth_hint(exc: BaseException, errors: list[Exception], cfg: BusConfig) -> str:
    said = f"{exc} {errors[-1] if errors else ''}".lower()
    if "authorization violation" in said:
        return "The server refused the credentials: " + _CHECK_CREDENTIALS
    given = any(v is not None for v in (cfg.user, cfg.token, cfg.creds, cfg.nkey_seed))
    if given and "reset by peer" in said:  # a server refusing credentials may close before it says why
        return "The server closed the connection as it read the credentials (it may have refused them): " \
            + _CHECK_CREDENTIALS
    return ""


def _tls_hint(exc: BaseException, cfg: BusConfig) -> str:
    """What to set when the failure is TLS's (the server's certificate, or ours, refused)."""
    if not isinstance(exc, ssl.SSLError) and "tls" not in str(exc).lower():
        return ""
    if cfg.tls_ca is None:
        return ("The server speaks TLS: set TETHER_NATS_TLS_CA to the CA file that signed its certificate "
                "(and TETHER_NATS_TLS_CERT/KEY if it verifies clients). ")
    return ("TLS failed: check that TETHER_NATS_TLS_CA signed the server's certificate, and that the server's "
            "CA signed TETHER_NATS_TLS_CERT (mutual TLS). ")


async def _provision(bus: Bus, patience: float = 15.0) -> None:
    """Provision, waiting out what a cluster does for a few seconds after it starts or loses a node:
    no stream leader yet, or JetStream not yet enabled for the account (503)."""
    deadline = time.monotonic() + patience
    while True:
        try:
            await bus.ensure_streams()
            return
        except TRANSIENT_PUBLISH_ERRORS as exc:
            if time.monotonic() > deadline:
                raise
            log.info("provisioning: %r; trying again", exc)
        await asyncio.sleep(0.25)


def server_urls(url: str) -> list[str]:
    """The servers a URL names: ``nats://a:4222,nats://b:4222`` is a cluster's nodes."""
    return [u.strip() for u in url.split(",") if u.strip()]


def auto_replicas(info: dict[str, Any]) -> int:
    """Replicas when none are configured: 1 on a single server, up to 3 on a cluster."""
    if not info.get("cluster"):
        return 1
    return max(1, min(3, len(info.get("connect_urls") or [])))


class BusUnavailable(ConnectionError):
    """NATS could not be reached (or started) at connect time."""


class Bus:
    """A connection to tether's NATS: publisher, reader, streams, and the server if embedded."""

    def __init__(self, config: BusConfig, nc: Client, js: JetStreamContext, url: str,
                 server: EmbeddedServer | None) -> None:
        self.config = config
        self.nc = nc
        self.js = js
        self.url = url
        self.server = server
        self.publisher = Publisher(
            nc, js, config.home / "outbox",
            ack_timeout_s=config.ack_timeout_s,
            max_pending=config.max_pending,
            max_block_s=config.max_block_s,
            large_payload_bytes=config.large_payload_bytes,
            max_event_bytes=config.max_event_bytes,
            outbox_max_bytes=config.outbox_max_bytes,
        )
        self.reader = EventReader(js)
        self.provision_report: ProvisionReport | None = None
        self.denials: dict[str, str] = {}
        """Subjects the server refused this connection to publish on (lower case, as nats-py reports
        them), with its words: how :func:`~tether.bus.read_subject` tells a refusal from a timeout."""

    @property
    def servers(self) -> list[str]:
        """Every server URL this bus was given (a cluster's nodes), for another client to connect with."""
        return server_urls(self.url)

    async def publish(self, event: Event) -> Receipt:
        """Publish one event and wait for its ack (or the outbox). See :class:`Publisher`."""
        return await self.publisher.publish(event)

    async def publish_nowait(self, event: Event) -> asyncio.Future[Receipt]:
        """Publish one event; the future returned gets its receipt at the ack (or the outbox's)."""
        return await self.publisher.publish_nowait(event)

    def send_now(self, event: Event, waiter: asyncio.Future[Receipt] | None = None, *, write: bool = True) -> bool:
        """Hand ``event`` to NATS at once from a callback on the bus's loop, if that needs no
        waiting (see :meth:`Publisher.send_now`); ``False``: nothing sent, emit it. ``write=False``:
        written by :meth:`write_now`, with the others sent so."""
        return self.publisher.send_now(event, waiter, write=write)

    def write_now(self) -> None:
        """Write what :meth:`send_now` sent with ``write=False`` (see :meth:`Publisher.write_now`)."""
        self.publisher.write_now()

    async def emit(self, event: Event) -> None:
        """Publish without waiting for the ack; :meth:`flush` makes it durable, :meth:`drain`
        waits until it is in the stream."""
        await self.publisher.emit(event)

    async def emit_batch(self, events: Sequence[Event]) -> Batch:
        """Emit many events at once and learn what became of each (see :meth:`Publisher.emit_batch`):
        ``await (await bus.emit_batch(events)).wait()``."""
        return await self.publisher.emit_batch(events)

    async def flush(self, timeout: float | None = None) -> None:
        """Wait until every emitted event is acked by the stream **or in the local outbox**:
        durable, but not necessarily in the stream yet. :meth:`drain` waits for that too."""
        await self.publisher.flush(timeout)

    def when_flushed(self, timeout: float | None = None) -> asyncio.Future[None]:
        """:meth:`flush` as a future, from a callback on the bus's loop (see :meth:`Publisher.when_flushed`)."""
        return self.publisher.when_flushed(timeout)

    async def drain(self, timeout: float | None = None) -> None:
        """Wait until every event is in the stream: :meth:`flush`, then until the outbox is
        empty (NATS must answer for that). ``TimeoutError`` after ``timeout`` seconds, if given;
        the events stay safe in the outbox."""
        await asyncio.wait_for(self.publisher.drain(), timeout)

    async def ensure_streams(self, *, update: bool | None = None) -> ProvisionReport:
        report = await ensure_streams(
            self.js,
            replicas=self.config.replicas,
            dedupe_window_s=self.config.dedupe_window_s,
            update=self.config.update_streams if update is None else update,
        )
        for drift in report.drift:
            log.warning("stream config drift: %s", drift)
        self.provision_report = report
        return report

    async def status(self) -> dict[str, Any]:
        """Server, streams, consumers, outbox and publisher figures, as plain data."""
        info = server_info(self.nc)
        streams: list[dict[str, object]] = []
        for name in (EVENTS_STREAM, WORK_STREAM, DLQ_STREAM):
            try:
                si = await self.js.stream_info(name)
            except Exception as exc:
                streams.append({"name": name, "error": str(exc)})
                continue
            consumers: list[dict[str, object]] = []
            with contextlib.suppress(Exception):
                for ci in await self.js.consumers_info(name):
                    consumers.append({
                        "name": ci.name,
                        "durable": bool(ci.config.durable_name),  # else a reader's, gone once it stops
                        "pending": ci.num_pending,
                        "ack_pending": ci.num_ack_pending,
                        "redelivered": ci.num_redelivered,
                        "delivered_seq": ci.delivered.stream_seq if ci.delivered else None,
                    })
            st = si.state
            streams.append({
                "name": name,
                "subjects": list(si.config.subjects or []),
                "messages": st.messages,
                "bytes": st.bytes,
                "first_seq": st.first_seq,
                "last_seq": st.last_seq,
                "replicas": si.config.num_replicas,
                "consumers": consumers,
            })
        files, queued, rejected = outbox_depth(self.config.home / "outbox")
        pub = self.publisher.stats
        return {
            "server": {
                "url": self.url,
                "embedded": self.server is not None,
                "pid": self.server.pid if self.server else None,
                "version": info.get("version"),
                "name": info.get("server_name"),
                "jetstream": bool(info.get("jetstream")),
                "max_payload": info.get("max_payload"),
            },
            "home": str(self.config.home),
            "streams": streams,
            "drift": [str(d) for d in (self.provision_report.drift if self.provision_report else [])],
            "outbox": {"files": files, "queued": queued, "rejected": rejected,
                       "set_aside": [asdict(r) for r in set_aside(self.config.home / "outbox")]},
            "publisher": {
                "degraded": self.publisher.degraded,
                "in_flight": self.publisher.in_flight(),
                "acked": pub.acked,
                "outboxed": pub.outboxed,
                "flushed": pub.flushed,
                "rejected": pub.rejected,
                "last_error": pub.last_error,
            },
        }

    async def close(self, *, timeout: float = 5.0, stop_server: bool = True) -> None:
        """Flush, close the connection, and stop the embedded server if this bus started it."""
        try:
            await self.publisher.close(timeout)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.nc.drain(), timeout)
            with contextlib.suppress(Exception):
                await self.nc.close()
            if self.server is not None and stop_server:
                await asyncio.to_thread(self.server.stop)

    async def __aenter__(self) -> Bus:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def connect(url: str | None = None, *, config: BusConfig | None = None, **options: Any) -> Bus:
    """Connect to tether's NATS, starting the embedded server if there is none.

    Where it connects, in order: ``url``; ``TETHER_NATS_URL``; the tether server
    already running for ``TETHER_HOME`` (``./.tether``); a new embedded
    ``nats-server`` with JetStream, its data under ``TETHER_HOME``. Options are
    :class:`BusConfig` fields (``user``, ``password``, ``token``, ``creds``,
    ``nkey_seed``, ``tls_ca``..., ``replicas``, ``ack_timeout_s``...).

    The streams are provisioned (idempotently) unless ``provision=False``.
    """
    cfg = config or BusConfig.from_env(**options)
    if url:
        cfg = cfg.with_(url=url)
    server: EmbeddedServer | None = None
    target = cfg.url
    if not target:
        running = find_running(cfg.home)
        cluster = find_cluster(cfg.home) if running is None else None
        if running is not None:
            target = running.url
        elif cluster is not None:
            target = cluster.url
        elif cfg.embedded:
            server = EmbeddedServer(cfg.home)
            starting = asyncio.ensure_future(asyncio.to_thread(server.start))
            try:
                target = await asyncio.shield(starting)
            except asyncio.CancelledError:
                # Cancelled while the server starts: let the start finish, then stop it.
                with contextlib.suppress(Exception):
                    await starting
                await asyncio.to_thread(server.stop)
                raise
            except ServerError as exc:
                raise BusUnavailable(str(exc)) from exc
            if not server.owned:
                server = None
        else:
            raise BusUnavailable(
                f"no NATS server: set TETHER_NATS_URL, or run `tether up` (home {cfg.home})"
            )
    holder: dict[str, Bus] = {}

    async def disconnected() -> None:
        if "bus" in holder:
            holder["bus"].publisher.on_disconnect()

    async def reconnected() -> None:
        if "bus" in holder:
            log.info("reconnected to NATS at %s", holder["bus"].nc.connected_url)
            holder["bus"].publisher.on_reconnect()

    connect_errors: list[Exception] = []

    async def error(exc: Exception) -> None:
        if "bus" not in holder:
            connect_errors.append(exc)
        denied = _DENIED.search(str(exc))
        if denied and "bus" in holder:
            holder["bus"].denials[denied[1].lower()] = str(exc)
            if denied[1].lower().startswith("$js.api."):
                log.info("NATS refused a JetStream request: %s", exc)  # the caller raises PermissionDenied
                return
            log.error("NATS refused a publish: %s", exc)
            holder["bus"].publisher.on_publish_denied(denied[1])
            return
        log.debug("NATS client: %r", exc)

    servers = server_urls(target)
    # nats-py can wait forever after some failures (a TLS certificate it cannot verify): bound it.
    bound = cfg.connect_timeout * max(1, cfg.connect_attempts) * len(servers) + 2.0
    try:
        nc = Client()
        await _bounded(bound, connect_errors, nc.connect(
            servers=servers,  # a cluster: every node's URL
            allow_reconnect=True,
            max_reconnect_attempts=cfg.connect_attempts,  # bounded at first, unbounded below
            reconnect_time_wait=0.25,  # type: ignore[arg-type]  # nats-py says int; it takes seconds as float
            pending_size=0,  # never buffer while disconnected: the outbox does that, in order
            disconnected_cb=disconnected,
            reconnected_cb=reconnected,
            error_cb=error,
            **cfg.nats_options(),
        ))
    except BaseException as exc:  # a started embedded server must not outlive a failed connect
        if server is not None:
            await asyncio.to_thread(server.stop)
        if not isinstance(exc, (TimeoutError, nats.errors.Error, OSError)):
            raise
        raise BusUnavailable(
            f"cannot reach NATS at {target}: {_said(exc, connect_errors)}. {_tls_hint(exc, cfg)}"
            f"{_auth_hint(exc, connect_errors, cfg)}Check TETHER_NATS_URL and "
            "credentials, or unset it to use the embedded server"
        ) from exc
    # Once connected, never give up reconnecting: the outbox holds events meanwhile.
    nc.options["max_reconnect_attempts"] = -1
    if cfg.replicas <= 0:
        cfg = cfg.with_(replicas=auto_replicas(server_info(nc)))
    js = nc.jetstream()
    bus = Bus(cfg, nc, js, target, server)
    holder["bus"] = bus
    try:
        if cfg.provision:
            await _provision(bus)
        await bus.publisher.start()
    except BaseException:
        await bus.close()
        raise
    return bus
