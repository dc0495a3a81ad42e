"""CrewAI under tether: runs (a crew's or flow's kickoff, each task a child run, each delegation to a
coworker a child run too) and tool calls (every tool an agent calls, sync or async, under tether's
tool policy) from CrewAI's interception hooks (registered by :func:`install`), model calls through
tether with CrewAI's own retries kept out of them (:func:`llm`). The only module of tether that
imports ``crewai`` (its private API: ``_crewaipriv``).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import threading
import uuid
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from crewai.hooks import HookAborted, InterceptionPoint, register_hook
from crewai.llms.providers.openai.completion import OpenAICompletion
from crewai.tools import BaseTool
from crewai.tools.agent_tools.base_agent_tools import BaseAgentTool
from crewai.tools.base_tool import Tool
from crewai.utilities.string_utils import sanitize_tool_name
from pydantic import Field

from tether.adapters import NeedsAttention, Run, current_run, instrument

from . import _crewaipriv
from ._crewaipriv import HOOKS, CrewAIChanged
from ._frameworks import ObservedTool, policy_set
from ._tools import FrameworkTools

__all__ = ["HOOKS", "CrewAIChanged", "TetherLLM", "TetherLLMError", "TetherMemoryStorage", "TetherNeedsAttention",
           "install", "llm"]

SOURCE = "urn:tether:adapter:crewai"
# what CrewAI reports in place of a tool's result when the tool raised (its executors catch the error)
_TOOL_ERROR = "Error executing tool:"
_BLOCKED = "Tool execution blocked by hook."
# where each hook of _crewaipriv.HOOKS lives in the installed CrewAI
_OWNERS: dict[str, type] = {"crewai.llms.providers.openai.completion.OpenAICompletion": OpenAICompletion,
                            "crewai.tools.BaseTool": BaseTool}


class TetherLLMError(HookAborted):
    """A model call tether gave up on (after its own retries, or refused by a budget, the breaker
    or the runaway guard). CrewAI's own ``HookAborted``, so CrewAI neither retries the call (its
    rate-limit retry) nor the task (``Agent.max_retry_limit``): tether's retries are all there are.
    ``http_status`` is the HTTP status tether answered, ``error_code`` its error code
    (``budget_exceeded``...), ``error`` the SDK's exception: kept apart from the exception chain and
    from the ``status_code`` and ``code`` attributes, which CrewAI's rate-limit retry reads."""

    def __init__(self, reason: str, *, http_status: int | None, error_code: str | None,
                 error: BaseException) -> None:
        super().__init__(reason, source="tether")
        self.http_status = http_status
        self.error_code = error_code
        self.error = error


class TetherNeedsAttention(HookAborted, NeedsAttention):
    """A resumed run stopped at a tool call the process died inside, which is not idempotent
    (:class:`tether.NeedsAttention`, with its ``run_id``, ``tool``, ``position``, ``arguments``).
    Also CrewAI's ``HookAborted``, raised from tether's after-tool hook: CrewAI gives any error a
    tool raises to the model as text, and stops the crew only for a hook's abort."""

    def __init__(self, error: NeedsAttention) -> None:
        NeedsAttention.__init__(self, error.run_id, error.call_id, error.tool, error.position, error.arguments,
                                error.reason)
        self.source = "tether"

    def __reduce__(self) -> Any:
        return (type(self), (NeedsAttention(self.run_id, self.call_id, self.tool, self.position, self.arguments,
                                            self.reason),))


