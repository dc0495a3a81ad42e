"""Agent memory on the event log: write, version, valid time, search, context, history, as-of,
conflicts, extraction, erasure of one entry and of a namespace.

Run it with ``.venv/bin/python examples/memory.py``: with no ``TETHER_NATS_URL`` it starts the
embedded nats-server under ``./.tether`` (or reuses the one ``tether up`` runs). The memory
view lives in ``TETHER_HOME/memory``; this process keeps it current itself.
"""

from datetime import UTC, datetime

from tether.memory import Memory, MemoryNotFound, VersionConflict
from tether.schemas import uuid7

agent = "support-bot"
mine = f"agent:{agent}"
customer = f"user:{uuid7()}"  # one namespace per data subject: the unit of erasure

with Memory.connect(agent=agent, run=f"example-{uuid7()}") as memory:
    # Every write is an event with provenance; it returns its position in the log.
    first = memory.write(customer, "Ann prefers email over phone calls.", key="contact",
                         metadata={"topic": "contact"}, message_id="msg-1")
    print(f"wrote {customer}/contact v{first.version} at seq {first.seq}")
    second = memory.write(customer, "Ann prefers email; never call before 10 am.", key="contact",
                          expected_version=1, message_id="msg-2")
    print(f"updated it to v{second.version} at seq {second.seq}")
    try:
        memory.write(customer, "a stale update", key="contact", expected_version=1)
    except VersionConflict as exc:
        print(f"refused a lost update: {exc}")

    memory.write(mine, "Refunds over 500 euros need the finance lead's approval.", metadata={"topic": "policy"})
    memory.write(mine, "Orders to Switzerland need a customs declaration.", metadata={"topic": "shipping"})
    merged = memory.write(mine, "Orders to Switzerland need a customs declaration!")
    print(f"a near-duplicate was merged into {merged.merged_into} (v{merged.version}) instead of piling up")

    # Reads see this client's own writes at once (read-your-writes).
    for hit in memory.search("how should we contact Ann?", [customer, mine], k=3):
        print(f"  {hit.score:.2f}  {hit.entry.citation}  {hit.entry.text}")
    context = memory.context("email Ann about a refund", [customer, mine], token_budget=120)
    print(f"context for a prompt ({context.tokens} of {context.token_budget} tokens):\n{context.text}")

    print("history of contact:")
    for version in memory.history(customer, "contact"):
        print(f"  v{version.version} seq {version.seq} {version.action}: {version.text}")
    then = memory.get(customer, "contact", as_of=first.seq)
    print(f"as of seq {first.seq} it read: {then.text!r}")

    # Valid time: an older fact imported later is history, not the current version.
    memory.write(customer, "Ann moved to Lyon in May 2026.", key="city", valid_from=datetime(2026, 5, 1, tzinfo=UTC))
    memory.write(customer, "Ann lives in Paris.", key="city", valid_from=datetime(2024, 1, 1, tzinfo=UTC))
    print(f"now: {memory.get(customer, 'city').text!r}; before May: "
          f"{memory.search('Where did Ann live before May?', [customer], k=1, valid_at='query')[0].entry.text!r}")

    # Extraction (opt-in): operations from a conversation; offline here, LlmExtractor asks a model.
    done = memory.extract(customer, ["Hi! My locker code is 4711.", "What time is it?"], message_id="msg-3")
    print(f"extracted: {[(op.action, op.key, op.text) for op in done.operations]}")

    # Erasing one entry: every version of it is unreadable for good; the rest stays.
    one = memory.erase(customer, done.operations[0].key)
    print(f"erased {one.namespace}/{one.key}; contact still reads {memory.get(customer, 'contact').text!r}")

    # Erasure destroys the namespace's key: its content never comes back, even on replay.
    erased = memory.erase(customer)
    print(f"erased {erased.namespace} (destroyed {', '.join(erased.keys_destroyed)})")
    try:
        memory.get(customer, "contact")
    except MemoryNotFound as exc:
        print(f"after erasure: {exc}")
