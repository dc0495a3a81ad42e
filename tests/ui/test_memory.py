"""The Memory page on a real nats-server and a real memory view, through the dashboard's ASGI app in-process:
namespaces, entries as of a point, history, erasure, grants (page, fragments and the live stream), and edits
(token and CSRF). The browser test drives the same page served by ``tether up``."""

from __future__ import annotations

import asyncio
import re
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from tests.cli.test_processes import Child, cli, stopped_cleanly, user_env
from tether.bus import Bus, connect
from tether.memory import AsyncMemory, Grant, Grants, MemorySettings
from tether.testing import NatsServer
from tether.ui._app import build_app
from tether.ui._live import Live
from tether.ui._memory import MemorySource, identity
from tether.ui._security import CSRF_COOKIE, Guard
from tether.ui._views import ViewFiles

from .conftest import base

pytestmark = [pytest.mark.anyio, pytest.mark.nats]

TOKEN = "t0ken-for-tests"
GRANTS = Grants({"viewer": Grant(read=("team:docs", "agent:{agent}"), write=("team:docs",)),
                 "writer": Grant(read=("*",), write=("*",))})


class Stack:
    def __init__(self, bus: Bus, home: Path, writer: AsyncMemory, source: MemorySource, live: Live,
                 client: httpx.AsyncClient) -> None:
        self.bus, self.home, self.writer, self.source, self.live, self.client = bus, home, writer, source, live, client


def settings_for(home: Path, grants: Grants) -> MemorySettings:
    return MemorySettings(view_dir=home / "memory", keyfile=home / "keys" / "memory-keys.json", grants=grants)


async def stack_for(server: NatsServer, home: Path, agent: str | None, grants: Grants) -> AsyncIterator[Stack]:
    bus = await connect(server.url, home=home)
    writer = await AsyncMemory(bus, agent="writer", settings=settings_for(home, grants)).start()
    source = MemorySource(bus, settings_for(home, grants), agent)
    live = Live(bus, ViewFiles(home / "views"))
    app: Any = build_app(bus, home / "views", Guard(token=TOKEN, hosts=frozenset({"dashboard"})), live, source)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://dashboard") as client:
            yield Stack(bus, home, writer, source, live, client)
    finally:
        await source.close()
        await writer.close()
        await bus.close()


@pytest.fixture
async def viewer(fresh_nats_server: NatsServer, tmp_path: Path) -> AsyncIterator[Stack]:
    """The dashboard reading as agent ``viewer`` (reads team:docs and agent:viewer, writes team:docs)."""
    async for stack in stack_for(fresh_nats_server, tmp_path / "home", "viewer", GRANTS):
        yield stack


def text_of(html: str) -> str:
    return re.sub(r"<[^>]+>", " ", html)


async def test_namespaces_entries_and_history(viewer: Stack) -> None:
    w = viewer.writer
    v1 = await w.write("team:docs", "The office opens at nine.", key="hours")
    v2 = await w.write("team:docs", "The office opens at ten.", key="hours")
    await w.write("team:docs", "Lunch <b>is</b> at noon.", key="lunch", metadata={"topic": "food"})
    page = await viewer.client.get("/memory")
    assert page.status_code == 200
    assert "data-ns='team:docs'" in page.text and "2 entries" in page.text
    assert "as agent viewer (--memory-agent), with its grants: read team:docs, agent:viewer" in page.text
    ns = await viewer.client.get("/memory", params={"ns": "team:docs", "key": "hours"})
    html = ns.text
    assert "The office opens at ten." in html and "Lunch &lt;b&gt;is&lt;/b&gt; at noon." in html, "escaped"
    assert "topic=food" in html
    history = html.split("id='history'", 1)[1]
    assert f"data-seq='{v1.seq}' data-version='1'" in history and f"data-seq='{v2.seq}' data-version='2'" in history
    assert "The office opens at nine." in history and "The office opens at ten." in history
    slider = re.search(r"<input id='asof-range' type='range' name='as_of' min='(\d+)' max='(\d+)'", html)
    assert slider and int(slider[1]) == v1.seq and int(slider[2]) >= (v2.seq or 0)
    assert f"<option value='{v1.seq}'" in html, "the versions' positions are marks on the slider"

    past = await viewer.client.get("/fragments/memory", params={"ns": "team:docs", "key": "hours",
                                                               "as_of": str(v1.seq)})
    entries = past.text.split("id='entries'", 1)[1].split("</table>", 1)[0]
    assert "The office opens at nine." in entries and "ten." not in entries and "Lunch" not in entries
    assert f"as of seq {v1.seq}" in past.text and "read-only" in past.text
    now = await viewer.client.get("/fragments/memory", params={"ns": "team:docs", "as_of": str(v1.seq), "now": "1"})
    assert "The office opens at ten." in now.text.split("id='entries'", 1)[1], "now=1: the slider's right end"


