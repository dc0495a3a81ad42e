"""NATS header blocks read and written as nats-py reads and writes them, at less cost per message.

Every tether event travels in CloudEvents binary mode, so each message carries a dozen
``ce-*`` headers, and nats-py parses every header name character by character to reject
whitespace. :func:`parse_headers` gives the same dict (``tests/bus/test_client.py`` checks
it against nats-py's own parser on well-formed and hostile blocks alike) with one
regular-expression match per header name, and falls back to nats-py's rules for any name
that is not a plain token. :func:`header_block` writes a block as nats-py's ``publish``
would (one join instead of a dozen encodes per header), or says it cannot be sure to.
"""

from __future__ import annotations

import re

__all__ = ["HeaderBlock", "header_block", "message_headers", "parse_headers"]

_TOKEN = re.compile(rb"[!-9;-~]+")  # printable ASCII but ':' and space: what a header name is
_CRLF = b"\r\n"
_HDR_LINE = b"NATS/1.0"
_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # nats-py's rule for a header name it sends
_EDGE_SPACE = re.compile(r": \s|[^\S\r\n]\r\n")  # a value nats-py would strip (or ': ' then space inside one)
_NAMES_SEEN: set[str] = set()


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


def message_headers(raw: bytes) -> dict[str, str] | None:
    """A received message's whole header block (``NATS/1.0`` first) as nats-py's client reads it: an
    inline status (``NATS/1.0 503 No Responders``) as ``Status`` and ``Description``, then the header
    lines; ``None`` when there is nothing (a raw sink's reply gets the block as bytes)."""
    head, _, rest = raw.partition(_CRLF)
    out: dict[str, str] = {}
    status = head[len(_HDR_LINE):]
    if status[:1] == b" ":  # an inline status: three digits, then its description
        code, desc = status[1:4], status[5:]
        if code.strip().isdigit():
            out["Status"] = code.strip().decode()
        if desc:
            out["Description"] = desc.decode()
    out.update(parse_headers(rest))
    return out or None


def header_block(headers: dict[str, str]) -> bytes | None:
    """The header block nats-py's ``publish`` would send for ``headers``, or None when this
    quick way cannot be sure it is the same (nats-py then writes the block itself).

    nats-py strips each name and value, turns CR and LF in a value into spaces, skips empty
    names and refuses a name that is not a token. tether's own headers need none of that, so
    the usual case is one join, checked: every name a token seen before (or matched once),
    no CR or LF but the line ends, no value with space at either edge.
    """
    for name in headers:
        if name not in _NAMES_SEEN:
            if _NAME.fullmatch(name) is None:
                return None
            if len(_NAMES_SEEN) < 4096:
                _NAMES_SEEN.add(name)
    lines = "".join([f"{k}: {v}\r\n" for k, v in headers.items()])
    n = len(headers)
    if lines.count("\n") != n or lines.count("\r") != n or _EDGE_SPACE.search(lines) is not None:
        return None
    return f"NATS/1.0\r\n{lines}\r\n".encode()


class HeaderBlock(dict[str, str]):
    """Headers with their block written beforehand (:func:`header_block`): tether's client
    sends ``block`` as it is; any other client reads the dict, as for any headers."""

    __slots__ = ("block",)

    def __init__(self, headers: dict[str, str], block: bytes) -> None:
        super().__init__(headers)
        self.block = block

    @classmethod
    def of(cls, headers: dict[str, str]) -> dict[str, str]:
        """``headers`` with their block, or ``headers`` as they are if no block can be written."""
        block = header_block(headers)
        return headers if block is None else cls(headers, block)
