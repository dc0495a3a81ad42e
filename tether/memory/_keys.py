"""Per-namespace encryption keys, kept outside the log, and destroyed to erase.

Every memory text (with its metadata and embedding) is sealed with AES-256-GCM under a
key of its own, derived from its namespace's current key and the entry's key
(:func:`derive`); the event names it (``key_id = "<namespace>#<generation>/entry"``).
Erasing a namespace destroys its keys: the ciphertext stays in the immutable log but can
never be read again, so a replay cannot bring the content back. Erasing one entry
(:meth:`KeyStore.shred`) keeps the derived keys of every *other* entry, destroys the
generation key they came from (so the erased entry's key can never be derived again)
and starts a new generation. Events sealed before per-entry keys name the namespace key
itself (``"<namespace>#<generation>"``); they stay readable and erasable by namespace.

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
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = [
    "DESTROYED",
    "ENTRY",
    "FileKeyStore",
    "InMemoryKeyStore",
    "KeyStore",
    "NatsKeyStore",
    "content_hash",
    "derive",
    "entry_key",
    "open_sealed",
    "pinned",
    "seal",
]

DESTROYED: Literal["destroyed"] = "destroyed"
KeyLookup = bytes | Literal["destroyed"] | None
ENTRY = "/entry"
"""Suffix of an event's ``key_id`` whose text is sealed under the entry's own (derived) key."""


class KeyStore(Protocol):
    """Where namespace keys live. Implementations must be safe across threads."""

    def current(self, namespace: str) -> tuple[str, bytes]:
        """The namespace's current ``(key_id, key)``, created on first use."""

    def get(self, key_id: str) -> KeyLookup:
        """The key, :data:`DESTROYED` if it was erased, or None if never seen here."""

    def destroy(self, namespace: str) -> list[str]:
        """Destroy every key of the namespace; the ids destroyed."""

    def shred(self, namespace: str, entry: str, keep: Iterable[str]) -> list[str]:
        """Make ``entry``'s key underivable: store the derived keys of the ``keep`` entries, destroy the
        namespace's generation keys (and any stored key of ``entry``), start a new generation; the ids
        destroyed."""


def _new_key() -> bytes:
    return AESGCM.generate_key(bit_length=256)


DERIVE_LABEL = b"tether.memory.entry\x00"
"""What :func:`derive` puts before the entry's key."""


def derive(namespace_key: bytes, entry: str) -> bytes:
    """The entry's own key: HMAC-SHA256 of its key under the namespace key (a PRF of a random key)."""
    return hmac.digest(namespace_key, DERIVE_LABEL + entry.encode(), "sha256")


def entry_id(key_id: str, entry: str) -> str:
    """The id under which a shredded generation keeps ``entry``'s derived key."""
    return f"{key_id}/{hashlib.sha256(entry.encode()).hexdigest()[:32]}"


def pinned(keys: KeyStore) -> contextlib.AbstractContextManager[None]:
    """``keys.pinned()`` for a store that has it (:class:`FileKeyStore`), else nothing."""
    pin = getattr(keys, "pinned", None)
    return pin() if pin is not None else contextlib.nullcontext()


def entry_key(keys: KeyStore, key_id: str, entry: str) -> KeyLookup:
    """The key ``entry`` was sealed with under generation ``key_id`` (``"<namespace>#<n>"``):
    derived while the generation key exists, else the one kept when another entry was erased;
    :data:`DESTROYED` if the generation is gone and this entry's key was not kept."""
    base = keys.get(key_id)
    if isinstance(base, bytes):
        return derive(base, entry)
    kept = keys.get(entry_id(key_id, entry))
    if isinstance(kept, bytes):
        return kept
    return DESTROYED if (base == DESTROYED or kept == DESTROYED) else None


