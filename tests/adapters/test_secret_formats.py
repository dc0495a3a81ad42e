"""One rule set on every path: each well-known secret format, pasted into a prompt, a tool's
arguments or an ingested event, is redacted through ``tether.instrument`` (the real openai SDK
against the fake provider), through the gateway, and by ``Redactor`` alone."""

from __future__ import annotations

import secrets
import string
import time

import httpx
import openai
import pytest
from cloudevents.core.bindings import http as ce_http
from cloudevents.core.v1.event import CloudEvent

import tether
from tether.adapters import REDACTED, Redactor
from tether.adapters.gateway import GatewayServer
from tether.bus import Bus
from tether.middleware import PolicySet
from tether.schemas import uuid7
from tether.testing.fake_provider import FakeProvider

from .conftest import GATEWAY_KEY, gateway_config, run_events
from .test_secrets import every_stored_byte

pytestmark = [pytest.mark.anyio]


def _rand(n: int, alphabet: str = string.ascii_letters + string.digits) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(n))


def planted() -> dict[str, tuple[str, str]]:
    """Each format: (the text as a user would paste it, the secret in it, which must not be stored).
    Fresh random values each time, so a scan of the shared streams finds only this test's."""
    upper = string.ascii_uppercase + string.digits
    alnum = string.ascii_letters + string.digits
    v = {
        "aws access key id": f"AKIA{_rand(16, upper)}",
        "aws secret line": _rand(40, alnum + "/+"),
        "aws secret env": _rand(40, alnum + "/+"),
        "github token": f"ghp_{_rand(36)}",
        "github fine-grained": f"github_pat_{_rand(22)}_{_rand(59)}",
        "slack token": f"xoxb-{_rand(12, string.digits)}-{_rand(13, string.digits)}-{_rand(24)}",
        "slack webhook": f"https://hooks.slack.com/services/T{_rand(8, upper)}/B{_rand(8, upper)}/{_rand(24)}",
        "stripe key": f"sk_live_{_rand(24)}",
        "google api key": f"AIza{_rand(35, alnum + '_-')}",
        "private key block": _rand(64, alnum + "+/"),
        "jwt": f"eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiI{_rand(12)}.{_rand(43)}",
        "password assignment": _rand(14),
        "api_key assignment": _rand(20),
        "openai key": f"sk-proj-{_rand(40)}",
        "anthropic key": f"sk-ant-api03-{_rand(40)}",
        "tether gateway key": f"tg-{secrets.token_urlsafe(24)}",
        "url password": _rand(16),
    }
    texts = {
        "aws access key id": f"my key id is {v['aws access key id']} thanks",
        "aws secret line": f"[default]\naws_secret_access_key = {v['aws secret line']}\nregion = eu-west-1",
        "aws secret env": f'export AWS_SECRET_ACCESS_KEY="{v["aws secret env"]}"',
        "github token": f"push with {v['github token']} please",
        "github fine-grained": f"token: {v['github fine-grained']}",
        "slack token": f"bot token {v['slack token']}",
        "slack webhook": f"post to {v['slack webhook']}",
        "stripe key": f"charge with {v['stripe key']}",
        "google api key": f"maps key {v['google api key']}",
        "private key block": f"-----BEGIN RSA PRIVATE KEY-----\n{v['private key block']}\n"
                             "-----END RSA PRIVATE KEY-----",
        "jwt": f"session {v['jwt']}",
        "password assignment": f"db password={v['password assignment']}; host=db",
        "api_key assignment": f'{{"api_key": "{v["api_key assignment"]}"}}',
        "openai key": f"use {v['openai key']} for me",
        "anthropic key": f"use {v['anthropic key']} for me",
        "tether gateway key": f"my gateway key is {v['tether gateway key']}",
        "url password": f"postgres://admin:{v['url password']}@db.internal:5432/app",
    }
    return {name: (texts[name], v[name]) for name in v}


FORMATS = sorted(planted())


@pytest.mark.parametrize("name", FORMATS)
def test_each_format_is_redacted_by_the_default_rules(name: str) -> None:
    text, secret = planted()[name]
    for padding in ("", "lorem ipsum dolor sit amet " * 100):  # short strings and long ones take two code paths
        out = Redactor().text(padding + text + padding)
        assert secret not in out and REDACTED in out, out[len(padding):len(padding) + 200]
    assert secret not in str(Redactor()({"messages": [{"role": "user", "content": text}]}))


