"""Server-sent events, parsed incrementally: :class:`SSEParser` lives in ``tether.middleware._sse``
(the executor's relay reads streams too); this module keeps the adapters' import path."""

from __future__ import annotations

from tether.middleware._sse import SSEParser

__all__ = ["SSEParser"]
