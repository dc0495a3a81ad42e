"""The public API: tether.adapters exports what its modules offer, tether the main entry points."""

from __future__ import annotations

import importlib

import pytest

import tether
import tether.adapters

PUBLIC_MODULES = ["_core", "_instrument", "_runs", "_tools", "_redact", "_conversation", "_httpx"]


@pytest.mark.parametrize("module", PUBLIC_MODULES)
def test_every_public_name_is_exported(module: str) -> None:
    names = importlib.import_module(f"tether.adapters.{module}").__all__
    missing = sorted(set(names) - set(tether.adapters.__all__))
    assert not missing, f"tether.adapters.{module} defines {missing} but the package does not export them"


def test_every_exported_name_exists() -> None:
    for name in tether.adapters.__all__:
        assert getattr(tether.adapters, name) is not None, name
    assert len(set(tether.adapters.__all__)) == len(tether.adapters.__all__)


def test_main_entry_points_on_tether() -> None:
    for name in ("instrument", "tool", "run", "http_client", "async_http_client"):
        assert name in tether.__all__
        assert getattr(tether, name) is getattr(tether.adapters, name)
    with pytest.raises(AttributeError):
        tether.no_such_thing  # type: ignore[attr-defined]  # noqa: B018


def test_httpx2_transports_exist_when_installed() -> None:
    httpx2 = pytest.importorskip("httpx2")
    from tether.adapters import _httpx2

    assert issubclass(_httpx2.AsyncTetherTransport, httpx2.AsyncBaseTransport)
    assert issubclass(_httpx2.TetherTransport, httpx2.BaseTransport)


def test_instrument_refuses_what_it_does_not_know() -> None:
    with pytest.raises(TypeError, match="openai or anthropic"):
        tether.instrument(object())
    with pytest.raises(ValueError, match="mode"):
        tether.adapters.Interceptor(mode="eventually")  # type: ignore[arg-type]


def test_instrumenting_twice_replaces_the_options() -> None:
    import openai

    client = openai.OpenAI(api_key="k", base_url="http://127.0.0.1:9/v1")
    tether.instrument(client, capture=True)
    transport = client._client._transport
    tether.instrument(client, capture=False, agent="second")
    assert client._client._transport is transport, "not wrapped twice"
    assert transport.interceptor.capture is False and transport.interceptor.agent == "second"  # type: ignore[attr-defined]
    assert type(transport.wrapped).__name__ == "HTTPTransport"  # type: ignore[attr-defined]
    client.close()
