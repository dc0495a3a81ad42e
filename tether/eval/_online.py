"""Online evaluation: scorers as a consumer of live traffic. Each finished run (of one agent, or
all) is sampled, scored from its trace, and its scores are written to the log as
``tether.eval.score.recorded`` under experiment ``online:<name>``, item = the run id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import zlib
from collections.abc import Sequence

import nats.errors
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from tether.bus import EVENTS_STREAM, event_filter
from tether.schemas import RunFinished

from ._client import Evals
from ._log import read_run
from ._scorers import Case, Scorer

__all__ = ["OnlineScorer", "sampled"]

log = logging.getLogger("tether.eval")


def sampled(run_id: str, rate: float) -> bool:
    """Whether ``run_id`` is in the sample: decided by its hash, so every process agrees and a
    restart rescoring the same runs picks the same ones."""
    return rate >= 1 or (rate > 0 and zlib.crc32(run_id.encode()) / 0xFFFFFFFF < rate)


class OnlineScorer:
    """``await OnlineScorer(evals, "support", scorers, agent="support-bot", rate=0.1).start()``.

    A durable consumer (``tether-eval-<name>``) on the runs' ``run.finished`` events: a restart
    resumes where it stopped. ``from_start`` scores the runs already in the log too (else only
    new ones). Runs of agent ``eval-judge`` and of experiments (tagged ``eval``) are never scored."""

    def __init__(self, evals: Evals, name: str, scorers: Sequence[Scorer], *, agent: str | None = None,
                 rate: float = 1.0, from_start: bool = False) -> None:
        if not 0 <= rate <= 1:
            raise ValueError(f"rate is the share of runs to score, between 0 and 1; got {rate}")
        if not scorers:
            raise ValueError("an online scorer needs at least one scorer")
        self.evals, self.name, self.scorers, self.agent, self.rate = evals, name, list(scorers), agent, rate
        self.from_start = from_start
        self.experiment = f"online:{name}"
        self.seen = self.scored = 0
        self._task: asyncio.Task[None] | None = None
        self._sub: object = None

    async def start(self) -> OnlineScorer:
        for scorer in self.scorers:
            bind = getattr(scorer, "bind", None)
            if bind is not None:
                bind(self.evals.bus)
        config = ConsumerConfig(durable_name=f"tether-eval-{self.name}", ack_policy=AckPolicy.EXPLICIT,
                                deliver_policy=DeliverPolicy.ALL if self.from_start else DeliverPolicy.NEW,
                                ack_wait=60)
        self._sub = await self.evals.bus.js.pull_subscribe(event_filter(agent=self.agent, kind="run",
                                                                        action="finished"),
                                                           durable=config.durable_name, stream=EVENTS_STREAM,
                                                           config=config)
        self._task = asyncio.create_task(self._loop(), name=f"tether-eval-online-{self.name}")
        return self

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def __aenter__(self) -> OnlineScorer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _loop(self) -> None:
        sub = self._sub
        while True:
            try:
                msgs = await sub.fetch(20, timeout=1)  # type: ignore[attr-defined]
            except (TimeoutError, nats.errors.TimeoutError):
                continue
            for msg in msgs:
                try:
                    await self._one(msg.headers, msg.data)
                except Exception as exc:  # one run that cannot be scored must not stop the consumer
                    log.warning("online scorer %s: a run could not be scored: %r", self.name, exc)
                await msg.ack()

    async def _one(self, headers: dict[str, str] | None, data: bytes) -> None:
        event = await self.evals.bus.reader.read(headers, data)
        run_id = event.runid
        if not isinstance(event.data, RunFinished) or run_id is None or event.agentid == "eval-judge":
            return
        self.seen += 1
        if not sampled(run_id, self.rate):
            return
        trace = await read_run(self.evals.bus, run_id)
        started = next((e for e in trace.events if e.type == "tether.run.started"), None)
        if started is not None and "eval" in getattr(started.data, "tags", ()):
            return
        case = Case(trace.input, trace.output, None, trace, run_id)
        events = []
        for scorer in self.scorers:
            try:
                score = await scorer.score(case)
            except Exception as exc:
                from ._scorers import Score

                score = Score(None, None, f"scorer failed: {type(exc).__name__}: {str(exc)[:300]}")
            events.append(self.evals.score_event(self.experiment, run_id, scorer.name, score, run_id=run_id,
                                                 kind=scorer.kind))
        await self.evals.publish(events)
        self.scored += 1