class _Runs:
    """The runs CrewAI's hooks open: one per kickoff (crew or flow), one per task inside it."""

    def __init__(self) -> None:
        self.executions: dict[int, Run] = {}
        self.steps: dict[int, Run] = {}
        self.lock = threading.Lock()

    def start(self, ctx: Any) -> None:
        owner = ctx.crew if ctx.crew is not None else ctx.flow
        if owner is None:
            return
        kind = "crew" if ctx.crew is not None else "flow"
        name = str(getattr(owner, "name", None) or type(owner).__name__)
        run = Run(agent=name, name=name, metadata={"framework": "crewai", "kind": kind}, derive="crewai")
        try:
            run.__enter__()
        except Exception:  # no bus: the crew runs unrecorded
            return
        with self.lock:
            self.executions[id(owner)] = run

    def end(self, ctx: Any) -> None:
        owner = ctx.crew if ctx.crew is not None else ctx.flow
        with self.lock:
            run = self.executions.pop(id(owner), None)
            if run is None or run.context is None:
                return
            # a task whose agent failed never reached its post-step: it ends with its crew
            orphans = [(key, step) for key, step in self.steps.items()
                       if step.context is not None and step.context.parent_run_id == run.context.run_id]
            for key, _ in orphans:
                del self.steps[key]
        error = ctx.error if getattr(ctx, "status", "completed") == "failed" else None
        for _, step in orphans:
            step.__exit__(type(error) if error else None, error, None)
        run.__exit__(type(error) if error else None, error, None)

    def step(self, ctx: Any) -> None:
        if ctx.kind != "task" or ctx.task is None:
            return
        role = str(ctx.agent_role or getattr(ctx.agent, "role", None) or "agent")
        run = Run(agent=role, name=str(ctx.step_name or role)[:200],
                  metadata={"framework": "crewai", "kind": "task"}, derive="crewai")
        try:
            run.__enter__()
        except Exception:
            return
        with self.lock:
            self.steps[id(ctx.task)] = run

    def stepped(self, ctx: Any) -> None:
        if ctx.kind != "task":
            return
        with self.lock:
            run = self.steps.pop(id(ctx.task), None)
        if run is not None:
            run.__exit__(None, None, None)


_RUNS = _Runs()
_tool: contextvars.ContextVar[ObservedTool | None] = contextvars.ContextVar("tether_crewai_tool", default=None)

# -- tool calls -----------------------------------------------------------------------------

_TOOLS = FrameworkTools(SOURCE)
_HALTS: dict[str, NeedsAttention] = {}  # run id: the call its resumed run stopped at, until the after-tool hook
# a coworker's run (a delegation's child run) while it works: the stop it came to, if any (CrewAI's
# delegation tool turns every exception of its coworker into a text for the delegating agent)
_COWORKING: dict[str, NeedsAttention | None] = {}


def _halted(error: NeedsAttention) -> None:
    """Keep the stop for the after-tool hook of the run the tool was called in (the stop's own run, or
    for a delegation the coworker's child run that stopped): CrewAI catches what a tool raises."""
    run = current_run()
    with _RUNS.lock:
        _HALTS[run.run_id if run is not None else error.run_id] = error


_Around = Callable[[Callable[[], Any], dict[str, Any]], Callable[[], Any]]


def _governed(name: str, fn: Callable[..., Any], around: _Around | None = None) -> Callable[..., Any]:
    """``fn`` (a sync tool's function) run as one call of the tool ``name`` under tether's tool policy;
    ``around(run, arguments)`` gives what runs in its place (a delegation's child run around it)."""

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        arguments = dict(kwargs) if not args else {"args": list(args), **kwargs}

        def run() -> Any:
            return fn(*args, **kwargs)

        try:
            return _TOOLS.call(name, arguments, run if around is None else around(run, arguments))
        except NeedsAttention as error:  # CrewAI catches it: the after-tool hook raises it again as an abort
            _halted(error)
            raise

    call.__tether_tool__ = True  # type: ignore[attr-defined]
    return call


