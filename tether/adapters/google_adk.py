"""Google ADK under tether: runs, sub-agents and tool calls from an ADK plugin (:class:`TetherPlugin`,
ADK's own extension point, given to the ``App``; function tools run under tether's tool policy), model
calls through tether (:func:`gemini`: ADK's native ``Gemini`` with google-genai on tether's HTTP clients;
:func:`lite_llm`: ADK's ``LiteLlm`` with an OpenAI client on tether's HTTP client),
memory put into the model's input (the plugin's ``memory=``), ADK's ``SessionService`` and
``MemoryService`` on tether (:class:`TetherSessionService`, :class:`TetherMemoryService`).
The only module of tether that imports ``google.adk``.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import re
import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any
from weakref import WeakKeyDictionary

import httpx
from google.adk.errors.already_exists_error import AlreadyExistsError
from google.adk.errors.session_not_found_error import SessionNotFoundError
from google.adk.events.event import Event
from google.adk.memory.base_memory_service import BaseMemoryService, SearchMemoryResponse
from google.adk.memory.memory_entry import MemoryEntry
from google.adk.plugins.base_plugin import BasePlugin
from google.adk.sessions.base_session_service import BaseSessionService, GetSessionConfig, ListSessionsResponse
from google.adk.sessions.session import Session
from google.adk.sessions.state import State
from google.adk.tools.base_tool import BaseTool
from google.adk.tools.computer_use.computer_use_tool import ComputerUseTool
from google.genai import types

from tether.adapters import Run, async_http_client, http_client
from tether.bus import Bus
from tether.schemas import uuid7

from ._frameworks import KvState, ObservedTool, inject_memory, key_token, untoken
from ._tools import FrameworkTools

__all__ = ["PolicyTool", "TetherMemoryService", "TetherPlugin", "TetherSessionService", "gemini", "governable",
           "install", "lite_llm"]

SOURCE = "urn:tether:adapter:google-adk"


class PolicyTool(BaseTool):
    """An ADK tool whose calls run under tether's tool policy and the run's journal
    (:class:`~tether.adapters._tools.FrameworkTools`): what :class:`TetherPlugin` puts in place of a
    tool (:func:`governable`) in each model request's ``tools_dict`` (the tools ADK then runs), never
    in the agent itself. ADK sees the tool: its name, its confirmation check, its result, its error."""

    def __init__(self, tool: BaseTool, runner: FrameworkTools) -> None:
        super().__init__(name=tool.name, description=tool.description, is_long_running=tool.is_long_running,
                         custom_metadata=tool.custom_metadata)
        self.tool = tool
        self.runner = runner

    async def check_require_confirmation(self, args: dict[str, Any], tool_context: Any) -> bool:
        return (await self.tool.check_require_confirmation(args, tool_context)) is True  # as ADK reads it

    async def run_async(self, *, args: dict[str, Any], tool_context: Any) -> Any:
        return await self.runner.acall(self.name, args, lambda: self.tool.run_async(args=args,
                                                                                    tool_context=tool_context))


class TetherPlugin(BasePlugin):
    """An ADK run (``Runner.run_async``) is a tether run named for its root agent; each other agent it
    runs (a sub-agent, an agent transferred to, an ``AgentTool``'s agent) is a child run; each tool call
    is recorded (arguments, result, duration, error). Called in the runner's own context, so the run it
    opens is the current run of the model calls and tools that follow.

    Each call of a tool ADK runs itself (a function in ``tools=``, a ``LongRunningFunctionTool``'s first
    call, an ``AgentTool``: its agent a child run, a toolset's tools such as ``MCPToolset``'s; see
    :func:`governable`) runs under tether's tool policy and the run's journal: retried only when the tool
    is named in ``idempotent_tools`` (or the route ``tool:<name>`` says ``idempotent``), each attempt
    bounded by ``tool_timeout_s`` (else the route's ``tool_timeout_s``; a sync function blocks the loop,
    so only an async tool can be cut short), a resumed run's completed call answered from the log
    without running. ``tool_policy=False`` only
    observes them. The others (a ``ComputerUseTool``, a tool with ``skip_summarization``) are observed.

    ``memory`` (a ``tether.memory.AsyncMemory``): before each model call of the agents named in
    ``agents`` (default: every agent), what it holds on the last user message is added to the system
    instruction (not kept in the session), the retrieval recorded as the tool call ``tether.memory.context``."""

    def __init__(self, *, memory: Any = None, agents: Collection[str] | None = None, namespaces: Any = None,
                 token_budget: int = 500, idempotent_tools: Iterable[str] = (), tool_timeout_s: float | None = None,
                 tool_policy: bool = True, name: str = "tether") -> None:
        super().__init__(name=name)
        self.runner = FrameworkTools(SOURCE, idempotent=idempotent_tools, timeout_s=tool_timeout_s) \
            if tool_policy else None
        self._policy_tools: WeakKeyDictionary[BaseTool, PolicyTool] = WeakKeyDictionary()
        self.memory = memory
        self.agents = None if agents is None else frozenset(agents)
        self.namespaces = namespaces
        self.token_budget = token_budget
        self.runs: dict[str, Run] = {}  # invocation id -> the root agent's run
        self.children: dict[tuple[str, str], list[Run]] = {}  # (invocation id, agent) -> its runs, innermost last
        self.tools: dict[str, ObservedTool] = {}  # function call id -> the call under way

    # runs
    async def before_run_callback(self, *, invocation_context: Any) -> Any:
        agent = str(invocation_context.agent.name)
        run = Run(agent=agent, name=agent, metadata={"framework": "google-adk",
                                                     "invocation_id": str(invocation_context.invocation_id)},
                  derive="google-adk")
        try:
            await run.__aenter__()
        except Exception:  # no bus: the agent runs unrecorded
            return None
        self.runs[str(invocation_context.invocation_id)] = run
        return None

    async def after_run_callback(self, *, invocation_context: Any) -> None:
        await self._end_run(str(invocation_context.invocation_id), None)

    async def on_run_error_callback(self, *, invocation_context: Any, error: Exception) -> None:
        await self._end_run(str(invocation_context.invocation_id), error)

    async def _end_run(self, invocation: str, error: BaseException | None) -> None:
        for key, runs in list(self.children.items()):
            if key[0] == invocation:  # a sub-agent left open by an error ends with its run
                del self.children[key]
                for child in reversed(runs):
                    await child.__aexit__(type(error) if error else None, error, None)
        root = self.runs.pop(invocation, None)
        if root is not None:
            await root.__aexit__(type(error) if error else None, error, None)

    async def before_agent_callback(self, *, agent: Any, callback_context: Any) -> Any:
        invocation = str(callback_context.invocation_id)
        root = self.runs.get(invocation)
        if root is None or root.agent == agent.name:
            return None  # the root agent: its run is the invocation's
        run = Run(agent=str(agent.name), name=str(agent.name), metadata={"framework": "google-adk"},
                  derive="google-adk")
        try:
            await run.__aenter__()
        except Exception:
            return None
        self.children.setdefault((invocation, str(agent.name)), []).append(run)
        return None

    async def after_agent_callback(self, *, agent: Any, callback_context: Any) -> Any:
        await self._end_child(str(callback_context.invocation_id), str(agent.name), None)
        return None

    async def on_agent_error_callback(self, *, agent: Any, callback_context: Any, error: Exception) -> None:
        await self._end_child(str(callback_context.invocation_id), str(agent.name), error)

    async def _end_child(self, invocation: str, agent: str, error: BaseException | None) -> None:
        runs = self.children.get((invocation, agent))
        if runs:
            run = runs.pop()
            if not runs:
                del self.children[(invocation, agent)]
            await run.__aexit__(type(error) if error else None, error, None)

    # tools
    async def before_tool_callback(self, *, tool: Any, tool_args: dict[str, Any], tool_context: Any) -> Any:
        if isinstance(tool, PolicyTool):
            return None  # recorded under the tool policy
        observed = ObservedTool.start(str(tool.name), tool_args, source=SOURCE)
        if observed is not None:
            self.tools[self._call_id(tool, tool_context)] = observed
        return None

    async def after_tool_callback(self, *, tool: Any, tool_args: dict[str, Any], tool_context: Any,
                                  result: Any) -> Any:
        observed = self.tools.pop(self._call_id(tool, tool_context), None)
        if observed is not None:
            observed.completed(result)
        return None

    async def on_tool_error_callback(self, *, tool: Any, tool_args: dict[str, Any], tool_context: Any,
                                     error: Exception) -> Any:
        observed = self.tools.pop(self._call_id(tool, tool_context), None)
        if observed is not None:
            observed.failed(error)
        return None

    @staticmethod
    def _call_id(tool: Any, tool_context: Any) -> str:
        return str(getattr(tool_context, "function_call_id", None) or f"{tool_context.invocation_id}/{tool.name}")

    # messages
    async def before_model_callback(self, *, callback_context: Any, llm_request: Any) -> Any:
        if self.runner is not None:
            self._govern(llm_request)
        if self.memory is None or (self.agents is not None and callback_context.agent_name not in self.agents):
            return None
        query = next((_text(c) for c in reversed(llm_request.contents or []) if c.role == "user" and _text(c)), "")
        text = await inject_memory(self.memory, query, namespaces=self.namespaces, token_budget=self.token_budget)
        if text:
            llm_request.append_instructions([f"What you remember:\n{text}"])
        return None


    def _govern(self, llm_request: Any) -> None:
        """The tools of the request (those ADK runs when the model calls them, resolved for this
        request only: an agent's own, a toolset's, an ``AgentTool``) under the tool policy: each one
        :func:`governable` replaced by its :class:`PolicyTool`."""
        assert self.runner is not None
        found = getattr(llm_request, "tools_dict", None)
        if not found:
            return
        for key, tool in found.items():
            if governable(tool):
                governed = self._policy_tools.get(tool)
                if governed is None:
                    governed = self._policy_tools[tool] = PolicyTool(tool, self.runner)
                found[key] = governed


def governable(tool: Any) -> bool:
    """Whether ADK can run ``tool`` as a :class:`PolicyTool`: a tool that runs here (its own
    ``run_async``: a ``FunctionTool``, a ``LongRunningFunctionTool``'s first call, an ``AgentTool``, a
    toolset's tools such as ``MCPToolset``'s), whose result ADK reads as any tool's. Not the tools
    whose result ADK reads by their class: a ``ComputerUseTool`` (its screenshot) and a tool with
    ``skip_summarization`` (an ``AgentTool`` whose answer ADK shows as the agent's text)."""
    if not isinstance(tool, BaseTool) or isinstance(tool, PolicyTool | ComputerUseTool):
        return False
    if type(tool).run_async is BaseTool.run_async:  # a built-in tool the model's provider runs
        return False
    return not getattr(tool, "skip_summarization", False)


def _text(content: Any) -> str:
    return " ".join(part.text for part in content.parts or [] if getattr(part, "text", None))


_installed = False


def install() -> None:
    """Nothing process-wide: ADK takes plugins per ``App`` (``App(plugins=[TetherPlugin()])``), and
    has no hook for every runner. Kept so that ``tether.init()`` treats every framework alike."""
    global _installed
    _installed = True


def _http_package() -> str:
    major = importlib.metadata.version("openai").partition(".")[0]
    return "httpx2" if major.isdigit() and int(major) >= 3 else "httpx"


def _litellms_own() -> dict[str, Any]:
    """How ``lite_llm``'s HTTP client sends: on the transport LiteLLM would have used for the call without tether
    (its aiohttp one: an ``httpx`` transport, which the openai SDK takes at any version), else on the SDK's own
    package's default."""
    from .litellm import _own_async_transport

    transport = _own_async_transport()
    return {"package": "httpx", "transport": transport} if transport is not None else {"package": _http_package()}


def lite_llm(model: str, *, tether: dict[str, Any] | None = None, **kwargs: Any) -> Any:
    """ADK's ``LiteLlm(model, **kwargs)`` for an OpenAI-compatible model (``openai/<name>``) whose
    calls go through tether: LiteLLM is given (``client=``, a LiteLLM completion argument ADK passes
    on) an ``AsyncOpenAI`` on tether's HTTP client with its retries off, sending on the transport
    LiteLLM would have used (its aiohttp one); ``tether`` holds ``tether.async_http_client`` options
    (``policies``, ``bus``, ``agent``, ``transport``). ``base_url`` and ``api_key`` default to
    ``OPENAI_BASE_URL`` and ``OPENAI_API_KEY``, as the SDK's do."""
    from google.adk.models.lite_llm import LiteLlm
    from openai import AsyncOpenAI

    if not model.startswith("openai/"):
        raise ValueError(f"tether.adapters.google_adk.lite_llm takes an OpenAI-compatible model, 'openai/<name>', "
                         f"not {model!r}: other providers' LiteLLM routes do not use the openai client tether wraps")
    if "client" in kwargs:
        raise TypeError("lite_llm gives LiteLLM tether's own client: leave client out (pass base_url= and api_key=)")
    options = {k: kwargs.pop(k) for k in ("base_url", "api_key") if k in kwargs}
    given = dict(tether or {})
    own = _litellms_own() if "package" not in given and "transport" not in given else {"package": _http_package()}
    http = async_http_client(**{**own, **given})
    client = AsyncOpenAI(http_client=http, max_retries=0, **options)
    return LiteLlm(model=model, client=client, num_retries=0, **kwargs)


def gemini(model: str = "gemini-2.5-flash", *, tether: dict[str, Any] | None = None, **kwargs: Any) -> Any:
    """ADK's native ``Gemini(model=model, **kwargs)`` whose calls (``generateContent``,
    ``streamGenerateContent``) go through tether: the google-genai clients ADK builds for it are given
    (``client_kwargs={"http_options": ...}``, ADK's public way to set them) tether's HTTP clients
    (``httpx_client``, ``httpx_async_client``) and ``retry_options`` of one attempt, so tether alone
    retries. ``tether`` holds ``tether.async_http_client`` options (``policies``, ``bus``, ``agent``,
    ``capture``...; ``mode="durable"`` is refused: tether's workers do not speak Gemini's API).
    The key and the endpoint are google-genai's as usual (``GOOGLE_API_KEY``; ``base_url=``)."""
    from google.adk.models.google_llm import Gemini

    if "client" in kwargs:
        raise TypeError("gemini() gives ADK's Gemini tether's HTTP clients: leave client out (pass client_kwargs= "
                        "for google-genai's other options)")
    if kwargs.get("retry_options") is not None:
        raise TypeError("gemini() turns google-genai's retries off, as tether retries: leave retry_options out and "
                        "set the retries in tether's policy ([routes] in tether.toml, or tether={'policies': ...})")
    options = dict(tether or {})
    if options.get("mode") == "durable":
        raise ValueError("gemini() runs Gemini calls inline: tether's durable workers speak the OpenAI and "
                         "Anthropic APIs only (leave mode out)")
    client_kwargs = dict(kwargs.pop("client_kwargs", None) or {})
    given = client_kwargs.get("http_options") or {}
    http_options = types.HttpOptions.model_validate(given) if isinstance(given, dict) else given.model_copy()
    if http_options.httpx_client or http_options.httpx_async_client or http_options.aiohttp_client:
        raise TypeError("gemini() gives google-genai tether's HTTP clients: leave httpx_client, httpx_async_client "
                        "and aiohttp_client out of http_options")
    options.setdefault("provider", "gemini")
    http_options.httpx_client = http_client(**options)
    http_options.httpx_async_client = async_http_client(transport=_PerLoopTransport(), **options)
    http_options.retry_options = types.HttpRetryOptions(attempts=1)
    client_kwargs["http_options"] = http_options
    return Gemini(model=model, client_kwargs=client_kwargs, **kwargs)


class _PerLoopTransport(httpx.AsyncBaseTransport):
    """An httpx transport per event loop: ADK builds a google-genai client per loop, all given the one
    async HTTP client of :func:`gemini`, whose connections must not outlive the loop that opened them."""

    def __init__(self) -> None:
        self._by_loop: WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncHTTPTransport] = WeakKeyDictionary()

    def _transport(self) -> httpx.AsyncHTTPTransport:
        loop = asyncio.get_running_loop()
        transport = self._by_loop.get(loop)
        if transport is None:
            transport = self._by_loop[loop] = httpx.AsyncHTTPTransport()
        return transport

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await self._transport().handle_async_request(request)

    async def aclose(self) -> None:
        transport = self._by_loop.pop(asyncio.get_running_loop(), None)
        if transport is not None:
            await transport.aclose()


def _token(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.@+=~-]", "-", text) or "-"


class TetherMemoryService(BaseMemoryService):
    """ADK's ``MemoryService`` on tether memory (``tether.memory.AsyncMemory``): what a session said
    (each event with text: its author, time and session in the entry's metadata) is written to the
    namespace ``adk:<app>.<user>``, where ``search_memory`` (ADK's ``load_memory`` tool) finds it by
    tether's search (keywords and embeddings). Writes are in the log, so they survive a restart and
    show in the views; ``add_*`` return once the memory view has them, so a search right after sees them."""

    def __init__(self, memory: Any, *, k: int = 5) -> None:
        self.memory = memory
        self.k = k

    @staticmethod
    def namespace(app_name: str, user_id: str) -> str:
        return f"adk:{_token(app_name)}.{_token(user_id)}"[:200]

    async def add_session_to_memory(self, session: Any) -> None:
        await self.add_events_to_memory(app_name=session.app_name, user_id=session.user_id, events=session.events,
                                        session_id=session.id)

    async def add_events_to_memory(self, *, app_name: str, user_id: str, events: Sequence[Any],
                                   session_id: str | None = None,
                                   custom_metadata: Mapping[str, object] | None = None) -> None:
        namespace, last = self.namespace(app_name, user_id), None
        for event in events:
            text = _text(event.content) if event.content is not None else ""
            if not text:
                continue
            metadata = {**dict(custom_metadata or {}), "author": event.author, "timestamp": event.timestamp,
                        "session": session_id}
            last = await self.memory.write(namespace, text, key=f"{session_id or '-'}.{event.id}", metadata=metadata)
        if last is not None:
            await self.memory.wait_for(last.seq)

    async def add_memory(self, *, app_name: str, user_id: str, memories: Sequence[MemoryEntry],
                         custom_metadata: Mapping[str, object] | None = None) -> None:
        namespace, last = self.namespace(app_name, user_id), None
        for entry in memories:
            text = _text(entry.content)
            if text:
                metadata = {**dict(custom_metadata or {}), **entry.custom_metadata, "author": entry.author,
                            "timestamp": entry.timestamp}
                last = await self.memory.write(namespace, text, key=entry.id, metadata=metadata)
        if last is not None:
            await self.memory.wait_for(last.seq)

    async def search_memory(self, *, app_name: str, user_id: str, query: str) -> SearchMemoryResponse:
        hits = await self.memory.search(query, self.namespace(app_name, user_id), k=self.k)
        memories = []
        for hit in hits:
            metadata = dict(hit.entry.metadata or {})
            author, timestamp = metadata.pop("author", None), metadata.pop("timestamp", None)
            memories.append(MemoryEntry(
                id=hit.entry.key, author=author, custom_metadata=metadata,
                timestamp=None if timestamp is None else str(timestamp),
                content=types.Content(role="model" if author not in (None, "user") else "user",
                                      parts=[types.Part(text=hit.entry.text)])))
        return SearchMemoryResponse(memories=memories)

    async def delete_memory(self, *, app_name: str, user_id: str, memory_id: str | None = None) -> None:
        if memory_id is None:
            raise ValueError("TetherMemoryService.delete_memory needs memory_id (a MemoryEntry.id search_memory gave)")
        written = await self.memory.delete(self.namespace(app_name, user_id), memory_id)
        await self.memory.wait_for(written.seq)


def _scopes(delta: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """A state delta as (app, user, session) deltas, prefixes removed from the first two; ``temp:`` dropped."""
    app, user, session = {}, {}, {}
    for key, value in delta.items():
        if key.startswith(State.APP_PREFIX):
            app[key.removeprefix(State.APP_PREFIX)] = value
        elif key.startswith(State.USER_PREFIX):
            user[key.removeprefix(State.USER_PREFIX)] = value
        elif not key.startswith(State.TEMP_PREFIX):
            session[key] = value
    return app, user, session


class TetherSessionService(BaseSessionService):
    """ADK's ``SessionService`` on tether: each session (its own state), each of its events, and the
    app- and user-scoped state (``app:`` / ``user:`` keys) as keys of the JetStream KV bucket ``bucket``
    (file storage), so a conversation survives a restart of the process and of NATS. Events are kept
    in the order appended; ``temp:`` state lives for the invocation only, as in ADK's own services."""

    def __init__(self, bus: Bus, *, bucket: str = "tether-adk-sessions") -> None:
        self.state = KvState(bus, bucket)

    @staticmethod
    def _key(app_name: str, user_id: str, session_id: str | None = None) -> str:
        key = f"{key_token(app_name)}.{key_token(user_id)}"
        return key if session_id is None else f"{key}.{key_token(session_id)}"

    async def create_session(self, *, app_name: str, user_id: str, state: dict[str, Any] | None = None,
                             session_id: str | None = None) -> Session:
        session_id = (session_id or "").strip() or uuid7()
        key = self._key(app_name, user_id, session_id)
        if await self.state.get(f"s.{key}") is not None:
            raise AlreadyExistsError(f"Session with id {session_id} already exists.")
        app, user, own = _scopes(state or {})
        await self._update(app_name, user_id, app, user)
        session = Session(app_name=app_name, user_id=user_id, id=session_id, state=own,
                          last_update_time=time.time())
        await self.state.put(f"s.{key}", {"state": own, "last_update_time": session.last_update_time})
        return await self._merged(session)

    async def get_session(self, *, app_name: str, user_id: str, session_id: str,
                          config: GetSessionConfig | None = None) -> Session | None:
        key = self._key(app_name, user_id, session_id.strip())
        saved = await self.state.get(f"s.{key}")
        if saved is None:
            return None
        entries = [await self.state.entry(k) for k in await self.state.keys(f"e.{key}")]
        ordered = sorted((e for e in entries if e is not None and e.value), key=lambda e: e.revision)
        events = [Event.model_validate_json(e.value) for e in ordered]
        if config is not None:
            if config.num_recent_events is not None:
                events = events[-config.num_recent_events:] if config.num_recent_events > 0 else []
            if config.after_timestamp is not None:
                events = [e for e in events if e.timestamp >= config.after_timestamp]
        session = Session(app_name=app_name, user_id=user_id, id=session_id.strip(), state=dict(saved["state"]),
                          events=events, last_update_time=saved["last_update_time"])
        return await self._merged(session)

    async def list_sessions(self, *, app_name: str, user_id: str | None = None) -> ListSessionsResponse:
        prefix = f"s.{key_token(app_name)}" if user_id is None else f"s.{self._key(app_name, user_id)}"
        sessions = []
        for key in await self.state.keys(prefix):
            saved = await self.state.get(key)
            if saved is None:
                continue
            _, _, user, sid = key.split(".")
            session = Session(app_name=app_name, user_id=untoken(user), id=untoken(sid), state=dict(saved["state"]),
                              last_update_time=saved["last_update_time"])
            sessions.append(await self._merged(session))
        return ListSessionsResponse(sessions=sorted(sessions, key=lambda s: s.last_update_time))

    async def delete_session(self, *, app_name: str, user_id: str, session_id: str) -> None:
        key = self._key(app_name, user_id, session_id)
        await self.state.remove(f"s.{key}")
        await self.state.remove(f"e.{key}.>")

    async def get_user_state(self, *, app_name: str, user_id: str) -> dict[str, Any]:
        return dict(await self.state.get(f"u.{self._key(app_name, user_id)}") or {})

    async def append_event(self, session: Session, event: Event) -> Event:
        if event.partial:
            return event
        key = self._key(session.app_name, session.user_id, session.id)
        saved = await self.state.get(f"s.{key}")
        if saved is None:
            raise SessionNotFoundError(f"Session {session.id} not found.")
        event = await super().append_event(session=session, event=event)  # the caller's copy, temp: state trimmed
        session.last_update_time = event.timestamp
        own: dict[str, Any] = dict(saved["state"])
        if event.actions and event.actions.state_delta:
            app, user, delta = _scopes(event.actions.state_delta)
            await self._update(session.app_name, session.user_id, app, user)
            own.update(delta)
        await self.state.put(f"e.{key}.{uuid7()}", event.model_dump(mode="json", exclude_none=True))
        await self.state.put(f"s.{key}", {"state": own, "last_update_time": event.timestamp})
        return event

    async def _update(self, app_name: str, user_id: str, app: dict[str, Any], user: dict[str, Any]) -> None:
        for kv_key, delta in ((f"a.{key_token(app_name)}", app), (f"u.{self._key(app_name, user_id)}", user)):
            if delta:
                await self.state.put(kv_key, {**(await self.state.get(kv_key) or {}), **delta})

    async def _merged(self, session: Session) -> Session:
        """``session`` with the app- and user-scoped state under their prefixes, as ADK's services give it."""
        app = await self.state.get(f"a.{key_token(session.app_name)}") or {}
        user = await self.state.get(f"u.{self._key(session.app_name, session.user_id)}") or {}
        session.state.update({State.APP_PREFIX + k: v for k, v in app.items()})
        session.state.update({State.USER_PREFIX + k: v for k, v in user.items()})
        return session
