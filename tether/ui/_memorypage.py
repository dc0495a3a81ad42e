"""The Memory page's markup: namespaces, a namespace's entries as of a point (the slider), a key's history.

Pure functions from what :class:`tether.memory.AsyncMemory` returned to HTML, every value escaped.
An erased entry is never shown with text: the API has none to give, and the page says "erased".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import urlencode

from ._pages import e, live_box, when

if TYPE_CHECKING:
    from tether.memory import Entry, Version

__all__ = ["MemoryState", "memory_body", "memory_page"]


@dataclass
class MemoryState:
    """What one render of the Memory page shows."""

    identity: str
    namespaces: list[tuple[str, int]] = field(default_factory=list)
    namespace: str = ""
    key: str = ""
    as_of: int | None = None
    head: int = 0
    """The last memory event in the log (the view has applied it)."""
    positions: list[tuple[int, float | None]] = field(default_factory=list)
    """(seq, time) of the namespace's events the slider stops at, oldest first."""
    entries: list[Entry] = field(default_factory=list)
    history: list[Version] | None = None
    error: str = ""
    key_error: str = ""
    behind: str = ""
    """Why the view is not up to date with the log's memory events (empty when it is)."""
    can_act: bool = False


def _href(**params: str | int | None) -> str:
    return "/memory?" + urlencode({k: v for k, v in params.items() if v not in (None, "")})


def memory_page(state: MemoryState) -> str:
    return (f"<h1>Memory</h1><p class='identity dim' id='identity'>{e(state.identity)}</p>"
            "<div id='memory-result' role='status'></div>"
            + live_box("memory", "memory", "/fragments/memory", memory_body(state),
                       also=", tether:memory-edit from:body").replace(
                " hx-get=", ' hx-include="#asof" hx-get=', 1))


def memory_body(state: MemoryState) -> str:
    out = [f"<p class='tag warn' id='memory-behind'>{e(state.behind)}</p>" if state.behind else "",
           _namespaces(state)]
    if state.error:
        out.append(f"<p class='err'>{e(state.error)}</p>")
        return "".join(out)
    if state.namespace:
        out.append(_slider(state))
        out.append(_entries(state))
        if state.key:
            out.append(_history(state))
        if state.can_act and state.as_of is None:
            out.append(_put_form(state))
    return "".join(out)


def _namespaces(state: MemoryState) -> str:
    if not state.namespaces:
        return ("<p class='dim'>no namespace with live entries that this identity may read (write one with "
                "<code>tether memory write NAMESPACE TEXT</code>)</p>")
    links = "".join(
        f"<li{' class=on' if ns == state.namespace else ''} data-ns='{e(ns)}'><a href='{e(_href(ns=ns))}'>{e(ns)}</a> "
        f"<span class=dim>{n:,} entr{'y' if n == 1 else 'ies'}</span></li>" for ns, n in state.namespaces)
    return f"<nav class='namespaces'><h2>namespaces</h2><ul>{links}</ul></nav>"


def _slider(state: MemoryState) -> str:
    """A range over log positions: the namespace's first event to the head of the log's memory events."""
    seqs = [s for s, _ in state.positions]
    low = min(seqs) if seqs else state.head
    high = max(state.head, *seqs) if seqs else state.head
    value = high if state.as_of is None else max(low, min(state.as_of, high))
    times = dict(state.positions)
    marks = "".join(f"<option value='{s}' label='{e(when(t))}'></option>" for s, t in state.positions)
    if state.as_of is None:
        where = (f"now (the log's memory events reach seq {state.head:,}; the view is behind)" if state.behind
                 else f"now (seq {state.head:,}: the view has every memory event in the log)")
    else:
        at = times.get(max((s for s in seqs if s <= state.as_of), default=-1))
        where = f"as of seq {state.as_of:,}" + (f", {when(at)} UTC" if at else "") + " (in the past: read-only)"
    return (f"<form id='asof' class='asof' hx-get='/fragments/memory' hx-target='#memory' "
            f"hx-trigger='change' action='/memory' method='get'>"
            f"<input type='hidden' name='ns' value='{e(state.namespace)}'>"
            f"<input type='hidden' name='key' value='{e(state.key)}'>"
            f"<input type='hidden' name='now' value='{'1' if state.as_of is None else ''}'>"
            f"<label>as of <input id='asof-range' type='range' name='as_of' min='{low}' max='{high}' step='1' "
            f"value='{value}' list='asof-marks'></label> <span id='asof-label' data-now='{high}'>{e(where)}</span>"
            f"<datalist id='asof-marks'>{marks}</datalist>"
            "<noscript><button>show</button></noscript></form>")


