"""What a request body asks, and where it goes: pure, tested on its own.

An LLM request must be a JSON object with a ``model`` (Gemini's: in the path) that an upstream of
the endpoint's wire format serves (see :mod:`._routing`); otherwise the answer is the 4xx the
provider would give, in its format. An alias is replaced by the provider's name for the model in
the body sent (Gemini's: in the path the gateway sends to).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from tether.middleware import Target

from .._wire import Kind
from ._config import GatewayConfig
from ._errors import Headers, problem
from ._routing import resolve_model

__all__ = ["Problem", "Routed", "route_request"]

Problem = tuple[int, Headers, bytes]
"""A complete answer: status, headers, body."""

_FORMATS = {"openai": "OpenAI format (/v1/chat/completions, /v1/responses, /v1/embeddings)",
            "anthropic": "Anthropic Messages format (/v1/messages)",
            "gemini": "Gemini format (/v1beta/models/{model}:generateContent)"}


@dataclass(frozen=True, slots=True)
class Routed:
    target: Target
    body: bytes
    """What to send: the agent's bytes, or with the model renamed when it used an alias."""


def route_request(kind: Kind, body: bytes, config: GatewayConfig, *, model: str | None = None) -> Routed | Problem:
    """The upstream of an LLM request to an endpoint of format ``kind``, or the 4xx to answer
    (``model``: the one a Gemini request names in its path)."""
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        message = ("We could not parse the JSON body of your request: the API expects a JSON object"
                   if kind == "openai" else "Invalid JSON payload received: the body is not a JSON object"
                   if kind == "gemini" else "There was an issue with your request: the body is not a JSON object")
        return problem(kind, 400, message, code="invalid_json")
    if kind != "gemini":
        model = doc.get("model")
    if not isinstance(model, str) or not model:
        return problem(kind, 400, "you must provide a model parameter" if kind == "openai"
                       else "model: Field required", param="model")
    target = resolve_model(model, config.models, config.providers, config.default_provider)
    if target is None or config.providers[target.provider].kind != kind:
        where = "" if target is None else (f" here: provider {target.provider!r} serves it in the "
                                           f"{_FORMATS[config.providers[target.provider].kind]}")
        message = (f"The model `{model}` does not exist or you do not have access to it{where}." if kind == "openai"
                   else f"models/{model} is not found for API version v1beta{where}" if kind == "gemini"
                   else f"model: {model}{where}")
        return problem(kind, 404, message, code="model_not_found")
    if target.model != model and kind != "gemini":
        body = json.dumps({**doc, "model": target.model}, separators=(",", ":")).encode()
    return Routed(target, body)
