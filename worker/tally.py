"""The dashboard's counts of the jobs a worker ends (``Tally``): kept in memory as each job ends,
added to Redis every ``ROLL_UP_EVERY_S`` in one script call per queue (``lua/roll_up.lua``) and at
shutdown.

Per minute (the worker's clock): jobs by status, their time from submit to end and their last
attempt's in latency buckets, and jobs, tokens and cost per model; per batch (a job id
``{batch}:...``, ``contract.batch_of``): jobs by status, tokens, cost. Counting here instead of in
the finish script keeps a job's finish as cheap for Redis as before; the finish script says
whether the job ended there, so a job stored twice counts once. A roll-up that Redis refuses is
kept and tried again with the next (the oldest minutes dropped past ``STATS_KEEP_S``).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Final

from redis.asyncio import Redis

from promptq_core.background import REDIS_TROUBLE, Background, repeat
from promptq_core.contract import STATS_KEEP_S, JobResult, batch_of, dumps, latency_bucket, queue_keys
from worker.logs import get_logger
from worker.scripts import WorkerScript

__all__ = ["ROLL_UP_EVERY_S", "Tally"]

ROLL_UP_EVERY_S: Final = 1.0
STOP_TIMEOUT_S: Final = 5.0
"""A shutdown waits this long at most for the last roll-up."""
log = get_logger("promptq.tally")


class _Counts:
    """What one queue's jobs ended here since the last roll-up."""

    def __init__(self) -> None:
        self.minutes: dict[int, dict[str, Any]] = {}
        self.batches: dict[str, list[Any]] = {}

    def add(self, other: _Counts) -> None:
        """Add counts a roll-up could not send (minutes past ``STATS_KEEP_S`` are dropped)."""
        oldest = int(time.time() // 60) - STATS_KEEP_S // 60
        for minute, counts in other.minutes.items():
            if minute < oldest:
                continue
            into = self.minutes.setdefault(minute, _new_minute())
            for kind in ("s", "t", "c"):
                for key, n in counts[kind].items():
                    _add(into[kind], key, n)
            for model, row in counts["m"].items():
                _merge(into["m"].setdefault(model, [0, 0, 0, False]), row)
        for name, row in other.batches.items():
            _merge(self.batches.setdefault(name, [0, 0, 0, 0, False]), row)


class Tally:
    """The counts of one worker, per queue (each queue's roll-ups and batches live in its slot)."""

    def __init__(self, redis: Redis, every_s: float = ROLL_UP_EVERY_S) -> None:
        self.redis, self.every_s = redis, every_s
        self._queues: dict[str, _Counts] = {}
        self._roll_up = WorkerScript(redis, "roll_up")
        self._roll_ups = Background("promptq-tally")

    def count(self, result: JobResult, cost_usd: float | None) -> None:
        """Count a job that ended here (its terminal document, its estimated cost)."""
        counts = self._queues.setdefault(result.queue, _Counts())
        ended_s = result.finished_at or time.time()
        minute = counts.minutes.setdefault(int(ended_s // 60), _new_minute())
        _add(minute["s"], result.status, 1)
        if result.enqueued_at is not None:
            _add(minute["t"], str(latency_bucket(max(0.0, (ended_s - result.enqueued_at) * 1000))), 1)
        if result.latency_ms is not None:
            _add(minute["c"], str(latency_bucket(result.latency_ms)), 1)
        usage = result.usage
        given, made = (usage.prompt_tokens, usage.completion_tokens) if usage else (0, 0)
        cost = False if cost_usd is None else cost_usd
        if result.model:
            _merge(minute["m"].setdefault(result.model, [0, 0, 0, False]), [1, given, made, cost])
        if batch := batch_of(result.job_id):
            ended = [int(result.status == status) for status in ("succeeded", "failed", "cancelled")]
            _merge(counts.batches.setdefault(batch, [0, 0, 0, 0, False]), [*ended, given + made, cost])

    async def roll_up(self) -> None:
        """Add what was counted since the last roll-up to Redis, a script call per queue (nothing
        counted: nothing sent)."""
        queues, self._queues = self._queues, {}
        for name in list(queues):
            counts = queues[name]
            if not counts.minutes:
                del queues[name]
                continue
            payload = dumps({"minutes": {str(m): c for m, c in counts.minutes.items()}, "batches": counts.batches})
            keys = queue_keys(name)
            try:
                await self._roll_up(keys, minute=keys.stats(min(counts.minutes)), counts_json=payload)
            except REDIS_TROUBLE:
                for left, kept in queues.items():  # back in, for the next roll-up
                    self._queues.setdefault(left, _Counts()).add(kept)
                raise
            del queues[name]

    def start(self) -> None:
        self._roll_ups.start(lambda: repeat(self.roll_up, self.every_s, _roll_up_failed))

    async def stop(self) -> None:
        """Stop the roll-ups, and add what is left (Redis away: it is lost, and logged)."""
        await self._roll_ups.stop()
        try:
            async with asyncio.timeout(STOP_TIMEOUT_S):
                await self.roll_up()
        except (*REDIS_TROUBLE, TimeoutError) as e:
            log.warning("tally.lost", error=str(e) or type(e).__name__)


def _new_minute() -> dict[str, Any]:
    """A minute's counts (``lua/include/tally.lua``): by status, by the two latency buckets, by model."""
    return {"s": {}, "t": {}, "c": {}, "m": {}}


def _add(counts: dict[str, int], key: str, n: int) -> None:
    counts[key] = counts.get(key, 0) + n


def _merge(into: list[Any], row: list[Any]) -> None:
    """Add a row of counts whose last item is a cost or False."""
    for i in range(len(row) - 1):
        into[i] += row[i]
    if row[-1] is not False:
        into[-1] = (into[-1] or 0.0) + row[-1]


def _roll_up_failed(e: BaseException) -> None:
    log.debug("tally.roll_up_failed", error=str(e))
