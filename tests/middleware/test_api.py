"""The public API of tether.middleware: everything public in the policy-engine modules is exported."""

from __future__ import annotations

import importlib

import pytest

import tether.middleware

POLICY_ENGINE = ["_failures", "_policy", "_decide", "_breaker", "_ratelimit", "_budget"]


@pytest.mark.parametrize("module", POLICY_ENGINE)
def test_every_public_name_is_exported(module: str) -> None:
    names = importlib.import_module(f"tether.middleware.{module}").__all__
    missing = sorted(set(names) - set(tether.middleware.__all__))
    assert not missing, f"tether.middleware.{module} defines {missing} but the package does not export them"


def test_every_exported_name_exists() -> None:
    for name in tether.middleware.__all__:
        assert getattr(tether.middleware, name) is not None, name
    assert len(set(tether.middleware.__all__)) == len(tether.middleware.__all__)
