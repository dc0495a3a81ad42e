"""The labelled development set for memory retrieval: generated, deterministic, split into tune and held-out.

``python bench/memory_set.py`` writes ``bench/memory_set.json`` (the same bytes every time);
``bench/memory.py`` loads it. What is in it:

* **memories** in several namespaces: ``user:<id>`` (facts about 48 people: home city,
  job, diet, allergy, pet, contact channel, birthday, hobby, coffee (with negations),
  manager), ``team:<name>`` (projects and their leads, meetings, tools, releases),
  ``agent:support-bot`` (ticket notes that repeat user facts in other words: near-duplicates
  and distractors) and ``global`` (company policies). People share first names or surnames
  (Ann Fischer, Anna Fischer, Ann Fisher), every person has the same kinds of facts (so a
  query shares its words with dozens of wrong answers), and facts are phrased in several ways.
* **versions and valid time**: people move (a new version of ``<id>/city`` with
  ``valid_from``), some moves are imported out of order (the older fact written last, with
  an earlier ``valid_from`` and an ``observed_at``); each project has three release notes
  (separate entries with their ``valid_from``, not always written in release order), of
  which "the latest" is the answer.
* **queries**, each asked by an agent whose grants decide what it may read: ``direct`` (shares
  words with the answer), ``paraphrase`` (shares little besides a name), ``now``/``latest``
  (the current version by valid time), ``before`` (the version valid before a date),
  ``negation``, ``multi-hop`` (two entries: "where does Ann's manager live?") and
  ``team``. ``relevant`` lists ``namespace/key`` (with ``text`` when one version is the
  answer); ``stale`` lists texts that are superseded answers.
* **split**: every query is ``tune`` or ``heldout`` (by its subject: a person, project or
  ticket is in one part only), and the two parts use *different* paraphrase templates, so
  tuning cannot learn the held-out wording. Never tune on ``heldout``.
* **the tune split's further multi-hop questions** (session 11, ``TUNE_HOPS``): "What pet does
  Ann Nowak's supervisor keep?", "Where does the owner of Atlas live?"... share no word with the
  entry that bridges them, as the original tune questions all did. They are drawn by a random
  generator of their own and asked last, so the memories and the held-out questions stay what
  they were: ``frozen()`` digests them, and the script refuses to write (or ``--check``) a set
  whose digest is not ``FROZEN``.
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).with_name("memory_set.json")
SEED = 19
NOW = "2026-12-01T12:00:00+00:00"
"""The time the set's questions are asked ("now")."""

GRANTS = {
    "support-bot": {"read": ["user:*", "agent:support-bot", "team:support", "global"],
                    "write": ["agent:support-bot"]},
    "planner": {"read": ["team:*", "agent:planner", "global"], "write": ["agent:planner"]},
    "people-bot": {"read": ["user:*", "team:people", "global"], "write": ["team:people"]},
}

FIRST = ["Ann", "Anna", "Ben", "Bea", "Carl", "Carla", "Dan", "Dana", "Eli", "Elif", "Finn", "Fiona", "Gus", "Greta",
         "Hugo", "Hana", "Ivan", "Ines", "Jon", "Jana", "Karl", "Kira", "Leo", "Lea"]
LAST = ["Fischer", "Fisher", "Novak", "Nowak", "Berg", "Borg", "Silva", "Costa"]
CITIES = ["Lyon", "Lisbon", "Porto", "Oslo", "Bergen", "Krakow", "Vienna", "Graz", "Ghent", "Utrecht", "Malmo",
          "Turin", "Bilbao", "Tallinn", "Riga", "Dublin", "Cork", "Basel", "Zurich", "Munich"]
ROLES = [("data engineer", "builds pipelines"), ("nurse", "works night shifts"), ("architect", "designs schools"),
         ("accountant", "closes the books"), ("product designer", "sketches interfaces"),
         ("teacher", "teaches physics"), ("lawyer", "handles contracts"), ("chef", "runs a kitchen"),
         ("pilot", "flies regional routes"), ("pharmacist", "fills prescriptions"),
         ("journalist", "covers local politics"), ("electrician", "wires new buildings")]
COMPANIES = ["Acme Corp", "Northwind", "Globex", "Initech", "Umbrella Health", "Vandelay Imports", "Stark Labs",
             "Wayne Logistics", "Soylent Foods", "Hooli"]
