"""The live web dashboard (``tether ui``): runs, traces, cost, latency, errors, breakers and dead letters.

:class:`UiServer` serves it from the SQLite views (read-only) and pushes the projector's change
notifications (``tether.proj.>``) to the browser over SSE. Loopback by default; a token guards
every action, and every read when it listens elsewhere. See docs/ui.md.
"""

from ._security import TOKEN_ENV, bind_refusal, is_loopback
from ._server import DEFAULT_PORT, UiServer

__all__ = ["DEFAULT_PORT", "TOKEN_ENV", "UiServer", "bind_refusal", "is_loopback"]
