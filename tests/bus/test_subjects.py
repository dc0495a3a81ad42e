"""The subject scheme: seven tokens per event, every id encodable, filters that line up."""

from __future__ import annotations

import doctest
import re

import pytest

from tests._samples import SAMPLES, sample_event
from tether.bus import (
    DLQ_SUBJECTS,
    EVENT_SUBJECTS,
    PROJECTION_SUBJECTS,
    WORK_SUBJECTS,
    _subjects,
    decode_token,
    encode_token,
    event_filter,
    event_subject,
)
from tether.schemas import Event, RunStarted, catalogue

CATALOGUE = sorted(catalogue())
HASHED = re.compile(r"~[0-9a-f]{16}$")

AWKWARD_IDS = [
    "a.b",
    "v1.2.3",
    "a b",
    "*",
    ">",
    "a*b>c",
    "tab\there",
    "cr\r\nlf",
    "trailing newline\n",
    "team:docs\n",
    "é",
    "accentué",
    "中文",
    "🚀",
    "%",
    "%41",
    "__",
    "_x",
    "-",
    "team:search",
    "a/b\\c",
    "user@example.com",
    'quote"d',
    "\x00",
]


def is_nats_token(token: str) -> bool:
    return bool(token) and not any(ch.isspace() or ch in ".*>" for ch in token)


def matches(filter_: str, subject: str) -> bool:
    """NATS subject matching: ``*`` is one token, a final ``>`` is one or more."""
    want, have = filter_.split("."), subject.split(".")
    for i, token in enumerate(want):
        if token == ">":
            return len(have) > i
        if i >= len(have) or token not in ("*", have[i]):
            return False
    return len(want) == len(have)


# -- event subjects ----------------------------------------------------------------------


@pytest.mark.parametrize("event_type", CATALOGUE)
def test_event_subject_has_seven_valid_tokens(event_type: str) -> None:
    event = sample_event(event_type)
    tokens = event_subject(event).split(".")
    assert len(tokens) == 7
    assert all(is_nats_token(t) for t in tokens), tokens
    model = catalogue()[event_type]
    assert tokens[:6] == ["tether", "evt", "support-bot", "run-42", model.kind, model.action]
    assert tokens[6] == encode_token(SAMPLES[event_type].subject_key())
    assert matches(EVENT_SUBJECTS, event_subject(event))


def test_subject_keys_route_by_what_the_event_is_about() -> None:
    expected = {
        "tether.run.started": "_",
        "tether.llm.call.completed": "openai",
        "tether.tool.call.requested": "web%2Esearch",
        "tether.memory.written": "team:search",
        "tether.call.dead_lettered": "tool",
        "tether.circuit.opened": "openai%2Fgpt-4%2E1-mini",
        "tether.budget.exceeded": "tenant",
        "tether.eval.item.added": "support-qa",
        "tether.eval.score.recorded": "exp-1",
    }
    for event_type, key in expected.items():
        assert event_subject(sample_event(event_type)).split(".")[6] == key


def test_missing_agent_run_and_key_are_underscores() -> None:
    assert event_subject(Event.of(RunStarted())) == "tether.evt._._.run.started._"


@pytest.mark.parametrize("value", [*AWKWARD_IDS, "", "_", "x" * 500, "é" * 300], ids=repr)
def test_awkward_ids_make_valid_subjects(value: str) -> None:
    event = Event.of(SAMPLES["tether.memory.written"].model_copy(update={"namespace": value or "n"}),
                     runid=value or None, agentid=value or None)
    tokens = event_subject(event).split(".")
    assert len(tokens) == 7
    assert all(is_nats_token(t) and len(t) <= 128 for t in tokens), tokens


# -- tokens ------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [*AWKWARD_IDS, "_", "", "x" * 500], ids=repr)
def test_tokens_are_valid_nats_tokens(value: str) -> None:
    token = encode_token(value)
    assert is_nats_token(token), token
    assert len(token) <= _subjects.MAX_TOKEN
    assert token.isascii()


@pytest.mark.parametrize("value", [*AWKWARD_IDS, "_", "x" * 128, "é" * 21], ids=repr)
def test_tokens_decode_to_the_id(value: str) -> None:
    token = encode_token(value)
    assert not HASHED.search(token)
    assert decode_token(token) == value


@pytest.mark.parametrize("value", ["support-bot", "run-42", "team:search", "a@b+c=d~e_f-G9"])
def test_safe_ids_are_their_own_token(value: str) -> None:
    assert encode_token(value) == value


def test_unsafe_characters_become_utf8_escapes() -> None:
    assert encode_token("a.b") == "a%2Eb"
    assert encode_token("a b") == "a%20b"
    assert encode_token("*") == "%2A"
    assert encode_token(">") == "%3E"
    assert encode_token("%") == "%25"
    assert encode_token("é") == "%C3%A9"
    assert encode_token("🚀") == "%F0%9F%9A%80"


def test_a_lone_underscore_is_not_none() -> None:
    assert encode_token(None) == "_"
    assert encode_token("") == "_"
    assert encode_token("_") == "%5F"
    assert encode_token("__") == "__"
    assert decode_token("_") is None
    assert decode_token("%5F") == "_"
    anonymous = Event.of(RunStarted())
    underscored = Event.of(RunStarted(), runid="_", agentid="_")
    assert event_subject(anonymous) != event_subject(underscored)
    assert event_subject(underscored) == "tether.evt.%5F.%5F.run.started._"
    assert event_filter(agent="_") == "tether.evt.%5F.*.*.*.*"
    assert not matches(event_filter(agent="_"), event_subject(anonymous))
    assert matches(event_filter(agent="_"), event_subject(underscored))


