"""``tether.init()``: finds the frameworks installed, installs each adapter once, imports nothing
for ``import tether`` or for a framework left out; an unknown name is refused with the known ones."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import tether
from tether.adapters import _autoinit

from .._envs import optional_env
from ._harness import HERE


def test_without_frameworks_init_installs_nothing_and_imports_nothing() -> None:
    before = set(sys.modules)
    assert tether.init() == []
    assert tether.init(exclude={"crewai"}, only={"langgraph", "openai_agents"}) == []
    assert not {m for m in set(sys.modules) - before if m.split(".")[0] in ("langgraph", "langchain_core", "agents")}


def test_a_misspelt_framework_is_refused_with_the_known_names() -> None:
    with pytest.raises(ValueError, match=r"unknown framework 'crewia'; known: .*crewai.*langgraph.*openai-agents"):
        tether.init(exclude={"crewia"})


def test_every_adapter_module_is_named_for_its_framework() -> None:
    for name, (_, adapter) in _autoinit.FRAMEWORKS.items():
        if adapter is not None:
            assert adapter == f"tether.adapters.{name.replace('-', '_')}"


@pytest.mark.slow
@pytest.mark.parametrize("framework", ["langgraph", "openai-agents", "autogen", "llama-index"])
def test_init_in_the_frameworks_venv(framework: str) -> None:
    env = optional_env(framework, project=True)
    done = subprocess.run([str(env.bin("python")), str(HERE / "init_check.py")], capture_output=True, text=True,
                          timeout=120, check=False, env={"PATH": "/usr/bin:/bin", "HOME": str(HERE)})
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["imported_by_import_tether"] == [], "import tether imports no framework"
    assert out["excluded"] == [] and out["after_excluded"] == [], "an excluded framework is not even imported"
    assert out["first"] == out["second"] == [framework]
    assert out["hooks"] == 1, "installed once, however often init() is called"
    assert "unknown framework 'crewia'" in out["typo"]
