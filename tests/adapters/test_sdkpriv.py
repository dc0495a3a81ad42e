"""The private attributes ``tether.instrument`` reaches, checked against the installed libraries.

The SDKs' ``_client`` (``tether/adapters/_sdkpriv.py``), httpx's and httpx2's ``_transport`` and
``_mounts`` (``_httpxpriv.py``) and asyncio's ``_thread_id`` and ``_ready`` (``_asynciopriv.py``). These run in
``make test`` and ``make test-lowest``: a release that changes one fails here, naming it and what
tether uses it for. No sockets: a mock transport answers.
"""

from __future__ import annotations

import asyncio
import importlib
import threading
from types import ModuleType
from typing import Any

import anthropic
import httpx
import httpx2
import openai
import pytest

from tether.adapters import _asynciopriv, _httpxpriv, _sdkpriv
from tether.adapters._asynciopriv import loop_thread_id, others_ready
from tether.adapters._httpxpriv import has_transports, wrap_transports
from tether.adapters._sdkpriv import http_client_of

from .. import _hooks as hooks

CHAT = {"id": "c1", "object": "chat.completion", "created": 0, "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}]}
MESSAGE = {"id": "msg_1", "type": "message", "role": "assistant", "model": "m", "stop_reason": "end_turn",
           "content": [{"type": "text", "text": "hi"}], "stop_sequence": None,
           "usage": {"input_tokens": 1, "output_tokens": 1}}
USER = [{"role": "user", "content": "hello"}]


def _mock(package: ModuleType, seen: list[str], body: dict[str, Any] | None = None, tag: str = "") -> Any:
    def answer(request: Any) -> Any:
        seen.append(f"{tag}{request.url.path}")
        return package.Response(200, json=body or {})

    return package.MockTransport(answer)


def _package_of(http: object) -> ModuleType:
    """httpx or httpx2, whichever the (SDK's subclass of a) client comes from."""
    roots = [cls.__module__.partition(".")[0] for cls in type(http).__mro__]
    return importlib.import_module(next(root for root in roots if root in ("httpx", "httpx2")))


def test_every_hook_is_listed_once() -> None:
    listed = [(h.distribution, h.name) for h in (*_sdkpriv.HOOKS, *_httpxpriv.HOOKS, *_asynciopriv.HOOKS)]
    assert sorted(listed) == sorted({("openai", "_client"), ("anthropic", "_client"), ("httpx", "_transport"),
                                     ("httpx", "_mounts"), ("httpx2", "_transport"), ("httpx2", "_mounts"),
                                     ("python", "_thread_id"), ("python", "_ready")})


# -- the SDKs' _client: what every request of the SDK client is sent through -------------------------------


@pytest.mark.parametrize("make", [openai.OpenAI, anthropic.Anthropic], ids=["openai", "anthropic"])
def test_the_sdk_sends_through_its_client(make: Any) -> None:
    sdk = make(api_key="k", base_url="http://sdk.test/v1", max_retries=0)
    distribution = type(sdk).__module__.partition(".")[0]
    seen: list[str] = []
    with hooks.relied_on([h for h in _sdkpriv.HOOKS if h.distribution == distribution], "_client"):
        http = http_client_of(sdk)
        assert http is not None and has_transports(http), f"_client is {http!r}, no httpx or httpx2 client"
        mock = _mock(_package_of(http), seen, MESSAGE if distribution == "anthropic" else CHAT)
        wrap_transports(http, lambda transport: mock)
        if distribution == "anthropic":
            answer: Any = sdk.messages.create(model="m", max_tokens=5, messages=USER)  # type: ignore[arg-type]
            assert answer.content[0].text == "hi"
        else:
            answer = sdk.chat.completions.create(model="m", messages=USER)  # type: ignore[arg-type]
            assert answer.choices[0].message.content == "hi"
        assert seen, "the SDK's request did not go through the client in _client"


@pytest.mark.anyio
@pytest.mark.parametrize("make", [openai.AsyncOpenAI, anthropic.AsyncAnthropic], ids=["openai", "anthropic"])
async def test_the_async_sdk_sends_through_its_client(make: Any) -> None:
    sdk = make(api_key="k", base_url="http://sdk.test/v1", max_retries=0)
    async with sdk:  # closed: an SDK client left to the GC closes itself on whatever loop runs then
        distribution = type(sdk).__module__.partition(".")[0]
        seen: list[str] = []
        with hooks.relied_on([h for h in _sdkpriv.HOOKS if h.distribution == distribution], "_client"):
            http = http_client_of(sdk)
            assert http is not None and has_transports(http), f"_client is {http!r}, no httpx or httpx2 client"
            mock = _mock(_package_of(http), seen, MESSAGE if distribution == "anthropic" else CHAT)
            wrap_transports(http, lambda transport: mock)
            if distribution == "anthropic":
                await sdk.messages.create(model="m", max_tokens=5, messages=USER)
            else:
                await sdk.chat.completions.create(model="m", messages=USER)
            assert seen, "the SDK's request did not go through the client in _client"


def test_an_sdk_client_without_one_is_refused() -> None:
    assert http_client_of(object()) is None


# -- httpx's and httpx2's _transport and _mounts ---------------------------------------------------------


@pytest.mark.parametrize("package", [httpx, httpx2], ids=["httpx", "httpx2"])
def test_the_client_sends_through_transport_and_mounts(package: ModuleType) -> None:
    relied = [h for h in _httpxpriv.HOOKS if h.distribution == package.__name__]
    seen: list[str] = []
    default, mounted = _mock(package, seen, tag="default:"), _mock(package, seen, tag="mounted:")
    client = package.Client(transport=default, mounts={"http://mounted.test": mounted, "http://unmounted.test": None})
    with hooks.relied_on(relied, "_transport", "_mounts"):
        assert has_transports(client) and client._transport is default
        assert sorted(map(repr, client._mounts.values())) == sorted([repr(mounted), repr(None)])
        wrapped: list[Any] = []

        def wrap(transport: Any) -> Any:
            wrapped.append(transport)
            return None if transport is None else _mock(package, seen, tag=f"wrapped {seen.__len__()}:")

        wrap_transports(client, wrap)
        assert sorted(map(repr, wrapped)) == sorted([repr(default), repr(mounted), repr(None)])
        seen.clear()
        for host in ("other", "mounted", "unmounted"):
            client.get(f"http://{host}.test/{host}")
        assert [s.partition(":")[2] for s in seen] == ["/other", "/mounted", "/unmounted"]
        assert not any(s.startswith(("default:", "mounted:")) for s in seen), f"an unwrapped transport answered: {seen}"


@pytest.mark.anyio
@pytest.mark.parametrize("package", [httpx, httpx2], ids=["httpx", "httpx2"])
async def test_the_async_client_sends_through_transport_and_mounts(package: ModuleType) -> None:
    relied = [h for h in _httpxpriv.HOOKS if h.distribution == package.__name__]
    seen: list[str] = []
    client = package.AsyncClient(transport=_mock(package, seen, tag="default:"),
                                 mounts={"http://mounted.test": _mock(package, seen, tag="mounted:")})
    with hooks.relied_on(relied, "_transport", "_mounts"):
        wrap_transports(client, lambda transport: _mock(package, seen, tag="wrapped:"))
        await client.get("http://other.test/a")
        await client.get("http://mounted.test/b")
        assert seen == ["wrapped:/a", "wrapped:/b"]


# -- asyncio's _thread_id ------------------------------------------------------------------------------


def test_a_running_loop_says_its_thread() -> None:
    with hooks.relied_on(_asynciopriv.HOOKS, "_thread_id"):
        loop = asyncio.new_event_loop()
        try:
            assert loop_thread_id(loop) is None, "a loop that is not running names a thread"
            answer: list[tuple[int | None, int]] = []
            thread = threading.Thread(target=lambda: answer.append(
                loop.run_until_complete(_where(loop))))
            thread.start()
            thread.join(10)
            assert answer == [(thread.ident, thread.ident)]
        finally:
            loop.close()


async def _where(loop: asyncio.AbstractEventLoop) -> tuple[int | None, int]:
    return loop_thread_id(loop), threading.get_ident()


# -- asyncio's _ready ----------------------------------------------------------------------------------


def test_a_loop_says_whether_it_has_callbacks_ready() -> None:
    with hooks.relied_on(_asynciopriv.HOOKS, "_ready"):
        async def main() -> list[bool]:
            loop = asyncio.get_running_loop()
            seen = [others_ready(loop)]  # nothing else scheduled: idle once this step yields
            loop.call_soon(lambda: None)
            seen.append(others_ready(loop))
            await asyncio.sleep(0)  # the callback ran
            seen.append(others_ready(loop))
            return seen

        assert asyncio.run(main()) == [False, True, False]


def test_a_loop_that_does_not_say_is_never_thought_busy() -> None:
    class Quiet:  # uvloop's loop keeps its callbacks out of Python's reach
        pass

    assert others_ready(Quiet()) is False  # type: ignore[arg-type]
