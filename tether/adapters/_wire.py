"""The provider wire formats tether understands, without I/O.

* which request is an LLM call (by path): chat completions, Responses, embeddings,
  Anthropic messages, Gemini's ``models/<model>:generateContent`` and
  ``:streamGenerateContent``; everything else passes through untouched;
* what the request asks (model, stream, parameters);
* what a streamed answer adds up to: :class:`StreamAccumulator` (from
  ``tether.middleware``, since the executor's relay reads streams too) reads the SSE
  events a tee passes through and keeps usage (OpenAI's final chunk, Responses'
  ``response.completed``, Anthropic's ``message_start`` + ``message_delta``), the finish
  reason, the moment of the first token and, when capturing, the answer rebuilt as one
  message (so a run's conversation can be read back from the log);
* the error bodies each provider writes, for the answer tether gives when it gave up.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tether.middleware import Failure, Operation, StreamAccumulator
from tether.middleware import ProviderKind as Kind

__all__ = [
    "CONTENT_KEYS",
    "Kind",
    "LlmRequest",
    "Operation",
    "StreamAccumulator",
    "error_body",
    "error_status",
    "gemini_error",
    "gemini_model",
    "operation_of",
    "parse_request",
    "stream_error_event",
]

CONTENT_KEYS = frozenset({"messages", "input", "system", "instructions", "prompt", "tools", "model", "contents",
                          "systemInstruction", "system_instruction"})
"""Request keys that hold the conversation (or the model): kept out of ``parameters``."""


def operation_of(method: str, path: str) -> tuple[Kind, Operation] | None:
    """The LLM call a request path stands for, or ``None`` to pass it through."""
    if method != "POST":
        return None
    path = path.rstrip("/")
    if path.endswith("/chat/completions"):
        return "openai", "chat"
    if path.endswith("/responses"):
        return "openai", "responses"
    if path.endswith("/embeddings"):
        return "openai", "embeddings"
    if path.endswith("/messages") and "/threads/" not in path:  # not the Assistants API
        return "anthropic", "messages"
    if path.endswith((":generateContent", ":streamGenerateContent")) and gemini_model(path) is not None:
        return "gemini", "generate_content"
    return None


def gemini_model(path: str) -> str | None:
    """The model of a Gemini call, from its path: ``/v1beta/models/{model}:generateContent`` (the
    Gemini API) or ``.../publishers/google/models/{model}:streamGenerateContent`` (Vertex AI)."""
    _, found, rest = path.rpartition("/models/")
    model = rest.rpartition(":")[0]
    return model if found and model and "/" not in model else None


@dataclass(frozen=True)
class LlmRequest:
    """What one request body asks for. ``body`` is ``None`` when it is not a JSON object."""

    kind: Kind
    operation: Operation
    body: dict[str, Any] | None
    model: str | None
    stream: bool
    problem: str | None = None

    @property
    def parameters(self) -> dict[str, Any]:
        return {k: v for k, v in (self.body or {}).items() if k not in CONTENT_KEYS}


def parse_request(kind: Kind, operation: Operation, raw: bytes, path: str | None = None) -> LlmRequest:
    """What ``raw`` asks; a Gemini call's model and streaming are in its ``path``, not its body."""
    if kind == "gemini":
        return _gemini_request(operation, raw, path or "")
    try:
        body = json.loads(raw) if raw else None
    except ValueError as exc:
        return LlmRequest(kind, operation, None, None, False, f"the request body is not JSON: {exc}")
    if not isinstance(body, dict):
        return LlmRequest(kind, operation, None, None, False, "the request body is not a JSON object")
    model = body.get("model")
    return LlmRequest(kind, operation, body, model if isinstance(model, str) and model else None,
                      body.get("stream") is True)


def _gemini_request(operation: Operation, raw: bytes, path: str) -> LlmRequest:
    model = gemini_model(path.rstrip("/"))
    stream = path.rstrip("/").endswith(":streamGenerateContent")
    try:
        body = json.loads(raw) if raw else None
    except ValueError as exc:
        return LlmRequest("gemini", operation, None, model, stream, f"the request body is not JSON: {exc}")
    if not isinstance(body, dict):
        return LlmRequest("gemini", operation, None, model, stream, "the request body is not a JSON object")
    return LlmRequest("gemini", operation, body, model, stream)


# -- answers tether writes itself ----------------------------------------------------------

_ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                    404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
                    503: "overloaded_error", 529: "overloaded_error"}


def error_status(failure: Failure | None, reason: str) -> int:
    """The HTTP status of the answer tether writes when a call ends without one to relay."""
    if reason in ("budget", "runaway"):
        return 429
    if failure is None:
        return 502
    if failure.kind == "breaker_open":
        return 503
    if failure.kind == "timeout" or reason == "deadline":
        return 504
    if failure.status_code is not None and 400 <= failure.status_code <= 599:
        return failure.status_code
    return 502


_GEMINI_STATUSES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
                    409: "ABORTED", 429: "RESOURCE_EXHAUSTED", 499: "CANCELLED", 501: "UNIMPLEMENTED",
                    503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}


def gemini_error(status: int, message: str, *, reason: str | None = None) -> dict[str, Any]:
    """Google's error body (``google.rpc.Status`` as JSON); ``reason`` tether's code, in an ErrorInfo."""
    name = _GEMINI_STATUSES.get(status, "INTERNAL" if status >= 500 else "FAILED_PRECONDITION")
    error: dict[str, Any] = {"code": status, "message": message, "status": name}
    if reason is not None:
        error["details"] = [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": reason,
                             "domain": "tether"}]
    return {"error": error}


def error_body(kind: Kind, status: int, message: str, *, code: str) -> bytes:
    """An error body in the provider's own format, so the SDK raises its usual exception."""
    if kind == "gemini":
        return json.dumps(gemini_error(status, message, reason=code), separators=(",", ":")).encode()
    if kind == "anthropic":
        etype = _ANTHROPIC_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
        doc: Mapping[str, Any] = {"type": "error", "error": {"type": etype, "message": message}}
    else:
        etype = "requests" if status == 429 else "server_error" if status >= 500 else "invalid_request_error"
        doc = {"error": {"message": message, "type": etype, "param": None, "code": code}}
    return json.dumps(doc, separators=(",", ":")).encode()


def stream_error_event(kind: Kind, message: str, *, code: str, error_type: str = "server_error") -> bytes:
    """An SSE error event in the provider's format, for a stream that cannot go on: the
    openai SDK raises ``APIError`` on it, the anthropic SDK ``APIStatusError``."""
    if kind == "gemini":  # Google streams no error event: a chunk that is an error body
        return b"data: " + json.dumps(gemini_error(500, message, reason=code), separators=(",", ":")).encode() + b"\n\n"
    if kind == "anthropic":
        doc: Mapping[str, Any] = {"type": "error", "error": {"type": "api_error", "message": message}}
    else:
        doc = {"error": {"message": message, "type": error_type, "param": None, "code": code}}
    return b"event: error\ndata: " + json.dumps(doc, separators=(",", ":")).encode() + b"\n\n"