class _Keys:
    """The data of a keystore: keys by id, generations by namespace, tombstones."""

    def __init__(self, doc: dict[str, Any] | None = None) -> None:
        doc = doc or {}
        self.keys: dict[str, str] = dict(doc.get("keys", {}))
        self.generations: dict[str, int] = dict(doc.get("generations", {}))
        self.destroyed: dict[str, float] = dict(doc.get("destroyed", {}))
        # namespace -> its first generation whose key only derives entry keys (none before it sealed anything)
        self.derived: dict[str, int] = dict(doc.get("derived", {}))
        self._decoded: dict[str, bytes] = {}  # key id -> key bytes, filled by get (the fold's hot path)

    def doc(self) -> dict[str, Any]:
        return {"format": 2, "keys": self.keys, "generations": self.generations, "destroyed": self.destroyed,
                "derived": self.derived}

    def current(self, namespace: str) -> tuple[str, bytes] | None:
        """The current generation's key, if that generation derives entry keys (a generation an older
        tether sealed with directly is left behind: it may hold texts no entry key can erase)."""
        gen = self.generations.get(namespace)
        if gen is None or gen < self.derived.get(namespace, gen + 1):
            return None
        key_id = f"{namespace}#{gen}"
        raw = self.keys.get(key_id)
        return None if raw is None else (key_id, base64.b64decode(raw))

    def create(self, namespace: str) -> tuple[str, bytes]:
        gen = self.generations.get(namespace, 0) + 1
        key_id = f"{namespace}#{gen}"
        key = _new_key()
        self.generations[namespace] = gen
        self.derived.setdefault(namespace, gen)
        self.keys[key_id] = base64.b64encode(key).decode()
        return key_id, key

    def get(self, key_id: str) -> KeyLookup:
        found = self._decoded.get(key_id)
        if found is not None and key_id in self.keys:
            return found
        raw = self.keys.get(key_id)
        if raw is not None:
            found = self._decoded[key_id] = base64.b64decode(raw)
            return found
        self._decoded.pop(key_id, None)
        return DESTROYED if key_id in self.destroyed else None

    def destroy(self, namespace: str) -> list[str]:
        self._decoded.clear()
        prefix = f"{namespace}#"
        gone = [k for k in self.keys if k.startswith(prefix)]
        now = time.time()
        for key_id in gone:
            del self.keys[key_id]
            self.destroyed[key_id] = now
        return gone

    def shred(self, namespace: str, entry: str, keep: Iterable[str]) -> list[str]:
        prefix = f"{namespace}#"
        first = self.derived.get(namespace)
        if first is None:
            return []
        keep = [k for k in dict.fromkeys(keep) if k != entry]
        self._decoded.clear()
        now = time.time()
        gone: list[str] = []
        for key_id in [k for k in self.keys if k.startswith(prefix) and "/" not in k]:
            if int(key_id[len(prefix):]) < first:
                continue  # an older tether sealed with it directly: not an entry-key generation
            base = base64.b64decode(self.keys.pop(key_id))
            for other in keep:
                self.keys[entry_id(key_id, other)] = base64.b64encode(derive(base, other)).decode()
            self.destroyed[key_id] = now
            gone.append(key_id)
        suffix = entry_id("", entry)
        for key_id in [k for k in self.keys if k.startswith(prefix) and k.endswith(suffix)]:
            del self.keys[key_id]
            self.destroyed[key_id] = now
            gone.append(key_id)
        self.create(namespace)
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

    def shred(self, namespace: str, entry: str, keep: Iterable[str]) -> list[str]:
        with self._lock:
            return self._data.shred(namespace, entry, keep)


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
        self._pinned = threading.local()

    @contextlib.contextmanager
    def pinned(self) -> Iterator[None]:
        """Within, this thread's ``get`` uses the keys as the file held them on entry (one ``stat``,
        not one per lookup): the view folds a batch so. An erasure another process makes meanwhile
        is recorded in the log after its keys are destroyed, and folding that record scrubs what
        the batch opened."""
        with self._lock:
            self._refresh()
        self._pinned.on = True
        try:
            yield
        finally:
            self._pinned.on = False

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
            if not getattr(self._pinned, "on", False):
                self._refresh()
            return self._data.get(key_id)

    def destroy(self, namespace: str) -> list[str]:
        with self._lock, self._exclusive() as data:
            return data.destroy(namespace)

    def shred(self, namespace: str, entry: str, keep: Iterable[str]) -> list[str]:
        with self._lock, self._exclusive() as data:
            return data.shred(namespace, entry, keep)


