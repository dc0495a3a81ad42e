"""Secrets never enter the log: plant keys everywhere a call carries them, then read every byte.

The scan covers the raw messages of the EVENTS and DLQ streams (headers and data) and every
object in the object store, where large event data is claim-checked.
"""

from __future__ import annotations

import asyncio
import secrets

import anthropic
import openai
import pytest
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

import tether
from tether.bus import DLQ_STREAM, EVENTS_STREAM, OBJECT_BUCKET, Bus
from tether.middleware import PolicySet
from tether.testing.fake_provider import FakeProvider

from .conftest import data, run_events

pytestmark = [pytest.mark.anyio, pytest.mark.nats]


def planted(label: str) -> str:
    return f"PLANTED{label}{secrets.token_hex(8)}"


async def every_stored_byte(bus: Bus) -> bytes:
    """All of EVENTS and DLQ (message headers and data) and the object store, concatenated."""
    out: list[bytes] = []
    for stream in (EVENTS_STREAM, DLQ_STREAM):
        sub = await bus.js.pull_subscribe(">", stream=stream, config=ConsumerConfig(
            ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL, inactive_threshold=30.0))
        try:
            remaining = (await sub.consumer_info()).num_pending or 0
            while remaining > 0:
                msgs = await sub.fetch(min(remaining, 500), timeout=5)
                for m in msgs:
                    out.append(m.subject.encode())
                    out.append(repr(m.headers).encode())
                    out.append(m.data)
                remaining -= len(msgs)
        finally:
            await sub.unsubscribe()
    store = await bus.js.object_store(OBJECT_BUCKET)
    try:
        infos = await store.list()
    except NotFoundError:  # an empty store
        infos = []
    for info in infos:
        out.append((await store.get(info.name)).data or b"")
    return b"\n".join(out)


async def test_planted_keys_never_reach_the_log(fake: FakeProvider, bus: Bus, policies: PolicySet) -> None:
    keys = {name: planted(name) for name in ("auth", "xapi", "azure", "cookie", "body", "nested", "custom", "huge",
                                             "tool", "run", "dead")}
    pasted = f"sk-proj-{secrets.token_hex(16)}"
    client = tether.instrument(openai.AsyncOpenAI(base_url=fake.url, api_key=f"sk-{keys['auth']}"), bus=bus,
                               policies=policies, redact=["customer_token"])
    claude = tether.instrument(anthropic.AsyncAnthropic(base_url=fake.anthropic_url, api_key=keys["xapi"]),
                               bus=bus, policies=policies)

    @tether.tool(bus=bus)
    def log_in(user: str, password: str) -> dict[str, str]:
        return {"user": user, "session": "ok"}

    extra_headers = {"api-key": keys["azure"], "cookie": f"session={keys['cookie']}"}
    extra_body = {"api_key": keys["body"], "metadata": {"password": keys["nested"]}, "customer_token": keys["custom"]}
    async with client, claude, tether.run(bus=bus, metadata={"secret": keys["run"]}) as run:
        await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": f"use {pasted} for me"}],  # type: ignore[arg-type]
            extra_headers=extra_headers, extra_body=extra_body)
        stream = await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True,  # type: ignore[arg-type]
            extra_headers=extra_headers, extra_body=extra_body)
        async for _ in stream:
            pass
        await claude.messages.create(model="claude-haiku-4-5", max_tokens=8, extra_body={"api_key": keys["body"]},
                                     messages=[{"role": "user", "content": "hello " * 60_000}])  # > 256 KB
        await client.embeddings.create(model="text-embedding-3-small", input=["x" * 300_000],
                                       extra_body={"api_key": keys["huge"]})
        log_in("ann", keys["tool"])
        fake.set_faults("400#1")
        with pytest.raises(openai.BadRequestError):
            await client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}],  # type: ignore[arg-type]
                                                 extra_body={"api_key": keys["dead"]})
    assert len(fake.log) == 5
    events = await run_events(bus, run.run_id)
    assert any(e.dataref for e in events), "some event data went to the object store, and is scanned too"
    assert data(events, "tool.call.requested")[0].arguments == {"user": "ann", "password": "[redacted]"}
    await asyncio.sleep(0.1)
    stored = await every_stored_byte(bus)
    leaked = [name for name, key in keys.items() if key.encode() in stored]
    assert not leaked and b"PLANTED" not in stored
    assert pasted.encode() not in stored
    assert b"[redacted]" in stored


async def test_a_secret_split_across_a_streams_events_never_reaches_the_log(fake: FakeProvider, bus: Bus,
                                                                            policies: PolicySet) -> None:
    """The fake's streamed answer repeats the prompt a word an event: "Bearer" in one event and the token in
    the next, neither a secret alone. The answer is recorded redacted, and its events, which would spell the
    token out again, are not recorded (a resumed run asks for such a call again); the caller's stream is whole."""
    token = secrets.token_hex(12)
    prompt = f"Bearer {token}"
    client = tether.instrument(openai.AsyncOpenAI(base_url=fake.url, api_key="sk-test"), bus=bus, policies=policies)
    claude = tether.instrument(anthropic.AsyncAnthropic(base_url=fake.anthropic_url, api_key="x"), bus=bus,
                               policies=policies)
    seen: list[str] = []
    async with client, claude, tether.run(bus=bus) as run:
        stream = await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": prompt}], stream=True)
        seen.append("".join([c.choices[0].delta.content or "" async for c in stream if c.choices]))
        responses = await client.responses.create(model="gpt-4o-mini", input=prompt, stream=True)
        seen.append("".join([e.delta async for e in responses if e.type == "response.output_text.delta"]))
        async with claude.messages.stream(model="claude-haiku-4-5", max_tokens=64,
                                          messages=[{"role": "user", "content": prompt}]) as answer:
            seen.append("".join([text async for text in answer.text_stream]))
        quiet = await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "no secret here"}], stream=True)
        async for _ in quiet:
            pass
    assert all(f"Bearer {token}" in text for text in seen), "the caller's streams are whole"
    completed = data(await run_events(bus, run.run_id), "llm.call.completed")
    assert len(completed) == 4
    assert [c.chunks is None for c in completed] == [True, True, True, False], "the quiet answer's are kept"
    assert all("[redacted]" in str(c.response) for c in completed[:3])
    await asyncio.sleep(0.1)
    assert token.encode() not in await every_stored_byte(bus)
