"""Who may read the dashboard and who may act on it: the token, the CSRF check, the bind rule.

The decisions are pure (:func:`is_loopback`, :func:`bind_refusal`, :func:`check_read`,
:func:`check_action`); the app calls them on each request.
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["AUTH_COOKIE", "CSRF_COOKIE", "CSRF_HEADER", "TOKEN_ENV", "Denied", "Guard", "bind_refusal",
           "is_loopback"]

AUTH_COOKIE = "tether_ui"
CSRF_COOKIE = "tether_csrf"
CSRF_HEADER = "x-csrf-token"
TOKEN_ENV = "TETHER_UI_TOKEN"


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name: it may resolve anywhere


def bind_refusal(host: str, token: str | None) -> str | None:
    """Why ``tether ui`` must not listen on ``host`` without a token, or None when it may."""
    if is_loopback(host) or token:
        return None
    return (f"--host {host} is not a loopback address: anyone who can reach it could read your runs, so a token "
            f"is required. Give one with --token TOKEN (or ${TOKEN_ENV}), e.g. --token $(openssl rand -hex 16), "
            "and open the URL tether ui prints; or leave --host out to serve on 127.0.0.1 only")


@dataclass(frozen=True)
class Denied(Exception):
    """A request refused: its HTTP status and a message saying what to do."""

    status: int
    message: str


@dataclass
class Guard:
    """The dashboard's token and its rules.

    Reads need the token only when the dashboard listens beyond loopback (``token_for_reads``);
    every action (redrive, purge) needs it always, and a CSRF token that matches the CSRF
    cookie, sent in the ``X-CSRF-Token`` header (or the ``csrf`` form field), and an ``Origin``,
    when the browser sends one, of the dashboard itself. The token comes from the URL ``tether
    ui`` prints (``?token=``, kept in an HttpOnly cookie) or an ``Authorization: Bearer`` header.
    """

    token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    token_for_reads: bool = False
    hosts: frozenset[str] = frozenset()
    """The Host headers accepted (empty: any). On loopback, only the loopback names: a page
    elsewhere cannot reach the dashboard through DNS rebinding."""

    def authenticated(self, cookies: Mapping[str, str], headers: Mapping[str, str]) -> bool:
        given = cookies.get(AUTH_COOKIE) or _bearer(headers.get("authorization", ""))
        return bool(given) and hmac.compare_digest(given.encode(), self.token.encode())

    def check_host(self, headers: Mapping[str, str]) -> None:
        if self.hosts and headers.get("host", "") not in self.hosts:
            raise Denied(421, f"this dashboard answers as {' or '.join(sorted(self.hosts))}, not "
                         f"{headers.get('host', '(no Host)')!r}")

    def check_read(self, cookies: Mapping[str, str], headers: Mapping[str, str]) -> None:
        self.check_host(headers)
        if self.token_for_reads and not self.authenticated(cookies, headers):
            raise Denied(401, "a token is required: open the URL `tether ui` printed (it ends in ?token=...), "
                         "or send Authorization: Bearer TOKEN")

    def check_action(self, cookies: Mapping[str, str], headers: Mapping[str, str], form_csrf: str | None,
                     origin_ok: bool) -> None:
        self.check_host(headers)
        if not self.authenticated(cookies, headers):
            raise Denied(401, "actions need the dashboard's token: open the URL `tether ui` (or `tether up`) "
                         "printed, which ends in ?token=..., then try again")
        if not origin_ok:
            raise Denied(403, "refused: the request came from another site (Origin does not match the dashboard)")
        sent = headers.get(CSRF_HEADER) or form_csrf or ""
        kept = cookies.get(CSRF_COOKIE, "")
        if not (sent and kept and hmac.compare_digest(sent.encode(), kept.encode())):
            raise Denied(403, "refused: missing or wrong CSRF token; reload the page and try again")


def _bearer(value: str) -> str:
    scheme, _, credentials = value.partition(" ")
    return credentials.strip() if scheme.lower() == "bearer" else ""


def new_csrf() -> str:
    return secrets.token_urlsafe(24)
