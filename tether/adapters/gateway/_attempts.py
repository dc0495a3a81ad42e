"""Where each resumed attempt of a run stands, shared by every gateway: its calls claim places in KV.

A run resumed with ``x-tether-resume: <attempt>`` is matched against its journal as it was
when the attempt began: the attempt's ``run.started`` (``resumed``, one id for every gateway)
is in the log before the attempt's key exists, and each gateway reads the journal up to that
event. Each call then appends its request hash to the attempt's key (compare-and-set), and
matches from where the calls before it left the journal, whichever gateway served them: so a
resumed run replays in order across gateways behind a load balancer.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import random
import uuid
from collections import OrderedDict

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from tether.bus import Bus, event_filter, read_subject
from tether.middleware import Cursor, Journal
from tether.schemas import Event, RunStarted

from .._hub import Hub

__all__ = ["Attempts", "attempt_started_id"]

_NAMESPACE = uuid.UUID("8b3f0f57-5f59-4c1a-9d52-4d3c2a1f6e90")
_BASES = 1_000


def attempt_started_id(run_id: str, attempt: str) -> str:
    """The id of the ``run.started`` that begins an attempt: the same from every gateway."""
    return str(uuid.uuid5(_NAMESPACE, f"{run_id}:{attempt}"))


def _key(run_id: str, attempt: str) -> str:
    digest = hashlib.sha256(f"{run_id}\n{attempt}".encode()).hexdigest()[:40]
    return f"attempt.{digest}"


class Attempts:
    """The resumed attempts of runs, in the gateways' KV bucket (``kv``)."""

    def __init__(self, bus: Bus, kv: KeyValue, source: str) -> None:
        self.bus = bus
        self.kv = kv
        self.source = source
        self._bases: OrderedDict[tuple[str, str], asyncio.Future[Journal]] = OrderedDict()

    async def cursor(self, run_id: str, attempt: str, agent: str | None, traceparent: str | None,
                     digest: str) -> Cursor:
        """The journal cursor for the attempt's next call (``digest``: its request hash), placed
        after every call of the attempt that claimed its place before."""
        base = await self._base(run_id, attempt, agent, traceparent)
        before = await self._claim(run_id, attempt, digest)
        cursor = base.cursor()
        for earlier in before:
            cursor.match("llm", earlier)
        return cursor

    async def _base(self, run_id: str, attempt: str, agent: str | None, traceparent: str | None) -> Journal:
        key = (run_id, attempt)
        found = self._bases.get(key)
        if found is not None:
            self._bases.move_to_end(key)
            return await asyncio.shield(found)
        task = self._bases[key] = asyncio.ensure_future(self._load(run_id, attempt, agent, traceparent))
        if len(self._bases) > _BASES:
            self._bases.popitem(last=False)
        try:
            return await asyncio.shield(task)
        except Exception:
            self._bases.pop(key, None)
            raise

    async def _load(self, run_id: str, attempt: str, agent: str | None, traceparent: str | None) -> Journal:
        key = _key(run_id, attempt)
        started = attempt_started_id(run_id, attempt)
        try:
            await self.kv.get(key)
        except KeyNotFoundError:  # the attempt begins: its run.started is in the log before its key exists
            await Hub.of(self.bus).flush()  # what this gateway recorded of the attempt before, in the log first
            payload = RunStarted(name=f"resumed ({attempt})", tags=("gateway",), resumed=True,
                                 metadata={"attempt": attempt, "via": "tether gateway"})
            await self.bus.publish(Event.of(payload, id=started, runid=run_id, agentid=agent,
                                            traceparent=traceparent, source=self.source))
            with contextlib.suppress(KeyWrongLastSequenceError):  # another gateway began it too (same run.started id)
                await self.kv.create(key, b"[]")
        results = await read_subject(self.bus, event_filter(run=run_id), timeout=10.0)
        events: list[Event] = []
        for result in results:
            if result.event is None:
                continue
            if result.event.id == started:
                break
            events.append(result.event)
        return Journal.of(events, run_id)

    async def _claim(self, run_id: str, attempt: str, digest: str) -> list[str]:
        """Append ``digest`` to the attempt's calls; the hashes claimed before it."""
        key = _key(run_id, attempt)
        for n in range(50):
            try:
                entry = await self.kv.get(key)
                raw, revision = entry.value or b"[]", entry.revision
            except KeyNotFoundError:
                raw, revision = b"[]", None
            before: list[str] = json.loads(raw)
            value = json.dumps([*before, digest]).encode()
            try:
                if revision is None:
                    await self.kv.create(key, value)
                else:
                    await self.kv.update(key, value, last=revision)
            except KeyWrongLastSequenceError:
                await asyncio.sleep(random.uniform(0.0, min(0.05, 0.001 * 2**n)))
                continue
            return before
        raise RuntimeError(f"compare-and-set on the attempt {attempt!r} of run {run_id} kept conflicting")
