"""Per-namespace encryption keys, kept outside the log, and destroyed to erase.

Every memory text (with its metadata and embedding) is sealed with AES-256-GCM under
its namespace's current key before it is published; the event names the key
(``key_id = "<namespace>#<generation>"``). Erasing a namespace destroys its keys: the
ciphertext stays in the immutable log but can never be read again, so a replay cannot
bring the content back. The next write to the namespace starts a new generation.

A :class:`KeyStore` holds the keys. :class:`FileKeyStore` (the default) is one JSON
file under ``TETHER_HOME/keys``, mode 0600, changed under an exclusive ``flock`` and
replaced atomically, so processes sharing a ``TETHER_HOME`` agree on keys; a destroyed
key leaves a tombstone (its id, never its bytes), which tells "erased" from "never
seen". :class:`InMemoryKeyStore` is the test double.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = ["DESTROYED", "FileKeyStore", "InMemoryKeyStore", "KeyStore", "content_hash", "open_sealed", "seal"]

DESTROYED: Literal["destroyed"] = "destroyed"
KeyLookup = bytes | Literal["destroyed"] | None


class KeyStore(Protocol):
    """Where namespace keys live. Implementations must be safe across threads."""

    def current(self, namespace: str) -> tuple[str, bytes]:
        """The namespace's current ``(key_id, key)``, created on first use."""

    def get(self, key_id: str) -> KeyLookup:
        """The key, :data:`DESTROYED` if it was erased, or None if never seen here."""

    def destroy(self, namespace: str) -> list[str]:
        """Destroy every key of the namespace; the ids destroyed."""


def _new_key() -> bytes:
    return AESGCM.generate_key(bit_length=256)


class _Keys:
    """The data of a keystore: keys by id, generations by namespace, tombstones."""

    def __init__(self, doc: dict[str, Any] | None = None) -> None:
        doc = doc or {}
        self.keys: dict[str, str] = dict(doc.get("keys", {}))
        self.generations: dict[str, int] = dict(doc.get("generations", {}))
        self.destroyed: dict[str, float] = dict(doc.get("destroyed", {}))

    def doc(self) -> dict[str, Any]:
        return {"format": 1, "keys": self.keys, "generations": self.generations, "destroyed": self.destroyed}

    def current(self, namespace: str) -> tuple[str, bytes] | None:
        gen = self.generations.get(namespace)
        if gen is None:
            return None
        key_id = f"{namespace}#{gen}"
        raw = self.keys.get(key_id)
        return None if raw is None else (key_id, base64.b64decode(raw))

    def create(self, namespace: str) -> tuple[str, bytes]:
        gen = self.generations.get(namespace, 0) + 1
        key_id = f"{namespace}#{gen}"
        key = _new_key()
        self.generations[namespace] = gen
        self.keys[key_id] = base64.b64encode(key).decode()
        return key_id, key

    def get(self, key_id: str) -> KeyLookup:
        raw = self.keys.get(key_id)
        if raw is not None:
            return base64.b64decode(raw)
        return DESTROYED if key_id in self.destroyed else None

    def destroy(self, namespace: str) -> list[str]:
        prefix = f"{namespace}#"
        gone = [k for k in self.keys if k.startswith(prefix)]
        now = time.time()
        for key_id in gone:
            del self.keys[key_id]
            self.destroyed[key_id] = now
        return gone


class InMemoryKeyStore:
    """Keys in this process only: for tests, and for throwaway memories."""

    def __init__(self) -> None:
        self._data = _Keys()
        self._lock = threading.Lock()

    def current(self, namespace: str) -> tuple[str, bytes]:
        with self._lock:
            return self._data.current(namespace) or self._data.create(namespace)

    def get(self, key_id: str) -> KeyLookup:
        with self._lock:
            return self._data.get(key_id)

    def destroy(self, namespace: str) -> list[str]:
        with self._lock:
            return self._data.destroy(namespace)


class FileKeyStore:
    """Keys in one JSON file (mode 0600), shared by the processes of one ``TETHER_HOME``.

    Reads are served from memory and reloaded when the file changes (one ``stat`` per
    lookup), so an erasure in another process is seen at the next lookup.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._data = _Keys()
        self._stamp: tuple[int, int, int] | None = None

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _refresh(self) -> None:
        stamp = self._stat()
        if stamp == self._stamp:
            return
        self._data = _Keys(json.loads(self.path.read_text(encoding="utf-8")) if stamp else None)
        self._stamp = stamp

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[_Keys]:
        """The keys, locked against other processes; written back atomically on exit."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(self.path.with_name(self.path.name + ".lock"), "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                self._stamp = None
                self._refresh()
                data = self._data
                before = json.dumps(data.doc(), sort_keys=True)
                yield data
                after = json.dumps(data.doc(), sort_keys=True)
                if after != before:
                    tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
                    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                    with os.fdopen(fd, "w", encoding="utf-8") as out:
                        out.write(after)
                        out.flush()
                        os.fsync(out.fileno())
                    os.replace(tmp, self.path)
                    dir_fd = os.open(self.path.parent, os.O_RDONLY)
                    try:
                        os.fsync(dir_fd)
                    finally:
                        os.close(dir_fd)
                    self._stamp = self._stat()
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def current(self, namespace: str) -> tuple[str, bytes]:
        with self._lock:
            self._refresh()
            found = self._data.current(namespace)
            if found is not None:
                return found
            with self._exclusive() as data:
                return data.current(namespace) or data.create(namespace)

    def get(self, key_id: str) -> KeyLookup:
        with self._lock:
            self._refresh()
            return self._data.get(key_id)

    def destroy(self, namespace: str) -> list[str]:
        with self._lock, self._exclusive() as data:
            return data.destroy(namespace)


# -- sealing ------------------------------------------------------------------------------


def _aad(namespace: str, key: str) -> bytes:
    return f"tether.memory\x00{namespace}\x00{key}".encode()


def seal(key: bytes, namespace: str, entry_key: str, plaintext: bytes) -> str:
    """AES-256-GCM with a random nonce, bound to the namespace and key; base64 text."""
    nonce = secrets.token_bytes(12)
    return base64.b64encode(nonce + AESGCM(key).encrypt(nonce, plaintext, _aad(namespace, entry_key))).decode()


def open_sealed(key: bytes, namespace: str, entry_key: str, sealed: str) -> bytes:
    """The plaintext of :func:`seal`; ``ValueError`` if it was tampered with or is not ours."""
    try:
        raw = base64.b64decode(sealed, validate=True)
        return AESGCM(key).decrypt(raw[:12], raw[12:], _aad(namespace, entry_key))
    except (InvalidTag, ValueError) as exc:
        raise ValueError(f"memory ciphertext for {namespace}/{entry_key} does not open with its key") from exc


def content_hash(key: bytes | None, text: str) -> str:
    """A keyed hash of the normalised text (HMAC, so it means nothing once the key is gone)."""
    normal = " ".join(text.lower().split()).encode()
    if key is None:
        return hashlib.sha256(normal).hexdigest()[:32]
    return hmac.new(key, normal, hashlib.sha256).hexdigest()[:32]
