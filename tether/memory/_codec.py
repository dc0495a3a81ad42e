"""Sealing an entry into event fields, and opening it again (writers and the view share this)."""

from __future__ import annotations

import base64
import hmac
import json
import os
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ._errors import MemoryKeyMissing
from ._keys import DERIVE_LABEL, DESTROYED, ENTRY, KeyStore, derive, entry_key, normalised, open_sealed, seal

__all__ = ["Opened", "Sealer", "open_entry", "open_vector", "pack_vector", "seal_entry", "seal_vector",
           "sealed_size_bound", "unpack_vector"]


def pack_vector(vector: Sequence[float]) -> bytes:
    return struct.pack(f"<{len(vector)}f", *vector)


def unpack_vector(raw: bytes) -> tuple[float, ...]:
    return struct.unpack(f"<{len(raw) // 4}f", raw)


@dataclass(frozen=True, slots=True)
class Opened:
    text: str
    metadata: dict[str, Any]
    embedding: bytes | None
    valid_from: float | None = None
    observed_at: float | None = None
    historical: bool = False
    """Valid before the version current when it was written: recorded as history, not current."""


def seal_entry(keys: KeyStore, namespace: str, key: str, text: str, metadata: Mapping[str, Any],
               embedding: Sequence[float] | None, *, valid_from: float | None = None,
               observed_at: float | None = None, historical: bool = False) -> dict[str, Any]:
    """The ``MemoryWritten`` fields for one entry: text and metadata sealed together, the vector apart,
    under the entry's own key (derived from the namespace's current one, so it can be erased alone)."""
    return Sealer(keys).seal(namespace, key, text, metadata, embedding, valid_from=valid_from,
                             observed_at=observed_at, historical=historical)


class Sealer:
    """:func:`seal_entry` for the entries of one batch: each namespace's current key is looked up
    once (a file keystore checks its file on every lookup), then every entry derives its own.

    Less work an entry than sealing each one alone, for the same fields: the two HMACs under the
    namespace key (the entry's own key, the content hash) go on from a state keyed once per
    namespace, and the AES-GCM nonces come from the OS 64 at a time. Those keyed states live
    as long as the sealer: one batch."""

    __slots__ = ("_current", "_nonces", "_taken", "keys")

    def __init__(self, keys: KeyStore) -> None:
        self.keys = keys
        self._current: dict[str, tuple[str, bytes, Any, Any]] = {}
        self._nonces = b""
        self._taken = 0

    def current(self, namespace: str) -> tuple[str, bytes]:
        """The namespace's current key (id and bytes), looked up once."""
        key_id, key, _, _ = self._keyed(namespace)
        return key_id, key

    def _keyed(self, namespace: str) -> tuple[str, bytes, Any, Any]:
        found = self._current.get(namespace)
        if found is None:
            key_id, key = self.keys.current(namespace)
            found = self._current[namespace] = (key_id, key, hmac.new(key, DERIVE_LABEL, "sha256"),
                                                hmac.new(key, digestmod="sha256"))
        return found

    def nonce(self) -> bytes:
        """12 random bytes for one AES-GCM seal (drawn from the OS for 64 seals at a time)."""
        if self._taken >= len(self._nonces):
            self._nonces, self._taken = os.urandom(12 * 64), 0
        self._taken += 12
        return self._nonces[self._taken - 12:self._taken]

    def seal(self, namespace: str, key: str, text: str, metadata: Mapping[str, Any],
             embedding: Sequence[float] | None, *, valid_from: float | None = None,
             observed_at: float | None = None, historical: bool = False) -> dict[str, Any]:
        key_id, _, derive_state, hash_state = self._keyed(namespace)
        state = derive_state.copy()  # derive(namespace_key, key), the label already in
        state.update(key.encode())
        secret = state.digest()
        doc: dict[str, Any] = {"t": text, "m": dict(metadata)}
        if valid_from is not None:  # valid time is content too: sealed with the text
            doc["vf"] = valid_from
        if observed_at is not None:
            doc["oa"] = observed_at
        if historical:
            doc["h"] = 1
        body = json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()
        digest = hash_state.copy()  # content_hash(namespace_key, text)
        digest.update(normalised(text))
        fields: dict[str, Any] = {
            "text": seal(secret, namespace, key, body, self.nonce()),
            "key_id": key_id + ENTRY,
            "content_hash": digest.hexdigest()[:32],
        }
        if embedding is not None:
            fields["embedding"] = seal(secret, namespace, key + "\x00vec", pack_vector(embedding), self.nonce())
        return fields


