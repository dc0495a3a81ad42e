"""``open_bucket`` waits out a cluster's first seconds instead of failing a service's start.

Seen in CI: two workers started together on a new three-node cluster; one worker's first
JetStream API request (the breakers bucket's info) went unanswered while the meta leader was busy
creating the other's bucket, and the worker exited. Now a transient error is tried again for a
bounded time; a refusal for good and an error past the patience are raised.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import nats.errors
import nats.js.errors
import pytest

from tether.bus import open_bucket


class Js:
    """A JetStream context whose first ``key_value`` calls fail as given, then find the bucket."""

    def __init__(self, *failures: BaseException) -> None:
        self.failures = list(failures)
        self.calls = 0

    async def key_value(self, name: str) -> Any:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return SimpleNamespace(name=name, _direct=True)


@pytest.mark.anyio
async def test_a_timeout_and_a_503_are_waited_out() -> None:
    js = Js(nats.errors.TimeoutError(), nats.js.errors.ServiceUnavailableError())
    kv = await open_bucket(js, "tether_breakers", replicas=3)  # type: ignore[arg-type]
    assert kv.name == "tether_breakers" and js.calls == 3


@pytest.mark.anyio
async def test_past_its_patience_the_last_error_is_raised() -> None:
    js = Js(*(nats.errors.TimeoutError() for _ in range(100)))
    with pytest.raises(nats.errors.TimeoutError):
        await open_bucket(js, "tether_breakers", patience=0.3)  # type: ignore[arg-type]
    assert 2 <= js.calls < 100


@pytest.mark.anyio
async def test_a_refusal_is_raised_at_once() -> None:
    js = Js(nats.js.errors.APIError(code=403, description="permissions violation"))
    with pytest.raises(nats.js.errors.APIError):
        await open_bucket(js, "tether_breakers")  # type: ignore[arg-type]
    assert js.calls == 1
