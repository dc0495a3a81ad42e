"""Redaction without I/O: fields at any depth, secret-shaped strings, the user's hook."""

from __future__ import annotations

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
