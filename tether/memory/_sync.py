"""The synchronous memory API: :class:`Memory`, the methods of :class:`AsyncMemory` on a private event loop thread."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterable, Mapping, Sequence
from datetime import timedelta
from typing import Any, TypeVar

from ._client import AsyncMemory, connect_memory
from ._extract import Extraction
from ._reads import AsOf
from ._types import BulkWritten, Context, Entry, Erased, Hit, Reembedded, Version, Written

__all__ = ["Memory"]

T = TypeVar("T")


class Memory:
    """The synchronous API: the same methods as :class:`AsyncMemory`, on a private event loop thread.

    ::

        with Memory.connect(agent="support-bot") as memory:
            memory.write("agent:support-bot", "The customer prefers email.")
            print(memory.context("how to contact the customer?"))
    """

    def __init__(self, memory: AsyncMemory, loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
        self.aio = memory
        self._loop = loop
        self._thread = thread

    @classmethod
    def connect(cls, url: str | None = None, **options: Any) -> Memory:
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="tether-memory", daemon=True)
        thread.start()
        try:
            memory = asyncio.run_coroutine_threadsafe(connect_memory(url, **options), loop).result()
        except BaseException:
            loop.call_soon_threadsafe(loop.stop)
            thread.join()
            loop.close()
            raise
        return cls(memory, loop, thread)

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def close(self) -> None:
        if self._loop.is_closed():
            return
        try:
            self._call(self.aio.close())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()

    def __enter__(self) -> Memory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def position(self) -> int:
        return self.aio.position

    def write(self, namespace: str, text: str, key: str | None = None, metadata: Mapping[str, Any] | None = None,
              ttl: float | timedelta | None = None, expected_version: int | None = None, **kw: Any) -> Written:
        return self._call(self.aio.write(namespace, text, key, metadata, ttl, expected_version, **kw))

    def write_many(self, items: Iterable[Mapping[str, Any]], **kw: Any) -> BulkWritten:
        return self._call(self.aio.write_many(items, **kw))

    def get(self, namespace: str, key: str, as_of: AsOf = None, **kw: Any) -> Entry:
        return self._call(self.aio.get(namespace, key, as_of, **kw))

    def search(self, query: str, namespaces: Sequence[str] | str | None = None, k: int = 5,
               filters: Mapping[str, Any] | None = None, as_of: AsOf = None, **kw: Any) -> list[Hit]:
        return self._call(self.aio.search(query, namespaces, k, filters, as_of, **kw))

    def history(self, namespace: str, key: str, **kw: Any) -> list[Version]:
        return self._call(self.aio.history(namespace, key, **kw))

    def delete(self, namespace: str, key: str, **kw: Any) -> Written:
        return self._call(self.aio.delete(namespace, key, **kw))

    def forget(self, namespace: str, **kw: Any) -> list[str]:
        return self._call(self.aio.forget(namespace, **kw))

    def erase(self, namespace: str, key: str | None = None, **kw: Any) -> Erased:
        return self._call(self.aio.erase(namespace, key, **kw))

    def reembed(self, namespace: str | None = None, **kw: Any) -> Reembedded:
        return self._call(self.aio.reembed(namespace, **kw))

    def extract(self, namespace: str, messages: Any, **kw: Any) -> Extraction:
        return self._call(self.aio.extract(namespace, messages, **kw))

    def expire(self, **kw: Any) -> int:
        return self._call(self.aio.expire(**kw))

    def compact(self, namespace: str, token_budget: int, **kw: Any) -> Written | None:
        return self._call(self.aio.compact(namespace, token_budget, **kw))

    def context(self, query: str, namespaces: Sequence[str] | str | None = None, token_budget: int = 1000,
                **kw: Any) -> Context:
        return self._call(self.aio.context(query, namespaces, token_budget, **kw))

    def namespaces(self) -> list[tuple[str, int]]:
        return self._call(self.aio.namespaces())

    def wait_for(self, seq: int, timeout: float = 10.0) -> None:
        self._call(self.aio.wait_for(seq, timeout))

    def catch_up(self, timeout: float = 30.0) -> int:
        return self._call(self.aio.catch_up(timeout))