async def test_deleted_and_erased_entries(viewer: Stack) -> None:
    w = viewer.writer
    await w.write("team:docs", "a passing note", key="note")
    await w.delete("team:docs", "note")
    await w.write("team:docs", "still here", key="kept")
    page = await viewer.client.get("/memory", params={"ns": "team:docs", "key": "note"})
    history = page.text.split("id='history'", 1)[1]
    assert "deleted" in history and "a passing note" in history, "a deletion keeps the history"
    assert "a passing note" not in page.text.split("id='entries'", 1)[1].split("</table>", 1)[0]

    await w.write("agent:viewer", "my secret plan", key="plan")
    await w.erase("agent:viewer")
    await asyncio.sleep(0)
    for path, params in (("/memory", {"ns": "agent:viewer", "key": "plan"}),
                         ("/fragments/memory", {"ns": "agent:viewer", "key": "plan", "as_of": "1"})):
        done = await viewer.client.get(path, params=params)
        assert done.status_code == 200
        assert "my secret plan" not in done.text, "an erased entry never shows its text"
        assert "never written, or erased" in done.text


async def test_a_namespace_not_granted_is_neither_listed_nor_readable(viewer: Stack) -> None:
    w = viewer.writer
    await w.write("team:secret", "the launch code is 0000", key="code")
    await w.write("team:docs", "public note", key="p")
    page = await viewer.client.get("/memory")
    assert "team:docs" in page.text and "team:secret" not in page.text
    for path in ("/memory", "/fragments/memory"):
        for params in ({"ns": "team:secret"}, {"ns": "team:secret", "key": "code"},
                       {"ns": "team:secret", "key": "code", "as_of": "1"}):
            done = await viewer.client.get(path, params=params)
            assert done.status_code == 403, (path, params)
            assert "launch code" not in done.text and "not readable as this identity" in done.text
    # the live stream: a change in team:secret sends nothing; one in team:docs a notice naming no namespace
    seen: list[bytes] = []
    await viewer.source.client()
    viewer.source.on_change(seen.append)
    await w.write("team:secret", "the launch code is 1111", key="code")
    await asyncio.sleep(0.6)
    assert seen == []
    await w.write("team:docs", "another public note", key="q")
    with anyio.fail_after(30):
        while not seen:  # noqa: ASYNC110 - a callback's list
            await asyncio.sleep(0.05)
    assert seen and seen[0].startswith(b"event: memory\n") and b"team" not in seen[0]


async def test_the_projectors_memory_notices_never_reach_the_page(viewer: Stack) -> None:
    """They name the namespace: the hub drops them (the Memory page's own notices are filtered by grants)."""
    queue: asyncio.Queue[bytes | None] = asyncio.Queue()
    viewer.live.clients.add(queue)
    await viewer.live._on_change(type("Msg", (), {"data": b'{"view": "memory", "key": "team:secret", "seq": 4}'})())
    await viewer.live._on_change(type("Msg", (), {"data": b'{"view": "traces", "key": "r1", "seq": 5}'})())
    assert queue.get_nowait() == b'event: traces\ndata: {"view":"traces","key":"r1","seq":5}\n\n'
    assert queue.empty()


def cookie(**values: str) -> dict[str, str]:
    return {"cookie": "; ".join(f"{k}={v}" for k, v in values.items())}


