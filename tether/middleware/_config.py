"""The worker's configuration: policies, providers and worker settings from one file.

``tether.toml`` in the working directory, else ``[tool.tether]`` in ``pyproject.toml``,
else defaults (an explicit path wins). :class:`WorkerFile` is the worker's part of the
file: the policies (``_policy.py``) and::

    [providers.openai]            # one table per upstream
    kind = "openai"               # or "anthropic", or "gemini" (the gateway only)
    base_url = "https://api.openai.com/v1"
    api_key_env = "OPENAI_API_KEY"  # the key itself never goes in the file

    [worker]
    concurrency = 64              # calls in flight per worker
    tools = ["myapp.tools"]       # modules that register tools on tether.middleware.tools
    resume_interrupted = false    # also resume interrupted runs (tether worker --resume-interrupted)
    resume_every_s = 30.0         # seconds between those passes
    resume_heartbeat_s = 300.0    # a run open with no event this long is interrupted
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, Strict, StrictBool, StrictInt, StrictStr

from ._policy import PolicyConfigError, PolicyFile, PolicySet, read_table
from ._providers import ProviderConfig, ProviderTable

__all__ = ["ELSEWHERE", "WorkerConfig", "WorkerFile", "WorkerSection", "load_worker_config"]

ELSEWHERE = ("gateway", "memory", "resume")
"""The sections of ``tether.toml`` that other parts own (the gateway's, memory's, resume's)."""


class WorkerSection(BaseModel):
    """``[worker]``: how one worker runs."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    concurrency: Annotated[StrictInt, Field(ge=1)] = 64
    """Calls in flight per worker."""
    tools: list[Annotated[StrictStr, Field(min_length=1)]] = []
    """Modules that register tools on tether.middleware.tools."""
    resume_interrupted: StrictBool = False
    """Also resume the runs the projector's views show interrupted (tether worker --resume-interrupted)."""
    resume_every_s: Annotated[float, Strict(), Field(gt=0)] = 30.0
    """Seconds between the passes that resume interrupted runs (--resume-every)."""
    resume_heartbeat_s: Annotated[float, Strict(), Field(gt=0)] = 300.0
    """A run open with no event for this many seconds is interrupted (--heartbeat-s)."""


class WorkerFile(PolicyFile):
    """The worker's part of ``tether.toml``: policies, ``[providers.*]`` and ``[worker]``."""

    providers: dict[str, ProviderTable] = {}
    """One table per upstream, by the name routes use ('openai' in 'openai:gpt-4o')."""
    worker: WorkerSection = WorkerSection()

    def worker_config(self, source: str | None = None, environ: Mapping[str, str] | None = None) -> WorkerConfig:
        """What the worker runs with (the providers' keys read from ``environ``, default the environment)."""
        return WorkerConfig(self.policy_set(), {name: table.config(name, environ) for name, table in
                                                self.providers.items()},
                            self.worker.concurrency, tuple(self.worker.tools), source,
                            resume_interrupted=self.worker.resume_interrupted,
                            resume_every_s=self.worker.resume_every_s,
                            resume_heartbeat_s=self.worker.resume_heartbeat_s)


_WORKER = WorkerSection()


@dataclass(frozen=True)
class WorkerConfig:
    policies: PolicySet = field(default_factory=PolicySet.default)
    providers: dict[str, ProviderConfig] = field(default_factory=dict)
    concurrency: int = _WORKER.concurrency
    tool_modules: tuple[str, ...] = ()
    source: str | None = None
    resume_interrupted: bool = _WORKER.resume_interrupted
    resume_every_s: float = _WORKER.resume_every_s
    resume_heartbeat_s: float = _WORKER.resume_heartbeat_s

    def import_tools(self) -> None:
        """Import the tool modules, so their ``@tools.tool`` registrations run."""
        for name in self.tool_modules:
            try:
                importlib.import_module(name)
            except ImportError as exc:
                raise PolicyConfigError("worker.tools", f"cannot import {name!r}: {exc}",
                                        source=self.source) from None


def load_worker_config(path: str | Path | None = None, *, cwd: Path | None = None) -> WorkerConfig:
    """The worker's part of ``path`` (else ``tether.toml``, else ``[tool.tether]``); defaults when
    there is no file. :class:`PolicyConfigError` names the file, the key and what is allowed."""
    source, data = read_table(path, cwd)
    mine: Any = {key: value for key, value in data.items() if key not in ELSEWHERE}
    return WorkerFile.parse(mine, source=source).worker_config(source)
