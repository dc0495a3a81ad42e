"""Secrets never enter the log: the one rule set every path redacts with.

Headers are never captured at all. Bodies are, so a :class:`Redactor` walks every value
tether is about to record (LLM requests and responses through ``instrument``, the gateway
and workers, tool arguments and results, run inputs and outputs, events ingested by the
gateway, error messages) and replaces with ``"[redacted]"``

* the value of any key named in ``fields`` (case-insensitive, at any depth: ``api_key``,
  ``authorization``, ``password``...),
* any substring shaped like a credential (:data:`DEFAULT_PATTERNS`: provider keys and
  tokens, private key blocks, JWTs, credentials in URLs, tether's own ``tg-`` keys), and
* the password of a URL (``postgres://user:[redacted]@host``), and
* the value of a secret-named assignment in text (``aws_secret_access_key = ...``,
  ``password: ...``, ``"api_key": "..."``; :data:`ASSIGNED_NAMES`), keeping the name,

then hands the result to the user's ``hook`` (if any) for anything else. The walk never
changes the request that is sent: it works on the copy that is recorded.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ASSIGNED_NAMES", "DEFAULT_FIELDS", "DEFAULT_PATTERNS", "REDACTED", "SECRET_HEADERS", "Redactor",
           "redactor_of"]

REDACTED = "[redacted]"

SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "x-api-key", "api-key", "cookie", "set-cookie",
                            "openai-organization", "openai-project", "x-goog-api-key"})
"""Headers that carry credentials; tether never records headers, and strips these from
anything it forwards to the log."""

DEFAULT_FIELDS = frozenset({
    "authorization", "proxy-authorization", "x-api-key", "api-key", "api_key", "apikey", "cookie", "set-cookie",
    "password", "passwd", "secret", "client_secret", "access_token", "refresh_token", "id_token",
    "private_key", "aws_secret_access_key", "session_token", "aws_session_token",
})
"""Keys whose values are redacted wherever they appear in a captured body."""

# Each pattern starts with a literal character, so the regular expression engine skips ahead
# to where one could begin (checks that look back come after it): 100 KB of prose takes
# milliseconds, not a tenth of a second. A key must start a token: "task-management-..."
# holds no "sk-" key.
_T = r"[A-Za-z0-9_\-]"

DEFAULT_PATTERNS: tuple[str, ...] = (
    r"sk-(?<!" + _T + r"sk-)(?:ant-[A-Za-z0-9_\-]{8,}"                    # Anthropic keys
    r"|(?:proj-|svcacct-|admin-)?[A-Za-z0-9_\-]{16,})",                    # OpenAI keys
    r"tg-(?<!" + _T + r"tg-)[A-Za-z0-9_\-]{16,}",                         # tether gateway keys (--new-key)
    r"[Bb](?i:earer)\s+[A-Za-z0-9_\-.=:+/~]{12,}",                          # bearer tokens pasted anywhere
    r"A(?:3T[A-Z0-9]|KIA|SIA|BIA|CCA)[A-Z0-9]{16}(?![A-Za-z0-9])",          # AWS access key ids
    r"gh[pousr]_[A-Za-z0-9]{30,}",                                          # GitHub tokens
    r"github_pat_[A-Za-z0-9_]{22,}",                                        # GitHub fine-grained tokens
    r"glpat-[A-Za-z0-9_\-]{20,}",                                           # GitLab tokens
    r"xox[abposre]-[A-Za-z0-9\-]{10,}",                                     # Slack tokens
    r"https://hooks\.slack\.com/services/[A-Za-z0-9_/]{20,}",               # Slack webhooks
    r"[sr]k_(?:live|test)_[A-Za-z0-9]{16,}",                                # Stripe secret and restricted keys
    r"whsec_[A-Za-z0-9+/=]{24,}",                                           # Stripe webhook secrets
    r"AIza[0-9A-Za-z_\-]{35}",                                              # Google API keys
    r"GOCSPX-[A-Za-z0-9_\-]{20,}",                                          # Google OAuth client secrets
    r"hf_[A-Za-z0-9]{30,}",                                                 # Hugging Face tokens
    r"npm_[A-Za-z0-9]{36}(?![A-Za-z0-9])",                                  # npm tokens
    r"pypi-AgE[A-Za-z0-9_\-]{50,}",                                         # PyPI tokens
    r"SG\.[A-Za-z0-9_\-]{16,}\.[A-Za-z0-9_\-]{16,}",                        # SendGrid keys
    r"eyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]*",       # JWTs (header and claims: JSON)
    # Private key blocks (PEM, OpenSSH, PGP), to their END line, or to the end of the key text if cut short.
    r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----(?:[\s\S]*?-----END [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----"
    r"|[A-Za-z0-9+/=\s:,\-\\]*)",
)
"""Credential-shaped substrings, redacted inside any captured string."""

ASSIGNED_NAMES: tuple[str, ...] = (
    "aws_secret_access_key", "aws_session_token", "secret_access_key", "password", "passwd", "passphrase",
    "client_secret", "secret_key", "api_key", "apikey", "api-key", "access_token", "auth_token", "refresh_token",
    "private_key", "accountkey",
)
"""Names whose assigned value is redacted in text: ``NAME = value``, ``NAME: value``,
``"NAME": "value"``, ``NAME="value"`` (any case; ``export NAME=...`` lines of env files and
shells too). The name is kept, the value goes."""

# NAME, an optional closing quote, = or :, then the value: a quoted
# string, or a run of characters up to whitespace, a comma, a semicolon or a closing bracket.
_ASSIGNMENT = (r"(?i)(?<![A-Za-z0-9])(?:" + "|".join(re.escape(n) for n in ASSIGNED_NAMES)
               + r")(?![A-Za-z0-9])[\"']?\s*[:=]\s*(?:\"(?P<dq>[^\"\n]{1,1024})\"|'(?P<sq>[^'\n]{1,1024})'"
               + r"|(?P<bare>[^\s\"',;)}\]]{1,1024}))")

# One pass of all the patterns together costs less for a short string; one pass per pattern, each
# skipping ahead to its own first character, for a long one (from about this many characters).
_LONG = 1024

# Redacted strings are remembered (a call's roles, model, tool schemas, system prompt and the
# conversation so far come again in every call of an agent: each is scanned once). Strings up to
# this length are kept, and the memo is emptied once it holds this many characters.
_MEMO_MAX_LEN = 16 * 1024
_MEMO_MAX_CHARS = 4 * 1024 * 1024

Hook = Callable[[Any], Any]


def _keep_name(found: re.Match[str]) -> str:
    start = found.start()
    for group in ("dq", "sq", "bare"):
        if found.group(group) is not None:
            a, b = found.span(group)
            whole = found.group(0)
            return whole[:a - start] + REDACTED + whole[b - start:]
    return REDACTED  # not reached: one of the groups always matches


@dataclass(frozen=True)
class Redactor:
    """Redacts what tether records. ``Redactor()`` uses the defaults; ``fields`` adds keys
    (``Redactor(fields={"ssn"})`` keeps the defaults too, ``replace_defaults=True`` does not);
    ``patterns`` adds regular expressions whose matches are redacted; ``hook`` gets every
    value after the built-in redaction and returns what to record."""

    fields: Iterable[str] = ()
    patterns: Iterable[str] = ()
    hook: Hook | None = None
    replace_defaults: bool = False
    _fields: frozenset[str] = field(init=False, repr=False)
    _pattern: re.Pattern[str] | None = field(init=False, repr=False)
    _patterns: tuple[re.Pattern[str], ...] = field(init=False, repr=False)
    _defaults: bool = field(init=False, repr=False)
    _memo: dict[str, str] = field(init=False, repr=False, compare=False)
    _memo_chars: list[int] = field(init=False, repr=False, compare=False)
    _keys: dict[str, bool] = field(init=False, repr=False, compare=False)
    _walker: Callable[[Any], Any] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        names = {f.lower() for f in self.fields}
        patterns = list(self.patterns)
        if not self.replace_defaults:
            names |= DEFAULT_FIELDS
            patterns = [*DEFAULT_PATTERNS, *patterns]
        object.__setattr__(self, "_fields", frozenset(names))
        object.__setattr__(self, "_pattern", re.compile("|".join(f"(?:{p})" for p in patterns)) if patterns
                           else None)
        object.__setattr__(self, "_patterns", tuple(re.compile(p) for p in patterns))
        object.__setattr__(self, "_defaults", not self.replace_defaults)
        object.__setattr__(self, "_memo", {})
        object.__setattr__(self, "_memo_chars", [0])
        object.__setattr__(self, "_keys", {})
        object.__setattr__(self, "_walker", _walker(self))

    def __call__(self, value: Any) -> Any:
        """A redacted copy of ``value`` (JSON-like data); ``value`` itself is left alone."""
        out = self._walk(value)
        return self.hook(out) if self.hook is not None else out

    def text(self, value: str) -> str:
        """``value`` with credential-shaped substrings and assigned secrets replaced."""
        if not value:
            return value
        if type(value) is not str:  # a subclass: not remembered (its result need not be a plain str)
            return self._scan(value)
        memo = self._memo
        known = memo.get(value)
        if known is not None:
            return known
        out = self._scan(value)
        if len(value) <= _MEMO_MAX_LEN:
            chars = self._memo_chars
            if chars[0] > _MEMO_MAX_CHARS:
                memo.clear()
                chars[0] = 0
            memo[value] = out
            chars[0] += len(value)
        return out

    def _scan(self, value: str) -> str:
        if self._pattern is not None:
            if len(value) < _LONG:
                value = self._pattern.sub(REDACTED, value)
            else:
                for pattern in self._patterns:
                    value = pattern.sub(REDACTED, value)
        if self._defaults:  # URL passwords and secret assignments: part of the defaults
            if "@" in value:
                value = _URL_PASSWORD.sub(lambda m: f"://{m['user']}:{REDACTED}@", value)
            value = _assignments(value)
        return value

    def _walk(self, value: Any) -> Any:
        return self._walker(value)

    def _secret(self, key: Any) -> bool:
        """Whether ``key``'s value is redacted (one of ``fields``, in any case); a string key's answer is kept."""
        if not isinstance(key, str):
            return False
        secret = key.lower() in self._fields
        if type(key) is str:
            keys = self._keys
            if len(keys) >= _KEYS_MAX:
                keys.clear()
            keys[key] = secret
        return secret


_SCALARS = frozenset({int, float, bool, type(None)})
_KEYS_MAX = 4096


def _walker(redactor: Redactor) -> Callable[[Any], Any]:
    """``redactor``'s walk of a value: a redacted copy, its rule set and memos bound once (this is on
    every LLM call's path: the whole request, each call)."""
    keys, memo, text, secret_key = redactor._keys, redactor._memo, redactor.text, redactor._secret
    fields = redactor._fields

    def walk(value: Any) -> Any:
        kind = type(value)
        if kind is dict:  # JSON's types first, without a call per scalar
            out: dict[Any, Any] = {}
            for k, v in value.items():
                if v is None:
                    out[k] = v
                    continue
                secret = keys.get(k) if type(k) is str else None  # a key's verdict, remembered
                if secret is None:
                    secret = secret_key(k)
                if secret:
                    out[k] = REDACTED
                    continue
                inner = type(v)
                if inner is str:  # a string seen before (most: an agent sends its conversation again)
                    known = memo.get(v)
                    out[k] = known if known is not None else text(v)
                else:
                    out[k] = v if inner in _SCALARS else walk(v)
            return out
        if kind is str:
            return text(value)
        if kind is list or kind is tuple:
            return [v if type(v) in _SCALARS else (memo.get(v) or text(v)) if type(v) is str else walk(v)
                    for v in value]
        if isinstance(value, str):
            return text(value)
        if isinstance(value, dict):
            return {k: (REDACTED if isinstance(k, str) and k.lower() in fields and v is not None else walk(v))
                    for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [walk(v) for v in value]
        return value

    return walk


_ASSIGNED = re.compile(_ASSIGNMENT)
_NAMES = tuple(name.lower() for name in ASSIGNED_NAMES)


def _assignments(value: str) -> str:
    """``value`` with the values of secret-named assignments redacted.

    A case-insensitive regular expression scans text much slower than a case-sensitive one
    (docs/benchmarks.md, Redaction), so the names are looked for in the lower-cased text first
    (``str.find``), and the expression is tried only where one starts."""
    lowered = value.lower()
    if len(lowered) != len(value):  # a character whose lower case is longer: positions would not match
        return _ASSIGNED.sub(_keep_name, value)
    starts: set[int] = set()
    for name in _NAMES:
        at = lowered.find(name)
        while at >= 0:
            starts.add(at)
            at = lowered.find(name, at + 1)
    if not starts:
        return value
    out: list[str] = []
    done = 0
    for start in sorted(starts):
        if start < done:
            continue
        found = _ASSIGNED.match(value, start)
        if found is not None:
            out += (value[done:start], _keep_name(found))
            done = found.end()
    out.append(value[done:])
    return "".join(out)
_URL_PASSWORD = re.compile(r"://(?P<user>[^\s/:@\"'<>]{1,256}):[^\s/@\"'<>]{1,256}@")


def redactor_of(redact: Redactor | Hook | Iterable[str] | None) -> Redactor:
    """Accept a :class:`Redactor`, a hook function, or extra field names."""
    if redact is None:
        return DEFAULT
    if isinstance(redact, Redactor):
        return redact
    if callable(redact):
        return Redactor(hook=redact)
    if isinstance(redact, str):
        return Redactor(fields=(redact,))
    return Redactor(fields=tuple(redact))


DEFAULT = Redactor()
"""The default rule set, as every path uses it unless told otherwise."""