DIETS = [("vegetarian", "no meat or fish"), ("vegan", "no animal products at all"),
         ("pescatarian", "fish but no meat"), ("gluten-free", "coeliac, so no wheat"),
         ("halal", "no pork and halal meat only"), ("kosher", "keeps kosher at home"),
         ("low-carb", "avoids bread and pasta"), ("lactose-free", "no milk or cheese")]
ALLERGENS = ["peanuts", "shellfish", "penicillin", "bee stings", "cat dander", "latex", "sesame", "pollen",
             "ibuprofen", "kiwi fruit"]
PETS = [("dog", ["Biscuit", "Rex", "Pepper", "Luna"]), ("cat", ["Miso", "Tiger", "Olive", "Smokey"]),
        ("parrot", ["Kiwi", "Rio"]), ("rabbit", ["Clover", "Thumper"]), ("tortoise", ["Sheldon", "Speedy"])]
CHANNELS = [("email", "phone calls"), ("text message", "email"), ("phone call", "chat apps"),
            ("Slack", "phone calls"), ("letter", "email")]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]
HOBBIES = ["plays the cello in an amateur orchestra", "goes bouldering at the climbing gym",
           "grows tomatoes on an allotment", "sings in a choir", "restores old bicycles", "paints watercolours",
           "runs half marathons", "plays chess online", "bakes sourdough bread", "builds model railways",
           "swims in the lake", "practises judo"]
DRINKS = ["green tea", "hot chocolate", "mint tea", "sparkling water", "rooibos"]
COFFEE = ["a flat white", "two espressos", "black filter coffee", "an oat latte"]
WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]

# Each fact kind: how a memory says it (several phrasings), how a direct question asks it, and
# paraphrase templates: the tune split draws from "tune", the held-out split from "heldout".
KINDS: dict[str, dict[str, list[str]]] = {
    "city": {
        "text": ["{P} lives in {city}.", "{P} is based in {city} and works from home there.",
                 "Home for {P} is an apartment in {city}."],
        "direct": ["Where does {P} live?", "{P} city"],
        "tune": ["Which town is {P} based in?", "What is {P}'s place of residence?"],
        "heldout": ["Where is {P}'s home these days?", "In which city can I find {P}?"],
    },
    "job": {
        "text": ["{P} works as a {role} at {company}; {P_he} {duty}.", "{P} is a {role} ({company}) and {duty}.",
                 "By profession {P} is a {role}, employed by {company}."],
        "direct": ["What is {P}'s job?", "{P} work role company"],
        "tune": ["What does {P} do for a living?", "Who employs {P}?"],
        "heldout": ["What is {P}'s occupation?", "Which firm pays {P}'s salary?"],
    },
    "diet": {
        "text": ["{P} is {diet}: {detail}.", "Cooking for {P}: {diet}, {detail}.",
                 "{P} follows a {diet} diet ({detail})."],
        "direct": ["Is {P} {diet}?", "{P} diet"],
        "tune": ["What should we cook when {P} comes to dinner?", "Any food rules for {P}?"],
        "heldout": ["What can I serve {P} at the team lunch?", "What does {P} eat?"],
    },
    "allergy": {
        "text": ["{P} is allergic to {allergen}.", "{P} has a severe {allergen} allergy.",
                 "Medical note: {P} reacts badly to {allergen}."],
        "direct": ["{P} allergy", "Is {P} allergic to anything?"],
        "tune": ["What could give {P} a bad reaction?", "Anything {P} must never be exposed to?"],
        "heldout": ["What is {P} intolerant of?", "What makes {P} ill?"],
    },
    "pet": {
        "text": ["{P} has a {animal} named {pet}.", "{pet}, {P}'s {animal}, is {age} years old.",
                 "{P} adopted a {animal} called {pet}."],
        "direct": ["{P}'s pet", "What is {P}'s {animal} called?"],
        "tune": ["Does {P} own any animals?", "Which animal lives with {P}?"],
        "heldout": ["Who keeps {P} company at home?", "What is the name of {P}'s companion animal?"],
    },
    "contact": {
        "text": ["{P} prefers {channel}; never {bad}.", "Reach {P} by {channel}, not by {bad}.",
                 "Contact {P} via {channel} ({bad} go unanswered)."],
        "direct": ["How should I contact {P}?", "{P} contact preference"],
        "tune": ["Best way to reach {P}?", "How do I get hold of {P}?"],
        "heldout": ["Which channel does {P} answer on?", "How do I send {P} a message?"],
    },
    "birthday": {
        "text": ["{P}'s birthday is on {day} {month}.", "{P} was born on {day} {month} {year}.",
                 "Remember {P}'s birthday: {month} {day}."],
        "direct": ["When is {P}'s birthday?", "{P} birthday"],
        "tune": ["When should we celebrate {P}?", "On what date was {P} born?"],
        "heldout": ["When does {P} turn a year older?", "What is {P}'s date of birth?"],
    },
    "hobby": {
        "text": ["{P} {hobby} every {weekday}.", "On {weekday}s {P} {hobby}.", "{P}'s pastime: {P_he} {hobby}."],
        "direct": ["{P} hobby", "What is {P}'s hobby?"],
        "tune": ["What does {P} do in free time?", "How does {P} spend weekends?"],
        "heldout": ["What does {P} do for fun?", "What is {P} passionate about outside work?"],
    },
    "coffee": {
        "text": ["{P} does not drink coffee; only {drink}.", "{P} never drinks coffee and asks for {drink} instead.",
                 "{P} drinks {coffee} every morning.", "{P} starts the day with {coffee}."],
        "direct": ["Does {P} drink coffee?", "{P} coffee"],
        "tune": ["Should I offer {P} an espresso?", "What drink should I bring {P}?"],
        "heldout": ["What does {P} like to drink in the morning?", "Would {P} want a cappuccino?"],
    },
}
MANAGER = ["{P}'s manager is {M}.", "{P} reports to {M}.", "{M} manages {P}."]
MULTI = {
    "tune": ["Where does {P}'s manager live?", "What is {P}'s manager allergic to?"],
    "heldout": ["In which city is the boss of {P} based?", "Which diet does {P}'s manager follow?"],
}
MULTI_KIND = {"Where does {P}'s manager live?": "city", "What is {P}'s manager allergic to?": "allergy",
              "In which city is the boss of {P} based?": "city", "Which diet does {P}'s manager follow?": "diet"}
