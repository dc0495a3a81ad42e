"""What can go wrong with memory, each as its own exception with a message that says what to do."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._types import BulkWritten

__all__ = [
    "BulkWriteFailed",
    "InvalidMemory",
    "MemoryAccessDenied",
    "MemoryKeyMissing",
    "MemoryNotFound",
    "TetherMemoryError",
    "VersionConflict",
]


class TetherMemoryError(Exception):
    """Base of every tether.memory error."""


class InvalidMemory(TetherMemoryError, ValueError):
    """Bad input: an empty or oversized text, a malformed namespace or key, a bad filter."""


class MemoryNotFound(TetherMemoryError, KeyError):
    """No such entry (never written, deleted, expired or erased) in the namespace, at that point."""

    def __init__(self, namespace: str, key: str, detail: str = "") -> None:
        self.namespace = namespace
        self.key = key
        super().__init__(f"no memory {key!r} in namespace {namespace!r}{detail}")

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class VersionConflict(TetherMemoryError):
    """``expected_version`` did not match: another writer got there first. Re-read and retry."""

    def __init__(self, namespace: str, key: str, expected: int, actual: int) -> None:
        self.namespace = namespace
        self.key = key
        self.expected = expected
        self.actual = actual
        have = "does not exist" if actual == 0 else f"is at version {actual}"
        super().__init__(f"version conflict on {namespace}/{key}: expected version {expected}, but the entry "
                         f"{have}; read it again and retry (or write without expected_version to overwrite)")


class MemoryAccessDenied(TetherMemoryError, PermissionError):
    """The agent has no grant for this namespace (``[memory.grants]`` in tether.toml)."""

    def __init__(self, agent: str | None, namespace: str, mode: str) -> None:
        self.agent = agent
        self.namespace = namespace
        self.mode = mode
        who = f"agent {agent!r}" if agent else "a process without an agent id"
        super().__init__(f"{who} may not {mode} memory namespace {namespace!r}: add it to the agent's "
                         f"{mode} grants under [memory.grants] in tether.toml")


class MemoryKeyMissing(TetherMemoryError):
    """An encrypted entry names a key this keystore has never held (not an erased one)."""


class BulkWriteFailed(TetherMemoryError):
    """NATS refused some writes of a :meth:`write_many` for good (a stream limit, a permission):
    ``failed`` lists each as ``(index, namespace, key, reason)``; every other write of the batch
    landed (or waits in the outbox), as ``written`` says."""

    def __init__(self, failed: tuple[tuple[int, str, str, str], ...], written: BulkWritten) -> None:
        self.failed = failed
        self.written = written
        shown = "; ".join(f"item {i} ({ns}/{key}): {why}" for i, ns, key, why in failed[:3])
        more = f"; and {len(failed) - 3:,} more" if len(failed) > 3 else ""
        super().__init__(f"{len(failed):,} of {len(failed) + written.count:,} writes did not land, refused by "
                         f"NATS: {shown}{more}. The other {written.count:,} are written. Fix the cause, then write "
                         "the failed items again (BulkWriteFailed.failed has their indexes)")
