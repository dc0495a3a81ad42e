"""Memory's writes: validated, sealed ``memory.*`` events on the bus, each returning its position,
and conditional writes (``expected_version``) made race-free by JetStream."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from nats.js.errors import APIError

from tether._gcpace import paced
from tether.bus import Batch, PendingMessage
from tether.schemas import (
    NON_FINITE_HINT,
    Event,
    MemoryCompacted,
    MemoryDeleted,
    MemoryEmbedded,
    MemoryWritten,
    non_finite,
    uuid7,
)

from . import _query as q
from ._codec import Sealer, seal_entry, seal_vector, sealed_size_bound
from ._compact import Summarizer, duplicates, plan_compaction, similarity
from ._core import MemoryCore
from ._embed import WriteBatcher
from ._errors import BulkWriteFailed, InvalidMemory, MemoryNotFound, VersionConflict
from ._extract import Extraction, ExtractiveExtractor, Extractor, plan
from ._feed import last_memory_seq
from ._keys import content_hash
from ._names import ALL_KEYS, check_key, namespace_filter
from ._rank import query_terms
from ._types import BulkWritten, Entry, Erased, Reembedded, Written

__all__ = ["MemoryWrites"]

WRONG_LAST = 10071
MAX_METADATA_BYTES = 16 * 1024
BULK_PART = 1000
"""write_many builds and sends a big batch this many writes at a time (see ``_parts_fit``)."""
_WRONG_SEQ = re.compile(r"wrong last sequence: (\d+)")


def _instant(value: Any, name: str) -> float | None:
    """A valid or observed time as epoch seconds: a ``datetime`` (naive means UTC) or ISO 8601 text."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise InvalidMemory(f"{name} {value!r} is not an ISO 8601 time (e.g. 2026-03-01 or "
                                "2026-03-01T09:00:00+00:00)") from None
    if not isinstance(value, datetime):
        raise InvalidMemory(f"{name} must be a datetime or ISO 8601 text, got {type(value).__name__}")
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()


def _at(value: Any, path: tuple[str | int, ...]) -> Any:
    for part in path:
        value = value[part]
    return value