# More multi-hop questions for the tune split only (session 11), written from the facts above: none
# shares a word with the entry that bridges it ("Ann Borg reports to Ben Berg.", key ann-borg/manager;
# "Project Atlas is led by Ben Berg.", key project-atlas/lead), as users' questions often do not. Drawn
# with a random generator of their own and asked after every other question, so the memories and the
# held-out questions stay byte for byte what they were (FROZEN below).
TUNE_HOPS = {
    "Which town does the person {P} answers to call home?": "city",
    "What pet does {P}'s supervisor keep?": "pet",
    "How can I reach whoever supervises {P}?": "contact",
    "Who employs the person {P} works under?": "job",
    "When is the birthday of {P}'s team leader?": "birthday",
    "What does the supervisor of {P} do at weekends?": "hobby",
    "What should the cook prepare for {P}'s supervisor?": "diet",
    "Which substances must the person above {P} stay away from?": "allergy",
    "What does {P}'s superior drink in the morning?": "coffee",
}
TUNE_LEAD_HOPS = {
    "Where does the owner of {X} live?": "city",
    "What animal does the head of {X} look after?": "pet",
    "Who employs whoever heads {X}?": "job",
}
HOPS_SEED = 1911

TEAMS = ["support", "platform", "people", "finance", "design", "research"]
PROJECTS = ["Atlas", "Beacon", "Comet", "Delta", "Ember", "Falcon", "Granite", "Harbor", "Iris", "Juniper",
            "Kestrel", "Lumen", "Meridian", "Nimbus", "Orion", "Pulsar", "Quartz", "Raven"]
