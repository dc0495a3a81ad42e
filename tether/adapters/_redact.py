"""Secrets never enter the log: what is redacted from captured requests, responses and tools.

Headers are never captured at all. Bodies are, so a :class:`Redactor` walks every value
tether is about to record and replaces

* the value of any key named in ``fields`` (case-insensitive, at any depth: ``api_key``,
  ``authorization``, ``password``...), and
* any substring of a string that matches one of ``patterns`` (by default the shapes of
  OpenAI and Anthropic keys and of ``Bearer`` tokens, wherever they appear, a pasted key in
  a prompt included),

with ``"[redacted]"``, then hands the result to the user's ``hook`` (if any) for anything
else. The walk never changes the request that is sent: it works on the copy that is
recorded.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["DEFAULT_FIELDS", "DEFAULT_PATTERNS", "REDACTED", "SECRET_HEADERS", "Redactor"]

REDACTED = "[redacted]"

SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "x-api-key", "api-key", "cookie", "set-cookie",
                            "openai-organization", "openai-project", "x-goog-api-key"})
"""Headers that carry credentials; tether never records headers, and strips these from
anything it forwards to the log."""

DEFAULT_FIELDS = frozenset({
    "authorization", "proxy-authorization", "x-api-key", "api-key", "api_key", "apikey", "cookie", "set-cookie",
    "password", "passwd", "secret", "client_secret", "access_token", "refresh_token", "id_token",
    "private_key", "aws_secret_access_key", "session_token",
})
"""Keys whose values are redacted wherever they appear in a captured body."""

DEFAULT_PATTERNS: tuple[str, ...] = (
    r"sk-ant-[A-Za-z0-9_\-]{8,}",          # Anthropic keys
    r"sk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_\-]{16,}",  # OpenAI keys
    r"(?i:bearer)\s+[A-Za-z0-9_\-.=:+/]{12,}",  # bearer tokens pasted anywhere
    r"AKIA[0-9A-Z]{16}",                   # AWS access key ids
    r"gh[pousr]_[A-Za-z0-9]{30,}",         # GitHub tokens
)
"""Secret-shaped substrings, redacted inside any captured string."""

Hook = Callable[[Any], Any]


@dataclass(frozen=True)
class Redactor:
    """Redacts what tether records. ``Redactor()`` uses the defaults; ``fields`` adds keys
    (``Redactor(fields={"ssn"})`` keeps the defaults too, ``replace_defaults=True`` does not);
    ``hook`` gets every value after the built-in redaction and returns what to record."""

    fields: Iterable[str] = ()
    patterns: Iterable[str] = ()
    hook: Hook | None = None
    replace_defaults: bool = False
    _fields: frozenset[str] = field(init=False, repr=False)
    _pattern: re.Pattern[str] | None = field(init=False, repr=False)

    def __post_init__(self) -> None:
        names = {f.lower() for f in self.fields}
        patterns = list(self.patterns)
        if not self.replace_defaults:
            names |= DEFAULT_FIELDS
            patterns = [*DEFAULT_PATTERNS, *patterns]
        object.__setattr__(self, "_fields", frozenset(names))
        object.__setattr__(self, "_pattern", re.compile("|".join(f"(?:{p})" for p in patterns)) if patterns
                           else None)

    def __call__(self, value: Any) -> Any:
        """A redacted copy of ``value`` (JSON-like data); ``value`` itself is left alone."""
        out = self._walk(value)
        return self.hook(out) if self.hook is not None else out

    def text(self, value: str) -> str:
        """``value`` with secret-shaped substrings replaced (for error messages and logs)."""
        pattern = self._pattern
        if pattern is None or not value:
            return value
        return pattern.sub(REDACTED, value)

    def _walk(self, value: Any) -> Any:
        if isinstance(value, str):
            pattern = self._pattern
            return pattern.sub(REDACTED, value) if pattern is not None and value else value
        if isinstance(value, dict):
            fields = self._fields
            return {k: (REDACTED if isinstance(k, str) and k.lower() in fields and v is not None
                        else self._walk(v)) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._walk(v) for v in value]
        return value


def redactor_of(redact: Redactor | Hook | Iterable[str] | None) -> Redactor:
    """Accept a :class:`Redactor`, a hook function, or extra field names."""
    if redact is None:
        return _DEFAULT
    if isinstance(redact, Redactor):
        return redact
    if callable(redact):
        return Redactor(hook=redact)
    if isinstance(redact, str):
        return Redactor(fields=(redact,))
    return Redactor(fields=tuple(redact))


_DEFAULT = Redactor()
