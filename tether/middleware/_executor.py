"""The executor: a FastStream app on the WORK stream that runs durable calls.

Any number of workers share one durable pull consumer (``tether-workers``). Each
takes many calls at once (``concurrency``), keeps a long call's message alive with
in-progress acks, and drives the one call loop (``call_flow``) for each delivery: a retry
goes back through JetStream with the decided delay (``nak(delay)``), so any worker may
take the next attempt and resume the loop from the call's record in the ``tether-calls``
KV bucket. A worker that dies mid-attempt leaves its message unacked: JetStream
redelivers it after ``ack_wait_s`` and the next worker counts the cut attempt as failed.
A message delivered ``max_deliver`` times without an outcome is caught by the
max-deliveries advisory and dead-lettered.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Mapping
from functools import partial
from typing import Any

from faststream import AckPolicy
from faststream.nats import JStream, NatsBroker, NatsMessage, PullSub
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue
from pydantic import ValidationError

from tether.bus import TRANSIENT_PUBLISH_ERRORS, WORK_STREAM, Bus
from tether.schemas import CallDeadLettered, ErrorInfo, Event

from ._engine import DLQ_PREFIX, CallEngine, DeadLetterReason, terminal_id
from ._flow import Call, Completed, Effect, Emit, Ending, GaveUp, Run, Sleep, Spawn, call_flow, drive
from ._http import ProviderHttp
from ._policy import PolicySet
from ._providers import ProviderConfig
from ._shared import Breakers, RateLimiter, Snapshot, SpendBook, open_bucket
from ._tools import ToolRegistry
from ._upstream import ProviderUpstream, Send, Sent
from ._work import CALLS_BUCKET, CallRecord, WorkItem

__all__ = ["WORKERS_DURABLE", "Executor"]

log = logging.getLogger("tether.middleware")

WORKERS_DURABLE = "tether-workers"
CALL_RECORD_TTL_S = 7 * 24 * 3600.0


class Executor:
    """Runs durable calls from WORK under the policy. Start it with :meth:`start`."""

    def __init__(
        self,
        bus: Bus,
        *,
        policies: PolicySet | None = None,
        providers: Mapping[str, ProviderConfig] | None = None,
        tools: ToolRegistry | None = None,
        concurrency: int = 64,
        ack_wait_s: float = 30.0,
        max_deliver: int = 20,
        seed: int | None = None,
        worker_id: str | None = None,
    ) -> None:
        self.bus = bus
        self.policies = policies or PolicySet.default()
        self.providers = dict(providers or {})
        self.tools = tools or ToolRegistry()
        self.concurrency = concurrency
        self.ack_wait_s = ack_wait_s
        self.max_deliver = max_deliver
        self.seed = seed
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}"
        self.engine: CallEngine | None = None
        self._calls: KeyValue | None = None
        self._broker: NatsBroker | None = None
        self._http: ProviderHttp | None = None
        self._advisory: Any = None
        self.stats = {"completed": 0, "dead_lettered": 0, "retried": 0, "fell_back": 0, "paced": 0}

    async def start(self) -> None:
        self._http = ProviderHttp(max_connections=self.concurrency * 2)
        try:
            await self._start(self._http)
        except BaseException:
            await self._http.aclose()  # start failed: no stop() will close it
            raise

    async def _start(self, http: ProviderHttp) -> None:
        bus = self.bus
        self._calls = await open_bucket(bus.js, CALLS_BUCKET, replicas=bus.config.replicas,
                                        ttl=CALL_RECORD_TTL_S)
        breakers = await Breakers.open(bus)
        self.engine = CallEngine(bus, policies=self.policies, providers=self.providers, tools=self.tools,
                                 breakers=breakers, rates=await RateLimiter.open(bus),
                                 spend=await SpendBook.open(bus), http=http, seed=self.seed)
        options = bus.config.nats_options()
        options.pop("name", None)
        broker = NatsBroker(bus.servers, name=f"tether-worker {self.worker_id}", logger=None, **options)
        subscriber = broker.subscriber(
            "tether.work.>",
            stream=JStream(WORK_STREAM, declare=False),
            durable=WORKERS_DURABLE,
            pull_sub=PullSub(batch_size=min(self.concurrency, 64), timeout=1.0),
            max_workers=self.concurrency,
            ack_policy=AckPolicy.MANUAL,
            config=ConsumerConfig(ack_wait=self.ack_wait_s, max_deliver=self.max_deliver,
                                  max_ack_pending=max(1000, self.concurrency * 4)),
        )

        async def on_message() -> None:
            # No parameters on purpose: FastStream resolves a ``msg: NatsMessage`` parameter
            # in a worker thread, a thread hop per message; the context has it for free.
            await self._on_message(broker.context.get_local("message"))

        subscriber(on_message)
        await broker.start()
        self._broker = broker
        self._advisory = await bus.nc.subscribe(
            f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{WORK_STREAM}.{WORKERS_DURABLE}",
            queue="tether-max-deliveries", cb=self._on_max_deliveries)
        log.info("worker %s consuming %s (concurrency %d)", self.worker_id, WORK_STREAM, self.concurrency)

    async def stop(self) -> None:
        if self._advisory is not None:
            with contextlib.suppress(Exception):
                await self._advisory.unsubscribe()
        if self._broker is not None:
            # With NATS unreachable the broker raises while stopping; the rest must still run.
            with contextlib.suppress(Exception):
                await self._broker.stop()
        if self.engine is not None:
            await self.engine.breakers.close()
        if self._http is not None:
            await self._http.aclose()
        await self.bus.flush()

    async def __aenter__(self) -> Executor:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- per message ----------------------------------------------------------------------

    async def _on_message(self, msg: NatsMessage) -> None:
        raw: Msg = msg.raw_message
        try:
            await self._process(raw)
        except Exception as exc:
            # Never lose the call: leave it for another try; max_deliver bounds the loop.
            if isinstance(exc, TRANSIENT_PUBLISH_ERRORS):
                # NATS did not answer in time (a reconnect, a cluster electing a stream leader):
                # an outage, not a bug in the worker.
                log.warning("worker: NATS unavailable on %s (%r); the call will be redelivered", raw.subject, exc)
            else:
                log.exception("worker error on %s; the call will be redelivered", raw.subject)
            with contextlib.suppress(Exception):
                await raw.nak(delay=1.0)

    async def _load(self, call_id: str) -> tuple[CallRecord | None, int | None]:
        assert self._calls is not None
        try:
            entry = await self._calls.get(call_id)
        except KeyNotFoundError:
            return None, None
        if not entry.value:
            return None, None
        return CallRecord.from_json(entry.value), entry.revision

    async def _save(self, rec: CallRecord) -> None:
        assert self._calls is not None
        await self._calls.put(rec.call_id, rec.to_json())

    async def _process(self, raw: Msg) -> None:
        engine = self.engine
        assert engine is not None
        try:
            item = WorkItem.model_validate_json(raw.data)
        except ValidationError as exc:
            await self._dead_letter_malformed(raw, f"not a tether work item: {exc.error_count()} problem(s): "
                                              + "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}"
                                                          for e in exc.errors()[:5]))
            return
        snapshot: Snapshot | None = None
        if raw.metadata.num_delivered == 1 and engine.runaway_guarded(item):
            # A first delivery is about to be admitted: read its run's record together with
            # the call's, one round trip instead of two before the attempt.
            (rec, _), snapshot = await asyncio.gather(self._load(item.call_id),
                                                      engine.spend.snapshot("run", item.runid or ""))
        else:
            rec, _ = await self._load(item.call_id)
        if rec is None:
            rec = CallRecord.new(item, time.time())
        if rec.terminal:
            await self._reply(item, rec)
            await raw.ack()
            return
        call = Call(engine, item, rec, engine.policy_of(item), run_snapshot=snapshot)
        delivery = _Delivery(self, raw, call)
        try:
            ending = await drive(call_flow(call), delivery.handle)
        except _Deferred:
            return
        await delivery.end(ending)

    async def _relayed(self, rec: CallRecord) -> None:
        """The first chunk of a stream is on its way to the caller: from now on a lost worker
        means a cut stream, never a second attempt (see ``call_flow``)."""
        if rec.in_flight is not None:
            rec.in_flight["relayed"] = True
            await self._save(rec)

    async def _reply(self, item: WorkItem, rec: CallRecord, *, response: Any = None,
                     usage: dict[str, Any] | None = None) -> None:
        if not item.reply_to:
            return
        doc: dict[str, Any] = {"call_id": item.call_id, "state": rec.state, "seq": rec.terminal_seq,
                               "event_id": rec.terminal_event_id}
        if rec.state == "completed" and usage is not None:
            doc["response"] = response
            doc["usage"] = usage
        if rec.error:
            doc["error"] = rec.error
        if rec.reason:
            doc["reason"] = rec.reason
        body = json.dumps(doc, separators=(",", ":")).encode()
        if len(body) > 512 * 1024:  # the caller reads a big answer from the log instead
            doc.pop("response", None)
            body = json.dumps(doc, separators=(",", ":")).encode()
        with contextlib.suppress(Exception):
            await self.bus.nc.publish(item.reply_to, body)

    async def _keepalive(self, raw: Msg) -> None:
        interval = max(0.5, self.ack_wait_s / 3)
        while True:
            await asyncio.sleep(interval)
            with contextlib.suppress(Exception):
                await raw.in_progress()

    # -- dead letters that never became calls ----------------------------------------------

    async def _dead_letter_malformed(self, raw: Msg | _StoredMsg, reason: str, *,
                                     cause: DeadLetterReason = "malformed") -> None:
        seq = raw.seq if isinstance(raw, _StoredMsg) else raw.metadata.sequence.stream
        # The message's own call id cannot be trusted to name it: it may be any length or
        # character, or the id of a real call. Dedupe on the WORK sequence (one dead letter
        # per message, however often it is redelivered); show a usable claimed id.
        message_id = f"malformed-{WORK_STREAM}-{seq}"
        call_id = message_id
        with contextlib.suppress(Exception):
            claimed = json.loads(raw.data).get("call_id")
            if isinstance(claimed, str) and 0 < len(claimed) <= 200 and claimed.isprintable():
                call_id = claimed
        doc: dict[str, Any] = {"call_id": call_id, "reason": cause, "kind": "unknown", "route": raw.subject,
               "error": {"type": "MalformedWorkItem" if cause == "malformed" else "MaxDeliveries",
                         "message": reason},
               "attempts": [], "raw": raw.data.decode("utf-8", errors="replace")[:100_000],
               "subject": raw.subject, "dead_lettered_at": time.time()}
        ack = await self.bus.js.publish(f"{DLQ_PREFIX}.unknown.malformed",
                                        json.dumps(doc, separators=(",", ":")).encode(),
                                        headers={"Nats-Msg-Id": f"dlq-{message_id}"})
        await self.bus.publish(Event.of(CallDeadLettered(
            call_id=call_id, call_kind="unknown", reason=cause,
            attempts=0, error=ErrorInfo(type=doc["error"]["type"], message=reason, retryable=False),
            dlq_seq=ack.seq), id=terminal_id(message_id, "dead_lettered"), source=engine_source()))
        log.warning("dead-lettered a %s work message (seq %s): %s", cause, seq, reason)
        with contextlib.suppress(Exception):
            await raw.term()
        self.stats["dead_lettered"] += 1

    async def _on_max_deliveries(self, msg: Msg) -> None:
        try:
            advisory = json.loads(msg.data)
            seq = int(advisory["stream_seq"])
            stored = await self.bus.js.get_msg(WORK_STREAM, seq)
        except Exception as exc:
            log.warning("max-deliveries advisory unusable: %r", exc)
            return
        try:
            item = WorkItem.model_validate_json(stored.data or b"")
        except ValidationError:
            item = None
        if item is None:
            fake = _StoredMsg(stored.subject or "", stored.data or b"", seq)
            await self._dead_letter_malformed(fake, f"delivered {self.max_deliver} times without an outcome",
                                              cause="max_deliveries")
        else:
            rec, _ = await self._load(item.call_id)
            rec = rec or CallRecord.new(item, time.time())
            if not rec.terminal:
                assert self.engine is not None
                await self.engine.give_up(item, rec, "max_deliveries", ErrorInfo(
                    type="MaxDeliveries", retryable=False,
                    message=f"delivered {self.max_deliver} times without an outcome (workers crashing?)"))
                await self._save(rec)
                await self._reply(item, rec)
        with contextlib.suppress(Exception):
            await self.bus.js.delete_msg(WORK_STREAM, seq)


class _Deferred(Exception):
    """The call went back to WORK for its next attempt: this delivery is done."""


class _Delivery:
    """One delivery of a durable call: the driver of :func:`call_flow` in a worker.

    The loop's state lives in the call's record: waiting for the next attempt saves it and
    sends the message back through JetStream with the delay (any worker takes it and
    resumes the loop from the record), except a zero wait before this delivery made an
    attempt (the attempt its lost worker left), which goes on here."""

    def __init__(self, executor: Executor, raw: Msg, call: Call) -> None:
        self.executor = executor
        self.raw = raw
        self.call = call
        self.sent = False
        self.receipt: Any = None
        self.later: list[Spawn] = []
        self.upstream = ProviderUpstream(call.engine, call.item, call.rec, call.policy, nc=executor.bus.nc,
                                         on_relayed=partial(executor._relayed, call.rec))

    async def handle(self, effect: Effect) -> Any:
        executor, rec = self.executor, self.call.rec
        if isinstance(effect, Emit):
            if effect.final:
                self.receipt = await executor.bus.publish(effect.event)
            else:
                await executor.bus.emit(effect.event)
            return None
        if isinstance(effect, Run):
            return await effect.make()
        if isinstance(effect, Spawn):
            if effect.after:
                self.later.append(effect)
                return None
            return await effect.make()
        if isinstance(effect, Sleep):
            key = {"paced": "paced", "retry": "retried", "fallback": "fell_back"}[effect.why]
            executor.stats[key] += 1
            if effect.seconds <= 0 and not self.sent and effect.why != "paced":
                return None
            await executor._save(rec)
            await self.raw.nak(delay=effect.seconds)
            raise _Deferred
        assert isinstance(effect, Send)
        return await self.attempt(effect)

    async def attempt(self, send: Send) -> Sent:
        executor, rec = self.executor, self.call.rec
        self.sent = True
        rec.in_flight = {"attempt": send.attempt, "target": send.target.route if send.target else None,
                         "started_at": time.time(), "worker": executor.worker_id}
        # The in-flight mark is stored before the provider is called, never alongside it: a
        # worker that dies after sending must leave a trace, or the redelivery's repeat would
        # be a provider request (and a cost) that no event accounts for.
        await executor._save(rec)
        keepalive = asyncio.create_task(executor._keepalive(self.raw))
        try:
            return await self.upstream.attempt(send)
        finally:
            keepalive.cancel()

    async def end(self, ending: Ending) -> None:
        executor, item, rec = self.executor, self.call.item, self.call.rec
        if isinstance(ending, Completed):
            receipt = self.receipt
            rec.terminal_seq = receipt.stream_seq
            rec.terminal_event_id = ending.event.id
            # The completion is in the log: answer now (a reply costs no round trip), then record
            # it in KV. A worker dying in between is the case it always was: the redelivery
            # repeats the attempt, and its completion is a duplicate of this one by id.
            if receipt.duplicate:
                await executor._reply(item, rec)  # an earlier delivery recorded it: answer with that one
            else:
                await executor._reply(item, rec, response=ending.outcome.response,
                                      usage=ending.outcome.usage.model_dump())
            await executor._save(rec)
            await self.raw.ack()
            executor.stats["completed"] += 1
            for effect in self.later:
                await effect.make()
            return
        await executor._save(rec)
        if isinstance(ending, GaveUp):
            await executor._reply(item, rec)
            executor.stats["dead_lettered"] += 1
        await self.raw.ack()


class _StoredMsg:
    """Enough of a ``Msg`` to dead-letter a stored message found through an advisory."""

    def __init__(self, subject: str, data: bytes, seq: int) -> None:
        self.subject = subject
        self.data = data
        self.seq = seq

    async def term(self) -> None:
        return None


def engine_source() -> str:
    return "urn:tether:worker"