TOOLS = ["Jira", "Linear", "Notion", "Confluence", "GitLab", "Figma", "Grafana", "PagerDuty"]
POLICIES = [
    ("refunds", "Refunds over {n} euros need approval from the finance lead.", "How much refund needs approval?",
     "Who has to sign off a large payback to a customer?"),
    ("expenses", "Expense reports are due by the {d}th of each month.", "When are expense reports due?",
     "By what day must I submit my receipts?"),
    ("travel", "Business trips over {n} kilometres are booked by train unless approved otherwise.",
     "travel booking policy for trips", "Can I fly to a meeting?"),
    ("passwords", "Passwords must be rotated every {n} days and be at least 14 characters long.",
     "password rotation rules", "How often do I change my login credentials?"),
    ("remote", "Staff may work remotely up to {d} days a week.", "remote work days allowed",
     "How many days can I do my job from home?"),
    ("security", "Laptops must use full-disk encryption and lock after {d} minutes.", "laptop encryption policy",
     "What are the rules for securing my computer?"),
    ("holidays", "Everyone gets {n} days of paid holiday a year.", "How many holiday days?",
     "How much annual leave do employees receive?"),
    ("parking", "Visitors park in the garage under the office, level -{d}.", "visitor parking",
     "Where do guests leave their car?"),
    ("support-hours", "Customer support is open from {d} am to 6 pm CET on weekdays.", "support opening hours",
     "When can clients reach our helpdesk?"),
    ("backups", "Database backups run nightly and are kept for {n} days.", "How long are backups kept?",
     "For how long can we restore old data?"),
]
PROBLEMS = [("could not log in", "reset the two-factor device"), ("was charged twice", "refunded the duplicate charge"),
            ("lost access to the shared drive", "re-added the account to the group"),
            ("saw a blank dashboard", "cleared the browser cache"), ("got no invoice emails", "fixed the mail filter"),
            ("had a broken export", "upgraded the CSV exporter")]


def _pick(rng: random.Random, seq: list[Any]) -> Any:
    return seq[rng.randrange(len(seq))]


class Builder:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.memories: list[dict[str, Any]] = []
        self.queries: list[dict[str, Any]] = []

    def remember(self, ns: str, key: str, text: str, *, valid_from: str | None = None,
                 observed_at: str | None = None, metadata: dict[str, Any] | None = None) -> str:
        self.memories.append({"namespace": ns, "key": key, "text": text, "metadata": metadata or {},
                              "valid_from": valid_from, "observed_at": observed_at})
        return f"{ns}/{key}"

    def ask(self, text: str, asker: str, relevant: list[dict[str, Any]], categories: list[str], split: str,
            stale: list[str] | None = None) -> None:
        self.queries.append({"id": f"q{len(self.queries) + 1:03d}", "text": text, "asker": asker,
                             "relevant": relevant, "categories": categories, "split": split,
                             "stale": stale or []})


