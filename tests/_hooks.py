"""The contract tests' one helper: a failure inside names the private attribute and what tether uses it for."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import pytest

from tether._hooks import Hook


@contextlib.contextmanager
def relied_on(hooks: Iterable[Hook], *names: str) -> Iterator[None]:
    """Run a check of the hooks called ``names`` (of ``hooks``); any exception inside fails the
    test with each hook's :meth:`~tether._hooks.Hook.broken` message."""
    chosen = [hook for hook in hooks if hook.name in names]
    assert {hook.name for hook in chosen} == set(names), f"no such hook: {set(names) - {h.name for h in chosen}}"
    problem = None
    try:
        yield
    except Exception as exc:
        problem = f"{type(exc).__name__}: {exc}"
    if problem is not None:
        raise pytest.fail.Exception("\n".join(hook.broken(problem) for hook in chosen), pytrace=False) from None
