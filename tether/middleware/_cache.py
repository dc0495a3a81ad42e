"""The response cache: an LLM answer kept by its request hash, served again across runs.

Opt-in per route (:class:`~._policy.CachePolicy`); :func:`cacheable` says which calls may be
cached (pure); :class:`ResponseCache` keeps the answers in the KV bucket ``tether-cache``,
each with its expiry, as the log recorded them (redacted).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from typing import Any

from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from tether.bus import Bus, open_bucket
from tether.schemas import Usage

from ._journal import Entry
from ._policy import CachePolicy

__all__ = ["CACHE_BUCKET", "MAX_TTL_S", "ResponseCache", "cacheable"]

log = logging.getLogger("tether.middleware")
CACHE_BUCKET = "tether-cache"
MAX_TTL_S = 7 * 86400.0
"""The bucket's own age limit: no answer is kept longer, whatever a route's ``ttl_s``."""
_SAMPLING = ("temperature", "top_p", "top_k")


def cacheable(body: Mapping[str, Any], policy: CachePolicy) -> bool:
    """Whether a call with this request may be served from, and stored in, the cache: the
    route enables it, the call asks for one answer, and it does not sample (it sets
    ``temperature`` 0, or no sampling parameter at all) unless the route allows sampling."""
    if not policy.enabled:
        return False
    n = body.get("n")
    if isinstance(n, int) and n > 1:
        return False
    if policy.sampling:
        return True
    temperature = body.get("temperature")
    if temperature is not None:
        return isinstance(temperature, int | float) and temperature == 0
    return not any(body.get(key) is not None for key in _SAMPLING)


def _key(digest: str) -> str:
    return digest.removeprefix("sha256:")


class ResponseCache:
    """Answers by request hash in KV (opened on first use)."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self._kv: KeyValue | None = None
        self._kept: dict[str, Entry] = {}
        """Answers on their way to KV: this process serves its own at once (a repeated call made
        right after the first would otherwise miss the cache while the put is in flight)."""

    def keep(self, digest: str, entry: Entry, ttl_s: float) -> Callable[[], Awaitable[None]]:
        """Serve ``entry`` for ``digest`` in this process from now on; the step that stores it
        in KV for every process (:meth:`put`), to run in the background."""
        self._kept[digest] = entry
        return partial(self.put, digest, entry, ttl_s)

    async def _bucket(self) -> KeyValue:
        if self._kv is None:
            self._kv = await open_bucket(self.bus.js, CACHE_BUCKET, replicas=self.bus.config.replicas, ttl=MAX_TTL_S)
        return self._kv

    async def get(self, digest: str, *, now: float | None = None) -> Entry | None:
        """The answer kept for ``digest``, unless it expired."""
        if (kept := self._kept.get(digest)) is not None:
            return kept
        kv = await self._bucket()
        try:
            got = await kv.get(_key(digest))
        except KeyNotFoundError:
            return None
        try:
            doc = json.loads(got.value or b"")
        except ValueError:
            return None
        if not isinstance(doc, dict) or float(doc.get("expires_at") or 0) <= (time.time() if now is None else now):
            return None
        return Entry("llm", str(doc["call_id"]), digest, state="completed", stream=bool(doc.get("stream")),
                     provider=doc.get("provider"), model=doc.get("model"), response=doc.get("response"),
                     chunks=doc.get("chunks"), usage=Usage.model_validate(doc.get("usage") or {}),
                     event_id=doc.get("event_id"), run_id=doc.get("run_id"))

    async def put(self, digest: str, entry: Entry, ttl_s: float) -> None:
        """Keep ``entry`` (an answer the log recorded) for ``ttl_s``; one too large is not kept."""
        now = time.time()
        doc = {"call_id": entry.call_id, "event_id": entry.event_id, "run_id": entry.run_id, "stream": entry.stream,
               "provider": entry.provider, "model": entry.model, "usage": entry.usage.model_dump(),
               "response": entry.response, "chunks": entry.chunks, "stored_at": now,
               "expires_at": now + min(ttl_s, MAX_TTL_S)}
        try:
            kv = await self._bucket()
            await kv.put(_key(digest), json.dumps(doc, separators=(",", ":")).encode())
        except Exception as exc:  # too large for a message, or NATS is away: the call is answered anyway
            log.warning("tether: could not keep an answer in the response cache (%s)", exc)
        finally:
            if self._kept.get(digest) is entry:
                del self._kept[digest]