def build(seed: int = SEED) -> dict[str, Any]:
    b = Builder(seed)
    rng = b.rng
    names = [f"{f} {last}" for last in LAST for f in FIRST]
    rng.shuffle(names)
    people = [*sorted(names[:44]), "Ann Fischer", "Anna Fischer", "Ann Fisher", "Anna Fisher"]
    people = list(dict.fromkeys(people))[:48]
    ids = {p: p.lower().replace(" ", "-") for p in people}
    split_of = {p: ("tune" if i % 2 == 0 else "heldout") for i, p in enumerate(people)}
    facts: dict[str, dict[str, dict[str, Any]]] = {}
    for i, p in enumerate(people):
        pid, ns = ids[p], f"user:{ids[p]}"
        first = p.split()[0]
        he = "she" if first in ("Ann", "Anna", "Bea", "Carla", "Dana", "Elif", "Fiona", "Greta", "Hana", "Ines",
                                "Jana", "Kira", "Lea") else "he"
        role, duty = _pick(rng, ROLES)
        diet, detail = _pick(rng, DIETS)
        animal, pets = _pick(rng, PETS)
        channel, bad = _pick(rng, CHANNELS)
        values = {"P": p, "P_he": he, "city": _pick(rng, CITIES), "role": role, "duty": duty,
                  "company": _pick(rng, COMPANIES), "diet": diet, "detail": detail,
                  "allergen": _pick(rng, ALLERGENS), "animal": animal, "pet": _pick(rng, pets),
                  "age": rng.randint(2, 14), "channel": channel, "bad": bad, "day": rng.randint(1, 28),
                  "month": _pick(rng, MONTHS), "year": rng.randint(1960, 2001), "hobby": _pick(rng, HOBBIES),
                  "weekday": _pick(rng, WEEKDAYS), "drink": _pick(rng, DRINKS), "coffee": _pick(rng, COFFEE)}
        facts[p] = {}
        for kind, spec in KINDS.items():
            phrasing = spec["text"]
            if kind == "coffee":
                phrasing = phrasing[:2] if i % 2 == 0 else phrasing[2:]
            text = _pick(rng, phrasing).format(**values)
            text = text[0].upper() + text[1:]
            facts[p][kind] = {"ref": b.remember(ns, f"{pid}/{kind}", text, valid_from="2024-01-01T00:00:00+00:00",
                                                metadata={"kind": kind}),
                              "text": text, "values": values}
    # managers: a person of the other half of the list (so multi-hop crosses people)
    for i, p in enumerate(people):
        m = people[(i + 7) % len(people)]
        text = _pick(rng, MANAGER).format(P=p, M=m)
        facts[p]["manager"] = {"ref": b.remember(f"user:{ids[p]}", f"{ids[p]}/manager", text,
                                                 metadata={"kind": "manager"}), "text": text, "manager": m}
    # moves: a new version of the city, valid from a month of 2026; a third of them imported out of
    # order (the old fact written last, with its earlier valid_from and an observed_at)
    moves: dict[str, dict[str, Any]] = {}
    for i, p in enumerate(people):
        if i % 4 >= 2:
            continue
        old = facts[p]["city"]
        new_city = _pick(rng, [c for c in CITIES if c != old["values"]["city"]])
        month = rng.randint(2, 10)
        when = f"2026-{month:02d}-01T00:00:00+00:00"
        text = _pick(rng, ["{P} moved to {c} in {m} 2026.", "Since {m} 2026 {P} lives in {c}.",
                           "New address for {P}: {c} (from {m} 2026)."]).format(P=p, c=new_city, m=MONTHS[month - 1])
        ns, key = f"user:{ids[p]}", f"{ids[p]}/city"
        if i % 3 == 0 or (i % 4 == 1 and i % 3 == 1):  # imported: the new fact first, then the old one observed later
            b.memories.remove(next(m for m in b.memories if m["namespace"] == ns and m["key"] == key))
            b.remember(ns, key, text, valid_from=when, metadata={"kind": "city"})
            b.remember(ns, key, old["text"], valid_from="2024-01-01T00:00:00+00:00",
                       observed_at="2026-11-20T00:00:00+00:00", metadata={"kind": "city"})
        else:
            b.remember(ns, key, text, valid_from=when, metadata={"kind": "city"})
        moves[p] = {"old": old["text"], "new": text, "month": month, "ref": f"{ns}/{key}", "city": new_city}
    # near-duplicates and distractors: support tickets that repeat people's facts in other words
    tickets = []
    for n, p in enumerate(people[::2]):
        problem, fix = _pick(rng, PROBLEMS)
        tid = f"ticket-{4100 + n}"
        text = f"Ticket {4100 + n}: {p} {problem}; we {fix}."
        tickets.append((p, tid, problem, fix, b.remember("agent:support-bot", tid, text, metadata={"kind": "ticket"})))
        c = facts[p]["contact"]["values"]
        b.remember("agent:support-bot", f"{tid}-note", f"While handling ticket {4100 + n}, {p} asked us to use "
                   f"{c['channel']} and not {c['bad']}.", metadata={"kind": "note"})
    # near-duplicate entries of the same fact in the user namespace (an agent wrote it twice)
    for p in people[1::4]:
        f = facts[p]["hobby"]
        b.remember(f"user:{ids[p]}", f"{ids[p]}/hobby-note", f"Note: {f['values']['P']} still "
                   f"{f['values']['hobby']}, mostly on {f['values']['weekday']}s.", metadata={"kind": "hobby"})
    # teams: projects with leads (multi-hop into people), meetings, tools, releases with versions
    projects = {}
    for j, name in enumerate(PROJECTS):
        team = TEAMS[j % len(TEAMS)]
        lead = people[(j * 5 + 3) % len(people)]
        ns = f"team:{team}"
        projects[name] = (team, lead, b.remember(ns, f"project-{name.lower()}/lead",
                                                 f"Project {name} is led by {lead}.", metadata={"kind": "lead"}))
        b.remember(ns, f"project-{name.lower()}/meeting", f"The {name} stand-up is at {rng.randint(8, 11)}:"
                   f"{_pick(rng, ['00', '15', '30', '45'])} every {_pick(rng, WEEKDAYS[:5])}.",
                   metadata={"kind": "meeting"})
        b.remember(ns, f"project-{name.lower()}/tool", f"Project {name} tracks its work in {_pick(rng, TOOLS)}.",
                   metadata={"kind": "tool"})
        versions = sorted(rng.sample(range(1, 9), 3))
        order = [0, 1, 2] if j % 3 else [2, 0, 1]  # release notes are not always written in release order
        for k in order:
            b.remember(ns, f"project-{name.lower()}/release-{k + 1}", f"{name} release {2 + k}.{versions[k]} "
                       f"shipped in {MONTHS[2 + 3 * k]} 2026.", valid_from=f"2026-{3 + 3 * k:02d}-10T00:00:00+00:00",
                       metadata={"kind": "release"})
    for team in TEAMS:
        for k in range(6):
            verb = _pick(rng, ["meets", "syncs", "reviews"])
            b.remember(f"team:{team}", f"{team}-note-{k}", f"The {team} team {verb} "
                       f"on {_pick(rng, WEEKDAYS[:5])}s in room {rng.randint(100, 499)}; bring the "
                       f"{_pick(rng, TOOLS)} board.", metadata={"kind": "team"})
    for key, text, _, _ in POLICIES:
        b.remember("global", f"policy-{key}", text.format(n=rng.choice([30, 90, 150, 500, 25]),
                                                          d=rng.randint(2, 9)), metadata={"kind": "policy"})
    for k in range(30):  # general announcements that share policy words
        b.remember("global", f"announcement-{k}", f"Announcement: the {_pick(rng, TEAMS)} team changed its "
                   f"{_pick(rng, ['travel', 'expense', 'holiday', 'password', 'backup', 'parking'])} checklist on "
                   f"{rng.randint(1, 28)} {_pick(rng, MONTHS)}.", metadata={"kind": "announcement"})

    # -- queries -----------------------------------------------------------------------------------
    asker_for_user = ["support-bot", "people-bot"]
    for i, p in enumerate(people):
        split = split_of[p]
        kinds = rng.sample([k for k in KINDS if k != "city" or p not in moves], 5)
        for n, kind in enumerate(kinds):
            f = facts[p][kind]
            values = dict(f["values"])
            if n % 2 == 0:
                template, cat = _pick(rng, KINDS[kind]["direct"]), "direct"
            else:
                template, cat = _pick(rng, KINDS[kind][split]), "paraphrase"
            cats = [cat] + (["negation"] if kind == "coffee" else [])
            b.ask(template.format(**values), asker_for_user[i % 2], [{"ref": f["ref"]}], cats, split)
        if p in moves:
            mv = moves[p]
            now_q = _pick(rng, ["Where does {P} live now?", "What is {P}'s current city?",
                                "Where is {P} living at the moment?"]).format(P=p)
            b.ask(now_q, "people-bot", [{"ref": mv["ref"], "text": mv["new"]}], ["now"], split, stale=[mv["old"]])
            before = MONTHS[mv["month"] - 1]
            b.ask(f"Where did {p} live before {before}?", "people-bot", [{"ref": mv["ref"], "text": mv["old"]}],
                  ["before"], split)
        m = facts[p]["manager"]["manager"]
        template = _pick(rng, MULTI[split])
        target = MULTI_KIND[template]
        ref = moves[m]["ref"] if target == "city" and m in moves else facts[m][target]["ref"]
        b.ask(template.format(P=p), "people-bot", [{"ref": facts[p]["manager"]["ref"]}, {"ref": ref}],
              ["multi-hop"], split)
    for p, _tid, problem, _fix, ref in tickets:
        b.ask(f"How did we fix it when {p} {problem}?", "support-bot", [{"ref": ref}], ["direct"], split_of[p])
    for j, (name, (team, lead, ref)) in enumerate(projects.items()):
        split = "tune" if j % 2 == 0 else "heldout"
        b.ask(f"Who leads project {name}?" if split == "tune" else f"Who is in charge of {name}?", "planner",
              [{"ref": ref}], ["team", "direct" if split == "tune" else "paraphrase"], split)
        b.ask(_pick(rng, ["What is the latest release of {n}?", "Which {n} version is current?",
                          "newest {n} release"]).format(n=name), "planner",
              [{"ref": f"team:{team}/project-{name.lower()}/release-3"}], ["latest", "team"], split)
        if team == "support":  # the support bot may read team:support and user:*
            lead_id = lead.lower().replace(" ", "-")
            kind = "contact" if split == "tune" else "diet"
            b.ask(f"How should I contact the lead of project {name}?" if split == "tune"
                  else f"What does the person running {name} eat?", "support-bot",
                  [{"ref": ref}, {"ref": f"user:{lead_id}/{lead_id}/{kind}"}], ["multi-hop"], split)
    for j, (key, _, direct, para) in enumerate(POLICIES):
        split = "tune" if j % 2 == 0 else "heldout"
        b.ask(direct, "planner", [{"ref": f"global/policy-{key}"}], ["direct"], split)
        b.ask(para, "support-bot", [{"ref": f"global/policy-{key}"}], ["paraphrase"], split)
    # the tune split's further multi-hop questions (TUNE_HOPS): two templates per tune person, one per
    # tune project whose lead the asker may read about; their own generator leaves rng alone
    hop_rng = random.Random(HOPS_SEED)
    for p in people:
        if split_of[p] != "tune":
            continue
        m = facts[p]["manager"]["manager"]
        for template in hop_rng.sample(sorted(TUNE_HOPS), 2):
            kind = TUNE_HOPS[template]
            ref = moves[m]["ref"] if kind == "city" and m in moves else facts[m][kind]["ref"]
            b.ask(template.format(P=p), "people-bot", [{"ref": facts[p]["manager"]["ref"]}, {"ref": ref}],
                  ["multi-hop"], "tune")
    for j, (name, (team, lead, ref)) in enumerate(projects.items()):
        asker = {"support": "support-bot", "people": "people-bot"}.get(team)
        if j % 2 or asker is None:
            continue
        template = _pick(hop_rng, sorted(TUNE_LEAD_HOPS))
        kind = TUNE_LEAD_HOPS[template]
        target = moves[lead]["ref"] if kind == "city" and lead in moves else facts[lead][kind]["ref"]
        b.ask(template.format(X=name), asker, [{"ref": ref}, {"ref": target}], ["multi-hop"], "tune")
    return {"now": NOW, "grants": GRANTS, "memories": b.memories, "queries": b.queries}