async def test_edits_need_the_token_and_csrf(viewer: Stack) -> None:
    c = viewer.client
    csrf = (await c.get("/memory")).cookies[CSRF_COOKIE]
    c.cookies.clear()  # each request below says exactly what it carries
    form = {"ns": "team:docs", "key": "k", "text": "written from the page"}
    bearer = {"authorization": f"Bearer {TOKEN}"}
    refused = [
        await c.post("/memory/put", data=form, headers={**cookie(tether_csrf=csrf), "x-csrf-token": csrf}),
        await c.post("/memory/put", data=form, headers={**cookie(tether_csrf=csrf, tether_ui="wrong"),
                                                        "x-csrf-token": csrf}),
        await c.post("/memory/put", data=form, headers={**bearer, **cookie(tether_csrf=csrf)}),
        await c.post("/memory/put", data=form, headers={**bearer, "x-csrf-token": csrf}),
        await c.post("/memory/put", data=form, headers={**bearer, **cookie(tether_csrf=csrf), "x-csrf-token": "x"}),
        await c.post("/memory/put", data=form, headers={**bearer, **cookie(tether_csrf=csrf), "x-csrf-token": csrf,
                                                        "origin": "http://evil.example"}),
    ]
    assert [r.status_code for r in refused] == [401, 401, 403, 403, 403, 403]
    assert "token" in refused[0].text and "CSRF" in refused[2].text and "another site" in refused[5].text
    assert await viewer.writer.entries("team:docs") == [], "nothing was written"
    ok = {**bearer, **cookie(tether_csrf=csrf), "x-csrf-token": csrf}
    put = await c.post("/memory/put", data=form, headers=ok)
    assert put.status_code == 200 and "wrote team:docs/k v1" in put.text
    assert put.headers["hx-trigger"] == "tether:memory-edit"
    seq = int(re.findall(r"at seq (\d+)", put.text)[0])
    entry = await viewer.writer.get("team:docs", "k", after=seq)
    assert entry.text == "written from the page" and entry.agent == "viewer", "written as the dashboard's identity"
    form_csrf = await c.post("/memory/delete", data={"ns": "team:docs", "key": "k", "csrf": csrf},
                             headers=cookie(tether_csrf=csrf, tether_ui=TOKEN))
    assert form_csrf.status_code == 200 and "deleted team:docs/k (v1)" in form_csrf.text, "a plain form works too"
    denied = await c.post("/memory/put", data={"ns": "agent:viewer", "text": "x"}, headers=ok)
    assert denied.status_code == 403 and "write" in denied.text, "readable is not writable: the grants decide"
    empty = await c.post("/memory/put", data={"ns": "team:docs", "text": "  "}, headers=ok)
    assert empty.status_code == 400 and "text is empty" in empty.text
    unknown = await c.post("/memory/erase", data={"ns": "team:docs"}, headers=ok)
    assert unknown.status_code == 404 and "put or delete" in unknown.text


async def test_read_only_pages_offer_no_edits_and_a_bad_position_says_what_to_give(viewer: Stack) -> None:
    await viewer.writer.write("team:docs", "a note", key="n")
    page = await viewer.client.get("/memory", params={"ns": "team:docs"})
    assert "hx-post='/memory/put'" not in page.text and "/memory/delete" not in page.text
    with_token = await viewer.client.get("/memory", params={"ns": "team:docs"},
                                         headers={"authorization": f"Bearer {TOKEN}"})
    assert "hx-post='/memory/put'" in with_token.text and "/memory/delete" in with_token.text
    bad = await viewer.client.get("/fragments/memory", params={"ns": "team:docs", "as_of": "yesterday"})
    assert bad.status_code == 400 and "give a log position" in bad.text


@pytest.mark.parametrize(("agent", "grants", "words"), [
    (None, Grants.open(), "as no agent (the operator)"),
    (None, GRANTS, "only the namespaces it opens to every agent"),
    ("viewer", GRANTS, "as agent viewer (--memory-agent), with its grants: read team:docs, agent:viewer; write "
                       "team:docs"),
    ("viewer", Grants.open(), "[memory.grants] is not configured, so every namespace is open to it"),
])
def test_the_page_says_who_it_reads_as(agent: str | None, grants: Grants, words: str) -> None:
    assert words in identity(agent, grants)


