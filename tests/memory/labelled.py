"""A small labelled retrieval set: memories an assistant might keep, and queries with their answers.

Half the queries share words with their answers (keyword search should find them); half
are paraphrases that share few or none (where embeddings help). ``bench/memory.py`` and
``test_search_quality.py`` measure recall@5 on it.
"""

from __future__ import annotations

MEMORIES: dict[str, str] = {
    "diet": "Priya is vegetarian and avoids eggs; she loves spicy South Indian food.",
    "allergy": "Tom has a severe peanut allergy and carries an EpiPen.",
    "coffee": "Marco drinks his espresso without sugar, two shots every morning.",
    "birthday": "Priya's birthday is on the 14th of March.",
    "anniversary": "Tom and Lisa celebrate their wedding anniversary on June 2nd.",
    "flight": "Booked flight LH 1234 from Berlin to Lisbon on 12 May, seat 14C.",
    "hotel": "Reserved Hotel Alfama in Lisbon for three nights, confirmation K7Q2.",
    "car": "The rental car in Lisbon is a red Fiat 500, pickup at the airport desk.",
    "passport": "Marco's passport expires in September 2027.",
    "visa": "Priya needs a Schengen visa for business trips to Germany.",
    "laptop": "Tom's work laptop is a ThinkPad X1 with 32 GB of memory.",
    "vpn": "The company VPN requires the WireGuard client and a hardware token.",
    "password-policy": "Passwords must be rotated every 90 days and have at least 14 characters.",
    "oncall": "Lisa is on call for the payments service this week.",
    "incident": "Last Tuesday the payments service failed because the database ran out of disk space.",
    "postgres": "The production database is PostgreSQL 16 running on three replicas.",
    "backup": "Database backups run nightly at 02:00 UTC and are kept for 30 days.",
    "deploy": "Deployments happen through GitHub Actions after two approving reviews.",
    "freeze": "There is a code freeze from December 20 to January 5.",
    "budget": "The marketing budget for Q3 is 120,000 euros.",
    "hiring": "We are hiring two backend engineers and one designer this quarter.",
    "office": "The Berlin office moved to Torstrasse 100, third floor.",
    "parking": "Visitors can park in the garage under the Berlin office, level -2.",
    "gym": "Lisa goes running in the park every Saturday at 7 am.",
    "music": "Marco plays jazz piano in a trio on Thursday evenings.",
    "kids": "Tom has two daughters, Emma who is 8 and Mia who is 5.",
    "pet": "Priya has a golden retriever named Biscuit.",
    "car-own": "Lisa drives an electric Volvo and charges it at home overnight.",
    "language": "Marco is learning Japanese and practices with an app every day.",
    "book": "Priya is reading a history of the Byzantine Empire.",
    "doctor": "Tom's dentist appointment is next Friday at 3 pm.",
    "invoice": "Invoice 2024-117 to ACME Corp is overdue by 45 days.",
    "contract": "The ACME Corp contract renews automatically every January unless cancelled.",
    "supplier": "Our paper supplier is Nordic Paper; delivery takes five working days.",
    "support-hours": "Customer support is available from 8 am to 6 pm CET on weekdays.",
    "refund": "Refunds over 500 euros need approval from the finance lead.",
    "shipping": "Orders to Switzerland ship with DHL Express and need a customs declaration.",
    "returns": "Customers can return unused items within 30 days for a full refund.",
    "slack": "Urgent questions go to the #help-desk Slack channel, not email.",
    "standup": "The team stand-up is at 9:30 every weekday on Zoom.",
}

QUERIES: list[tuple[str, set[str]]] = [
    # sharing words with the answer
    ("is Priya vegetarian?", {"diet"}),
    ("peanut allergy", {"allergy"}),
    ("When is Priya's birthday?", {"birthday"}),
    ("flight to Lisbon", {"flight"}),
    ("hotel confirmation in Lisbon", {"hotel"}),
    ("payments service incident", {"incident", "oncall"}),
    ("when do database backups run", {"backup"}),
    ("ACME Corp invoice overdue", {"invoice"}),
    ("Switzerland shipping customs", {"shipping"}),
    ("code freeze dates", {"freeze"}),
    # paraphrases with little or no shared vocabulary
    ("what food should I avoid serving to Tom?", {"allergy"}),
    ("how does Marco take his coffee", {"coffee"}),
    ("which dog belongs to Priya", {"pet"}),
    ("what instrument does Marco perform on", {"music"}),
    ("how old are Tom's children", {"kids"}),
    ("where is our headquarters in Germany located", {"office"}),
    ("what vehicle are we renting in Portugal", {"car"}),
    ("what exercise does Lisa do on weekends", {"gym"}),
    ("rules for changing login credentials", {"password-policy"}),
    ("how do I send money back to a customer who paid a lot", {"refund"}),
    ("what hours can clients reach our helpdesk", {"support-hours"}),
    ("how many people are we recruiting", {"hiring"}),
    ("which SQL engine runs in production", {"postgres"}),
    ("when does Tom see the dentist", {"doctor"}),
]


def recall_at(results: list[list[str]], k: int = 5) -> float:
    """Mean share of each query's relevant keys found in its top ``k`` results."""
    total = 0.0
    for (_, relevant), found in zip(QUERIES, results, strict=True):
        total += len(relevant & set(found[:k])) / len(relevant)
    return total / len(QUERIES)
