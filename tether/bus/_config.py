"""Bus settings: one frozen dataclass, filled from arguments, then the environment."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from ._server import tether_home

__all__ = ["BusConfig"]

KiB = 1024
MiB = 1024 * KiB


@dataclass(frozen=True)
class BusConfig:
    """Everything ``connect()`` needs. Unset fields come from ``TETHER_*`` variables.

    ============================  =========================  ===========================
    field                          environment                default
    ============================  =========================  ===========================
    url                            TETHER_NATS_URL            embedded server
    home                           TETHER_HOME                ./.tether
    user / password                TETHER_NATS_USER/PASSWORD
    token                          TETHER_NATS_TOKEN
    creds                          TETHER_NATS_CREDS          (a .creds file)
    nkey_seed                      TETHER_NATS_NKEY           (an nkey seed file)
    tls_ca / tls_cert / tls_key    TETHER_NATS_TLS_CA/...
    replicas                       TETHER_REPLICAS            0: 1 on one server, 3 on a cluster
    ============================  =========================  ===========================
    """

    url: str | None = None
    home: Path = field(default_factory=tether_home)
    embedded: bool = True
    # auth and TLS, passed through to nats-py
    user: str | None = None
    password: str | None = None
    token: str | None = None
    creds: str | None = None
    nkey_seed: str | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_hostname: str | None = None
    name: str = "tether"
    connect_timeout: float = 5.0
    connect_attempts: int = 3
    """Tries before ``connect()`` gives up on an unreachable server; after that, reconnects never stop."""
    # streams
    provision: bool = True
    replicas: int = 0
    """Stream, KV and object store replicas; 0 (auto) is 1 on a single server and
    ``min(3, nodes)`` on a cluster, read from the server's INFO at connect."""
    dedupe_window_s: float = 120.0
    update_streams: bool = False
    # publisher
    ack_timeout_s: float = 5.0
    """A publish not acked within this bound moves to the outbox: the caller never waits longer."""
    max_pending: int = 8192
    """In-flight (unacked) events before ``emit`` applies backpressure."""
    max_block_s: float = 1.0
    """Longest ``emit`` waits for room before spilling to the outbox instead."""
    large_payload_bytes: int = 256 * KiB
    """Data above this goes to the object store; the event carries a claim check."""
    max_event_bytes: int = 64 * MiB
    """Data above this is refused at publish with ``PayloadTooLarge``."""
    outbox_max_bytes: int = 512 * MiB
    """Outbox size limit; past it, publishing raises ``OutboxFull``."""
    source: str | None = None

    @classmethod
    def from_env(cls, **overrides: Any) -> BusConfig:
        env = os.environ
        values: dict[str, Any] = {
            "url": env.get("TETHER_NATS_URL") or None,
            "user": env.get("TETHER_NATS_USER") or None,
            "password": env.get("TETHER_NATS_PASSWORD") or None,
            "token": env.get("TETHER_NATS_TOKEN") or None,
            "creds": env.get("TETHER_NATS_CREDS") or None,
            "nkey_seed": env.get("TETHER_NATS_NKEY") or None,
            "tls_ca": env.get("TETHER_NATS_TLS_CA") or None,
            "tls_cert": env.get("TETHER_NATS_TLS_CERT") or None,
            "tls_key": env.get("TETHER_NATS_TLS_KEY") or None,
        }
        if env.get("TETHER_REPLICAS"):
            values["replicas"] = int(env["TETHER_REPLICAS"])
        values = {k: v for k, v in values.items() if v is not None}
        known = {f.name for f in fields(cls)}
        unknown = set(overrides) - known
        if unknown:
            raise TypeError(f"unknown bus option(s): {', '.join(sorted(unknown))}")
        values.update({k: v for k, v in overrides.items() if v is not None})
        if "home" in values:
            values["home"] = tether_home(values["home"])
        return cls(**values)

    def with_(self, **changes: Any) -> BusConfig:
        return replace(self, **changes)

    def nats_options(self) -> dict[str, Any]:
        """Keyword arguments for ``nats.connect`` (auth, TLS, timeouts)."""
        opts: dict[str, Any] = {"name": self.name, "connect_timeout": self.connect_timeout}
        if self.user is not None:
            opts["user"] = self.user
        if self.password is not None:
            opts["password"] = self.password
        if self.token is not None:
            opts["token"] = self.token
        if self.creds is not None:
            opts["user_credentials"] = self.creds
        if self.nkey_seed is not None:
            opts["nkeys_seed"] = self.nkey_seed
        if self.tls_ca or self.tls_cert:
            import ssl

            ctx = ssl.create_default_context(cafile=self.tls_ca)
            if self.tls_cert:
                ctx.load_cert_chain(self.tls_cert, self.tls_key)
            opts["tls"] = ctx
            if self.tls_hostname:
                opts["tls_hostname"] = self.tls_hostname
        return opts