def _governed_async(name: str, fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """``fn`` (an async tool's function) run as one call of the tool ``name`` under tether's tool
    policy: a coroutine function still, which CrewAI awaits or runs with ``asyncio.run``."""

    @functools.wraps(fn)
    async def call(*args: Any, **kwargs: Any) -> Any:
        arguments = dict(kwargs) if not args else {"args": list(args), **kwargs}
        try:
            return await _TOOLS.acall(name, arguments, lambda: fn(*args, **kwargs))
        except NeedsAttention as error:
            _halted(error)
            raise

    call.__tether_tool__ = True  # type: ignore[attr-defined]
    return call


def _is_governed(fn: Any) -> bool:
    return bool(getattr(fn, "__tether_tool__", False))


_DELEGATIONS = uuid.UUID("6d0c1e52-4f7e-5b7a-9a39-7c7e1f0b2d11")  # the namespace of a delegation's run id


def _coworker(tool: Any, arguments: dict[str, Any]) -> str | None:
    """The role of the agent a delegation tool's call names, matched as CrewAI matches it (the first
    of a ``[a, b]`` list, whitespace, quotes and case aside); None if no agent of the tool has it."""
    given = str(arguments.get("coworker") or arguments.get("co_worker") or "")
    if given.startswith("[") and given.endswith("]"):
        given = given[1:-1].split(",")[0]
    wanted = tool.sanitize_agent_name(given)
    return next((str(a.role) for a in getattr(tool, "agents", None) or ()
                 if tool.sanitize_agent_name(str(a.role)) == wanted), None)


def _delegation(tool: Any, name: str) -> _Around:
    """For a delegation tool (``Delegate work to coworker``, ``Ask question to coworker``): the
    coworker works in a child run of the run the tool is called in, named for its role. Its id is
    the parent's and the delegation's place among the parent's delegations (counted whether the
    call runs or is replayed), so a resumed run resumes it too."""

    def around(run: Callable[[], Any], arguments: dict[str, Any]) -> Callable[[], Any]:
        parent, role = current_run(), _coworker(tool, arguments)
        if parent is None or role is None:  # no run, or no such coworker: CrewAI answers with an error text
            return run
        place = next(parent.derived)
        run_id = str(uuid.uuid5(_DELEGATIONS, f"{parent.run_id}/{place}"))

        def in_child_run() -> Any:
            with _RUNS.lock:
                _COWORKING[run_id] = None
            try:
                with Run(agent=role, run_id=run_id, name=role, resume=parent.journal is not None,
                         metadata={"framework": "crewai", "kind": "delegation", "tool": name}):
                    result = run()
                    with _RUNS.lock:
                        stopped = _COWORKING[run_id]
                    if stopped is not None:  # CrewAI made the coworker's stop a text: stop the delegation too
                        raise stopped
                    return result
            finally:
                with _RUNS.lock:
                    _COWORKING.pop(run_id, None)

        return in_child_run

    return around


def govern(tool: Any) -> bool:
    """Put one CrewAI tool under tether's tool policy (once): a ``@tool`` function's ``func`` (sync or
    async), a ``BaseTool`` subclass's ``_run`` (sync or async) and its own ``_arun`` if it has one; a
    delegation tool's coworker then works in a child run. True if governed."""
    if not isinstance(tool, BaseTool):
        return False
    name = sanitize_tool_name(tool.name)
    if isinstance(tool, Tool):
        if not _is_governed(tool.func):
            tool.func = (_governed_async if inspect.iscoroutinefunction(tool.func) else _governed)(name, tool.func)
        return True
    if _is_governed(_crewaipriv.instance_run(tool)):
        return True
    if _crewaipriv.run_is_async(tool):
        _crewaipriv.wrap_run(tool, functools.partial(_governed_async, name))
    else:
        around = _delegation(tool, name) if isinstance(tool, BaseAgentTool) else None
        _crewaipriv.wrap_run(tool, lambda fn: _governed(name, fn, around))
    if _crewaipriv.has_arun(tool, BaseTool):
        _crewaipriv.wrap_arun(tool, functools.partial(_governed_async, name))
    return True


def _runs_governed(structured: Any) -> bool:
    """Whether the tool a hook reports (CrewAI's structured tool, its ``func`` the original tool's
    ``_run``) runs under tether's tool policy: its call is recorded there, not by the hooks."""
    fn = getattr(structured, "func", None)
    owner = getattr(fn, "__self__", None)
    return _is_governed(fn) or (owner is not None and (
        _is_governed(getattr(owner, "func", None)) or _is_governed(_crewaipriv.instance_run(owner))))


def _govern_now(structured: Any) -> bool:
    """A tool no task or agent lists (the delegation tools CrewAI adds to a task, tools it adds
    itself), reached at its call: governed now, before CrewAI runs it (its ``run`` looks ``_run``
    up at the call). The structured tool's ``func`` (what CrewAI's text tool calls run) follows."""
    fn = getattr(structured, "func", None)
    owner = getattr(fn, "__self__", None)
    if not govern(owner):
        return False
    replaced = _crewaipriv.instance_run(owner)
    if replaced is not None and not _is_governed(fn):
        structured.func = replaced
    return True


def _govern_step(ctx: Any) -> None:
    """Before a task runs: its tools and its agent's under tether's tool policy."""
    if ctx.kind != "task":
        return
    for owner in (ctx.task, ctx.agent):
        for tool in getattr(owner, "tools", None) or ():
            govern(tool)


def _before_tool(ctx: Any) -> None:
    structured = getattr(ctx, "tool", None)
    if _runs_governed(structured) or _govern_now(structured):
        return
    _tool.set(ObservedTool.start(str(ctx.tool_name), ctx.tool_input, source=SOURCE))


def _after_tool(ctx: Any) -> None:
    run = current_run()
    if run is not None and _HALTS:
        with _RUNS.lock:
            halt = _HALTS.pop(run.run_id, None)
        if halt is not None:
            with _RUNS.lock:
                if run.run_id in _COWORKING:
                    _COWORKING[run.run_id] = halt
            raise TetherNeedsAttention(halt)
    observed = _tool.get()
    if observed is None:
        return
    _tool.set(None)
    result = ctx.raw_tool_result if ctx.raw_tool_result is not None else ctx.tool_result
    if isinstance(result, str) and result.startswith((_TOOL_ERROR, _BLOCKED)):
        observed.failed(result.removeprefix(_TOOL_ERROR).strip())
    else:
        observed.completed(result)


def _step(ctx: Any) -> None:
    _RUNS.step(ctx)
    _govern_step(ctx)


_installed = False


def install(*, idempotent_tools: Iterable[str] | None = None, tool_timeout_s: float | None = None) -> None:
    """Register tether's hooks with CrewAI (once): each kickoff of a crew or flow is a run, each
    task a child run named for its agent's role, and the task's tools (its own and its agent's)
    run under tether's tool policy there: recorded, a timeout per attempt, retried only when
    idempotent, replayed on resume. The hooks run only where CrewAI runs them: at a kickoff, a
    task and a tool call.

    ``idempotent_tools`` names the tools that may be retried and run again after a crash (the
    route ``tool:<name>``'s ``idempotent`` in ``tether.toml`` wins); ``tool_timeout_s`` bounds each
    attempt (else the route's ``tool_timeout_s``). Given again, they replace the previous ones;
    ``tether.init()`` leaves them as they are."""
    global _installed, _TOOLS
    if idempotent_tools is not None or tool_timeout_s is not None:
        if isinstance(idempotent_tools, str):
            raise TypeError("tether.adapters.crewai.install: idempotent_tools is a collection of tool names, "
                            f"not one string ({idempotent_tools!r}): write idempotent_tools={{{idempotent_tools!r}}}")
        _TOOLS = FrameworkTools(SOURCE, idempotent=[sanitize_tool_name(n) for n in idempotent_tools or ()],
                                timeout_s=tool_timeout_s)
    if _installed:
        return
    _crewaipriv.require(_OWNERS, ["_run"])
    register_hook(InterceptionPoint.EXECUTION_START, _RUNS.start)
    register_hook(InterceptionPoint.EXECUTION_END, _RUNS.end)
    register_hook(InterceptionPoint.PRE_STEP, _step)
    register_hook(InterceptionPoint.POST_STEP, _RUNS.stepped)
    register_hook(InterceptionPoint.PRE_TOOL_CALL, _before_tool)
    register_hook(InterceptionPoint.POST_TOOL_CALL, _after_tool)
    _installed = True


# -- model calls ----------------------------------------------------------------------------

_RETRIED_STATUS = frozenset({408, 409, 429})
_OTHER_PROVIDERS = frozenset({"anthropic", "claude", "gemini", "google", "azure", "azure_openai", "bedrock",
                              "aws", "snowflake"})  # CrewAI's native providers that are not OpenAI's


def _gave_up(error: Exception) -> TetherLLMError | None:
    """The error to raise in place of the SDK's when tether answered a final failure that CrewAI
    would retry (a 408, 409, 429 or 5xx: tether already retried it, or refused it)."""
    response = getattr(error, "response", None)
    headers = getattr(response, "headers", None)
    status = getattr(error, "status_code", None)
    if headers is None or "x-tether-call-id" not in headers or not isinstance(status, int):
        return None
    if status not in _RETRIED_STATUS and status < 500:
        return None  # CrewAI's own handling stays (a context window exceeded is summarised, for one)
    body = getattr(error, "body", None)
    detail = body.get("error", body) if isinstance(body, dict) else None
    code = detail.get("code") if isinstance(detail, dict) else None
    message = detail.get("message") if isinstance(detail, dict) else None
    reason = (f"the model call failed after tether's retries: {type(error).__name__} {status}"
              + (f" ({code})" if code else "") + (f": {message}" if isinstance(message, str) else ""))
    return TetherLLMError(_unmarked(reason), http_status=status,
                          error_code=code if isinstance(code, str) else None, error=error)


def _unmarked(text: str) -> str:
    """``text`` without the words CrewAI's rate-limit retry looks for in a message (it would retry)."""
    for marker, plain in (("rate limit", "request quota"), ("rate-limit", "request quota"),
                          ("too many requests", "request quota"), ("throttled", "held back"),
                          ("resource exhausted", "quota used up")):
        while marker in text.lower():
            at = text.lower().index(marker)
            text = text[:at] + plain + text[at + len(marker):]
    return text


def _raise_bare(failure: TetherLLMError) -> None:
    """Raise ``failure`` with no exception chain: CrewAI's rate-limit retry walks the chain and
    would find the SDK's 429 in it."""
    failure.__cause__ = None
    failure.__context__ = None
    failure.__suppress_context__ = True
    raise failure


def _route(model: Any, client: Any) -> Any:
    return instrument(client, **model.tether_options)


# CrewAI's OpenAI provider with its two SDK clients given to tether.instrument() as it builds them
_Routed: Any = _crewaipriv.routed_clients(OpenAICompletion, _route)


class TetherLLM(_Routed):
    """CrewAI's OpenAI LLM (``crewai.LLM("gpt-4o-mini")`` is one) with its SDK clients routed
    through tether (:func:`tether.instrument`, ``tether_options`` its options) and no retries of its
    own: the SDK's ``max_retries`` is 0, and a call tether gave up on raises :class:`TetherLLMError`
    (CrewAI's ``HookAborted``), which neither CrewAI's rate-limit retry nor the agent's
    ``max_retry_limit`` retries."""

    max_retries: int = 0
    tether_options: dict[str, Any] = Field(default_factory=dict, exclude=True)

    def call(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().call(*args, **kwargs)
        except Exception as error:
            failure = _gave_up(error)
            if failure is None:
                raise
        _raise_bare(failure)

    async def acall(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().acall(*args, **kwargs)
        except Exception as error:
            failure = _gave_up(error)
            if failure is None:
                raise
        _raise_bare(failure)


def llm(model: str = "gpt-4o-mini", *, tether: dict[str, Any] | None = None, **options: Any) -> TetherLLM:
    """A CrewAI LLM for an OpenAI (or OpenAI-compatible: ``base_url=``) model whose calls run under
    tether's policy: ``Agent(llm=tether.adapters.crewai.llm("gpt-4o-mini"))``. ``options`` are
    CrewAI's (``temperature``, ``base_url``, ``api_key``...); ``tether`` the options of
    :func:`tether.instrument` (``policies``, ``agent``, ``capture``...)."""
    provider = model.partition("/")[0]
    if provider in _OTHER_PROVIDERS:
        raise ValueError(f"tether.adapters.crewai.llm builds CrewAI's OpenAI LLM, not {model!r} ({provider} is "
                         "another of CrewAI's providers): only OpenAI and OpenAI-compatible models (base_url=) "
                         "go through tether this way")
    name = model.removeprefix("openai/")
    if options.get("max_retries"):
        raise ValueError("tether.adapters.crewai.llm: tether owns the retries (its policy's retry.max_attempts); "
                         f"leave max_retries out (was {options['max_retries']!r})")
    options.pop("max_retries", None)
    _crewaipriv.require(_OWNERS, ["_build_sync_client", "_build_async_client"])
    return TetherLLM(model=name, tether_options=_tether_options(tether), **options)


_INSTRUMENT_OPTIONS = frozenset(inspect.signature(instrument).parameters) - {"client"}


def _tether_options(given: dict[str, Any] | None) -> dict[str, Any]:
    """``llm(tether=...)`` checked: :func:`tether.instrument`'s options, ``policies`` as a PolicySet."""
    options = dict(given or {})
    unknown = sorted(set(options) - _INSTRUMENT_OPTIONS)
    if unknown:
        raise ValueError(f"tether.adapters.crewai.llm: tether= takes tether.instrument's options "
                         f"({', '.join(sorted(_INSTRUMENT_OPTIONS))}), not {', '.join(map(repr, unknown))}")
    if "policies" in options:
        options["policies"] = policy_set(options["policies"], "tether.adapters.crewai.llm(tether={'policies': ...})")
    return options


# -- memory storage -------------------------------------------------------------------------

_RECORD_FIELDS = ("scope", "categories", "metadata", "importance", "created_at", "last_accessed", "source",
                  "private")


def _in_scope(scope: str, prefix: str | None) -> bool:
    if not prefix or prefix == "/":
        return True
    prefix = prefix.rstrip("/")
    return scope == prefix or scope.startswith(prefix + "/")


def _matches(record: Any, metadata_filter: dict[str, Any] | None) -> bool:
    return not metadata_filter or all(record.metadata.get(k) == v for k, v in metadata_filter.items())


def _cosine(a: list[float], b: list[float]) -> float:
    if not a or not b or len(a) != len(b):
        return 0.0
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    norm = (sum(x * x for x in a) ** 0.5) * (sum(y * y for y in b) ** 0.5)
    return dot / norm if norm else 0.0


class TetherMemoryStorage:
    """CrewAI's memory storage (its ``StorageBackend`` protocol) kept in tether memory:
    ``crewai.Memory(storage=TetherMemoryStorage(memory, "crew:research"))``. Each of CrewAI's
    records is the entry ``<record id>`` of the namespace (its content the entry's text, the rest
    of the record, its embedding included, the entry's metadata), so every save is a
    ``memory.written`` event, the crew's memory survives a restart and shows in tether's memory
    views, history and erasure. Search is CrewAI's: cosine similarity of the embeddings CrewAI's
    embedder made, over the namespace's entries (read from tether's memory view)."""

    def __init__(self, memory: Any, namespace: str = "crew:crewai") -> None:
        from tether.memory import Memory, check_namespace

        if not isinstance(memory, Memory):
            raise TypeError("TetherMemoryStorage takes a tether.memory.Memory (tether.memory.Memory.connect(...)), "
                            f"not {type(memory).__name__}")
        self.memory = memory
        self.namespace = check_namespace(namespace)
        self._seq: int | None = None  # the last write's position: reads wait for the view to have it

    # -- records as entries

    def _record(self, entry: Any) -> Any:
        from crewai.memory.types import MemoryRecord

        data = {k: v for k, v in entry.metadata.items() if k in _RECORD_FIELDS}
        return MemoryRecord(id=entry.key, content=entry.text, embedding=entry.metadata.get("embedding"), **data)

    def _write(self, record: Any) -> None:
        fields = record.model_dump(mode="json", include=set(_RECORD_FIELDS))
        written = self.memory.write(self.namespace, record.content, record.id,
                                    {**fields, "embedding": record.embedding})
        if written.seq is not None:
            self._seq = max(self._seq or 0, written.seq)

    def _all(self) -> list[Any]:
        entries: list[Any] = []
        after_key: str | None = None
        while True:
            page = self.memory._call(self.memory.aio.entries(self.namespace, limit=1000, after_key=after_key,
                                                              after=self._seq))
            entries += page
            if len(page) < 1000:
                return [self._record(e) for e in entries]
            after_key = page[-1].key

    def _select(self, scope_prefix: str | None = None, categories: list[str] | None = None,
                metadata_filter: dict[str, Any] | None = None) -> list[Any]:
        return [r for r in self._all() if _in_scope(r.scope, scope_prefix) and _matches(r, metadata_filter)
                and (not categories or set(categories) & set(r.categories))]

    # -- StorageBackend

    def save(self, records: list[Any]) -> None:
        for record in records:
            self._write(record)

    def update(self, record: Any) -> None:
        self._write(record)

    def get_record(self, record_id: str) -> Any:
        from tether.memory import MemoryNotFound

        try:
            return self._record(self.memory.get(self.namespace, record_id, after=self._seq))
        except MemoryNotFound:
            return None

    def search(self, query_embedding: list[float], scope_prefix: str | None = None,
               categories: list[str] | None = None, metadata_filter: dict[str, Any] | None = None,
               limit: int = 10, min_score: float = 0.0) -> list[tuple[Any, float]]:
        scored = [(r, _cosine(query_embedding, r.embedding or []))
                  for r in self._select(scope_prefix, categories, metadata_filter)]
        return sorted((p for p in scored if p[1] >= min_score), key=lambda p: p[1], reverse=True)[:limit]

    def delete(self, scope_prefix: str | None = None, categories: list[str] | None = None,
               record_ids: list[str] | None = None, older_than: Any = None,
               metadata_filter: dict[str, Any] | None = None) -> int:
        chosen = [r for r in self._select(scope_prefix, categories, metadata_filter)
                  if (record_ids is None or r.id in record_ids)
                  and (older_than is None or r.created_at < older_than)]
        for record in chosen:
            written = self.memory.delete(self.namespace, record.id)
            if written.seq is not None:
                self._seq = max(self._seq or 0, written.seq)
        return len(chosen)

    def list_records(self, scope_prefix: str | None = None, limit: int = 200, offset: int = 0) -> list[Any]:
        records = sorted(self._select(scope_prefix), key=lambda r: r.created_at, reverse=True)
        return records[offset:offset + limit]

    def get_scope_info(self, scope: str) -> Any:
        from crewai.memory.types import ScopeInfo

        records = self._select(scope)
        return ScopeInfo(path=scope, record_count=len(records),
                         categories=sorted({c for r in records for c in r.categories}),
                         oldest_record=min((r.created_at for r in records), default=None),
                         newest_record=max((r.created_at for r in records), default=None),
                         child_scopes=self.list_scopes(scope))

    def list_scopes(self, parent: str = "/") -> list[str]:
        base = parent.rstrip("/")
        children = set()
        for record in self._select(parent):
            rest = record.scope[len(base):].strip("/")
            if rest:
                children.add(f"{base}/{rest.split('/')[0]}")
        return sorted(children)

    def list_categories(self, scope_prefix: str | None = None) -> dict[str, int]:
        counts: dict[str, int] = {}
        for record in self._select(scope_prefix):
            for category in record.categories:
                counts[category] = counts.get(category, 0) + 1
        return counts

    def count(self, scope_prefix: str | None = None) -> int:
        return len(self._select(scope_prefix))

    def reset(self, scope_prefix: str | None = None) -> None:
        self.delete(scope_prefix=scope_prefix)

    async def asave(self, records: list[Any]) -> None:
        await asyncio.to_thread(self.save, records)

    async def asearch(self, query_embedding: list[float], scope_prefix: str | None = None,
                      categories: list[str] | None = None, metadata_filter: dict[str, Any] | None = None,
                      limit: int = 10, min_score: float = 0.0) -> list[tuple[Any, float]]:
        return await asyncio.to_thread(self.search, query_embedding, scope_prefix, categories, metadata_filter,
                                       limit, min_score)

    async def adelete(self, scope_prefix: str | None = None, categories: list[str] | None = None,
                      record_ids: list[str] | None = None, older_than: Any = None,
                      metadata_filter: dict[str, Any] | None = None) -> int:
        return await asyncio.to_thread(self.delete, scope_prefix, categories, record_ids, older_than,
                                       metadata_filter)
