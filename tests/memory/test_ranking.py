"""Ranking's pure parts: the tokenizer keeps temporal and negation words, queries about time are
read, hybrid fusion and the present-tense boost, and the multi-hop expansion's second query."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tether.memory._rank import Candidate, Ranking, fuse, guard, query_terms, temporal
from tether.memory._reads import _bridges, _names

NOW = datetime(2026, 12, 1, 12, tzinfo=UTC).timestamp()


def test_temporal_and_negation_words_are_query_terms() -> None:
    assert query_terms("Where does Ann live now?") == ["ann", "live", "now"]
    assert query_terms("Where did Ann live before March?") == ["ann", "live", "before", "march"]
    assert query_terms("Does Ben not drink coffee?") == ["ben", "not", "drink", "coffee"]


def test_temporal_reads_the_moment_a_query_asks_about() -> None:
    at, present = temporal("Where did Ann live before March?", NOW)
    assert at is not None and not present
    assert at < datetime(2026, 3, 1, tzinfo=UTC) and at.timestamp() > datetime(2026, 2, 28, tzinfo=UTC).timestamp()
    # a month still ahead this year means last year's
    february = datetime(2026, 2, 10, tzinfo=UTC).timestamp()
    at, _ = temporal("what was true before March", february)
    assert at is not None and at.year == 2025 and at.month == 2
    at, _ = temporal("her address before 12 May 2025", NOW)
    assert at is not None and (at.year, at.month, at.day) == (2025, 5, 11)
    at, _ = temporal("prices until 2025", NOW)
    assert at is not None and (at.year, at.month, at.day) == (2024, 12, 31)
    assert temporal("Where does Ann live now?", NOW) == (None, True)
    assert temporal("What is the latest release of Atlas?", NOW) == (None, True)
    assert temporal("Where does Ann live?", NOW) == (None, False)
    assert temporal("what happened before the outage", NOW) == (None, False)  # not a date: nothing read


def test_fusion_weighs_both_retrievers_and_boosts_the_newest_close_rival_for_the_present() -> None:
    ranking = Ranking(keyword=0.4, semantic=0.6, validity=0.5, validity_band=0.2, fusion="ratio")
    old = Candidate(bm25=10.0, cosine=0.80, valid=1.0)
    new = Candidate(bm25=9.0, cosine=0.78, valid=3.0)
    recent_noise = Candidate(bm25=None, cosine=0.30, valid=9.0)  # newest, but far from the best
    plain = fuse([old, new, recent_noise], ranking, present=False)
    assert plain[0] > plain[1] > plain[2]
    now = fuse([old, new, recent_noise], ranking, present=True)
    assert now[1] > now[0] > now[2]  # the newer version of the same fact wins; the far one gets nothing
    assert now[2] == plain[2]
    only_keyword = fuse([Candidate(2.0, None, 0.0), Candidate(1.0, None, 0.0)], ranking, present=False)
    assert only_keyword == [0.4, 0.2]


def test_fusion_by_z_score_ratio_raw_cosine_min_max_or_reciprocal_rank() -> None:
    a, b, c = Candidate(10.0, 0.9, 0.0), Candidate(5.0, 0.5, 0.0), Candidate(None, 0.7, 0.0)
    # z-scores (the default): bm25 10, 5 -> 1, -1 (a missing one counts as the lowest); cosine 0.9, 0.5, 0.7
    cz = 1.5 ** 0.5
    # weighed 0.5 each, then shifted so that the worst is 0
    assert fuse([a, b, c], Ranking(), present=False) == pytest.approx([1 + cz, 0.0, 0.5 * cz])
    keyword_only = [Candidate(2.0, None, 0.0), Candidate(1.0, None, 0.0)]
    assert fuse(keyword_only, Ranking(), present=False) == [0.5, 0.25]  # no cosine: bm25 / best, as keyword search
    assert fuse([a, b, c], Ranking(fusion="ratio"), present=False) == pytest.approx([1.0, 0.25, 0.25])  # cos min-max
    assert fuse([a, b, c], Ranking(fusion="cosine"), present=False) == pytest.approx([0.95, 0.5, 0.35])  # raw cosine
    assert fuse([a, b, c], Ranking(fusion="minmax"), present=False) == pytest.approx([1.0, 0.0, 0.25])
    by_place = fuse([a, b, c], Ranking(fusion="rrf", rrf_k=1), present=False)
    assert by_place == pytest.approx([1.0, 0.5 * 2 / 3 + 0.5 * 2 / 4, 0.5 * 2 / 3])  # (k + 1) / (k + place), weighted
    with pytest.raises(ValueError, match="fusion must be 'zscore', 'ratio', 'cosine', 'minmax' or 'rrf'"):
        Ranking(fusion="sum")
    with pytest.raises(ValueError, match="rrf_k must be an int >= 0"):
        Ranking(rrf_k=-1)
    with pytest.raises(ValueError, match="unnamed_from must be 'auto', 'tokens' or 'text', got 'names'"):
        Ranking(unnamed_from="names")
    with pytest.raises(ValueError, match="unnamed_push must be a number >= 0, got -1"):
        Ranking(unnamed_push=-1)


def test_the_keyword_best_keeps_a_place_among_the_first() -> None:
    fused = ["a", "b", "c", "d", "e", "k"]
    assert guard(fused, ["k", "a"], top=1, at=3) == ["a", "b", "k", "c", "d", "e"]  # moved up to the third place
    assert guard(fused, ["b", "k"], top=1, at=3) == fused  # already there: nothing moves
    assert guard(fused, ["k", "e"], top=2, at=3) == ["a", "k", "e", "b", "c", "d"]  # in keyword order
    assert guard(fused, ["k"], top=0, at=3) == fused  # off


def test_multi_hop_bridges_are_the_new_names_of_hits_that_name_what_the_query_names() -> None:
    assert _names("Since March 2026 Ann Borg lives in Cork.") == ["Ann Borg"]  # not "Since March"
    assert _names("Ann Fischer's manager is Leo Berg.") == ["Ann Fischer", "Leo Berg"]
    query = "Where does Ann Borg's manager live?"
    hits = ["Since March 2026 Ann Borg lives in Cork.", "Bea Borg manages Ann Fischer.",
            "Ann Borg reports to Ben Berg.", "Ann Borg manages Lea Novak."]
    # the second hit does not name Ann Borg: it bridges nowhere; the others bring Ben Berg, then Lea Novak
    assert _bridges(query, hits) == [("Ben Berg", "Where does Ben Berg live?", frozenset({"manager"})),
                                     ("Lea Novak", "Where does Lea Novak live?", frozenset({"manager"}))]
    assert _bridges("Where does Ann Fischer live?", ["Ann Fischer lives in Lyon."]) == []
    # a query without a name: any hit bridges, and the second query is the name and the words left
    assert _bridges("Who leads project Atlas?", ["Project Atlas is led by Carl Fisher."]) \
        == [("Carl Fisher", "Carl Fisher who leads", frozenset())]


def test_a_hit_bridges_only_when_it_holds_what_the_query_asks_of_the_name() -> None:
    hits = ["Greta Novak reports to Jana Fisher.", "Greta Novak never drinks coffee."]
    evidence = [f"{hits[0]} greta-novak/manager kind manager", f"{hits[1]} greta-novak/coffee kind coffee"]
    # a question about Greta herself: her manager's entry names Jana Fisher, but holds nothing it asks
    assert _bridges("Should I offer Greta Novak an espresso?", hits, evidence) == []
    assert _bridges("Should I offer Greta Novak an espresso?", hits) != []  # without the evidence rule it did
    # asked about her manager: the key (or metadata, or text: "manages") holds the relation
    assert [b[0] for b in _bridges("Where does Greta Novak's manager live?", hits, evidence)] == ["Jana Fisher"]
    assert [b[0] for b in _bridges("Where does Greta Novak's manager live?", ["Jana Fisher manages Greta Novak."],
                                   ["Jana Fisher manages Greta Novak. 0193a1"])] == ["Jana Fisher"]
    assert [b[0] for b in _bridges("How do I reach the lead of project Atlas?", ["Project Atlas is led by Carl "
                                   "Fisher."], ["Project Atlas is led by Carl Fisher. project-atlas/lead"])] \
        == ["Carl Fisher"]


def test_guard_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="guard must be an int >= 0"):
        Ranking(guard=-1)
    with pytest.raises(ValueError, match="guard_at must be an int >= 0"):
        Ranking(guard_at=True)


def test_a_bridge_without_the_evidence_rule_asks_the_name_with_the_words_its_hit_does_not_hold() -> None:
    from tether.memory._reads import _bridge_hits

    query = "Where does Ann Borg's manager live?"
    hits = ["Since March 2026 Ann Borg lives in Cork.", "Ann Borg reports to Ben Berg."]
    evidence = [f"{hits[0]} ann-borg/city", f"{hits[1]} ann-borg/manager"]
    # "manager" is in the bridge's key and "live" in the first hit: what is left is asked of the new name
    assert _bridge_hits(query, hits, evidence, require=False, rest=True) == [
        (1, "Ben Berg", "Ben Berg where does live", frozenset())]
    # the first hit's words are not the bridge's: a hit is asked about with its own evidence only
    assert _bridge_hits("Who leads project Atlas?", ["Project Atlas is led by Carl Fisher."],
                        ["Project Atlas is led by Carl Fisher. project-atlas/lead"], require=False, rest=True) == [
        (0, "Carl Fisher", "Carl Fisher who", frozenset())]


def test_a_hit_whose_words_mean_what_the_query_asks_bridges_without_a_shared_word() -> None:
    """``Ranking.expand_similar``: "supervisor" shares no word with "Ann Borg reports to Ben Berg."
    (key ann-borg/manager), so the evidence rule kept such a question from its second hop; a hit
    whose words the semantic test matched bridges, the matched words are not asked of the new name
    and its pick may not hold them (nor their stems)."""
    from tether.memory._rank import content_words, similar_words
    from tether.memory._reads import _bridge_hits

    assert content_words("How can I reach whoever supervises Ann Borg about 42 things?", {"ann", "borg"}) == [
        "reach", "whoever", "supervises", "things"]
    asked = {"supervises": [0.6, 0.8], "reach": [0.0, 1.0]}
    held = {"manager": [0.8, 0.6], "kind": [1.0, 0.0]}
    assert similar_words(asked, held, 0.9) == {"supervises", "manager"}  # 0.96
    assert similar_words(asked, held, 0.97) == frozenset()
    query = "How can I reach whoever supervises Ann Borg?"
    hits = ["Ann Borg prefers email.", "Ann Borg reports to Ben Berg."]
    evidence = [f"{hits[0]} ann-borg/contact", f"{hits[1]} ann-borg/manager"]
    assert _bridge_hits(query, hits, evidence) == []  # no word of the query in the bridge: no second hop
    matched = frozenset({"supervises", "supervis", "manager", "manag", "reports", "report"})
    assert _bridge_hits(query, hits, evidence, related={1: matched}) == [
        (1, "Ben Berg", "Ben Berg how can i reach whoever", matched)]
    possessive = "What pet does Ann Borg's supervisor keep?"
    assert _bridge_hits(possessive, hits, evidence, related={1: matched}) == [
        (1, "Ben Berg", "What pet does Ben Berg keep?", frozenset({"supervisor"}) | matched)]
    with pytest.raises(ValueError, match="expand_similar must be a number from 0 to 1"):
        Ranking(expand_similar=1.5)
    with pytest.raises(ValueError, match="expand_deep must be an int >= 0"):
        Ranking(expand_deep=-1)


def test_rerank_features_are_generic_signals_of_each_candidate() -> None:
    from tether.memory._rank import FEATURES, Features, features, score

    day = 86400.0
    candidates = [
        Features(bm25=4.0, cosine=0.9, keyword_place=1, semantic_place=1, valid=NOW - 10 * day, recency=1.0,
                 text="Ann Borg lives in Cork.", key="ann-borg/city", meta="kind city", fused=1.0, hop2=None),
        Features(bm25=None, cosine=0.5, keyword_place=None, semantic_place=2, valid=NOW, recency=0.5,
                 text="Ben Berg lives in Dublin.", key="ben-berg/city", meta="", fused=None, hop2=0.8),
    ]
    rows = features(["where", "does", "ann", "borg", "live", "now"], ["Ann Borg"], True, candidates)
    named = dict(zip(FEATURES, rows[0], strict=True))
    other = dict(zip(FEATURES, rows[1], strict=True))
    assert named["names_asked"] == 1.0 and other["names_asked"] == 0.0 and other["names_other"] == 1.0
    assert named["text_cover"] == 0.5 and named["key_cover"] == 0.0  # "live" (of "live", "now") is in its text
    assert named["keyword"] == 1.0 and other["keyword"] == 0.0 and other["keyword_place"] == 0.0
    assert other["hop2"] == 0.8 and other["hop2_only"] == 1.0 and named["hop2"] == 0.0
    assert other["present_valid"] == 1.0 and named["present_valid"] == 0.0  # the newer valid time, asked "now"
    assert named["cosine_z"] > other["cosine_z"] and named["place"] == 1.0 and other["place"] == 0.5
    model = (0.5, *[0.0] * (len(FEATURES) - 1), 2.0)  # everything on "names another name"
    assert score(model, rows) == [0.5, 2.5]


def test_second_hop_and_model_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="expand_fusion must be 'places' or 'score'"):
        Ranking(expand_fusion="rank")
    with pytest.raises(ValueError, match="expand_query must be 'swap' or 'rest'"):
        Ranking(expand_query="all")
    with pytest.raises(ValueError, match=r"Ranking\.model must hold 19 numbers"):
        Ranking(model=(1.0, 2.0))


def test_the_query_without_its_names_and_its_weight_in_fusion() -> None:
    from tether.memory._reads import _without

    assert _without("Which animal lives with Jana Novak?", ["Jana Novak"]) == "Which animal lives with?"
    assert _without("Where does Ann Borg's manager live?", ["Ann Borg"]) == "Where does manager live?"
    same = [Candidate(2.0, 0.5, NOW, 0.1), Candidate(2.0, 0.5, NOW, 0.9), Candidate(1.0, 0.2, NOW, 0.5)]
    off = fuse(same, Ranking(unnamed=0.0), present=False)
    on = fuse(same, Ranking(unnamed=0.3), present=False)
    assert off[0] == off[1] and on[1] > on[0]  # alike by both scores: the cosine without the names decides
    assert fuse(same, Ranking(fusion="ratio", unnamed=0.3), present=False) == fuse(
        same, Ranking(fusion="ratio"), present=False)  # z-score fusion only
