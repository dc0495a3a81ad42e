"""Redaction cost: tether's one rule set (``tether._redact``) over large and small prompts.

Measured in this process, best of ``--rounds`` (the machine is shared: the best is the
figure least disturbed by other work): a 100 KB prompt of prose with one secret in it
(``Redactor.text``), the same as a chat body of 100 messages of 1 KB (``Redactor()``, the
walk every recorded body takes), and one short message. Prints µs and ns per KB.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Callable
from typing import Any

from tether.adapters import REDACTED, Redactor

WORDS = ["the", "customer", "asked", "about", "a", "refund", "for", "order", "12345,", "please", "summarise",
         "ticket", "and", "reply:", "rate", "limited", "by", "api,", "retry", "later", "with", "backoff"]


def prose(size: int, rng: random.Random) -> str:
    text = " ".join(rng.choice(WORDS) for _ in range(size // 4))[:size]
    middle = size // 2
    return text[:middle] + " aws_secret_access_key=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY " + text[middle:]


def best(fn: Callable[[], Any], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    rng = random.Random(7)
    redactor = Redactor()
    prompt = prose(100_000, rng)
    assert redactor.text(prompt).count(REDACTED) == 1
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": prose(1000, rng)} for _ in range(100)]}
    short = "Please summarise the customer's ticket about order 12345."
    kb = len(prompt) / 1000
    results = {
        "prompt_100kb_ms": best(lambda: redactor.text(prompt), args.rounds) * 1e3,
        "body_100x1kb_ms": best(lambda: redactor(body), args.rounds) * 1e3,
        "short_message_us": best(lambda: [redactor.text(short) for _ in range(1000)], args.rounds) * 1e3,
    }
    results["prompt_ns_per_kb"] = results["prompt_100kb_ms"] * 1e6 / kb
    results["body_ns_per_kb"] = results["body_100x1kb_ms"] * 1e6 / (len(json.dumps(body)) / 1000)
    if args.json:
        print(json.dumps(results))
    else:
        print(f"100 KB prompt:            {results['prompt_100kb_ms']:.2f} ms  "
              f"({results['prompt_ns_per_kb']:,.0f} ns/KB)")
        print(f"chat body, 100 x 1 KB:    {results['body_100x1kb_ms']:.2f} ms  "
              f"({results['body_ns_per_kb']:,.0f} ns/KB)")
        print(f"one short message:        {results['short_message_us']:.1f} µs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
