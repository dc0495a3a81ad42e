"""What the adapters keep out of the log: tether's one redaction rule set (``tether._redact``).

Every path records through the same :class:`Redactor` defaults: ``instrument`` and
:func:`~tether.adapters.tool`, runs, the gateway (which adds the keys of its own
configuration) and the events it ingests, and the middleware's workers and inline calls.
"""

from __future__ import annotations

from tether._redact import (
    ASSIGNED_NAMES,
    DEFAULT_FIELDS,
    DEFAULT_PATTERNS,
    REDACTED,
    SECRET_HEADERS,
    Redactor,
)
from tether._redact import DEFAULT as DEFAULT
from tether._redact import Hook as Hook
from tether._redact import redactor_of as redactor_of

__all__ = ["ASSIGNED_NAMES", "DEFAULT_FIELDS", "DEFAULT_PATTERNS", "REDACTED", "SECRET_HEADERS", "Redactor"]
