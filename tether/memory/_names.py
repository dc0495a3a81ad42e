"""Namespaces and keys: what is valid, and where their events live on the bus.

A namespace is ``global`` or ``<scope>:<id>`` with scope ``agent``, ``user``, ``team`` (or
any other lower-case word) and an id of letters, digits and ``_ - . @ + = ~``. Namespaces
are short and safe so their subject token is the namespace itself (``docs/subjects.md``).
Keys are free text up to 256 characters without control characters; ``*`` is reserved
(an erasure event uses it for "every key").
"""

from __future__ import annotations

import re

from tether.bus import encode_token

from ._errors import InvalidMemory

__all__ = ["ALL_KEYS", "MAX_KEY", "MAX_NAMESPACE", "check_key", "check_namespace", "namespace_filter"]

MAX_NAMESPACE = 100
MAX_KEY = 256
ALL_KEYS = "*"
_NAMESPACE = re.compile(r"global|[a-z][a-z0-9_-]{0,30}:[A-Za-z0-9_.@+=~-]{1,90}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_namespace(namespace: object) -> str:
    """The namespace, or ``InvalidMemory`` saying what a valid one looks like."""
    if not isinstance(namespace, str) or not namespace:
        raise InvalidMemory(f"namespace must be a non-empty string, got {namespace!r}")
    if len(namespace) > MAX_NAMESPACE or not _NAMESPACE.fullmatch(namespace):
        raise InvalidMemory(
            f"invalid namespace {namespace!r}: use 'global' or '<scope>:<id>' such as 'agent:support-bot', "
            "'user:42', 'team:docs' (scope: lower-case letters; id: letters, digits and _ - . @ + = ~; "
            f"at most {MAX_NAMESPACE} characters)")
    return namespace


def check_key(key: object) -> str:
    if not isinstance(key, str) or not key.strip():
        raise InvalidMemory(f"key must be a non-empty string, got {key!r}")
    if key == ALL_KEYS:
        raise InvalidMemory("key '*' is reserved (it means every key of a namespace in erasure events)")
    if len(key) > MAX_KEY or _CONTROL.search(key):
        raise InvalidMemory(f"invalid key {key[:40]!r}: at most {MAX_KEY} characters, no control characters")
    return key


def namespace_filter(namespace: str) -> str:
    """Every memory event of one namespace, from any agent and run."""
    return f"tether.evt.*.*.memory.*.{encode_token(namespace)}"
