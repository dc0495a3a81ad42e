"""NATS header blocks read as nats-py reads them, at less cost per message.

Every tether event travels in CloudEvents binary mode, so each message carries a dozen
``ce-*`` headers, and nats-py parses every header name character by character to reject
whitespace. :func:`parse_headers` gives the same dict (``tests/bus/test_client.py`` checks
it against nats-py's own parser on well-formed and hostile blocks alike) with one
regular-expression match per header name, and falls back to nats-py's rules for any name
that is not a plain token.
"""

from __future__ import annotations

import re

__all__ = ["parse_headers"]

_TOKEN = re.compile(rb"[!-9;-~]+")  # printable ASCII but ':' and space: what a header name is
_CRLF = b"\r\n"


def parse_headers(raw: bytes) -> dict[str, str]:
    """A NATS header block (``Name: Value`` lines) as a dict, exactly as nats-py reads it."""
    out: dict[str, str] = {}
    for line in raw.split(_CRLF):
        name, sep, value = line.partition(b":")
        if not sep:
            continue
        name = name.strip()
        if _TOKEN.fullmatch(name) is not None:
            out[name.decode("ascii")] = value.strip().decode("utf-8", "replace")
            continue
        try:  # not a plain token: nats-py's own rules for this line
            key = name.decode("ascii")
        except UnicodeDecodeError:
            continue
        if any(c.isspace() for c in key):
            continue
        out[key] = value.strip().decode("utf-8", "replace")
    return out
