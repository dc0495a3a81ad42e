"""Secrets never enter the log through the gateway: gateway keys and upstream keys, wherever planted.

The agent's key travels in its headers (never recorded) and, carelessly, in a prompt and in
CloudEvents it publishes; the providers' keys are the gateway's own and must not leave it
except towards their provider. Every raw byte of the EVENTS and DLQ streams and the object
store is scanned, and so is everything the gateway and tether logged.
"""

from __future__ import annotations

import json
import logging
import secrets

import anthropic
import httpx
import openai
import pytest
from cloudevents.core.bindings import http as ce_http
from cloudevents.core.v1.event import CloudEvent

from tether.adapters.gateway import GatewayConfig, GatewayServer, digest
from tether.bus import Bus
from tether.middleware import PolicySet, ProviderConfig
from tether.schemas import uuid7
from tether.testing.fake_provider import FakeProvider

from .test_secrets import every_stored_byte, planted

pytestmark = [pytest.mark.anyio, pytest.mark.nats]


async def test_gateway_and_upstream_keys_never_reach_the_log(fake: FakeProvider, bus: Bus, policies: PolicySet,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    gateway_key = planted("gwkey")                                # in clear in the configuration
    hashed_key = "tg-" + secrets.token_urlsafe(24)               # only its SHA-256 is configured
    upstream = {"openai": planted("upopenai"), "anthropic": planted("upanthropic")}
    providers = {name: ProviderConfig(name, name, fake.url, api_key=key) for name, key in upstream.items()}
    config = GatewayConfig.from_mapping(
        {"keys": {gateway_key: "bot", f"sha256:{digest(hashed_key)}": "bot"},
         "models": {"gpt-*": "openai", "claude-*": "anthropic"}, "redact": ["customer_token"]},
        providers=providers, policies=policies, environ={})
    pasted = " ".join([gateway_key, hashed_key, *upstream.values()])
    async with GatewayServer(config, bus, port=0, grace_s=1) as server:
        async with openai.AsyncOpenAI(base_url=server.url + "/v1", api_key=gateway_key) as sdk, \
                anthropic.AsyncAnthropic(base_url=server.url, api_key=hashed_key) as claude:
            run = {"x-tether-run-id": "secrets"}
            await sdk.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": f"my keys: {pasted}"}],  # type: ignore[arg-type]
                extra_headers=run, extra_body={"customer_token": planted("custom")})
            stream = await sdk.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": pasted}], stream=True,  # type: ignore[arg-type]
                extra_headers=run)
            async for _ in stream:
                pass
            await claude.messages.create(model="claude-haiku-4-5", max_tokens=8, extra_headers=run,
                                         messages=[{"role": "user", "content": pasted + " hello" * 60_000}])  # > 256 KB
            fake.set_faults("401#1")
            with pytest.raises(openai.AuthenticationError):
                await sdk.chat.completions.create(model="gpt-4o-mini", extra_headers=run,
                                                  messages=[{"role": "user", "content": pasted}])  # type: ignore[arg-type]
            async with openai.AsyncOpenAI(base_url=server.url + "/v1", api_key=upstream["openai"]) as stranger:
                with pytest.raises(openai.AuthenticationError):
                    await stranger.models.list()
        event = CloudEvent({"id": uuid7(), "source": "urn:agent:bot", "type": "tether.tool.call.requested"},
                           {"call_id": "t1", "tool": "login", "arguments": {"token": pasted, "password": "hunter2"}})
        message = ce_http.to_structured_event(event)
        async with httpx.AsyncClient() as http:
            answer = await http.post(server.url + "/v1/events", content=message.body,
                                     headers={**message.headers, "x-api-key": gateway_key, **run})
        assert answer.status_code == 202
    await bus.flush()
    stored = await every_stored_byte(bus)
    secrets_planted = [gateway_key, hashed_key, *upstream.values()]
    assert not [s for s in secrets_planted if s.encode() in stored]
    assert b"PLANTED" not in stored and b"hunter2" not in stored
    assert stored.count(b"[redacted]") >= 10
    # what the gateway side logged (the SDKs' own debug logs are the agent's, and show its key)
    agent_side = ("openai", "anthropic", "httpx2", "httpcore2")
    logged = "\n".join(r.getMessage() + json.dumps(r.args, default=str) for r in caplog.records
                       if not r.name.startswith(agent_side))
    assert "tether" in logged or "HTTP Request" in logged
    assert not [s for s in secrets_planted if s in logged]


async def test_a_secret_split_across_a_streamed_answers_events_through_the_gateway(
        fake: FakeProvider, bus: Bus, policies: PolicySet) -> None:
    """The fake's streamed answer repeats the prompt a word an event ("Bearer", then the token): the
    gateway's record keeps the answer redacted and not its events, which would spell the token again."""
    token = secrets.token_hex(12)
    key = "tg-" + secrets.token_urlsafe(24)
    config = GatewayConfig.from_mapping({"keys": {key: "bot"}, "models": {"gpt-*": "openai"}},
                                        providers={"openai": ProviderConfig("openai", "openai", fake.url)},
                                        policies=policies, environ={})
    async with GatewayServer(config, bus, port=0, grace_s=1) as server, \
            openai.AsyncOpenAI(base_url=server.url + "/v1", api_key=key) as sdk:
        stream = await sdk.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": f"Bearer {token}"}], stream=True)
        said = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert f"Bearer {token}" in said, "the agent's stream is whole"
    stored = await every_stored_byte(bus)
    assert token.encode() not in stored and b"[redacted]" in stored