def sealed_size_bound(namespace: str, key: str, text: str, metadata_chars: int, dims: int, embedder: str) -> int:
    """At most how many bytes the ``MemoryWritten`` JSON of this entry takes, sealed, before it is built.

    JSON escapes a character into 6 bytes at most (``\\u001f``; a character outside the BMP is 4
    bytes in UTF-8 and one in Python), ``metadata_chars`` is the length of the metadata's JSON as
    ``json.dumps(ensure_ascii=False)`` writes it (4 bytes a character at most), the sealed body and
    vector gain a nonce and a tag and are base64 text; 1 KiB covers the other fields (key id, hash,
    version, times). ``tests/memory/test_bulk_writes.py`` holds it against real payloads.
    """
    body = 6 * len(text) + 4 * metadata_chars + 128  # {"t":..,"m":..,"vf":..,"oa":..,"h":1}
    sealed = 4 * ((body + 28 + 2) // 3)
    vector = 4 * ((4 * dims + 28 + 2) // 3) if dims else 0
    return sealed + vector + 6 * (2 * len(namespace) + len(key) + len(embedder)) + 1024


def open_entry(keys: KeyStore, namespace: str, key: str, key_id: str | None, text: str,
               metadata: Mapping[str, Any], embedding: str | None) -> Opened | None:
    """The plaintext of an entry; None once its key was destroyed (erased)."""
    if key_id is None:  # written without encryption (by another producer)
        vec = base64.b64decode(embedding) if embedding else None
        return Opened(text, dict(metadata), vec)
    secret = _secret(keys, key, key_id)
    if secret is None:
        return None
    doc = json.loads(open_sealed(secret, namespace, key, text))
    vec = open_sealed(secret, namespace, key + "\x00vec", embedding) if embedding else None
    return Opened(str(doc["t"]), dict(doc.get("m") or {}), vec, _epoch(doc.get("vf")), _epoch(doc.get("oa")),
                  bool(doc.get("h")))


def open_vector(keys: KeyStore, namespace: str, key: str, key_id: str | None, embedding: str) -> bytes | None:
    """A vector sealed apart from its entry (``memory.embedded``), as :func:`open_entry` opens one; None
    once its key was destroyed (erased)."""
    if key_id is None:
        return base64.b64decode(embedding)
    secret = _secret(keys, key, key_id)
    if secret is None:
        return None
    return open_sealed(secret, namespace, key + "\x00vec", embedding)


def _secret(keys: KeyStore, key: str, key_id: str) -> bytes | None:
    """The key that opens an entry sealed under ``key_id``; None once it was destroyed (erased)."""
    secret = entry_key(keys, key_id.removesuffix(ENTRY), key) if key_id.endswith(ENTRY) else keys.get(key_id)
    if secret == DESTROYED:
        return None
    if secret is None:
        raise MemoryKeyMissing(f"memory key {key_id!r} is not in this keystore (and was never erased here): "
                               "this process cannot read that namespace; use the TETHER_HOME (or keystore) "
                               "its writers use")
    return secret


def seal_vector(keys: KeyStore | Sealer, namespace: str, key: str, vector: Sequence[float]) -> dict[str, str]:
    """``embedding`` and ``key_id`` of a ``memory.embedded`` event: the vector sealed under the entry's
    own key, derived from the namespace's current one (so erasing the entry makes it unreadable too)."""
    key_id, namespace_key = keys.current(namespace)
    return {"embedding": seal(derive(namespace_key, key), namespace, key + "\x00vec", pack_vector(vector)),
            "key_id": key_id + ENTRY}


def _epoch(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