def test_prose_and_code_are_left_alone() -> None:
    for text in ("task-management-system-for-the-whole-team", "max_tokens: 100", "The password is required.",
                 "see https://example.com/a@b and mail ann@example.com", "skill-based-routing-configuration",
                 "Bearer of bad news", "the api_key field is documented"):
        assert Redactor().text(text) == text


def test_names_are_kept_values_go() -> None:
    assert Redactor().text("aws_secret_access_key = abc/def+ghi\nregion = x") == \
        "aws_secret_access_key = [redacted]\nregion = x"
    assert Redactor().text('{"Password": "correct horse battery"}') == '{"Password": "[redacted]"}'
    assert Redactor().text("postgres://admin:pw123@db/app") == "postgres://admin:[redacted]@db/app"
    assert Redactor(replace_defaults=True).text("password=pw123 postgres://a:pw123@db") == \
        "password=pw123 postgres://a:pw123@db", "replace_defaults drops these rules too"


def test_a_100_kb_prompt_is_redacted_in_milliseconds() -> None:
    words = ["the", "customer", "asked", "about", "a", "refund", "for", "order", "12345,", "please", "reply:"]
    prompt = " ".join(secrets.choice(words) for _ in range(20_000))[:100_000]
    prompt = prompt[:50_000] + " aws_secret_access_key=" + _rand(40) + " " + prompt[50_000:]
    redactor = Redactor()
    best = min(_timed(redactor.text, prompt) for _ in range(5))
    print(f"\n100 KB prompt: {best * 1e3:.2f} ms ({best * 1e9 / 100:,.0f} ns/KB)")
    assert best < 0.040  # a few ms; a pattern that cannot skip ahead costs 60 ms and more here
    assert redactor.text(prompt).count(REDACTED) == 1


def _timed(fn: object, arg: str) -> float:
    assert callable(fn)
    started = time.perf_counter()
    fn(arg)
    return time.perf_counter() - started


@pytest.mark.nats
async def test_each_format_is_redacted_through_instrument(fake: FakeProvider, bus: Bus, policies: PolicySet) -> None:
    formats = planted()
    client = tether.instrument(openai.AsyncOpenAI(base_url=fake.url, api_key="sk-test"), bus=bus, policies=policies)

    @tether.tool(bus=bus)
    def remember(note: str) -> str:
        return note  # the result carries the secret back too

    async with client, tether.run(bus=bus, input={"pasted": [t for t, _ in formats.values()]}) as run:
        await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": text} for text, _ in formats.values()])  # type: ignore[misc]
        for text, _ in formats.values():
            remember(text)
    events = await run_events(bus, run.run_id)
    assert {e.type for e in events} >= {"tether.llm.call.requested", "tether.tool.call.completed"}
    stored = await every_stored_byte(bus)
    leaked = [name for name, (_, secret) in formats.items() if secret.encode() in stored]
    assert not leaked


@pytest.mark.nats
async def test_each_format_is_redacted_through_the_gateway(fake: FakeProvider, bus: Bus, policies: PolicySet) -> None:
    formats = planted()
    async with GatewayServer(gateway_config(fake, policies), bus, port=0, grace_s=1) as server:
        async with openai.AsyncOpenAI(base_url=server.url + "/v1", api_key=GATEWAY_KEY) as sdk:
            await sdk.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": text} for text, _ in formats.values()],  # type: ignore[misc]
                extra_headers={"x-tether-run-id": "formats"})
        event = CloudEvent({"id": uuid7(), "source": "urn:agent:bot", "type": "tether.tool.call.requested"},
                           {"call_id": "t-formats", "tool": "notes",
                            "arguments": {"notes": [text for text, _ in formats.values()]}})
        message = ce_http.to_structured_event(event)
        async with httpx.AsyncClient() as http:
            answer = await http.post(server.url + "/v1/events", content=message.body,
                                     headers={**message.headers, "x-api-key": GATEWAY_KEY})
        assert answer.status_code == 202
    await bus.flush()
    stored = await every_stored_byte(bus)
    leaked = [name for name, (_, secret) in formats.items() if secret.encode() in stored]
    assert not leaked