def test_the_longest_uncut_token_and_the_shortest_cut_one() -> None:
    assert encode_token("x" * 128) == "x" * 128
    cut = encode_token("x" * 129)
    assert len(cut) <= 128
    assert HASHED.search(cut)
    assert encode_token("é" * 21) == "%C3%A9" * 21  # 126 characters: no cut
    assert HASHED.search(encode_token("é" * 22))  # 132 characters: cut


@pytest.mark.parametrize("value", ["x" * 500, "1" * 500, "A" * 500, "é" * 300, "a.b" * 100, "🚀" * 50],
                         ids=lambda v: f"{v[:3]!r}*{len(v)}")
def test_long_ids_are_cut_and_hashed(value: str) -> None:
    token = encode_token(value)
    assert len(token) <= _subjects.MAX_TOKEN
    assert is_nats_token(token)
    assert HASHED.search(token)
    prefix = token[: -len("~0123456789abcdef")]
    # the cut keeps a readable prefix and never leaves half an escape
    assert len(prefix) >= _subjects.MAX_TOKEN - 17 - 2
    assert re.fullmatch(r"(?:[^%]|%[0-9A-F]{2})*", prefix), prefix
    assert encode_token(value[: len(value) // 2]).startswith(prefix[:40])
    assert decode_token(token) != value  # cut tokens are not reversible


def test_cut_tokens_of_ids_sharing_a_prefix_differ() -> None:
    prefix = "tenant-acme/agent-support/" * 20
    tokens = {encode_token(prefix + suffix) for suffix in ("1", "2", "3", "é", "", "1 ")}
    assert len(tokens) == 6
    assert all(len(t) <= 128 for t in tokens)


def test_encoding_is_deterministic_with_or_without_the_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    values = [*AWKWARD_IDS, "x" * 500, "é" * 300]
    first = [encode_token(v) for v in values]
    monkeypatch.setattr(_subjects, "_cache", {})
    assert [encode_token(v) for v in values] == first


# -- filters -----------------------------------------------------------------------------


def test_event_filter_examples() -> None:
    assert event_filter() == EVENT_SUBJECTS == "tether.evt.>"
    assert event_filter(kind="llm") == "tether.evt.*.*.llm.*.*"
    assert event_filter(agent="support-bot") == "tether.evt.support-bot.*.*.*.*"
    assert event_filter(run="run-42") == "tether.evt.*.run-42.*.*.*"
    assert event_filter(agent="bot", run="r 1") == "tether.evt.bot.r%201.*.*.*"
    assert event_filter(kind="memory", key="team:search") == "tether.evt.*.*.memory.*.team:search"
    assert event_filter(kind="llm", action="attempt_failed") == "tether.evt.*.*.llm.attempt_failed.*"
    assert event_filter(run="v1.2") == "tether.evt.*.v1%2E2.*.*.*"
    assert event_filter(key="*") == "tether.evt.*.*.*.*.%2A"


def test_event_filter_treats_empty_as_unset() -> None:
    assert event_filter(agent="", run="", key="") == EVENT_SUBJECTS


def test_the_module_doctests_pass() -> None:
    result = doctest.testmod(_subjects, verbose=False)
    assert result.attempted >= 2
    assert result.failed == 0


@pytest.mark.parametrize("event_type", CATALOGUE)
def test_filters_built_from_an_event_match_its_subject(event_type: str) -> None:
    for ident in ("support-bot", "a.b c", "_", "中文", "x" * 300):
        event = sample_event(event_type, runid=ident, agentid=ident)
        subject = event_subject(event)
        data = event.data
        key = data.subject_key()
        assert matches(event_filter(agent=ident), subject)
        assert matches(event_filter(run=ident), subject)
        assert matches(event_filter(kind=data.kind, action=data.action), subject)
        assert matches(event_filter(agent=ident, run=ident, kind=data.kind, action=data.action,
                                    key=key), subject)
        assert not matches(event_filter(run=ident + "-other"), subject)
        assert not matches(event_filter(agent="someone-else"), subject)
        other_kind = "tool" if data.kind != "tool" else "llm"
        assert not matches(event_filter(kind=other_kind), subject)


def test_the_stream_subjects() -> None:
    assert (EVENT_SUBJECTS, WORK_SUBJECTS, DLQ_SUBJECTS, PROJECTION_SUBJECTS) == (
        "tether.evt.>", "tether.work.>", "tether.dlq.>", "tether.proj.>",
    )
    assert len({EVENT_SUBJECTS, WORK_SUBJECTS, DLQ_SUBJECTS, PROJECTION_SUBJECTS}) == 4


def test_the_subject_matcher_used_here() -> None:
    """The helper above must fail when it should, or the filter tests prove nothing."""
    assert matches("a.*.c", "a.b.c")
    assert not matches("a.*.c", "a.b.d")
    assert not matches("a.*", "a.b.c")
    assert matches("a.>", "a.b.c")
    assert not matches("a.>", "a")
