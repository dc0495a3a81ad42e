"""What ``import tether`` and ``tether.init()`` do in a framework's venv; prints JSON
(tests/frameworks/test_init.py)."""

from __future__ import annotations

import json
import sys

import tether

FRAMEWORK_MODULES = ("langgraph", "langchain_core", "agents", "autogen_core", "autogen_agentchat", "google.adk",
                     "llama_index.core")
out: dict[str, object] = {"imported_by_import_tether": sorted(m for m in FRAMEWORK_MODULES if m in sys.modules)}
out["excluded"] = tether.init(exclude={"langgraph", "openai-agents", "crewai", "autogen", "google-adk", "llama-index"})
out["after_excluded"] = sorted(m for m in FRAMEWORK_MODULES if m in sys.modules)
out["first"] = tether.init()
out["second"] = tether.init()
if "langchain_core" in sys.modules:
    from langchain_core.tracers import context

    out["hooks"] = sum(1 for var, *_ in context._configure_hooks if var.name == "tether_langchain")
if "agents" in sys.modules:
    from agents.tracing import get_trace_provider

    from tether.adapters.openai_agents import TetherTracingProcessor

    processors = get_trace_provider()._multi_processor._processors  # the SDK's list, read for the test only
    out["hooks"] = sum(1 for p in processors if isinstance(p, TetherTracingProcessor))
if "autogen_core" in sys.modules:
    import logging

    from autogen_core import EVENT_LOGGER_NAME

    handlers = logging.getLogger(EVENT_LOGGER_NAME).handlers
    out["hooks"] = sum(1 for h in handlers if type(h).__module__ == "tether.adapters.autogen")
if "llama_index.core" in sys.modules:
    from llama_index.core.instrumentation import get_dispatcher

    from tether.adapters.llama_index import TetherSpanHandler

    out["hooks"] = sum(1 for h in get_dispatcher().span_handlers if isinstance(h, TetherSpanHandler))
try:
    tether.init(exclude={"crewia"})
except ValueError as exc:
    out["typo"] = str(exc)
print(json.dumps(out))
