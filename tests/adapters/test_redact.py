"""Redaction without I/O: fields at any depth, secret-shaped strings, the user's hook."""

from __future__ import annotations

import re

import pytest

from tether import _redact
from tether.adapters import REDACTED, Redactor
from tether.adapters._redact import redactor_of


def test_default_fields_and_patterns() -> None:
    body = {"model": "m", "api_key": "abc", "nested": [{"Password": "hunter2", "x": 1}],
            "messages": [{"role": "user", "content": "my key is sk-proj-ABCDEFGHIJKLMNOPQRSTUV, keep it"}],
            "headers": {"Authorization": "Bearer abcdefghijklmnop"}, "max_tokens": 5}
    out = Redactor()(body)
    assert out["api_key"] == REDACTED and out["nested"][0] == {"Password": REDACTED, "x": 1}
    assert out["messages"][0]["content"] == f"my key is {REDACTED}, keep it"
    assert out["headers"]["Authorization"] == REDACTED
    assert out["max_tokens"] == 5 and out["model"] == "m"
    assert body["api_key"] == "abc", "the request itself is never changed"


def test_extra_fields_hook_and_replacing_defaults() -> None:
    assert Redactor(fields={"ssn"})({"ssn": "1", "api_key": "2"}) == {"ssn": REDACTED, "api_key": REDACTED}
    assert Redactor(fields={"ssn"}, replace_defaults=True)({"ssn": "1", "api_key": "2"}) == {
        "ssn": REDACTED, "api_key": "2"}
    hooked = Redactor(hook=lambda v: {**v, "seen": True} if isinstance(v, dict) else v)
    assert hooked({"a": 1}) == {"a": 1, "seen": True}
    assert redactor_of(["ssn"])({"ssn": "x"}) == {"ssn": REDACTED}
    assert redactor_of(lambda v: "gone")({"a": 1}) == "gone"


def test_text_scrubbing_of_error_messages() -> None:
    message = "Incorrect API key provided: sk-ant-api03-abcdefghijklmnop. Bearer xyzxyzxyzxyzxyz"
    assert Redactor().text(message) == f"Incorrect API key provided: {REDACTED}. {REDACTED}"


class CountingPattern:
    """A redactor's compiled pattern set, counting the strings it scans."""

    def __init__(self, pattern: re.Pattern[str]) -> None:
        self.pattern = pattern
        self.scanned: list[str] = []

    def sub(self, repl: str, value: str) -> str:
        self.scanned.append(value)
        return self.pattern.sub(repl, value)


def test_a_string_seen_before_is_not_scanned_again() -> None:
    """An agent sends its roles, tool schemas, system prompt and the conversation so far again in
    every call: each distinct string is scanned once per redactor, with the same result each time."""
    redactor = Redactor()
    counting = CountingPattern(redactor._pattern)  # type: ignore[arg-type]
    object.__setattr__(redactor, "_pattern", counting)
    body = {"messages": [{"role": "system", "content": "Answer about the weather."},
                         {"role": "user", "content": "my key is sk-proj-ABCDEFGHIJKLMNOPQRSTUV"}]}
    first, second = redactor(body), redactor(body)
    assert first == second == {"messages": [{"role": "system", "content": "Answer about the weather."},
                                            {"role": "user", "content": f"my key is {REDACTED}"}]}
    assert sorted(counting.scanned) == ["Answer about the weather.", "my key is sk-proj-ABCDEFGHIJKLMNOPQRSTUV",
                                        "system", "user"]


def test_the_memory_of_strings_is_bounded_and_skips_str_subclasses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_redact, "_MEMO_MAX_CHARS", 10)
    redactor = Redactor()
    for n in range(20):
        assert redactor.text(f"token sk-proj-ABCDEFGHIJKLMNOP{n:04d}") == f"token {REDACTED}"
    assert sum(len(k) for k in redactor._memo) <= 10 + 40, "emptied once past the bound"

    class Name(str):
        pass

    assert redactor.text(Name("plain")) == "plain" and Name("plain") not in redactor._memo
    assert len(redactor.text("x" * (_redact._MEMO_MAX_LEN + 1))) == _redact._MEMO_MAX_LEN + 1
    assert "x" * (_redact._MEMO_MAX_LEN + 1) not in redactor._memo, "too long to keep"


def test_secret_fields_go_whatever_their_value_and_none_stays() -> None:
    out = Redactor()({"password": 1234, "api_key": None, "secret": True, "pairs": ("a", {"token": 1.5}),
                      "n": 3, "f": 0.5, "ok": False})
    assert out == {"password": REDACTED, "api_key": None, "secret": REDACTED, "pairs": ["a", {"token": 1.5}],
                   "n": 3, "f": 0.5, "ok": False}


def _reference_walk(redactor: Redactor, value: object) -> object:
    """The walk as it was written first (each key lower-cased, every string through ``text``)."""
    if isinstance(value, str):
        return redactor.text(value)
    if isinstance(value, dict):
        return {k: (REDACTED if isinstance(k, str) and k.lower() in redactor._fields and v is not None
                    else _reference_walk(redactor, v)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_reference_walk(redactor, v) for v in value]
    return value


def test_the_walk_remembers_each_keys_verdict_and_redacts_as_the_first_walk_did(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The walk on every call's request keeps each key's verdict (secret or not) and reads known strings
    from the memory: on random bodies (secret keys in any case, str subclasses as keys and values, tuples,
    non-JSON values) it gives what the plain walk gives, key order included; the verdicts are bounded."""
    import random

    class Key(str):
        def lower(self) -> str:  # a subclass answers for itself: its verdict is not remembered
            return "password"

    monkeypatch.setattr(_redact, "_KEYS_MAX", 50)
    rng = random.Random(7)
    keys: list[object] = ["model", "Password", "API_KEY", "token", "messages", "content", "x-api-key", 3, Key("a"),
                          "Authorization", "passwd", "ok"]
    leaves: list[object] = [None, True, 0, 2.5, "plain", "sk-proj-ABCDEFGHIJKLMNOPQRSTUV", Key("k"), b"raw", "@"]

    def value(depth: int) -> object:
        kind = rng.randrange(5 if depth < 3 else 1)
        if kind == 0:
            return rng.choice(leaves)
        if kind in (1, 2):
            return {rng.choice(keys) if rng.random() < 0.8 else f"k{rng.randrange(200)}": value(depth + 1)
                    for _ in range(rng.randrange(5))}
        items = [value(depth + 1) for _ in range(rng.randrange(4))]
        return tuple(items) if kind == 3 else items

    for hook in (None, lambda v: {"hooked": v}):
        redactor = Redactor(fields={"token"}, hook=hook)
        for _ in range(500):
            body = value(0)
            expected = _reference_walk(redactor, body)
            out = redactor(body)
            assert out == (expected if hook is None else {"hooked": expected})
            assert repr(out) == repr(expected if hook is None else {"hooked": expected}), "the same key order"
            assert len(redactor._keys) <= 50
        assert redactor._keys.get("Password") is True and redactor._keys.get("model") is False
        assert "a" not in redactor._keys
