"""The record tether keeps of each private attribute of another library it relies on.

Each package keeps its uses of one library's private API in one module (``tether.bus._natspriv``
for nats-py, ``tether.adapters._sdkpriv`` for the SDKs and httpx...), listed there as
:class:`Hook` values that the package's contract test checks against the installed versions.
Imports nothing of tether.
"""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version
from typing import NamedTuple

__all__ = ["Hook"]


class Hook(NamedTuple):
    """One private attribute of another library that tether relies on."""

    distribution: str
    """The library's distribution name (``nats-py``; ``python`` for the standard library)."""
    owner: str
    """Where the attribute lives (``module.Class``)."""
    name: str
    used_for: str
    """What tether uses it for: what breaks if it changes."""
    module: str
    """The tether module that holds every use of it."""

    def broken(self, problem: str) -> str:
        """The message of a contract test that found this hook changed."""
        try:
            installed = platform.python_version() if self.distribution == "python" else version(self.distribution)
        except PackageNotFoundError:
            installed = "(not installed)"
        return (f"{self.distribution} {installed}: {self.owner}.{self.name} is not what tether relies on "
                f"({problem}). tether uses it for {self.used_for}. Every use is in {self.module}: adapt it "
                "there, or hold the dependency below this version.")
