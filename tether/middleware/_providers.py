"""LLM providers the worker talks to, and one HTTP attempt against them.

Provider keys live only in the worker's configuration (``[providers.<name>]`` in
``tether.toml``, with the key read from the environment variable named by
``api_key_env``); they never enter a work message or an event.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from tether._configfile import problems
from tether.schemas import Usage

from ._failures import Failure, classify_exception, classify_http
from ._http import ProviderHttp

__all__ = ["LlmOutcome", "ProviderConfig", "ProviderConfigError", "ProviderTable", "run_llm_attempt", "usage_of"]

Kind = Literal["openai", "anthropic", "gemini"]
_PATHS: dict[tuple[str, str], str] = {
    ("openai", "chat"): "/chat/completions",
    ("openai", "responses"): "/responses",
    ("openai", "embeddings"): "/embeddings",
    ("anthropic", "messages"): "/messages",
}


class ProviderConfigError(ValueError):
    """A provider section in the configuration is wrong; the message names it."""


_BASE_URLS: dict[str, str] = {"openai": "https://api.openai.com/v1", "anthropic": "https://api.anthropic.com/v1",
                               "gemini": "https://generativelanguage.googleapis.com/v1beta"}


class ProviderTable(BaseModel):
    """One ``[providers.<name>]`` table of ``tether.toml``."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    kind: Kind = "openai"
    """The wire format: 'openai', 'anthropic' or 'gemini' (Gemini: the gateway's endpoints and inline adapters only;
    workers send no Gemini calls)."""
    base_url: Annotated[StrictStr, Field(min_length=1)] | None = None
    """Ending in /v1 (Gemini: /v1beta); default: the kind's public API."""
    api_key_env: Annotated[StrictStr, Field(min_length=1)] | None = None
    """The environment variable that holds the key (the key itself never goes in the file)."""
    headers: dict[str, StrictStr] = {}
    """Extra headers sent with every call."""

    @model_validator(mode="before")
    @classmethod
    def _no_key_in_the_file(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and "api_key" in data:
            raise PydanticCustomError("key_in_file", "the key itself never goes in the file: put it in the "
                                      "environment and name the variable with api_key_env")
        return data

    def config(self, name: str, environ: Mapping[str, str] | None = None) -> ProviderConfig:
        """The provider ``name``, its key read from the environment."""
        env = os.environ if environ is None else environ
        return ProviderConfig(name=name, kind=self.kind, base_url=(self.base_url or _BASE_URLS[self.kind]).rstrip("/"),
                              api_key_env=self.api_key_env,
                              api_key=env.get(self.api_key_env) if self.api_key_env else None,
                              headers=dict(self.headers))


@dataclass(frozen=True)
class ProviderConfig:
    """One upstream: its wire format, base URL (ending in ``/v1``) and credentials."""

    name: str
    kind: Kind = "openai"
    base_url: str = _BASE_URLS["openai"]
    api_key_env: str | None = None
    api_key: str | None = field(default=None, repr=False)
    headers: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_mapping(cls, name: str, data: Mapping[str, Any]) -> ProviderConfig:
        """``[providers.<name>]``, read by :class:`ProviderTable`; ``ProviderConfigError`` names the bad key."""
        try:
            table = ProviderTable.model_validate(data)
        except ValidationError as exc:
            found = problems(exc, data, root=ProviderTable, prefix=("providers", name))
            raise ProviderConfigError("; ".join(f"{path}: {problem}" for path, problem in found)) from None
        return table.config(name)

    def url(self, operation: str) -> str:
        path = _PATHS.get((self.kind, operation))
        if path is None:
            raise ProviderConfigError(f"provider {self.name} ({self.kind}) has no {operation!r} operation")
        return self.base_url + path

    def auth_headers(self) -> dict[str, str]:
        out = dict(self.headers)
        if self.kind == "anthropic":
            out.setdefault("anthropic-version", "2023-06-01")
            if self.api_key:
                out["x-api-key"] = self.api_key
        elif self.kind == "gemini":
            if self.api_key:
                out["x-goog-api-key"] = self.api_key
        elif self.api_key:
            out["Authorization"] = f"Bearer {self.api_key}"
        return out


@dataclass(frozen=True)
class LlmOutcome:
    ok: bool
    latency_ms: float
    response: Any = None
    usage: Usage = field(default_factory=Usage)
    finish_reason: str | None = None
    failure: Failure | None = None


def usage_of(kind: str, operation: str, body: Any) -> tuple[Usage, str | None]:
    """Token usage and finish reason from a response body, for each wire format."""
    if kind == "gemini" and isinstance(body, list) and body:
        body = body[-1]  # streamGenerateContent without alt=sse: the chunks as one JSON array
    if not isinstance(body, dict):
        return Usage(), None
    if kind == "gemini":
        return gemini_usage(body.get("usageMetadata")), gemini_finish(body)
    u = body.get("usage") or {}
    if kind == "anthropic":
        cache_read = int(u.get("cache_read_input_tokens") or 0)
        cache_write = int(u.get("cache_creation_input_tokens") or 0)
        usage = Usage(input_tokens=int(u.get("input_tokens") or 0) + cache_read + cache_write,
                      output_tokens=int(u.get("output_tokens") or 0),
                      cached_input_tokens=cache_read, cache_write_tokens=cache_write)
        return usage, body.get("stop_reason")
    if operation == "responses":
        usage = Usage(input_tokens=int(u.get("input_tokens") or 0),
                      output_tokens=int(u.get("output_tokens") or 0),
                      cached_input_tokens=int((u.get("input_tokens_details") or {}).get("cached_tokens") or 0),
                      reasoning_tokens=int((u.get("output_tokens_details") or {}).get("reasoning_tokens") or 0))
        return usage, body.get("status")
    usage = Usage(input_tokens=int(u.get("prompt_tokens") or 0),
                  output_tokens=int(u.get("completion_tokens") or 0),
                  cached_input_tokens=int((u.get("prompt_tokens_details") or {}).get("cached_tokens") or 0),
                  reasoning_tokens=int((u.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0))
    choices = body.get("choices") or []
    finish = choices[0].get("finish_reason") if choices and isinstance(choices[0], dict) else None
    return usage, finish


def gemini_usage(u: Any) -> Usage:
    """Gemini's ``usageMetadata`` in tether's terms: the prompt (with the tool-use prompt) is the
    input, of which ``cachedContentTokenCount`` was cached; thinking is output, as OpenAI counts it."""
    if not isinstance(u, dict):
        return Usage()
    thoughts = int(u.get("thoughtsTokenCount") or 0)
    return Usage(input_tokens=int(u.get("promptTokenCount") or 0) + int(u.get("toolUsePromptTokenCount") or 0),
                 output_tokens=int(u.get("candidatesTokenCount") or 0) + thoughts,
                 cached_input_tokens=int(u.get("cachedContentTokenCount") or 0), reasoning_tokens=thoughts)


def gemini_finish(body: dict[str, Any]) -> str | None:
    candidates = body.get("candidates")
    first = candidates[0] if isinstance(candidates, list) and candidates else None
    finish = first.get("finishReason") if isinstance(first, dict) else None
    return finish if isinstance(finish, str) else None


async def run_llm_attempt(
    client: ProviderHttp,
    provider: ProviderConfig,
    *,
    operation: str,
    model: str,
    body: Mapping[str, Any],
    timeout_s: float,
    call_id: str,
) -> LlmOutcome:
    """One non-streaming attempt; never raises for provider trouble, returns a Failure."""
    payload = dict(body)
    payload["model"] = model
    payload.pop("stream", None)
    payload.pop("stream_options", None)
    headers = provider.auth_headers()
    headers["Idempotency-Key"] = call_id
    headers["x-should-retry"] = "false"
    started = time.perf_counter()
    try:
        response = await client.post(provider.url(operation), body=payload, headers=headers, timeout_s=timeout_s)
    except Exception as exc:
        return LlmOutcome(False, (time.perf_counter() - started) * 1000, failure=classify_exception(exc))
    latency = (time.perf_counter() - started) * 1000
    if response.status_code >= 300:
        return LlmOutcome(False, latency, failure=classify_http(
            response.status_code, response.headers, response.content, now=time.time()))
    try:
        data = json.loads(response.content)
    except ValueError as exc:
        return LlmOutcome(False, latency, failure=Failure(
            kind="malformed", status_code=response.status_code, error_type="MalformedResponse",
            message=f"response is not JSON: {exc}"))
    usage, finish = usage_of(provider.kind, operation, data)
    return LlmOutcome(True, latency, response=data, usage=usage, finish_reason=finish)
