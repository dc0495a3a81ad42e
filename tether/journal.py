"""A run's journal: what its calls recorded, matched again when the run resumes.

:func:`request_hash` and :func:`tool_hash` are what calls are matched by; :func:`load_journal`
reads a run's :class:`Journal` from the log, whose :class:`Cursor` matches calls in order
(:meth:`Cursor.match`); :func:`current` is the cursor of the run the caller is in, if it
resumed. See docs/resume.md.
"""

from __future__ import annotations

from tether.adapters import current_run
from tether.middleware import (
    REQUEST_VOLATILE_KEYS,
    Cursor,
    Entry,
    Journal,
    Lookup,
    load_journal,
    request_hash,
    tool_hash,
)

__all__ = ["REQUEST_VOLATILE_KEYS", "Cursor", "Entry", "Journal", "Lookup", "current", "load_journal",
           "request_hash", "tool_hash"]


def current() -> Cursor | None:
    """The journal of the run the caller is in, when it was resumed (``tether.run(resume=True)``)."""
    ctx = current_run()
    return ctx.journal if ctx is not None else None
