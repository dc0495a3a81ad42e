"""What NATS can never accept, told before a message is sent: a malformed subject or header,
or a message above the server's ``max_payload``. Such a message is refused to the caller at
once, or set aside from the outbox, and never retried as if NATS were down.
"""

from __future__ import annotations

import re

from ._outbox import PendingMessage

__all__ = ["CLAIM_CHECK_HEADER_BYTES", "undeliverable"]

CLAIM_CHECK_HEADER_BYTES = 128
"""Room for the ``ce-dataref`` header a claim-checked message gains (about 80 bytes)."""

_SUBJECT_BAD_CHAR = re.compile(r"[\s\x00-\x1f\x7f]")
_HEADER_NAME = re.compile(r"[!-9;-~]+")  # printable ASCII but ':' and space
_HEADER_VALUE_BAD_CHAR = re.compile(r"[\r\n\x00]")
_HEADER_FRAME = len(b"NATS/1.0\r\n") + len(b"\r\n")


def undeliverable(message: PendingMessage, *, max_payload: int, claim_check_above: int) -> str | None:
    """Why NATS can never accept ``message``, or None if it may.

    ``max_payload`` is the server's limit (0: unknown, not checked); a payload above
    ``claim_check_above`` travels through the object store, so only its headers count.
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
    for name, value in message.headers.items():
        if not _HEADER_NAME.fullmatch(name):
            return f"header name {name!r} is not a token (printable ASCII without ':' or spaces)"
        if _HEADER_VALUE_BAD_CHAR.search(value):
            return f"header {name} has a line break or NUL in its value {value[:60]!r}"
    if max_payload <= 0:
        return None
    head = _HEADER_FRAME + sum(len(k) + len(v.encode()) + 4 for k, v in message.headers.items())
    body = len(message.payload)
    if body > claim_check_above:
        head, body = head + CLAIM_CHECK_HEADER_BYTES, 0
    if head + body > max_payload:
        return (f"the message is {head + body:,} bytes with its headers, above the NATS server's "
                f"max_payload of {max_payload:,}: raise max_payload in the server's configuration, "
                f"or lower large_payload_bytes (now {claim_check_above:,}) below it so such events "
                "travel through the object store")
    return None
