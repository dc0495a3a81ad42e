"""NATS decentralized auth: nkeys, and the operator, account and user JWTs that bind them.

A tether *realm* is one operator, one account for tether's subjects (``TETHER``) and the
system account; each agent is a user of ``TETHER`` whose JWT carries its permissions, signed
by the account key, so the server enforces them with no change to its configuration. Keys come
from the ``nkeys`` package (``pip install 'tether[auth]'``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from dataclasses import dataclass
from typing import Any

__all__ = ["AuthUnavailable", "KeyPair", "creds_file", "encode_jwt", "new_key", "server_config"]

_HEADER = {"typ": "JWT", "alg": "ed25519-nkey"}
_UNLIMITED = {"subs": -1, "data": -1, "payload": -1}


class AuthUnavailable(RuntimeError):
    """The ``nkeys`` package is missing."""


def _nkeys() -> Any:
    try:
        import nkeys
    except ImportError as exc:  # an optional dependency
        raise AuthUnavailable("NATS keys need the nkeys package: pip install 'tether[auth]'") from exc
    return nkeys


@dataclass(frozen=True)
class KeyPair:
    """An nkey: its seed (secret, ``S...``) and public key (``O...`` operator, ``A...`` account, ``U...`` user)."""

    seed: str
    public: str

    @classmethod
    def from_seed(cls, seed: str) -> KeyPair:
        kp = _nkeys().from_seed(bytearray(seed.encode()))
        return cls(seed, kp.public_key.decode())

    def sign(self, data: bytes) -> bytes:
        return bytes(_nkeys().from_seed(bytearray(self.seed.encode())).sign(data))


def new_key(kind: str) -> KeyPair:
    """A fresh key pair: ``kind`` is operator, account or user."""
    nkeys = _nkeys()
    prefix = {"operator": nkeys.PREFIX_BYTE_OPERATOR, "account": nkeys.PREFIX_BYTE_ACCOUNT,
              "user": nkeys.PREFIX_BYTE_USER}[kind]
    return KeyPair.from_seed(nkeys.encode_seed(os.urandom(32), prefix).decode())


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def encode_jwt(issuer: KeyPair, subject: str, name: str, nats: dict[str, Any]) -> str:
    """A NATS v2 JWT for ``subject``, signed by ``issuer`` (``jti`` is the claims' SHA-512/256, as NATS makes it)."""
    claims: dict[str, Any] = {"jti": "", "iat": int(time.time()), "iss": issuer.public, "name": name,
                              "sub": subject, "nats": {**nats, "version": 2}}
    digest = hashlib.new("sha512_256", json.dumps(claims, separators=(",", ":")).encode()).digest()
    claims["jti"] = base64.b32encode(digest).rstrip(b"=").decode()
    body = _b64(json.dumps(_HEADER).encode()) + "." + _b64(json.dumps(claims, separators=(",", ":")).encode())
    return body + "." + _b64(issuer.sign(body.encode()))


def operator_jwt(operator: KeyPair, system: KeyPair, name: str = "tether") -> str:
    return encode_jwt(operator, operator.public, name, {"type": "operator", "system_account": system.public})


def account_jwt(operator: KeyPair, account: KeyPair, name: str, *, jetstream: bool) -> str:
    limits: dict[str, Any] = {**_UNLIMITED, "imports": -1, "exports": -1, "wildcards": True, "conn": -1,
                              "leaf": -1}
    if jetstream:
        limits.update({"mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1})
    return encode_jwt(operator, account.public, name, {"type": "account", "limits": limits})


def user_jwt(account: KeyPair, user: KeyPair, name: str, *, publish: list[str] | None = None,
             subscribe: list[str] | None = None, deny_publish: list[str] | None = None,
             deny_subscribe: list[str] | None = None, allow_responses: bool = False) -> str:
    """A user of ``account``; ``publish``/``subscribe`` None means anything, else only those subjects."""
    nats: dict[str, Any] = {"type": "user", **_UNLIMITED}
    for key, allow, deny in (("pub", publish, deny_publish), ("sub", subscribe, deny_subscribe)):
        rule: dict[str, list[str]] = {}
        if allow is not None:
            rule["allow"] = allow
        if deny:
            rule["deny"] = deny
        if rule:
            nats[key] = rule
    if allow_responses:
        nats["resp"] = {"max": 1, "ttl": 0}
    return encode_jwt(account, user.public, name, nats)


def creds_file(jwt: str, user: KeyPair) -> str:
    """The text of a ``.creds`` file: the user's JWT and seed, as ``nsc`` writes them."""
    return (f"-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n"
            "************************* IMPORTANT *************************\n"
            "NKEY Seed printed below can be used to sign and prove identity.\n"
            "NKEYs are sensitive and should be treated as secrets.\n\n"
            f"-----BEGIN USER NKEY SEED-----\n{user.seed}\n------END USER NKEY SEED------\n\n"
            "*************************************************************\n")


def server_config(operator: str, system: KeyPair, accounts: dict[str, str]) -> str:
    """nats-server lines for operator mode with the accounts preloaded (a memory resolver):
    ``accounts`` maps each account's public key to its JWT."""
    preload = "\n".join(f"  {public}: {jwt}" for public, jwt in accounts.items())
    return (f"operator: {operator}\nsystem_account: {system.public}\nresolver: MEMORY\n"
            f"resolver_preload: {{\n{preload}\n}}\n")