class NatsKeyStore:
    """Keys in a NATS KV bucket (``tether-keys``): one store for every host of a deployment.

    One value per namespace (its keys, generations and tombstones, as :class:`FileKeyStore`
    keeps them), changed by compare-and-set, so hosts agree on each namespace's keys. The bucket
    keeps one revision per value: writing a namespace's new value (a key destroyed) removes the
    old one, with the key's bytes, from the stream on every replica. Every host follows the
    bucket (a KV watch): an erasure made on one host is seen by the others as soon as the watch
    delivers it (milliseconds), and by any replay from then on. ``tether auth`` gives agents no
    access to the bucket: only tether's service identity (or whoever holds the account) reads it.

    The NATS connection runs on a thread of its own, so the store's methods, like the other
    stores', may be called from any thread, the event loop's included (they wait for NATS).
    """

    BUCKET = "tether-keys"

    def __init__(self, servers: str | list[str], *, bucket: str = BUCKET, replicas: int = 0,
                 timeout: float = 5.0, **nats_options: Any) -> None:
        import asyncio

        self.bucket = bucket
        self.timeout = timeout
        self._servers = [u.strip() for u in servers.split(",") if u.strip()] if isinstance(servers, str) \
            else list(servers)
        self._options = nats_options
        self._replicas = replicas
        self._lock = threading.Lock()
        self._docs: dict[str, tuple[int, _Keys]] = {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tether-keys", daemon=True)
        self._thread.start()
        self._nc: Any = None
        self._kv: Any = None
        self._watch: Any = None
        try:
            self._call(self._open())
        except BaseException:
            self.close()
            raise

    @classmethod
    def for_bus(cls, bus: Any, **kwargs: Any) -> NatsKeyStore:
        """A store on the NATS a bus uses, with its credentials and replicas."""
        options = bus.config.nats_options()
        options.pop("name", None)
        return cls(bus.servers, replicas=bus.config.replicas, **options, **kwargs)

    def _call(self, coro: Any) -> Any:
        import asyncio

        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(self.timeout * 3)

    async def _open(self) -> None:
        import nats
        from nats.js.api import KeyValueConfig, StorageType
        from nats.js.errors import BucketNotFoundError, NotFoundError

        async def quiet(_exc: Exception) -> None:
            return None

        self._nc = await nats.connect(servers=self._servers, name="tether-keys", error_cb=quiet,
                                      max_reconnect_attempts=-1, **self._options)
        js = self._nc.jetstream(timeout=self.timeout)
        try:
            self._kv = await js.key_value(self.bucket)
        except (BucketNotFoundError, NotFoundError):
            replicas = self._replicas or (3 if len(self._nc.servers) >= 3 else 1)  # the nodes it knows of
            self._kv = await js.create_key_value(KeyValueConfig(
                bucket=self.bucket, history=1, storage=StorageType.FILE, replicas=replicas,
                description="tether: memory erasure keys (destroyed to erase)"))
        self._watch = await self._kv.watchall()
        self._loop.create_task(self._follow())

    async def _follow(self) -> None:
        """Keep each namespace's value current as the bucket changes (this host's writes and others')."""
        from nats.js.kv import KV_DEL, KV_PURGE

        async for entry in self._watch:
            if entry is None:
                continue  # the end of the initial values
            with self._lock:
                if entry.operation in (KV_DEL, KV_PURGE):
                    self._docs.pop(entry.key, None)
                    continue
                have = self._docs.get(entry.key)
                if have is None or have[0] < entry.revision:
                    self._docs[entry.key] = (entry.revision, _Keys(json.loads(entry.value)))

    @staticmethod
    def _kv_key(namespace: str) -> str:
        return "ns." + base64.b32encode(namespace.encode()).decode().rstrip("=")

    @staticmethod
    def _namespace(key_id: str) -> str:
        return key_id.rsplit("#", 1)[0]

    def _cached(self, namespace: str) -> _Keys | None:
        with self._lock:
            found = self._docs.get(self._kv_key(namespace))
        return found[1] if found else None

    def _mutate(self, namespace: str, change: Any) -> Any:
        return self._call(self._mutate_async(namespace, change))

    async def _mutate_async(self, namespace: str, change: Any) -> Any:
        from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

        key = self._kv_key(namespace)
        while True:
            try:
                entry = await self._kv.get(key)
                revision, doc = entry.revision, json.loads(entry.value)
            except KeyNotFoundError:
                revision, doc = 0, None
            data = _Keys(doc)
            before = json.dumps(data.doc(), sort_keys=True)
            result = change(data)
            after = json.dumps(data.doc(), sort_keys=True)
            if after == before:
                with self._lock:
                    have = self._docs.get(key)
                    if revision and (have is None or have[0] < revision):
                        self._docs[key] = (revision, data)
                return result
            try:
                if revision:
                    revision = await self._kv.update(key, after.encode(), last=revision)
                else:
                    revision = await self._kv.create(key, after.encode())
            except (KeyWrongLastSequenceError, KeyNotFoundError):
                # Another host changed it meanwhile: again, on its value. (nats-py's create says
                # KeyNotFoundError when it loses the race and cannot read the winner's value yet.)
                continue
            with self._lock:
                have = self._docs.get(key)
                if have is None or have[0] < revision:
                    self._docs[key] = (revision, _Keys(json.loads(after)))
            return result

    def current(self, namespace: str) -> tuple[str, bytes]:
        data = self._cached(namespace)
        found = data.current(namespace) if data is not None else None
        if found is not None:
            return found
        result: tuple[str, bytes] = self._mutate(namespace, lambda d: d.current(namespace) or d.create(namespace))
        return result

    def get(self, key_id: str) -> KeyLookup:
        namespace = self._namespace(key_id)
        data = self._cached(namespace)
        if data is None:
            self._mutate(namespace, lambda d: None)  # not followed yet: read it once
            data = self._cached(namespace)
        with self._lock:
            return data.get(key_id) if data is not None else None

    def destroy(self, namespace: str) -> list[str]:
        gone: list[str] = self._mutate(namespace, lambda d: d.destroy(namespace))
        return gone

    def shred(self, namespace: str, entry: str, keep: Iterable[str]) -> list[str]:
        keep = list(keep)
        gone: list[str] = self._mutate(namespace, lambda d: d.shred(namespace, entry, keep))
        return gone

    def close(self) -> None:
        async def stop() -> None:
            if self._watch is not None:
                with contextlib.suppress(Exception):
                    await self._watch.stop()
            if self._nc is not None:
                with contextlib.suppress(Exception):
                    await self._nc.close()

        if self._thread.is_alive():
            with contextlib.suppress(Exception):
                self._call(stop())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)


