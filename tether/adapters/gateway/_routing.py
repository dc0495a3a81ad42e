"""Which upstream serves a model name: pure, tested on its own.

An agent names a model; the gateway finds the provider (and the provider's name for the
model) in this order:

1. an exact entry of ``[gateway.models]`` (``"fast" = "openai:gpt-4o-mini"``);
2. ``provider/model`` where ``provider`` is a configured provider (``openai/gpt-4o``);
3. the first glob entry that matches (``"claude-*" = "anthropic"``), in file order;
4. the default provider, with the name as given;

else the model is unknown (404 ``model_not_found``, as the provider would answer). The
provider's wire format must be the endpoint's: an Anthropic provider serves ``/v1/messages``,
an OpenAI-compatible one the chat completions, Responses and embeddings APIs (the gateway
does not translate between them).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase

from tether.middleware import Target

__all__ = ["ModelRoute", "parse_route", "resolve_model"]

_GLOB = frozenset("*?[")


@dataclass(frozen=True)
class ModelRoute:
    """One ``[gateway.models]`` entry: ``pattern`` (a name or a glob) -> provider (and model)."""

    pattern: str
    provider: str
    model: str | None = None
    """The provider's name for it; ``None``: the name the agent used."""

    @property
    def is_glob(self) -> bool:
        return any(c in _GLOB for c in self.pattern)


def parse_route(pattern: str, value: object) -> ModelRoute:
    """``"provider"`` or ``"provider:model"`` for ``pattern``; ValueError when it is neither."""
    if not pattern:
        raise ValueError("the model name must not be empty")
    if not isinstance(value, str) or not value.strip():
        raise ValueError('expected "provider" or "provider:model"')
    provider, sep, model = value.strip().partition(":")
    if not provider or (sep and not model):
        raise ValueError(f'expected "provider" or "provider:model", got {value!r}')
    route = ModelRoute(pattern, provider, model or None)
    if route.is_glob and route.model is not None:
        raise ValueError("a glob maps to a provider only (the model keeps its name)")
    return route


def resolve_model(model: str, routes: Iterable[ModelRoute], providers: Mapping[str, object],
                  default: str | None) -> Target | None:
    """The provider and upstream model for ``model``, or ``None`` when no upstream serves it."""
    routes = tuple(routes)
    for route in routes:
        if not route.is_glob and route.pattern == model:
            return Target(route.provider, route.model or model)
    prefix, sep, rest = model.partition("/")
    if sep and rest and prefix in providers:
        return Target(prefix, rest)
    for route in routes:
        if route.is_glob and fnmatchcase(model, route.pattern):
            return Target(route.provider, model)
    if default is not None:
        return Target(default, model)
    return None
