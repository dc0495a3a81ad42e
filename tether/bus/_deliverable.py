"""What NATS can never accept, told before a message is sent: a malformed subject or header,
or a message above the server's ``max_payload``. Such a message is refused to the caller at
once, or set aside from the outbox, and never retried as if NATS were down.
"""

from __future__ import annotations

import re

from ._outbox import PendingMessage

__all__ = ["CLAIM_CHECK_HEADER_BYTES", "malformed", "oversized", "undeliverable"]

CLAIM_CHECK_HEADER_BYTES = 128
"""Room for the ``ce-dataref`` header a claim-checked message gains (about 80 bytes)."""

_SUBJECT_BAD_CHAR = re.compile(r"[\s\x00-\x1f\x7f]")
_HEADER_NAME_BAD_CHAR = re.compile(r"[^!-9;-~]")  # a name is printable ASCII but ':' and space
_HEADER_VALUE_BAD_CHAR = re.compile(r"[\r\n\x00]")
_HEADER_FRAME = len(b"NATS/1.0\r\n") + len(b"\r\n")


def undeliverable(message: PendingMessage, *, max_payload: int, claim_check_above: int) -> str | None:
    """Why NATS can never accept ``message``, or None if it may: :func:`malformed`, then
    :func:`oversized`. For messages from elsewhere (an outbox an older tether wrote)."""
    return malformed(message) or oversized(message, max_payload=max_payload, claim_check_above=claim_check_above)


def malformed(message: PendingMessage) -> str | None:
    """What is wrong with the subject or a header of ``message``, or None.

    A message the publisher builds from an event is well formed by construction (ids are
    encoded into tokens, header values percent-encoded, attribute names validated); this is
    for messages from elsewhere.
    """
    subject = message.subject
    if not subject or _SUBJECT_BAD_CHAR.search(subject):
        return (f"subject {subject!r} is not a valid NATS subject (empty, or it has whitespace "
                "or control characters)")
    tokens = subject.split(".")
    if "" in tokens:
        return f"subject {subject!r} has an empty token"
    if "*" in tokens or ">" in tokens:
        return f"subject {subject!r} has a wildcard token; messages are published on literal subjects"
    headers = message.headers
    for name, value in headers.items():
        if not name or _HEADER_NAME_BAD_CHAR.search(name):
            return f"header name {name!r} is not a token (printable ASCII without ':' or spaces)"
        if _HEADER_VALUE_BAD_CHAR.search(value):
            return f"header {name} has a line break or NUL in its value {value[:60]!r}"
    return None


def oversized(message: PendingMessage, *, max_payload: int, claim_check_above: int) -> str | None:
    """Why ``message`` is above the server's ``max_payload`` (headers included), or None.

    ``max_payload`` 0 means unknown (not checked); a payload above ``claim_check_above``
    travels through the object store, so only its headers count.
    """
    if max_payload <= 0:
        return None
    body = len(message.payload)
    if body > claim_check_above:
        body = CLAIM_CHECK_HEADER_BYTES
    headers = message.headers
    chars = sum(map(len, headers)) + sum(map(len, headers.values()))
    if body + _HEADER_FRAME + 4 * len(headers) + 4 * chars <= max_payload:
        return None  # even at 4 UTF-8 bytes a character: the common case, counted cheaply
    head = _HEADER_FRAME + sum(len(k.encode()) + len(v.encode()) + 4 for k, v in headers.items())
    if head + body > max_payload:
        return (f"the message is {head + body:,} bytes with its headers, above the NATS server's "
                f"max_payload of {max_payload:,}: raise max_payload in the server's configuration, "
                f"or lower large_payload_bytes (now {claim_check_above:,}) below it so such events "
                "travel through the object store")
    return None