def _entries(state: MemoryState) -> str:
    ns = state.namespace
    head = f"<h2>{e(ns)} <span class=dim>{'now' if state.as_of is None else f'as of seq {state.as_of:,}'}</span></h2>"
    if not state.entries:
        return head + "<p class='dim' id='entries'>no live entries" + (
            " at this point of the log" if state.as_of is not None else "") + "</p>"
    out = [head, "<table class='memory' id='entries'><thead><tr><th>key</th><th class=r>version</th><th>text</th>"
           "<th>metadata</th><th>updated (UTC)</th><th class=r>seq</th><th>by</th><th></th></tr></thead><tbody>"]
    for entry in state.entries:
        action = ""
        if state.can_act and state.as_of is None:
            action = (f"<button class='delete' hx-post='/memory/delete' hx-target='#memory-result' "
                      f"hx-vals='{e(_json({'ns': ns, 'key': entry.key}))}' "
                      f"hx-confirm='Delete {e(ns)}/{e(entry.key)}? (it stays in its history)'>delete</button>")
        meta = ", ".join(f"{k}={v}" for k, v in sorted(entry.metadata.items()))
        status = "" if entry.status == "live" else f" <span class='st cancelled'>{e(entry.status)}</span>"
        out.append(
            f"<tr data-key='{e(entry.key)}'><td><a href='{e(_href(ns=ns, key=entry.key, as_of=state.as_of))}'>"
            f"{e(entry.key)}</a>{status}</td><td class=r>v{entry.version}</td><td class='text'>{e(entry.text)}</td>"
            f"<td class=dim>{e(meta)}</td><td>{when(entry.updated_at.timestamp() if entry.updated_at else None)}</td>"
            f"<td class=r>{entry.seq}</td><td class=dim>{e(entry.agent)}</td><td>{action}</td></tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _json(value: dict[str, str]) -> str:
    import json

    return json.dumps(value, ensure_ascii=False)


def _history(state: MemoryState) -> str:
    ns, key = state.namespace, state.key
    head = f"<h2>history of <code>{e(key)}</code></h2>"
    if state.key_error:
        return head + f"<p class='dim' id='history'>{e(state.key_error)}</p>"
    versions: Sequence[Version] = state.history or []
    out = [head, "<table class='memory' id='history'><thead><tr><th class=r>version</th><th class=r>seq</th>"
           "<th>time (UTC)</th><th>what</th><th>text</th><th>by</th><th></th></tr></thead><tbody>"]
    for v in versions:
        erased = v.reason == "erased" or (v.action != "deleted" and v.text is None)
        if erased:
            what, text = "<span class='st error'>erased</span>", "<span class=dim>(its text is gone for good)</span>"
        elif v.action == "deleted":
            what, text = f"<span class='st cancelled'>deleted</span> <span class=dim>{e(v.reason)}</span>", ""
        else:
            what, text = e(v.action), e(v.text)
        shown = state.as_of is not None and v.seq == max(
            (x.seq for x in versions if x.seq <= state.as_of), default=-1)
        who = " ".join(x for x in (v.agent or "", f"run {v.run}" if v.run else "") if x)
        out.append(
            f"<tr data-seq='{v.seq}' data-version='{v.version}'{' class=on' if shown else ''}>"
            f"<td class=r>v{v.version}</td><td class=r>{v.seq}</td><td>{when(v.time.timestamp() if v.time else None)}"
            f"</td><td>{what}</td><td class='text'>{text}</td><td class=dim>{e(who)}</td>"
            f"<td><a href='{e(_href(ns=ns, key=key, as_of=v.seq))}'>as of here</a></td></tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _put_form(state: MemoryState) -> str:
    return (f"<h2>write</h2><form id='put' class='filters' hx-post='/memory/put' hx-target='#memory-result' "
            f"action='/memory/put' method='post'><input type='hidden' name='ns' value='{e(state.namespace)}'>"
            f"<input type='text' name='key' placeholder='key (a new one if empty)' value='{e(state.key)}'>"
            "<textarea name='text' rows='2' cols='60' placeholder='text' required></textarea>"
            f"<button class='put'>write to {e(state.namespace)}</button></form>")
