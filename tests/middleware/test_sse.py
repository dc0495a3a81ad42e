"""What a stream's events are recorded as for replay: each redacted, and none when joined they would
spell out a secret the provider split across them."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tether._redact import DEFAULT
from tether.middleware import StreamAccumulator
from tether.middleware._sse import spells_out


def _chat_stream(*pieces: str) -> StreamAccumulator:
    acc = StreamAccumulator("openai", "chat", capture=True)
    head = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    for piece in pieces:
        acc.feed(f"data: {json.dumps({**head, 'choices': [{'index': 0, 'delta': {'content': piece}}]})}\n\n".encode())
    acc.feed(b"data: [DONE]\n\n")
    return acc


def _recorded(acc: StreamAccumulator) -> list[dict[str, Any]] | None:
    answer = acc.response()
    return acc.recorded_chunks(DEFAULT, answer, DEFAULT(answer))


def test_a_stream_with_no_secret_is_recorded_event_by_event_without_a_second_look(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from tether.middleware import _sse

    monkeypatch.setattr(_sse, "spells_out", lambda *a: pytest.fail("looked again at an answer with nothing redacted"))
    acc = _chat_stream("It is", " sunny", " today.")
    assert _recorded(acc) == acc.chunks


def test_a_secret_inside_one_event_is_redacted_there_and_the_events_are_kept() -> None:
    recorded = _recorded(_chat_stream("my key is ", "sk-proj-ABCDEFGHIJKLMNOPQRSTUV", " ok"))
    assert recorded is not None
    assert [c["data"]["choices"][0]["delta"]["content"] for c in recorded[:3]] == ["my key is ", "[redacted]", " ok"]


def test_a_secret_split_across_events_leaves_them_unrecorded() -> None:
    """Neither ``sk-proj-AAAA`` nor the rest of the key is a secret alone: joined they are."""
    assert _recorded(_chat_stream("my key is sk-proj-AAAA", "BBBBCCCCDDDDEEEE", " ok")) is None
    assert _recorded(_chat_stream("Bearer", " abcdefghijklmnopqrstuv")) is None


def test_spells_out_joins_each_field_in_order_and_no_more() -> None:
    def delta(text: str, name: str | None = "content_block_delta") -> dict[str, Any]:
        return {"event": name, "data": {"type": "content_block_delta", "delta": {"type": "text_delta", "text": text}}}

    assert spells_out([delta("ghp_"), delta("A" * 36)], DEFAULT.text)
    assert not spells_out([delta("ghp_"), delta("A" * 36, name="other")], DEFAULT.text), "another field"
    assert not spells_out([delta("ghp_")], DEFAULT.text)