async def test_as_no_agent_with_grants_only_what_every_agent_may_read(fresh_nats_server: NatsServer,
                                                                     tmp_path: Path) -> None:
    grants = Grants({"*": Grant(read=("global", "agent:{agent}")), "writer": Grant(read=("*",), write=("*",))})
    async for stack in stack_for(fresh_nats_server, tmp_path / "home", None, grants):
        await stack.writer.write("global", "for everyone", key="g")
        await stack.writer.write("agent:writer", "for the writer", key="w")
        page = await stack.client.get("/memory")
        assert "data-ns='global'" in page.text and "agent:writer" not in page.text
        assert "Start `tether ui --memory-agent NAME`" in page.text
        assert (await stack.client.get("/memory", params={"ns": "agent:writer"})).status_code == 403


async def test_a_view_behind_the_log_is_said_to_be(viewer: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    await viewer.writer.write("team:docs", "a note", key="n")
    await (await viewer.source.client()).catch_up()  # the view has the note before catching up stalls

    async def stalled(self: AsyncMemory, timeout: float = 30.0) -> int:
        raise TimeoutError("the memory view in /x has not reached seq 99 (it is at 1); is its projector running?")

    monkeypatch.setattr(AsyncMemory, "catch_up", stalled)
    page = await viewer.client.get("/memory", params={"ns": "team:docs"})
    assert page.status_code == 200 and "has not reached seq 99 (it is at 1)" in page.text
    assert "the view is behind" in page.text and "a note" in page.text, "what it has is still shown"


async def test_without_nats_the_page_says_so(tmp_path: Path) -> None:
    app: Any = build_app(None, tmp_path, Guard(hosts=frozenset({"dashboard"})),  # type: ignore[arg-type]
                         memory=MemorySource(None, settings_for(tmp_path, Grants.open())))  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://dashboard") as c:
        page = await c.get("/memory")
        assert page.status_code == 200 and "memory could not be read" in page.text and "is NATS up" in page.text


def test_tether_ui_memory_agent_reads_with_that_agents_grants(fresh_nats_server: NatsServer, tmp_path: Path) -> None:
    """As users run it: grants in tether.toml, entries written by `tether memory write`, `tether ui --memory-agent`."""
    (tmp_path / "tether.toml").write_text('[memory.grants]\nviewer = { read = ["team:docs"], write = ["team:docs"] }\n'
                                          'writer = { read = ["*"], write = ["*"] }\n')
    env = user_env(TETHER_HOME=str(tmp_path / "home"))
    for ns in ("team:docs", "team:secret"):
        done = cli("memory", "write", ns, f"a note in {ns}", "--key", "k", "--agent", "writer",
                   "--url", fresh_nats_server.url, cwd=tmp_path, env=env)
        assert done.returncode == 0, done.stderr
    child = Child("ui", "--url", fresh_nats_server.url, "--port", "0", "--memory-agent", "viewer", cwd=tmp_path,
                  env=env)
    try:
        url = base(child.wait_for(r"the dashboard is at (http://127\.0\.0\.1:\d+/\?token=\S+)")[1])
        page = httpx.get(url + "/memory", params={"ns": "team:docs"}, timeout=30)
        assert page.status_code == 200
        assert "as agent viewer (--memory-agent), with its grants: read team:docs" in page.text
        assert "a note in team:docs" in page.text and "team:secret" not in page.text
        for path in ("/memory", "/fragments/memory"):
            secret = httpx.get(url + path, params={"ns": "team:secret", "key": "k"}, timeout=30)
            assert secret.status_code == 403 and "a note in team:secret" not in secret.text
    finally:
        stopped_cleanly(child, sig=signal.SIGINT)
    assert "Traceback" not in child.output


async def test_a_bad_memory_section_is_said_on_the_page(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tether.toml").write_text("[memory]\nview_dir = 5\n")
    app: Any = build_app(None, tmp_path, Guard(hosts=frozenset({"dashboard"})),  # type: ignore[arg-type]
                         memory=MemorySource(None))  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://dashboard") as c:
        page = await c.get("/memory")
        assert page.status_code == 200 and "memory settings:" in page.text and "view_dir" in page.text