# -- sealing ------------------------------------------------------------------------------


def _aad(namespace: str, key: str) -> bytes:
    return f"tether.memory\x00{namespace}\x00{key}".encode()


def seal(key: bytes, namespace: str, entry_key: str, plaintext: bytes, nonce: bytes | None = None) -> str:
    """AES-256-GCM with a random nonce (12 bytes from the OS, drawn here unless given), bound to the
    namespace and key; base64 text."""
    nonce = nonce or secrets.token_bytes(12)
    return base64.b64encode(nonce + AESGCM(key).encrypt(nonce, plaintext, _aad(namespace, entry_key))).decode()


def open_sealed(key: bytes, namespace: str, entry_key: str, sealed: str) -> bytes:
    """The plaintext of :func:`seal`; ``ValueError`` if it was tampered with or is not ours."""
    try:
        raw = base64.b64decode(sealed, validate=True)
        return AESGCM(key).decrypt(raw[:12], raw[12:], _aad(namespace, entry_key))
    except (InvalidTag, ValueError) as exc:
        raise ValueError(f"memory ciphertext for {namespace}/{entry_key} does not open with its key") from exc


def normalised(text: str) -> bytes:
    """What :func:`content_hash` hashes: the text lower-cased, its runs of white space one space."""
    return " ".join(text.lower().split()).encode()


def content_hash(key: bytes | None, text: str) -> str:
    """A keyed hash of the normalised text (HMAC, so it means nothing once the key is gone)."""
    normal = normalised(text)
    if key is None:
        return hashlib.sha256(normal).hexdigest()[:32]
    return hmac.digest(key, normal, "sha256").hex()[:32]
