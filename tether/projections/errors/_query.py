"""The errors view's query: groups with their counts over a window (:func:`list_groups`)."""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime
from typing import Any

__all__ = ["list_groups"]


def _epoch(since: datetime | float | None) -> float:
    if since is None:
        return float("-inf")
    return since.timestamp() if isinstance(since, datetime) else float(since)


_DIRECT = """
SELECT fingerprint, sum(kind = 'attempt'), sum(decision IS 'retry'), sum(decision IS 'fallback'),
       sum(decision IS 'give_up'), sum(kind = 'final'), sum(kind = 'run')
FROM occurrences WHERE time >= ? AND kind IN ('attempt', 'final', 'run') GROUP BY fingerprint
"""
# A dead letter or budget refusal belongs to the group of its call's final failure, when there is one.
_SECONDARY = """
SELECT coalesce(f.fingerprint, o.fingerprint), f.fingerprint IS NOT NULL, o.kind, count(*)
FROM occurrences o LEFT JOIN occurrences f ON f.event_id = (
    SELECT event_id FROM occurrences WHERE call_id = o.call_id AND kind = 'final' ORDER BY seq LIMIT 1)
WHERE o.time >= ? AND o.kind IN ('dead_letter', 'budget')
GROUP BY 1, 2, 3
"""


def list_groups(db: sqlite3.Connection, *, since: datetime | float | None = None, limit: int | None = 50,
                source: str | None = None) -> list[dict[str, Any]]:
    """Error groups, most frequent first, counted over failures at or after ``since``.

    Counting when read is what makes the counts exact and lets ``--since`` count within a
    window. One failing call yields several events with the same error: each failed attempt,
    the call's ``*.call.failed``, its ``call.dead_lettered`` (and a ``budget.exceeded`` for a
    refusal). ``count`` is the number of distinct failures: failed attempts, plus finals that
    no ``give_up`` attempt announced (refusals, deadlines), plus runs that failed; a dead
    letter or a budget refusal counts in the group of its call's final failure (matched by
    call id) and stands alone only when there is none (malformed work).

    ``source`` keeps one source (``llm:openai``) or a kind of source (``llm``, ``tool``,
    ``dlq``, ``run``, ``budget``). Times are epoch seconds; ``first_seen`` and ``last_seen``
    are over the group's whole history, the counts and ``runs`` over the window.
    """
    start = _epoch(since)
    counts: dict[str, dict[str, int]] = {}

    def bump(fp: str, **values: int) -> None:
        row = counts.setdefault(fp, dict.fromkeys(
            ("attempts", "retry", "fallback", "give_up", "failed", "runs_failed", "dead_letters",
             "budget_refusals", "alone"), 0))
        for k, v in values.items():
            row[k] += v

    for fp, attempts, retry, fallback, give_up, failed, runs_failed in db.execute(_DIRECT, (start,)):
        bump(fp, attempts=attempts, retry=retry, fallback=fallback, give_up=give_up, failed=failed,
             runs_failed=runs_failed)
    for fp, joined, kind, n in db.execute(_SECONDARY, (start,)):
        bump(fp, **{"dead_letters" if kind == "dead_letter" else "budget_refusals": n}, alone=0 if joined else n)
    runs: dict[str, list[str]] = {}
    for fp, run_id in db.execute("SELECT fingerprint, run_id FROM group_runs WHERE last_seen >= ? "
                                 "ORDER BY last_seen DESC, run_id", (start,)):
        runs.setdefault(fp, []).append(run_id)
    out = []
    for row in db.execute("SELECT fingerprint, source, error_type, status_code, message, sample, first_seen, "
                          "last_seen, first_seq, last_seq FROM groups"):
        fp, src, error_type, status, message, sample, first_seen, last_seen, first_seq, last_seq = row
        c = counts.get(fp)
        if c is None:
            continue
        if source is not None and src != source and not src.startswith(source + ":"):
            continue
        count = c["attempts"] + max(0, c["failed"] - c["give_up"]) + c["runs_failed"] + c["alone"]
        if count == 0:
            continue
        sample_seq, sample_id, sample_message = json.loads(sample)
        affected = runs.get(fp, [])
        out.append({
            "fingerprint": fp, "source": src, "error_type": error_type, "status_code": status, "message": message,
            "count": count, "attempts": c["attempts"],
            "decisions": {"retry": c["retry"], "fallback": c["fallback"], "give_up": c["give_up"]},
            "failed": c["failed"], "dead_letters": c["dead_letters"], "budget_refusals": c["budget_refusals"],
            "runs_failed": c["runs_failed"], "runs": len(affected), "run_ids": affected[:5],
            "first_seen": first_seen, "last_seen": last_seen, "first_seq": first_seq, "last_seq": last_seq,
            "sample_message": sample_message, "sample_event_id": sample_id, "sample_seq": int(sample_seq),
        })
    out.sort(key=lambda g: (-g["count"], -g["last_seen"], g["fingerprint"]))
    return out if limit is None else out[:limit]