FROZEN = "4f5fba6f7e6a60bfabd50a42d631a1995f2d015f06767cbbf3b722a0e2a9d8b2"
"""SHA-256 of :func:`frozen` as the held-out split was first measured: what tune-only additions never change."""


def frozen(doc: dict[str, Any]) -> str:
    """A digest of what the tune split may never change: the memories, the grants, "now" and every
    held-out question (its id, text, asker, answers and categories)."""
    part = {"now": doc["now"], "grants": doc["grants"], "memories": doc["memories"],
            "heldout": [q for q in doc["queries"] if q["split"] == "heldout"]}
    return hashlib.sha256(json.dumps(part, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def fix_refs(doc: dict[str, Any]) -> dict[str, Any]:
    """Split every ``namespace/key`` reference (keys contain slashes) into its two parts."""
    for q in doc["queries"]:
        for r in q["relevant"]:
            ns, _, key = r.pop("ref").partition("/")
            r["namespace"], r["key"] = ns, key
    return doc


def main() -> int:
    doc = fix_refs(build())
    text = json.dumps(doc, indent=1, ensure_ascii=False) + "\n"
    if frozen(doc) != FROZEN:
        print("the memories or the held-out questions differ from those the held-out split was measured on "
              "(bench/memory_set.py FROZEN): add to the tune split only, with a random generator of its own",
              file=sys.stderr)
        return 1
    if "--check" in sys.argv:
        same = OUT.exists() and OUT.read_text(encoding="utf-8") == text
        print("up to date" if same else f"{OUT.name} differs from what the script generates", file=sys.stderr)
        return 0 if same else 1
    OUT.write_text(text, encoding="utf-8")
    split = {s: sum(q["split"] == s for q in doc["queries"]) for s in ("tune", "heldout")}
    cats: dict[str, int] = {}
    for q in doc["queries"]:
        for c in q["categories"]:
            cats[c] = cats.get(c, 0) + 1
    print(f"{len(doc['memories'])} memory writes, {len(doc['queries'])} queries {split}, {cats}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
