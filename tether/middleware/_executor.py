"""The executor: a FastStream app on the WORK stream that runs durable calls.

Any number of workers share one durable pull consumer (``tether-workers``). Each
takes many calls at once (``concurrency``), keeps a long call's message alive with
in-progress acks, and sends a retry back through JetStream with the decided delay
(``nak(delay)``), so any worker may take the next attempt; the call's progress lives in
the ``tether-calls`` KV bucket. A worker that dies mid-attempt leaves its message
unacked: JetStream redelivers it after ``ack_wait_s`` and the next worker counts the
cut attempt as failed. A message delivered ``max_deliver`` times without an outcome is
caught by the max-deliveries advisory and dead-lettered.
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

from ._budget import BudgetRefusal
from ._decide import Fallback, GiveUp, Retry
from ._engine import DLQ_PREFIX, CallEngine, DeadLetterReason, Outcome, terminal_id
from ._failures import Failure
from ._http import ProviderHttp
from ._policy import PolicySet
from ._providers import ProviderConfig
from ._relay import NOT_RETRIED, Streamed, record_cancelled, relay_attempt
from ._shared import Breakers, RateLimiter, Snapshot, SpendBook, open_bucket
from ._tools import ToolRegistry
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
        now = time.time()
        if rec is None:
            rec = CallRecord.new(item, now)
        if rec.terminal:
            await self._reply(item, rec)
            await raw.ack()
            return
        policy = engine.policy_of(item)
        if rec.in_flight is not None:  # a worker died during this attempt
            lost = rec.in_flight
            relayed = bool(lost.get("relayed"))  # a stream whose caller already had part of the answer
            engine.record_outcome(rec, int(lost["attempt"]), Failure(
                kind="connection", error_type="WorkerLost",
                message=f"worker {lost.get('worker')} stopped before the attempt finished"
                        + (", in the middle of a relayed stream" + NOT_RETRIED if relayed else "")),
                float(lost["started_at"]))
            lost_failure = rec.history()[-1].failure
            assert lost_failure is not None
            decision = GiveUp("not_retryable") if relayed else engine.decide(item, rec, policy, lost_failure)
            if await self._after_failure(item, rec, decision, raw, failure=lost_failure,
                                         attempt=int(lost["attempt"]), latency_ms=0.0, defer=False):
                return
        if not rec.admitted:
            refusal = await engine.admit(item, rec, run_snapshot=snapshot)
            if refusal is not None:
                await self._refuse(item, rec, refusal, raw)
                return
            rec.admitted = True
        if item.deadline_at is not None and now >= item.deadline_at:
            await self._give_up(item, rec, "deadline", ErrorInfo(
                type="DeadlineExceeded", message="the call's deadline passed before it could complete",
                retryable=False), raw)
            return
        failure, wait = await engine.gate(item, rec, policy)
        if wait > 0:
            self.stats["paced"] += 1
            await self._save(rec)
            await raw.nak(delay=wait)
            return
        attempt = len(rec.attempts) + 1
        started = time.time()
        if failure is None:
            rec.in_flight = {"attempt": attempt, "target": rec.target.route if rec.target else None,
                             "started_at": started, "worker": self.worker_id}
            # The in-flight mark is stored before the provider is called, never alongside it: a
            # worker that dies after sending must leave a trace, or the redelivery's repeat would
            # be a provider request (and a cost) that no event accounts for.
            await self._save(rec)
            keepalive = asyncio.create_task(self._keepalive(raw))
            streamed: Streamed | None = None
            try:
                if item.relay is not None:
                    streamed = await relay_attempt(engine, self.bus.nc, item, rec, policy, attempt,
                                                   on_relayed=partial(self._relayed, rec))
                    out = streamed.outcome
                else:
                    out = await engine.attempt(item, rec, policy)
            finally:
                keepalive.cancel()
            route = rec.target.route if rec.target else item.route
            started_ok = streamed is not None and streamed.relayed  # the provider answered; the stream is ours
            await engine.breakers.record(route, policy.breaker, ok=out.ok or started_ok,
                                         counts=out.counts_for_breaker or started_ok,
                                         call_id=item.call_id)
            if out.ok:
                await self._complete(item, rec, attempt, started, out, raw)
                return
            if streamed is not None and (streamed.relayed or streamed.cancelled):
                await self._stream_stopped(item, rec, attempt, started, streamed, raw)
                return
            failure = out.failure
            latency = out.latency_ms
        else:
            latency = 0.0
        assert failure is not None
        engine.record_outcome(rec, attempt, failure, started)
        decision = engine.decide(item, rec, policy, failure)
        await self._after_failure(item, rec, decision, raw, failure=failure, attempt=attempt,
                                  latency_ms=latency, defer=True)

    async def _after_failure(self, item: WorkItem, rec: CallRecord, decision: Any, raw: Msg, *,
                             failure: Failure, attempt: int, latency_ms: float, defer: bool) -> bool:
        """Publish the attempt's failure and act on the decision. True when the message is done."""
        engine = self.engine
        assert engine is not None
        await self.bus.emit(engine.attempt_failed_event(item, rec, attempt, failure, latency_ms, decision))
        if isinstance(decision, GiveUp):
            await self._give_up(item, rec, decision.reason, failure.to_error_info(retryable=False), raw)
            return True
        if isinstance(decision, Fallback):
            self.stats["fell_back"] += 1
            rec.provider, rec.model = decision.target.provider, decision.target.model
            rec.fallbacks += 1
        else:
            self.stats["retried"] += 1
        delay = decision.delay_s if isinstance(decision, (Retry, Fallback)) else 0.0
        if not defer and delay <= 0:
            return False  # carry on with the next attempt in this delivery
        await self._save(rec)
        await raw.nak(delay=delay)
        return True

    async def _complete(self, item: WorkItem, rec: CallRecord, attempt: int, started: float,
                        out: Outcome, raw: Msg) -> None:
        engine = self.engine
        assert engine is not None
        event = engine.completed_event(item, rec, attempt, out)
        receipt = await self.bus.publish(event)
        engine.record_outcome(rec, attempt, None, started)
        rec.state = "completed"
        rec.terminal_seq = receipt.stream_seq
        rec.terminal_event_id = event.id
        # The completion is in the log: answer now (a reply costs no round trip), then record
        # it in KV. A worker dying in between is the case it always was: the redelivery
        # repeats the attempt, and its completion is a duplicate of this one by id.
        if receipt.duplicate:
            await self._reply(item, rec)  # an earlier delivery recorded it: answer with that one
        else:
            await self._reply(item, rec, response=out.response, usage=out.usage.model_dump())
        await self._save(rec)
        await raw.ack()
        self.stats["completed"] += 1
        await engine.account(item, out.usage, rec.target)

    async def _relayed(self, rec: CallRecord) -> None:
        """The first chunk of a stream is on its way to the caller: from now on a lost worker
        means a cut stream, never a second attempt (see the in-flight check above)."""
        if rec.in_flight is not None:
            rec.in_flight["relayed"] = True
            await self._save(rec)

    async def _stream_stopped(self, item: WorkItem, rec: CallRecord, attempt: int, started: float,
                              streamed: Streamed, raw: Msg) -> None:
        """A relayed stream that did not complete: its caller stopped it (``failed``, not
        dead-lettered), or it broke after the first byte (given up, never retried)."""
        engine = self.engine
        assert engine is not None
        if streamed.cancelled is not None:
            await record_cancelled(engine, item, rec, attempt, started, streamed)
            await self._save(rec)
            await raw.ack()
            return
        failure = streamed.outcome.failure
        assert failure is not None
        engine.record_outcome(rec, attempt, failure, started)
        await self._after_failure(item, rec, GiveUp("not_retryable"), raw, failure=failure, attempt=attempt,
                                  latency_ms=streamed.outcome.latency_ms, defer=True)

    async def _give_up(self, item: WorkItem, rec: CallRecord, reason: DeadLetterReason, error: ErrorInfo,
                       raw: Msg) -> None:
        engine = self.engine
        assert engine is not None
        await engine.give_up(item, rec, reason, error)
        await self._save(rec)
        await self._reply(item, rec)
        await raw.ack()
        self.stats["dead_lettered"] += 1

    async def _refuse(self, item: WorkItem, rec: CallRecord, refusal: BudgetRefusal | str, raw: Msg) -> None:
        if isinstance(refusal, BudgetRefusal):
            await self.bus.emit(Event.of(refusal.to_event().model_copy(update={"call_id": item.call_id}),
                                         runid=item.runid, agentid=item.agentid, source=engine_source()))
            await self._give_up(item, rec, "budget", ErrorInfo(type="BudgetExceeded", message=refusal.message,
                                                                retryable=False), raw)
        else:
            await self._give_up(item, rec, "runaway", ErrorInfo(type="RunawayGuard", message=refusal,
                                                                 retryable=False), raw)

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