class MemoryWrites(MemoryCore):
    """``write``, ``write_many``, ``delete``, ``forget``, ``erase``, ``expire`` and ``compact``."""

    async def write(self, namespace: str, text: str, key: str | None = None, metadata: Mapping[str, Any] | None = None,
                    ttl: float | timedelta | None = None, expected_version: int | None = None, *,
                    run: str | None = None, call_id: str | None = None, message_id: str | None = None,
                    valid_from: datetime | str | None = None, observed_at: datetime | str | None = None) -> Written:
        """Write a new version of ``key`` (a new entry if ``key`` is None) and return its position.

        With ``expected_version`` the write happens only if the entry is at that version
        (0: does not exist), else :class:`VersionConflict`. Without a key, a near-duplicate
        of a live entry is merged into it (``Written.merged_into``) instead of piling up.
        ``valid_from`` says when the fact became true (``observed_at``: when it was seen, for
        imported history): a version valid before the current one is recorded as history
        (``history()``, ``search(valid_at=...)``) and does not replace it.
        """
        self._check(namespace, "write")
        text = self._text(text)
        meta = self._metadata(metadata)
        expires = self._expiry(ttl)
        valid = _instant(valid_from, "valid_from")
        observed = _instant(observed_at, "observed_at")
        if expected_version is not None and (isinstance(expected_version, bool) or not isinstance(
                expected_version, int) or expected_version < 0):
            raise InvalidMemory(f"expected_version must be an int >= 0, got {expected_version!r}")
        merged_into = None
        if key is None:
            if expected_version not in (None, 0):
                raise InvalidMemory("expected_version needs a key (a new entry without a key is version 0)")
            found = await self._near_duplicate(namespace, text) if self.settings.dedupe else None
            if found is not None:
                if found.text == text and all(found.metadata.get(k) == v for k, v in meta.items()) \
                        and found.expires_at == expires:
                    return Written(namespace, found.key, found.version, found.seq, "", merged_into=found.key)
                key, merged_into, meta = found.key, found.key, {**found.metadata, **meta}
            else:
                key = uuid7()
        check_key(key)
        vector = await self._embed([text], run)
        embedder = self.embedder.name if (self.embedder is not None and vector is not None) else None

        async def build() -> Event:
            version = await self._read(q.next_version, namespace, key)
            if expected_version is not None:
                live = await self._read(q.live_version, namespace, key, self.clock())
                if live != expected_version:
                    raise VersionConflict(namespace, key, expected_version, live)
            historical = False
            if valid is not None and version > 1:
                current = (await self._read(q.valid_times, [(namespace, key)], self.clock())).get((namespace, key))
                historical = current is not None and valid < current
            sealed = seal_entry(self.keys, namespace, key, text, meta, vector[0] if vector else None,
                                valid_from=valid, observed_at=observed, historical=historical)
            return self._event(MemoryWritten(namespace=namespace, key=key, version=version, expires_at=expires,
                                             source_call_id=call_id, source_message_id=message_id,
                                             embedder=embedder, **sealed), run)

        if expected_version is not None:
            done, event = await self._conditional(namespace, build)
            assert isinstance(event.data, MemoryWritten)
            return Written(namespace, key, event.data.version, done, event.id, merged_into)
        event = await build()
        seq, outboxed = await self._publish(event)
        assert isinstance(event.data, MemoryWritten)
        return Written(namespace, key, event.data.version, seq, event.id, merged_into, outboxed)

    async def _embed(self, texts: Sequence[str], run: str | None, *, batched: bool = True
                     ) -> list[list[float]] | None:
        """Vectors for what is written: through the batcher (concurrent writes embed together),
        or straight to the embedder for a bulk write that is one batch already."""
        embedder = self.embedder
        if embedder is None:
            return None
        who = {"agent": self.agent, "run": run or self.run}
        if not batched:
            return await self.vector_cache.embed(texts, embedder.name, lambda fresh: embedder.embed(fresh, **who))
        if self.batcher is None or self.batcher.embedder is not embedder:  # the embedder was replaced
            self.batcher = WriteBatcher(embedder)
        batcher = self.batcher
        return await self.vector_cache.embed(texts, embedder.name, lambda fresh: batcher.embed(fresh, **who))

    async def _near_duplicate(self, namespace: str, text: str) -> Entry | None:
        digest_key = self.keys.current(namespace)[1]
        exact = await self._read(q.by_hash, namespace, content_hash(digest_key, text), self.clock())
        if exact is not None:
            return exact
        terms = query_terms(text)
        found = await self._read(lambda db: q.keyword(db, terms, namespaces=[namespace], patterns=None,
                                                      filters=None, now=self.clock(), limit=5, stats=self._terms))
        best = max(found, key=lambda pair: similarity(text, pair[0].text), default=None)
        if best is not None and similarity(text, best[0].text) >= self.dedupe_threshold:
            return best[0]
        return None

    async def write_many(self, items: Iterable[Mapping[str, Any]], *, namespace: str | None = None,
                         run: str | None = None) -> BulkWritten:
        """Write many entries at once (emitted together, acked together): the fast path for bulk loads.

        Each item has ``text`` and optionally ``namespace`` (else the argument), ``key``,
        ``metadata``, ``ttl``, ``valid_from``, ``observed_at``. No conditional writes and no
        near-duplicate merging here. Every item is checked before any is sent (a bad one raises
        ``InvalidMemory`` naming it, and nothing is written). Returns once the stream acked every
        write (or the local outbox holds it, ``BulkWritten.outboxed``); if NATS refused some for good,
        :class:`BulkWriteFailed` says which (``failed``) and what landed (``written``).
        """
        with paced():  # the batch's events live until acked: no collector walking them over and over
            return await self._write_many(items, namespace, run)

    async def _write_many(self, items: Iterable[Mapping[str, Any]], namespace: str | None,
                          run: str | None) -> BulkWritten:
        rows = []
        allowed: set[str] = set()
        for i, item in enumerate(items):
            try:
                ns = item.get("namespace") or namespace or ""
                if ns not in allowed:
                    allowed.add(self._check(ns, "write"))
                key = item.get("key")
                if key is None:
                    key, fresh = uuid7(), True  # a new key: no version to look up
                else:
                    check_key(key)
                    fresh = False
                meta, meta_chars = self._sized_metadata(item.get("metadata"))
                rows.append((ns, key, self._text(item.get("text")), meta,
                             self._expiry(item.get("ttl")), _instant(item.get("valid_from"), "valid_from"),
                             _instant(item.get("observed_at"), "observed_at"), fresh, meta_chars))
            except InvalidMemory as exc:
                raise InvalidMemory(f"item {i} of write_many: {exc}; nothing was written") from None
        if not rows:
            return BulkWritten(0, self.position, ())
        vectors = await self._embed([r[2] for r in rows], run, batched=False)
        known = [(r[0], r[1]) for r in rows if not r[7]]
        nexts = await self._read(lambda db: {(ns, key): q.next_version(db, ns, key) for ns, key in known}) \
            if known else {}
        timed = [(r[0], r[1]) for r in rows if r[5] is not None and not r[7]]
        valid_now = await self._read(q.valid_times, timed, self.clock()) if timed else {}
        embedder = self.embedder.name if (self.embedder is not None and vectors) else None
        now = self.clock()
        sealer = Sealer(self.keys)
        claimed: dict[tuple[str, str], int] = {}
        publisher = self.bus.publisher
        # Built and sent part by part, so NATS stores one part while the next is sealed, unless a message
        # could be refused as too large: then every part is built before any is sent (none is, then).
        for ns in allowed:  # every key looked up (a new namespace's made) before any part is sent
            sealer.current(ns)
        step = BULK_PART if self._parts_fit(rows, len(vectors[0]) if vectors else 0, embedder or "") else len(rows)
        held: list[PendingMessage] = []
        batches: list[tuple[int, Batch]] = []
        for start in range(0, len(rows), step):
            payloads = []
            for i in range(start, min(start + step, len(rows))):
                ns, key, text, meta, expires, valid, observed, fresh, _ = rows[i]
                if fresh:
                    version = 1
                    historical = False
                else:
                    version = claimed.get((ns, key), nexts[(ns, key)] - 1) + 1
                    claimed[(ns, key)] = version
                    current = valid_now.get((ns, key))
                    historical = valid is not None and current is not None and valid < current
                    if not historical:
                        valid_now[(ns, key)] = valid if valid is not None else now
                sealed = sealer.seal(ns, key, text, meta, vectors[i] if vectors else None,
                                     valid_from=valid, observed_at=observed, historical=historical)
                # every value checked above (namespace, key, text, metadata, ttl) or made here: no second validation
                payloads.append(MemoryWritten.trusted(namespace=ns, key=key, version=version, expires_at=expires,
                                                      embedder=embedder, metadata={}, **sealed))
            events = Event.of_many(payloads, source=self.source, runid=run or self.run, agentid=self.agent)
            if step < len(rows):
                batches.append((start, await publisher.emit_prepared(publisher.prepare_many(events))))
                await asyncio.sleep(0)  # nats-py's flusher writes this part while the next one is built
            else:
                held = publisher.prepare_many(events)
        if held:
            batches.append((0, await publisher.emit_prepared(held)))
        refused: dict[int, str] = {}
        outboxed = 0
        for offset, batch in batches:
            await batch.wait(publisher.ack_timeout_s * 2 + 1)
            refused.update((offset + i, why) for i, why in batch.refused.items())
            outboxed += len(batch.outboxed)
        seq = await last_memory_seq(self.bus)
        self._moved(seq)
        if refused:
            failed = tuple((i, rows[i][0], rows[i][1], why) for i, why in sorted(refused.items()))
            landed = tuple(r[1] for i, r in enumerate(rows) if i not in refused)
            raise BulkWriteFailed(failed, BulkWritten(len(landed), seq, landed, outboxed))
        return BulkWritten(len(rows), seq, tuple(r[1] for r in rows), outboxed)

    def _parts_fit(self, rows: Sequence[tuple[Any, ...]], dims: int, embedder: str) -> bool:
        """Whether no message of the batch can be refused as too large (``sealed_size_bound``), so it may
        be sent in parts: within ``max_event_bytes``, and within the server's ``max_payload`` with its
        headers (the same for every event of the batch but id and time; source, agent and run
        percent-encoded at worst), a payload above ``large_payload_bytes`` going by the object store."""
        if len(rows) <= BULK_PART:
            return False
        publisher = self.bus.publisher
        # the bound grows with each length: its value at the longest of each is at least every row's
        ns, key, text = (max((r[i] for r in rows), key=len) for i in (0, 1, 2))
        largest = sealed_size_bound(ns, key, text, max(r[8] for r in rows), dims, embedder)
        if largest > publisher.max_event_bytes:
            return False
        limit = self.bus.nc.max_payload or 0
        names = len(self.source) + len(self.agent or "") + len(self.run or "")
        return limit <= 0 or 2048 + 12 * names + max(min(largest, publisher.large_payload_bytes), 128) <= limit

    async def reembed(self, namespace: str | None = None, *, batch: int = 256, run: str | None = None,
                      progress: Callable[[int, int], None] | None = None) -> Reembedded:
        """Embed again, with this client's embedder, every live entry whose current version has no vector
        of it (written with another embedder, a static table with other rows, or none): after a change
        of embedder, semantic and hybrid search find the older entries by meaning again.

        ``namespace`` limits it to one (default: every namespace this agent may write). Each new vector
        is a ``memory.embedded`` event (sealed under the entry's own key): text, version, times and
        history stay as they were, and a view rebuilt from the log has the new vectors. ``batch``
        texts are embedded at a time; ``progress(done, total)`` is called after each batch.
        Re-running it does only what is left (an interrupted run loses nothing).
        """
        embedder = self.embedder
        if embedder is None:
            raise InvalidMemory("reembed needs an embedder: AsyncMemory(..., embedder=StaticEmbedder()) or "
                                '[memory] embedder = "static" | "minilm" in tether.toml')
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise InvalidMemory(f"batch must be an int >= 1, got {batch!r}")
        if namespace is not None:
            namespaces = [self._check(namespace, "write")]
        else:
            found = await self._read(q.namespaces)
            namespaces = sorted(ns for ns, _ in found if self.grants.allows(self.agent, ns, "write"))
        await self.feed.catch_up()  # every entry written so far is listed
        todo = await self._read(q.unembedded, namespaces, embedder.name, self.clock(), 10**9) if namespaces else []
        done, seq = 0, self.position
        for start in range(0, len(todo), batch):
            part = todo[start:start + batch]
            vectors = await self._embed([text for *_, text in part], run, batched=False)
            assert vectors is not None
            sealer = Sealer(self.keys)
            events = [self._event(MemoryEmbedded(namespace=ns, key=key, version=version, of_seq=of_seq,
                                                 embedder=embedder.name, **seal_vector(sealer, ns, key, vector)), run)
                      for (ns, key, version, of_seq, _), vector in zip(part, vectors, strict=True)]
            sent = await (await self.bus.emit_batch(events)).wait(self.bus.publisher.ack_timeout_s * 2 + 1)
            if sent.refused:
                seq = await last_memory_seq(self.bus)
                failed = tuple((start + i, part[i][0], part[i][1], why) for i, why in sorted(sent.refused.items()))
                landed = tuple(r[1] for i, r in enumerate(todo[:start + len(part)]) if i - start not in sent.refused)
                raise BulkWriteFailed(failed, BulkWritten(len(landed), seq, landed, len(sent.outboxed)))
            done += len(part)
            if progress is not None:
                progress(done, len(todo))
        if todo:
            seq = await last_memory_seq(self.bus)
            self._moved(seq)
            await self.feed.wait_for(seq)
        return Reembedded(done, seq, embedder.name, tuple(namespaces))

    async def delete(self, namespace: str, key: str, *, expected_version: int | None = None,
                     run: str | None = None) -> Written:
        """Delete an entry (logically: it stays in the log and in :meth:`history`)."""
        self._check(namespace, "write")
        check_key(key)

        async def build() -> Event:
            live = await self._read(q.live_version, namespace, key, self.clock())
            if expected_version is not None and live != expected_version:
                raise VersionConflict(namespace, key, expected_version, live)
            if live == 0:
                raise MemoryNotFound(namespace, key)
            return self._event(MemoryDeleted(namespace=namespace, key=key, version=live), run)

        if expected_version is not None:
            done, event = await self._conditional(namespace, build)
            return Written(namespace, key, expected_version, done, event.id)
        event = await build()
        seq, outboxed = await self._publish(event)
        assert isinstance(event.data, MemoryDeleted)
        return Written(namespace, key, event.data.version or 0, seq, event.id, outboxed=outboxed)

    async def forget(self, namespace: str, *, keys: Sequence[str] | None = None,
                     filters: Mapping[str, Any] | None = None, before: datetime | None = None,
                     run: str | None = None) -> list[str]:
        """Delete every live entry of the namespace that matches; the keys deleted.

        ``keys`` restricts to those keys, ``filters`` to matching metadata, ``before`` to
        entries last written before then. Logical deletion: use :meth:`erase` to make
        content unreadable.
        """
        self._check(namespace, "write")
        wanted = set(keys) if keys is not None else None
        cutoff = before.timestamp() if before is not None else None
        found = await self._read(lambda db: q.live(db, namespace, self.clock(), include_compacted=True,
                                                   filters=filters, before=cutoff))
        gone = [e for e in found if wanted is None or e.key in wanted]
        for entry in gone:
            await self.bus.emit(self._event(MemoryDeleted(namespace=namespace, key=entry.key, version=entry.version),
                                            run))
        if gone:
            await self.bus.flush()
            self._moved(await last_memory_seq(self.bus, namespace_filter(namespace)))
        return [e.key for e in gone]

    async def erase(self, namespace: str, key: str | None = None, *, run: str | None = None) -> Erased:
        """Destroy keys, then record the erasure: the namespace's content (or, with ``key``, that one
        entry's, every version) is unreadable for good.

        The ciphertext stays in the log; without the key it never comes back, neither in
        this view nor in any view rebuilt by replay, and ``history`` no longer has it. One
        entry is erased by keeping the derived key of every other entry of the namespace and
        destroying the generation key (see ``_keys``). See ``docs/memory.md`` for exactly
        what is and is not guaranteed.
        """
        self._check(namespace, "write")
        if key is None:
            destroyed = await asyncio.to_thread(self.keys.destroy, namespace)
        else:
            check_key(key)
            if key == ALL_KEYS:
                raise InvalidMemory("key '*' is reserved: erase(namespace) erases every entry")
            await self.feed.catch_up()  # every key written so far is kept, but this one
            if not await self._read(q.history, namespace, key):
                raise MemoryNotFound(namespace, key, " (never written, or erased already): nothing to erase")
            old = await self._read(q.shared_key_versions, namespace, key)
            if old:
                raise InvalidMemory(
                    f"{namespace}/{key} has {len(old)} version(s) (seq {', '.join(map(str, old[:5]))}) sealed under "
                    "the namespace key, not a key of the entry's own (written before tether had per-entry keys, "
                    "or by another producer): erasing it alone cannot reach them; erase the namespace, "
                    f"erase({namespace!r}), to make them unreadable")
            keep = await self._read(q.keys_of, namespace)
            destroyed = await asyncio.to_thread(self.keys.shred, namespace, key, keep)
        event = self._event(MemoryDeleted(namespace=namespace, key=key or ALL_KEYS, reason="erased"), run)
        seq, _ = await self._publish(event)
        if seq is not None:
            await self.feed.wait_for(seq)
        if self._vectors is not None:
            self._vectors = None  # drop the erased vectors from memory too
        return Erased(namespace, tuple(destroyed), seq, key)

    async def extract(self, namespace: str, messages: Sequence[Mapping[str, Any] | str], *,
                      extractor: Extractor | None = None, apply: bool = True, run: str | None = None,
                      message_id: str | None = None) -> Extraction:
        """Memory operations from a conversation (opt-in): ``extractor`` (default: the offline
        :class:`ExtractiveExtractor`; :class:`LlmExtractor` asks a model through tether) proposes
        add / update / delete against the namespace's live entries, and each is written as a
        memory event carrying the model call (``source_call_id``) and ``message_id``. With
        ``apply=False`` nothing is written: the plan is returned."""
        self._check(namespace, "write")
        if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
            raise InvalidMemory("messages must be a list of {'role': ..., 'content': ...} (or strings, "
                                "taken as the user's)")
        turns = [{"role": "user", "content": m} if isinstance(m, str) else m for m in messages]
        if not turns or not all(isinstance(m, Mapping) for m in turns):
            raise InvalidMemory("messages must be a non-empty list of {'role': ..., 'content': ...} or strings")
        chosen = extractor or ExtractiveExtractor()
        existing = await self._read(q.live, namespace, self.clock())
        proposal = await chosen.propose(turns, existing, agent=self.agent, run=run or self.run)
        todo, skipped = plan(proposal, existing)
        if not apply:
            return Extraction(tuple(todo), tuple(skipped), proposal.call_id, chosen.name)
        written = []
        for op in todo:
            if op.action == "delete":
                assert op.key is not None
                written.append(await self.delete(namespace, op.key, run=run))
            else:
                written.append(await self.write(namespace, op.text or "", key=op.key, run=run,
                                                call_id=proposal.call_id, message_id=message_id))
        return Extraction(tuple(todo), tuple(skipped), proposal.call_id, chosen.name, tuple(written))

    async def expire(self, *, run: str | None = None) -> int:
        """Record an ``expired`` deletion for every entry past its TTL (reads already hide them)."""
        found = await self._read(q.expired, self.clock())
        count = 0
        for entry in found:
            if self.grants.allows(self.agent, entry.namespace, "write"):
                await self.bus.emit(self._event(MemoryDeleted(namespace=entry.namespace, key=entry.key,
                                                              version=entry.version, reason="expired"), run))
                count += 1
        if count:
            await self.bus.flush()
            self._moved(await last_memory_seq(self.bus))
        return count

    async def compact(self, namespace: str, token_budget: int, *, summarizer: Summarizer | None = None,
                      run: str | None = None) -> Written | None:
        """Merge near-duplicates, then summarise the oldest entries so the namespace fits ``token_budget``.

        The summary is a new entry (key ``summary:<id>``) whose ``replaced`` lists each
        ``key@version`` it stands for; the originals stay in the log and in :meth:`history`,
        and drop out of search and context. None when nothing needed compacting.
        """
        self._check(namespace, "write")
        if isinstance(token_budget, bool) or not isinstance(token_budget, int) or token_budget < 16:
            raise InvalidMemory(f"token_budget must be an int >= 16, got {token_budget!r}")
        entries = await self._read(q.live, namespace, self.clock())
        dupes = duplicates(entries, self.dedupe_threshold)
        for older, _newer in dupes:
            await self.bus.emit(self._event(MemoryDeleted(namespace=namespace, key=older.key, version=older.version,
                                                          reason="merged"), run))
        if dupes:
            await self.bus.flush()
            self._moved(await last_memory_seq(self.bus, namespace_filter(namespace)))
            gone = {o.key for o, _ in dupes}
            entries = [e for e in entries if e.key not in gone]
        plan = plan_compaction(entries, token_budget)
        if plan is None:
            return None
        chosen = summarizer or self.summarizer
        summary = await chosen.summarize(plan.replace, plan.summary_budget, agent=self.agent, run=run or self.run)
        key = f"summary:{uuid7()}"
        vector = await self._embed([summary.text], run)
        sealed = seal_entry(self.keys, namespace, key, summary.text, {}, vector[0] if vector else None)
        event = self._event(MemoryCompacted(
            namespace=namespace, key=key, version=1, summary=sealed["text"], key_id=sealed["key_id"],
            replaced=tuple(f"{e.key}@{e.version}" for e in plan.replace), token_budget=token_budget,
            summarizer=chosen.name, source_call_id=summary.call_id, embedding=sealed.get("embedding"),
            embedder=self.embedder.name if vector and self.embedder else None), run)
        seq, outboxed = await self._publish(event)
        return Written(namespace, key, 1, seq, event.id, outboxed=outboxed)

    # -- conditional writes and validation ---------------------------------------------------------

    async def _conditional(self, namespace: str, build: Callable[[], Awaitable[Event]], *,
                           attempts: int = 100) -> tuple[int, Event]:
        """Publish ``build()``'s event only if the namespace has not changed since ``build`` checked it.

        Race-free across processes: read the namespace's last stream sequence L, wait until
        the view has applied L, let ``build`` check the key's version there, and publish with
        ``Nats-Expected-Last-Subject-Sequence: L`` on the namespace's subject filter.
        JetStream appends atomically only if nothing was written to the namespace since L;
        if something was, catch up to the new last sequence and build again (``build``
        raises :class:`VersionConflict` if the key moved). A write to another key of the
        namespace costs a retry, never a false conflict. Unconditional writes are plain
        appends (last writer wins, in log order).
        """
        subject = namespace_filter(namespace)
        last = await last_memory_seq(self.bus, subject)
        event_id = uuid7()
        for _ in range(attempts):
            await self.feed.wait_for(last)
            event = (await build()).model_copy(update={"id": event_id})
            message = self.bus.publisher.prepare(event)
            headers = {**message.headers, "Nats-Expected-Last-Subject-Sequence": str(last),
                       "Nats-Expected-Last-Subject-Sequence-Subject": subject}
            try:
                ack = await self.bus.js.publish(message.subject, message.payload, headers=headers,
                                                timeout=self.bus.config.ack_timeout_s)
            except APIError as exc:
                if exc.err_code != WRONG_LAST:
                    raise
                found = _WRONG_SEQ.search(exc.description or "")
                last = int(found[1]) if found else await last_memory_seq(self.bus, subject)
                continue
            self._moved(ack.seq)
            return int(ack.seq), event
        raise TimeoutError(f"namespace {namespace!r} changed under every one of {attempts} conditional attempts")

    def _text(self, text: object) -> str:
        if not isinstance(text, str):
            raise InvalidMemory(f"text must be a string, got {type(text).__name__}")
        if not text.strip():
            raise InvalidMemory("text is empty: there is nothing to remember")
        size = len(text.encode("utf-8"))
        if size > self.settings.max_text_bytes:
            raise InvalidMemory(f"text is {size:,} bytes; the limit is {self.settings.max_text_bytes:,} "
                                "(memory.max_text_bytes): split it into entries, or keep the document elsewhere "
                                "and remember a reference to it")
        return text

    @staticmethod
    def _metadata(metadata: Mapping[str, Any] | None) -> dict[str, Any]:
        return MemoryWrites._sized_metadata(metadata)[0]

    @staticmethod
    def _sized_metadata(metadata: Mapping[str, Any] | None) -> tuple[dict[str, Any], int]:
        """The metadata, checked, and the length of its JSON text."""
        if metadata is None:
            return {}, 2
        if not isinstance(metadata, Mapping) or not all(isinstance(k, str) for k in metadata):
            raise InvalidMemory("metadata must be a mapping with string keys")
        try:  # refuses NaN and infinity too: then say where they are
            size = len(json.dumps(metadata, ensure_ascii=False, allow_nan=False))
        except (TypeError, ValueError) as exc:
            nan_at = non_finite(dict(metadata))
            if nan_at is not None:
                where = ".".join(str(part) for part in nan_at)
                raise InvalidMemory(f"metadata {where} is {_at(metadata, nan_at)!r}: {NON_FINITE_HINT}") from None
            raise InvalidMemory(f"metadata must be JSON: {exc}") from None
        if size > MAX_METADATA_BYTES:
            raise InvalidMemory(f"metadata is {size:,} bytes of JSON; the limit is {MAX_METADATA_BYTES:,}")
        return dict(metadata), size

    def _expiry(self, ttl: float | timedelta | None) -> datetime | None:
        if ttl is None:
            return None
        seconds = ttl.total_seconds() if isinstance(ttl, timedelta) else ttl
        if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or seconds <= 0:
            raise InvalidMemory(f"ttl must be a positive number of seconds (or a timedelta), got {ttl!r}")
        return datetime.fromtimestamp(self.clock() + float(seconds), UTC)
