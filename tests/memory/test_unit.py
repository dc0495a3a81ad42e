"""Pure parts: names, grants, ranking, packing, compaction plans, summaries, keys, the fold."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

import tether
import tether.memory as tm
from tether.memory import (
    ExtractiveSummarizer,
    FileKeyStore,
    Grants,
    InMemoryKeyStore,
    InvalidMemory,
    MemoryAccessDenied,
    MemoryStore,
    MemoryView,
    check_key,
    check_namespace,
    nats_permissions,
    plan_compaction,
    similarity,
)
from tether.memory._client import open_embedder
from tether.memory._codec import open_entry, seal_entry
from tether.memory._context import pack
from tether.memory._keys import DESTROYED, open_sealed, seal
from tether.memory._rank import estimate_tokens, fts_query, recency, rerank, rrf
from tether.memory._settings import MemorySettings, load_settings
from tether.memory._types import Entry, Hit
from tether.projections import Item
from tether.schemas import Event, MemoryCompacted, MemoryDeleted, MemoryWritten


def test_public_api_is_complete() -> None:
    exported = {n for n in dir(tm) if not n.startswith("_")}
    modules = {n for n in exported if type(getattr(tm, n)).__name__ == "module"}
    assert exported - modules == set(tm.__all__)
    assert tether.memory is tm  # reachable as an attribute of the package


@pytest.mark.parametrize("ns", ["global", "agent:support-bot", "user:42", "team:docs", "user:a.b@c.d", "tenant:x_y"])
def test_valid_namespaces(ns: str) -> None:
    assert check_namespace(ns) == ns


@pytest.mark.parametrize("ns", ["", "Global", "agent:", "user", "user:with space", "user:a*b", "x" * 101,
                                "user:" + "a" * 96, "agent:bot>", "Agent:bot", None, 5])
def test_invalid_namespaces_say_what_is_valid(ns: object) -> None:
    with pytest.raises(InvalidMemory, match="namespace"):
        check_namespace(ns)


@pytest.mark.parametrize("key", ["", "   ", "*", "a\nb", "k" * 257, None])
def test_invalid_keys(key: object) -> None:
    with pytest.raises(InvalidMemory, match="key"):
        check_key(key)


def test_grants_from_config_with_agent_placeholder_and_defaults() -> None:
    grants = Grants.from_mapping({
        "support-bot": {"read": ["team:docs", "global"], "write": ["team:docs"]},
        "*": {"read": ["agent:{agent}"], "write": ["agent:{agent}"]},
    })
    assert grants.allows("support-bot", "team:docs", "write")
    assert grants.allows("support-bot", "agent:support-bot", "write")
    assert not grants.allows("support-bot", "agent:other", "read")
    assert grants.allows("other", "agent:other", "read")
    assert not grants.allows("other", "team:docs", "read")
    assert not grants.allows(None, "agent:x", "read")  # no agent: {agent} grants nothing
    with pytest.raises(MemoryAccessDenied, match=r"agent 'other' may not write memory namespace 'team:docs'.*"
                       r"\[memory.grants\]") as info:
        grants.check("other", "team:docs", "write")
    assert isinstance(info.value, PermissionError)
    assert Grants.open().allows(None, "user:1", "write")


@pytest.mark.parametrize("bad", [{"a": "x"}, {"a": {"read": "global"}}, {"a": {"reed": []}}, {"a": {"write": [""]}}])
def test_bad_grants_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(InvalidMemory, match=r"memory\.grants\.a"):
        Grants.from_mapping(bad)


def test_nats_permissions_match_the_documented_configuration() -> None:
    """The grants of docs/subjects.md give exactly the allow list tests/bus/test_permissions.py enforces."""
    from tests.bus.test_permissions import ALLOW

    grants = Grants.from_mapping({"support-bot": {"read": ["agent:{agent}", "team:docs", "global"],
                                                  "write": ["agent:{agent}", "team:docs"]}})
    perms = nats_permissions("support-bot", grants)
    assert list(perms.publish) == ALLOW
    assert perms.subscribe == ("_INBOX.>",)
    assert not perms.unenforceable
    assert "tether.evt.support-bot.*.memory.*.team:docs" in perms.to_conf()
    wide = nats_permissions("bot", Grants.from_mapping({"bot": {"write": ["user:*", "*"]}}), own_events=False)
    assert wide.publish == ("tether.evt.bot.*.memory.*.*",)
    assert wide.unenforceable == ("user:*",)


def test_settings_and_worker_config_share_tether_toml(tmp_path: Path) -> None:
    from tether.middleware import load_worker_config

    toml = tmp_path / "tether.toml"
    toml.write_text('[memory]\nmax_text_bytes = 100\ndedupe = false\n'
                    '[memory.grants]\n"*" = { read = ["global"], write = [] }\n'
                    '[routes."*".retry]\nmax_attempts = 2\n')
    settings = load_settings(toml)
    assert settings.max_text_bytes == 100 and settings.dedupe is False
    assert settings.grants.allows("x", "global", "read") and not settings.grants.allows("x", "global", "write")
    assert load_worker_config(toml).source == str(toml)  # the worker ignores [memory]
    toml.write_text("[memory]\nmax_txt = 1\n")
    with pytest.raises(InvalidMemory, match=r"memory\.max_txt"):
        load_settings(toml)
    assert load_settings(cwd=tmp_path / "nowhere").grants.enabled is False


def test_the_embedder_setting_is_read_and_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    toml = tmp_path / "tether.toml"
    assert load_settings(cwd=tmp_path).embedder == "none" and open_embedder(load_settings(cwd=tmp_path)) is None
    toml.write_text('[memory]\nembedder = "bert"\n')
    with pytest.raises(InvalidMemory, match=r"memory\.embedder.*'none', 'static', 'minilm' or 'asymmetric'"):
        load_settings(toml)
    toml.write_text('[memory]\nembedder = "minilm"\n')
    settings = load_settings(toml)
    assert settings.embedder == "minilm"
    monkeypatch.setenv("TETHER_MINILM_DIR", str(tmp_path / "no-model"))  # as if the model were not installed
    for kind in ("minilm", "static", "asymmetric"):
        with pytest.raises(InvalidMemory, match=rf'embedder = "{kind}" in .*tether.toml cannot be loaded: .*'
                                                r'set embedder = "none"'):
            open_embedder(replace(settings, embedder=kind))


def test_fts_query_quotes_user_input() -> None:
    assert fts_query('What does "Alice" like? OR NOT *') == '"alice" OR "like" OR "not"'
    assert fts_query("the of") == '"the" OR "of"'  # only stopwords: keep them
    assert fts_query("   ?! ") is None


def test_rrf_and_rerank() -> None:
    fused = rrf(["a", "b", "c"], ["c", "a"])
    assert max(fused, key=lambda x: fused[x]) == "a"
    assert fused["c"] > fused["b"]
    assert recency(0, 10) == 1.0 and recency(10, 10) == 0.5
    scores = rerank([2.0, 2.0], [0.0, 1e9], weight=0.5, half_life_s=3600)
    assert scores[0] > scores[1] == pytest.approx(1.0)


def _entry(key: str, text: str, seq: int) -> Entry:
    when = datetime(2026, 1, seq % 28 + 1, tzinfo=UTC)
    return Entry("agent:a", key, 1, text, {}, seq, when, when)


def test_context_fits_the_budget_with_one_citation_per_item() -> None:
    hits = [Hit(_entry(f"k{i}", f"fact {i} " + "word " * (10 * i), i), 1.0 / (i + 1)) for i in range(1, 8)]
    ctx = pack(hits, 120)
    assert ctx.tokens <= 120 and ctx.hits
    assert ctx.text.count("agent:a/") == len(ctx.hits) == len(ctx.citations)
    for n, hit in enumerate(ctx.hits, start=1):
        assert f"[{n}] " in ctx.text and hit.entry.citation in ctx.text
    big = pack([Hit(_entry("big", "x " * 2000, 1), 1.0)], 40)
    assert big.tokens <= 40 and big.text.endswith(")") and "…" in big.text


def test_compaction_plan_keeps_the_newest_and_fits() -> None:
    entries = [_entry(f"k{i}", "word " * 40, i) for i in range(10)]  # 50 tokens each
    assert plan_compaction(entries, 10_000) is None
    plan = plan_compaction(entries, 200)
    assert plan is not None
    kept = sum(estimate_tokens(e.text) for e in plan.keep)
    assert kept + plan.summary_budget <= 200
    assert [e.key for e in plan.replace] == [f"k{i}" for i in range(10 - len(plan.keep))]


@pytest.mark.anyio
async def test_extractive_summary_stays_in_budget_and_keeps_central_facts() -> None:
    entries = [_entry("a", "Alice lives in Paris. She likes tea.", 1),
               _entry("b", "Alice works at Acme in Paris. The weather was nice.", 2),
               _entry("c", "Alice moved to Paris in 2020.", 3)]
    summary = await ExtractiveSummarizer().summarize(entries, 20)
    assert estimate_tokens(summary.text) <= 20 and "Paris" in summary.text and summary.call_id is None


def test_similarity() -> None:
    assert similarity("Bob likes pizza and pasta for lunch", "Bob likes pizza and pasta for lunch!") == 1.0
    assert similarity("Bob likes pizza", "Carol hates the sea") == 0.0


def test_sealing_binds_namespace_and_key() -> None:
    key = os.urandom(32)
    sealed = seal(key, "user:1", "k", b"secret")
    assert b"secret" not in sealed.encode()
    assert open_sealed(key, "user:1", "k", sealed) == b"secret"
    with pytest.raises(ValueError, match="does not open"):
        open_sealed(key, "user:2", "k", sealed)  # moved to another namespace
    with pytest.raises(ValueError, match="does not open"):
        open_sealed(os.urandom(32), "user:1", "k", sealed)


def test_file_keystore_is_shared_private_and_remembers_destruction(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "memory-keys.json"
    a, b = FileKeyStore(path), FileKeyStore(path)  # two processes' views of one file
    key_id, key = a.current("user:1")
    assert b.current("user:1") == (key_id, key) and b.get(key_id) == key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert b.get("user:9#1") is None
    assert a.destroy("user:1") == [key_id]
    assert b.get(key_id) == DESTROYED  # seen by the other instance at its next lookup
    assert key.hex() not in path.read_text() and key_id in json.loads(path.read_text())["destroyed"]
    new_id, new_key = b.current("user:1")
    assert new_id == "user:1#2" and new_key != key


def _event(payload: object, seq_time: float = 1.7e9) -> Event:
    return Event.of(payload, agentid="bot", runid="r1", time=datetime.fromtimestamp(seq_time, UTC))  # type: ignore[arg-type]


def test_the_fold_forgets_erased_namespaces_on_replay(tmp_path: Path) -> None:
    keys = InMemoryKeyStore()

    def written(key: str, text: str) -> Event:
        return _event(MemoryWritten(namespace="user:1", key=key, version=1, **seal_entry(keys, "user:1", key, text,
                                                                                          {"t": 1}, None)))

    log = [written("a", "the secret plan"), written("b", "pizza on fridays"),
           _event(MemoryCompacted(namespace="user:1", key="summary:1", version=1, summary="plain summary",
                                  replaced=("a@1",))),
           _event(MemoryDeleted(namespace="user:1", key="b", version=1))]

    def fold(path: Path, events: list[Event]) -> MemoryStore:
        store = MemoryStore(MemoryView(keys), path)
        store.apply_batch([Item(i + 1, e) for i, e in enumerate(events)])
        return store

    live = fold(tmp_path / "live.db", log)
    hits = live.db.execute("SELECT rowid FROM versions_fts WHERE versions_fts MATCH 'secret'").fetchall()
    assert hits == [(1,)]
    keys.destroy("user:1")
    erase = _event(MemoryDeleted(namespace="user:1", key="*", reason="erased"))
    live.apply_batch([Item(5, erase)])
    live.scrub()
    rebuilt = fold(tmp_path / "rebuilt.db", [*log, erase])
    assert live.checksum() == rebuilt.checksum()
    for store in (live, rebuilt):
        assert store.db.execute("SELECT count(*) FROM versions").fetchone() == (0,)
        assert store.db.execute("SELECT count(*) FROM versions_fts WHERE versions_fts MATCH 'secret'").fetchone() \
            == (0,)
        store.close()
    for path in (tmp_path / "live.db", tmp_path / "rebuilt.db"):
        raw = b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))
        assert b"secret plan" not in raw and b"pizza" not in raw


def test_open_entry_refuses_unknown_keys() -> None:
    keys, other = InMemoryKeyStore(), InMemoryKeyStore()
    sealed = seal_entry(keys, "user:1", "k", "x", {}, [0.5, 0.5])
    opened = open_entry(keys, "user:1", "k", sealed["key_id"], sealed["text"], {}, sealed["embedding"])
    assert opened is not None and opened.text == "x" and len(opened.embedding or b"") == 8
    with pytest.raises(tm.MemoryKeyMissing, match="never erased here"):
        open_entry(other, "user:1", "k", sealed["key_id"], sealed["text"], {}, None)


def test_secure_delete_is_on_for_the_feeder(tmp_path: Path) -> None:
    store = MemoryStore(MemoryView(InMemoryKeyStore()), tmp_path / "v.db")
    assert store.db.execute("PRAGMA secure_delete").fetchone() == (1,)
    assert isinstance(store.db, sqlite3.Connection)
    store.close()


def test_default_settings_live_under_tether_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TETHER_HOME", str(tmp_path))
    settings = MemorySettings()
    assert settings.view_dir == tmp_path / "memory"
    assert settings.keyfile == tmp_path / "keys" / "memory-keys.json"
