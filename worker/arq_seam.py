"""Every place promptq reaches into arq, in one module: the one that imports arq.

arq's ``Worker`` runs each job (``run_job``: the job record, the try counter, the timeout).
Around it, promptq replaces what its queue does differently, in :class:`PromptqWorker`, a subclass:

- ``main``: the Redis pool (arq's ``ArqRedis`` over at most ``WORKER_CONNECTIONS`` connections), the
  poll loop (a submit or a freed slot wakes it; idle, it polls every ``PROMPTQ_POLL_DELAY_S``), and
  burst mode's end (nothing ready, running or deferred);
- ``_poll_iteration``: the claim (``worker.queue``: as many jobs as free slots, in one script);
- ``finish_job``: nothing; ``run_prompt`` settles every attempt itself, in one script
  (``worker.lifecycle``), so arq's own clean-up (which would put a retry in arq's queue) is skipped;
  ``finish_failed_job``: a job arq could not hand to ``run_prompt`` (its record gone) is let go of;
- ``handle_sig``: SIGTERM and SIGINT drain (:meth:`PromptqWorker.drain`) instead of cancelling;
- ``close``: a Redis that is away does not keep the process up (its calls give up once the grace
  is over).

``arq worker.Settings`` makes arq build a plain ``Worker``; :func:`install` wraps ``Worker.__init__``
so that a worker built with promptq's settings (its ``ctx`` holds ``CTX_CONFIG``) is a
``PromptqWorker`` from its first line on. ``MEMBERS`` lists every member of arq promptq touches with
the signature it was written against: :func:`check` compares them at start-up (and a test does, with
the attributes in ``ATTRIBUTES`` and arq's per-job log lines that ``worker.logs`` filters,
``ARQ_JOB_LINES``), so an arq upgrade fails there, naming the member, not somewhere at run time.
The job record (arq's fields as JSON, never pickle) is read here too.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import json
import logging
import math
import signal
import time
from collections.abc import Callable
from typing import Any, Final, Protocol, Self, cast

import arq
import arq.worker
from arq.connections import ArqRedis
from arq.worker import Worker, func
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import OutOfMemoryError, RedisError

from promptq_core.background import REDIS_TROUBLE
from promptq_core.connect import is_cluster
from promptq_core.contract import (
    ARQ_JOB_KEY_PREFIX,
    ARQ_RETRY_KEY_PREFIX,
    JOB_FUNCTION,
    QueueKeys,
    queue_keys,
    split_arq_id,
)
from promptq_core.scripts import script
from worker.lease import Leases
from worker.logs import ARQ_JOB_LINES, get_logger
from worker.metrics import heartbeat
from worker.queue import JobQueue
from worker.redis_conn import cluster_settings, give_up_at, worker_pool
from worker.settle import Settle

__all__ = [
    "ARQ_JOB_LINES",
    "ATTRIBUTES",
    "CTX_CONFIG",
    "CTX_STATE",
    "CTX_WORKER",
    "MEMBERS",
    "POISON_FUNCTION_ARGS",
    "UNDECODABLE",
    "ArqCluster",
    "PromptqWorker",
    "check",
    "func",
    "install",
    "job_deserializer",
    "job_serializer",
]

log = get_logger("promptq.worker")

SUPPORTED_ARQ: Final = "0.28."
SHUTDOWN_MARGIN_S: Final = 1.0
"""After SIGTERM, Redis calls give up this long after the grace, whatever Redis is doing."""
START_BACKLOG: Final = 200
"""Jobs one worker claims ahead of starting them, at most: a worker with thousands of free slots
claims a few hundred, then more as those begin their calls, so its loop is never so busy starting
jobs that a lease runs out before its renewal (10,000 claimed at once took 18 s to start here)."""
UNPARK_TIMEOUT_S: Final = 2.0
"""A stopping worker waits this long at most to end its parking (else it runs out by itself)."""
FULL_LOG_EVERY_S: Final = 10.0
"""While Redis is full, its warning is logged this often at most."""
CTX_CONFIG: Final = "promptq.config"
"""The key of the worker's ``WorkerConfig`` in arq's ``ctx``: marks a worker as promptq's."""
CTX_STATE: Final = "promptq"
"""The key ``on_startup`` puts the worker's shared state under (``state.WorkerState``)."""
CTX_WORKER: Final = "promptq.worker"
"""The key of the running :class:`PromptqWorker` in ``ctx`` (``on_startup`` refuses to run without it)."""
UNDECODABLE: Final = "promptq.undecodable"
"""The payload key under which the job deserializer hands over a record it could not read."""

MEMBERS: Final[dict[str, str]] = {
    "Worker.__init__": (
        "(self, functions=(), *, queue_name='arq:queue', cron_jobs=None, redis_settings=None, redis_pool=None, "
        "burst=False, on_startup=None, on_shutdown=None, on_job_start=None, on_job_end=None, after_job_end=None, "
        "handle_signals=True, job_completion_wait=0, max_jobs=10, job_timeout=300, keep_result=3600, "
        "keep_result_forever=False, poll_delay=0.5, queue_read_limit=None, max_tries=5, "
        "health_check_interval=3600, health_check_key=None, ctx=None, retry_jobs=True, allow_abort_jobs=False, "
        "max_burst_jobs=-1, job_serializer=None, job_deserializer=None, expires_extra_ms=86400000, "
        "timezone=None, log_results=True)"
    ),
    "Worker.run_job": "(self, job_id, score)",
    "Worker.finish_job": (
        "(self, job_id, finish, result_data, result_timeout_s, keep_result_forever, incr_score, keep_in_progress)"
    ),
    "Worker.finish_failed_job": "(self, job_id, result_data)",
    "Worker.handle_sig": "(self, signum)",
    "Worker.main": "(self)",
    "Worker._poll_iteration": "(self)",
    "Worker._release_sem_dec_counter_on_complete": "(self)",
    "Worker._jobs_started": "(self)",
    "Worker.heart_beat": "(self)",
    "Worker.close": "(self)",
    "ArqRedis.__init__": (
        "(self, pool_or_conn=None, job_serializer=None, job_deserializer=None, "
        "default_queue_name='arq:queue', expires_extra_ms=86400000, **kwargs)"
    ),
    "func": "(coroutine, *, name=None, keep_result=None, timeout=None, keep_result_forever=None, max_tries=None)",
}
"""Each member of arq promptq overrides or calls, with its parameters (names and defaults) in the arq
version promptq supports."""

ATTRIBUTES: Final = (
    "ctx",
    "on_startup",
    "tasks",
    "job_tasks",
    "job_counter",
    "max_jobs",
    "sem",
    "allow_pick_jobs",
    "main_task",
    "burst",
    "max_burst_jobs",
    "poll_delay_s",
    "loop",
    "queue_name",
    "redis_settings",
    "job_serializer",
    "job_deserializer",
    "expires_extra_ms",
    "_pool",
    "_handle_signals",
    "health_check_key",
)
"""The ``Worker`` attributes promptq reads or sets (a test builds a worker and checks each)."""


def check() -> None:
    """Refuse to run on an arq whose members differ from those promptq was written against."""
    if not arq.VERSION.startswith(SUPPORTED_ARQ):
        raise RuntimeError(f"promptq needs arq {SUPPORTED_ARQ}x (pyproject pins it), found arq {arq.VERSION}")
    for name, expected in MEMBERS.items():
        found = parameters(name)
        if found != expected:
            raise RuntimeError(f"promptq: arq's {name} is {found}, not the {expected} promptq was written against")


def parameters(name: str) -> str | None:
    """The parameters of arq's member ``name`` (a key of ``MEMBERS``), names and defaults only."""
    owner, _, attr = name.rpartition(".")
    where: Any = {"Worker": Worker, "ArqRedis": ArqRedis, "": arq.worker}[owner]
    found = getattr(where, attr, None)
    if found is None:
        return None
    sig = inspect.signature(inspect.unwrap(found))
    bare = [p.replace(annotation=inspect.Parameter.empty) for p in sig.parameters.values()]
    return str(sig.replace(parameters=bare, return_annotation=inspect.Signature.empty))


class _State(Protocol):
    """What the loop needs from ``state.WorkerState`` (set by ``on_startup``)."""

    @property
    def queues(self) -> tuple[JobQueue, ...]: ...
    @property
    def settle(self) -> Settle: ...
    @property
    def leases(self) -> Leases: ...
    @property
    def wake_event(self) -> asyncio.Event: ...
    @property
    def listening(self) -> bool: ...
    @property
    def shutdown_grace_s(self) -> float: ...


class PromptqWorker(Worker):
    """arq's worker with promptq's poll, claim, clean-up and shutdown (see the module's docstring)."""

    _state: _State | None = None
    _more = False
    """The last claim left ready jobs behind: a freed slot wakes the loop to claim again."""
    _draining: asyncio.Task[None] | None = None
    _full_logged_s = -math.inf
    _turn = 0
    """The queue the next poll claims from first (``PROMPTQ_QUEUES``, in turn)."""
    _claiming = (0, 0)
    """The slots (all, ordinary) a claim on its way may fill: no handoff takes them meanwhile."""
    _held: list[tuple[QueueKeys, bytes]]
    """Handoffs heard while a claim was on its way, in order: taken once it is done."""
    _started: dict[str, tuple[bytes | None, int]]
    """Per claimed job not yet begun: its record and try, as the claim read and counted them
    (:class:`StartTransaction` hands them to arq's ``run_job``)."""
    _unclaiming: set[asyncio.Task[None]]
    """Tries being given back, for jobs let go of before they began (``close`` waits for them)."""

    @property
    def state(self) -> _State:
        if self._state is None:
            raise RuntimeError("promptq: the worker's state is not set up (on_startup has not run)")
        return self._state

    # -- the loop --------------------------------------------------------------------------------
    async def main(self) -> None:
        if self._pool is None:  # arq's pool, over a bounded one of promptq's (or a cluster client)
            url = self.ctx[CTX_CONFIG].redis_url
            if is_cluster(url):
                cluster = ArqCluster(**cluster_settings(url))  # type: ignore[abstract]
                cluster.started = self._started
                self._pool = cast(ArqRedis, cluster)
            else:
                self._pool = StartingRedis(
                    self._started,
                    worker_pool(url),
                    job_serializer=self.job_serializer,
                    job_deserializer=self.job_deserializer,
                    default_queue_name=self.queue_name,
                    expires_extra_ms=self.expires_extra_ms,
                )
        self.ctx["redis"] = self.pool
        self.ctx[CTX_WORKER] = self
        give_up_at(None)
        self._ordinary: set[str] = set()
        """Running jobs at priorities 1 to 9: at most ``PROMPTQ_MAX_JOBS``; the urgent slots above it
        (arq's ``max_jobs`` counts both) are for priority 0 alone."""
        if self.on_startup:
            await self.on_startup(self.ctx)
        self._state = self.ctx.get(CTX_STATE)
        wake = self.state.wake_event
        while True:
            heartbeat()
            try:
                await self._poll_iteration()
            except OutOfMemoryError as e:  # no claim while Redis is full; the running jobs finish
                if time.monotonic() - self._full_logged_s > FULL_LOG_EVERY_S:
                    log.warning("redis.full", error=str(e), note="no new job until Redis has room")
                    self._full_logged_s = time.monotonic()
            except REDIS_TROUBLE as e:
                log.warning("worker.poll_failed", error=str(e), note="the next poll tries again")
            if self.burst and await self._burst_over():
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll_delay_s):
                    await wake.wait()
            wake.clear()

    async def _burst_over(self) -> bool:
        if 0 <= self.max_burst_jobs <= self._jobs_started() or not await self._pending():
            await self._stop_taking()
            await asyncio.gather(*self.tasks.values())
            return True
        return False

    async def _pending(self) -> bool:
        for queue in self.state.queues:
            if await queue.pending():
                return True
        return False

    async def _poll_iteration(self) -> None:
        if self.allow_pick_jobs:
            queues = self.state.queues
            first, self._turn = self._turn, (self._turn + 1) % len(queues)
            more = False
            for n, queue in enumerate(queues[first:] + queues[:first]):  # in turn, the first moving on each poll
                more = await self._claim_from(queue) or more
                if self._free_slots() <= 0:
                    more = more or n < len(queues) - 1  # the queues not looked at may have jobs
                    break
            self._more = more
        for job_id, task in list(self.tasks.items()):
            if task.done():
                del self.tasks[job_id]
                task.result()  # as arq does: an error in run_job surfaces here
        await self.heart_beat()

    async def _claim_from(self, queue: JobQueue) -> bool:
        """Claim as many of the queue's ready jobs as there are free slots; whether it has more."""
        more = False
        while (free := self._free_slots()) > 0:
            if (room := START_BACKLOG - self._starting()) < free:  # a few hundred at a time
                self.state.leases.on_start = self._backlog_moves
                if room <= 0:
                    return True
                free = room
            ordinary = min(free, self.ctx[CTX_CONFIG].max_jobs - len(self._ordinary))
            self._claiming = (free, ordinary)  # (until its jobs hold their slots: no handoff takes one)
            try:
                claimed = await queue.claim(free, ordinary, park=self.allow_pick_jobs and self.state.listening)
                score = claimed.at_ms  # arq's score: when the job was claimed (and marked running)
                for n, job_id in enumerate(claimed.job_ids):
                    running = self.tasks.get(job_id)
                    if running is not None and not running.done():  # still running here (its lease ran
                        # out in an outage): the lease is ours again; the try the claim counted is not
                        self._give_back(job_id, back=False, tried=claimed.started[job_id][1])
                        continue
                    await self.sem.acquire()  # free while job_counter < max_jobs: no wait
                    self._started[job_id] = claimed.started[job_id]
                    self._start(job_id, score, urgent=n < claimed.urgent)
            finally:
                self._claiming = (0, 0)
                await self._take_held()
                queue.heard = 0  # (from this claim's answer on; those held, taken just now, came before it)
            more = claimed.more
            if len(claimed.job_ids) < free or not claimed.more:
                break
        return more

    async def handed(self, queue: QueueKeys, message: bytes) -> None:
        """A submit handed this parked worker a job (``worker.queue``): leased to it, its try
        counted and its document marked running, as a claim does; it starts here as a claimed job.
        One heard while a claim is on its way waits for it (the claim may fill the slots), and the
        handoffs are taken in the order heard. Without a slot for it (the slots filled since the
        worker parked), or stopping, the worker gives it back (its try, and its place in line, where
        another worker takes it) and ends its parking in that queue until its next idle claim."""
        if self._claiming != (0, 0) or self._held:
            self._held.append((queue, message))
            return
        await self._take_handed(queue, message)

    async def _take_held(self) -> None:
        """The handoffs heard during a claim, now that it is done; then claim again at once, since
        the claim renewed the parking with the slots it saw before them."""
        held, self._held = self._held, []
        for queue, message in held:
            await self._take_handed(queue, message)
        if held and self._state is not None:
            self._state.wake_event.set()

    async def _take_handed(self, queue: QueueKeys, message: bytes) -> None:
        served = self._served(queue)
        if served is not None:
            served.heard += 1  # (its slot no longer held for it by the claim: see claim.lua)
        head, _, record = message.partition(b"\n")
        at_ms, urgent, own_id = head.decode().split(" ", 2)
        job_id = queue.arq_id(own_id)
        running = self.tasks.get(job_id)
        if running is not None and not running.done():  # (an id run here before, its result expired)
            self._give_back(job_id, back=False)
            return
        ordinary_room = len(self._ordinary) < self.ctx[CTX_CONFIG].max_jobs
        room = self._free_slots() > 0 and (urgent == "1" or ordinary_room) and not self.sem.locked()
        if not (self.allow_pick_jobs and room and self._state is not None):
            self._give_back(job_id, back=True, unpark=served)
            return
        await self.sem.acquire()  # (not locked, checked above: it returns at once, the listener never waits)
        self._started[job_id] = (record or None, 1)
        self._start(job_id, int(at_ms), urgent=urgent == "1")

    def _served(self, keys: QueueKeys) -> JobQueue | None:
        """The worker's claims in that queue."""
        return next((q for q in self._state.queues if q.keys == keys), None) if self._state is not None else None

    def _give_back(self, job_id: str, *, back: bool, tried: int = 1, unpark: JobQueue | None = None) -> None:
        """Give back, in the background, the try ``tried`` counted for a job that does not begin
        here (``_unclaim``: a handoff counts the first); ``unpark``: and end the parking there."""
        giving = self.loop.create_task(self._unclaim(job_id, tried, back=back, unpark=unpark))
        self._unclaiming.add(giving)
        giving.add_done_callback(self._unclaiming.discard)

    def _starting(self) -> int:
        """Jobs claimed here whose attempt has not begun yet."""
        return len(self.state.leases.starting)

    def _backlog_moves(self) -> None:
        """A claimed job began its call; when the jobs still starting are few again, claim more."""
        if self._starting() <= START_BACKLOG // 2 and self._state is not None:
            self._state.leases.on_start = None
            self._state.wake_event.set()

    def _free_slots(self) -> int:
        free = self.max_jobs - self.job_counter
        if self.burst and self.max_burst_jobs >= 0:
            free = min(free, self.max_burst_jobs - self._jobs_started())
        return free

    def _start(self, job_id: str, score: int, urgent: bool) -> None:
        """Run a claimed job as arq's own ``start_jobs`` would (its slot taken already)."""
        self.job_counter += 1
        self.state.leases.claimed(job_id)  # renewed from now on
        if not urgent:
            self._ordinary.add(job_id)
        task = self.loop.create_task(self.run_job(job_id, score))
        task.add_done_callback(functools.partial(self._slot_freed, job_id))
        self.tasks[job_id] = task

    def _slot_freed(self, job_id: str, task: asyncio.Task[Any]) -> None:
        if self.tasks.get(job_id, task) is task:  # (else a later claim of the job runs it now)
            self._ordinary.discard(job_id)
            if self._state is not None:
                self._state.leases.let_go(job_id)
            unbegun = self._started.pop(job_id, None)
            if unbegun is not None:  # cancelled before it began (a shutdown): its try back, back in line
                self._give_back(job_id, back=True, tried=unbegun[1])
        self._release_sem_dec_counter_on_complete()  # arq's own bookkeeping
        if self._more and self._state is not None:
            self._state.wake_event.set()  # jobs may be waiting: claim again now, not at the next poll

    async def _unclaim(self, job_id: str, tried: int, *, back: bool, unpark: JobQueue | None = None) -> None:
        """Give back the try the claim counted for a job whose attempt did not begin here."""
        try:
            if unpark is not None:
                await unpark.unpark()
            queue, own_id = split_arq_id(job_id)
            await self.state.settle.unclaim(queue_keys(queue), own_id, tried, back=back)
        except REDIS_TROUBLE as e:  # the try stays spent; the job runs again after its lease
            log.warning("job.unclaim_failed", job_id=job_id, error=str(e), note="its try stays counted")

    # -- after a job ---------------------------------------------------------------------------
    async def finish_job(
        self,
        job_id: str,
        finish: bool,
        result_data: bytes | None,
        result_timeout_s: float | None,
        keep_result_forever: bool,
        incr_score: int | None,
        keep_in_progress: float | None,
    ) -> None:
        """Nothing: ``run_prompt`` has settled the attempt (``worker.lifecycle``). An attempt it could
        not settle (Redis away past every retry; arq's own timeout, out of reach above promptq's)
        leaves the job leased, and it runs again once its lease runs out."""

    async def finish_failed_job(self, job_id: str, result_data: bytes | None) -> None:
        """A job arq could not hand to ``run_prompt`` (its record gone, say): let go of it."""
        try:
            queue, own_id = split_arq_id(job_id)
            await self.state.settle.ack(queue_keys(queue), own_id)
        except REDIS_TROUBLE as e:  # Redis away past every retry: the job comes back after its lease
            log.warning("job.ack_failed", job_id=job_id, error=str(e), note="it runs again after its lease")

    # -- shutdown -------------------------------------------------------------------------------
    def handle_sig(self, signum: signal.Signals) -> None:
        if signum not in (signal.SIGTERM, signal.SIGINT):
            super().handle_sig(signum)  # arq's close() of a worker without signal handling
            return
        if self._draining is not None:  # a second signal: the first drain is under way
            log.info("worker.draining", signal=signal.Signals(signum).name, note="already draining")
            return
        grace_s = self._state.shutdown_grace_s if self._state is not None else 0.0
        self._draining = self.loop.create_task(self.drain(grace_s, signal.Signals(signum).name))

    async def drain(self, grace_s: float, reason: str = "shutdown") -> None:
        """Take no new job, give the running ones ``grace_s``, interrupt the rest (``jobs.run_prompt``
        puts them back in line without spending a try), then end the loop."""
        if self.main_task is not None:
            self.main_task.cancel()  # no further poll; close() then waits for the running jobs
        give_up_at(self.loop.time() + grace_s + SHUTDOWN_MARGIN_S)  # Redis away: stop all the same
        await self._stop_taking()
        log.info("worker.draining", reason=reason, running=len(self._running()), grace_s=grace_s)
        if running := self._running():
            await asyncio.wait(running, timeout=grace_s)
        interrupted: set[str] = set()
        while running := self._running():  # past the grace: interrupt each call, including any that starts now
            fresh = [(job_id, task) for job_id, task in self.job_tasks.items() if job_id not in interrupted]
            if fresh:
                # A task created this very moment has not run yet; cancelled now, it would end before
                # run_prompt could put its job back. One turn of the loop lets it reach its first await.
                await asyncio.sleep(0)
                for job_id, task in fresh:
                    interrupted.add(job_id)
                    task.cancel()
            await asyncio.wait(running, timeout=0.05)
        give_up_at(self.loop.time())  # what is left to say to Redis is tried once
        log.info("worker.drained", reason=reason, interrupted=len(interrupted))

    async def _stop_taking(self) -> None:
        """No claim, and no submit hands this worker a job from now on (one handed meanwhile is
        given back)."""
        self.allow_pick_jobs = False
        await self.unpark()

    async def unpark(self) -> None:
        """End the worker's parking in every queue at once, waiting ``UNPARK_TIMEOUT_S`` at most
        (Redis away: the parking runs out by itself)."""
        if self._state is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(UNPARK_TIMEOUT_S):
                    await asyncio.gather(*(q.unpark() for q in self._state.queues), return_exceptions=True)

    async def close(self) -> None:
        """arq's close, where a Redis that is away ends nothing: the jobs are let go of (those Redis
        did not hear of stay leased and run again after their lease), the health key is left to
        expire, and the clients close."""
        if not self._handle_signals:
            self.handle_sig(signal.SIGUSR1)
        if not self._pool:
            return
        await self._stop_taking()
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        while self._unclaiming:  # (a give-back may start while another is awaited)
            await asyncio.gather(*self._unclaiming, return_exceptions=True)
        with contextlib.suppress(RedisError, OSError):
            await self.pool.delete(self.health_check_key)
        if self.on_shutdown:
            await self.on_shutdown(self.ctx)
        while self._unclaiming:  # (one a handoff heard until the listener stopped)
            await asyncio.gather(*self._unclaiming, return_exceptions=True)
        await self.pool.aclose(close_connection_pool=True)  # (the pool is promptq's own)
        self._pool = None

    def _running(self) -> list[asyncio.Task[Any]]:
        return [t for t in self.tasks.values() if not t.done()]


class StartTransaction:
    """arq's start of a job: ``run_job`` reads the job's record and counts its try (``GET``, ``INCR``
    and ``EXPIRE`` in one transaction). The claim that handed the job out did both in its own step
    (``worker/lua/claim.lua``), so the transaction is answered from what it returned, with no call;
    any other transaction goes to Redis as arq wrote it."""

    __slots__ = ("commands", "real", "started")

    def __init__(self, started: dict[str, tuple[bytes | None, int]], real: Callable[[], Any]) -> None:
        self.started = started
        self.real = real
        self.commands: list[tuple[str, tuple[Any, ...]]] = []

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.commands = []

    def get(self, name: str) -> Self:
        self.commands.append(("get", (name,)))
        return self

    def incr(self, name: str, amount: int = 1) -> Self:
        self.commands.append(("incr", (name, amount)))
        return self

    def expire(self, name: str, time: int) -> Self:
        self.commands.append(("expire", (name, time)))
        return self

    def zrem(self, name: str, *values: str) -> Self:
        self.commands.append(("zrem", (name, *values)))
        return self

    async def execute(self) -> list[Any]:
        commands, self.commands = self.commands, []
        if [c for c, _ in commands] == ["get", "incr", "expire"]:
            job_id = commands[0][1][0].removeprefix(ARQ_JOB_KEY_PREFIX)
            started = self.started.pop(job_id, None)
            if started is not None and commands[1][1][0] == ARQ_RETRY_KEY_PREFIX + job_id:
                record, tries = started
                return [record, tries, True]
        async with self.real() as pipe:
            for name, args in commands:
                getattr(pipe, name)(*args)
            replies: list[Any] = await pipe.execute()
        return replies


class StartingRedis(ArqRedis):
    """The worker's Redis as arq uses it, its start of a job answered by :class:`StartTransaction`."""

    def __init__(self, started: dict[str, tuple[bytes | None, int]], *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.started = started

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Any:
        if not transaction:
            return super().pipeline(transaction, shard_hint)
        return StartTransaction(self.started, functools.partial(super().pipeline, True, shard_hint))


class ArqCluster(RedisCluster):
    """The worker's Redis on a Redis Cluster, as arq uses it: the commands are the cluster
    client's; a transaction (arq's ``pipeline(transaction=True)`` when a job starts: its record read,
    its try counted) runs as one script on the slot of its keys (:class:`SlotTransaction`), since
    redis-py's cluster client runs no ``MULTI``."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.atomic = cast(Any, self).register_script(script("atomic").source)
        self.started: dict[str, tuple[bytes | None, int]] = {}

    def pipeline(self, transaction: Any = None, shard_hint: Any = None) -> Any:
        if not transaction:
            return super().pipeline()
        return StartTransaction(self.started, functools.partial(SlotTransaction, self))

    async def aclose(self, close_connection_pool: bool | None = None) -> None:  # (arq passes the argument)
        await super().aclose()


class SlotTransaction:
    """The commands of one arq transaction, gathered, then run together (``worker/lua/atomic.lua``)."""

    def __init__(self, client: ArqCluster) -> None:
        self.client = client
        self.keys: list[str] = []
        self.args: list[str | int] = []

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.keys, self.args = [], []

    def _add(self, command: str, key: str, *args: str | int) -> Self:
        self.keys.append(key)
        self.args += [command, len(args), *args]
        return self

    def get(self, name: str) -> Self:
        return self._add("GET", name)

    def incr(self, name: str, amount: int = 1) -> Self:
        return self._add("INCRBY", name, amount)

    def expire(self, name: str, time: int) -> Self:
        return self._add("EXPIRE", name, int(time))

    def zrem(self, name: str, *values: str) -> Self:
        return self._add("ZREM", name, *values)

    async def execute(self) -> list[Any]:
        keys, args = script("atomic").bind(keys=self.keys, commands=self.args)
        replies: list[Any] = await self.client.atomic(keys=keys, args=args)
        self.keys, self.args = [], []
        return replies


_original_init = Worker.__init__


@functools.wraps(_original_init)
def _init(self: Worker, *args: Any, **kwargs: Any) -> None:
    ctx = kwargs.get("ctx")
    if type(self) is Worker and isinstance(ctx, dict) and CTX_CONFIG in ctx:
        self.__class__ = PromptqWorker  # before arq's __init__: its signal handlers bind promptq's handle_sig
    _original_init(self, *args, **kwargs)
    if isinstance(self, PromptqWorker):
        self._started, self._unclaiming, self._held = {}, set(), []


class QuietJobLines:
    """arq's worker logger, its routine per-job lines (``ARQ_JOB_LINES``) dropped before a record of
    them is made, unless at DEBUG (where ``worker.logs`` redacts them): two records a job cost a few
    per cent of the worker's CPU for lines nobody sees."""

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger

    def __getattr__(self, name: str) -> Any:
        return getattr(self.logger, name)

    def info(self, msg: object, *args: Any, **kwargs: Any) -> None:
        if msg in ARQ_JOB_LINES and not self.logger.isEnabledFor(logging.DEBUG):
            return
        self.logger.info(msg, *args, **kwargs)


def install() -> None:
    """Check arq, and make every ``Worker`` built with promptq's settings a :class:`PromptqWorker`
    (and arq's worker logger a :class:`QuietJobLines`)."""
    check()
    if Worker.__init__ is not _init:
        Worker.__init__ = _init  # type: ignore[method-assign]
    if not isinstance(arq.worker.logger, QuietJobLines):
        arq.worker.logger = cast(logging.Logger, QuietJobLines(arq.worker.logger))


# -- the job record ---------------------------------------------------------------------------------
POISON_FUNCTION_ARGS: Final[dict[str, Any]] = {"t": None, "f": JOB_FUNCTION, "k": {}, "et": 0}


def job_serializer(obj: Any) -> bytes:
    """arq's job and failure records as JSON; what JSON cannot hold is written as its repr."""
    return json.dumps(obj, separators=(",", ":"), default=repr).encode()


def job_deserializer(raw: bytes) -> Any:
    """arq's job records (``{"t", "f", "a", "k", "et"}``) from JSON. A record that cannot be read
    still reaches ``run_prompt``, which fails the job with a clear error instead of leaving its
    document queued."""
    try:
        record = json.loads(raw)
    except ValueError as e:
        return _poison(f"job record is not JSON: {e}")
    if not isinstance(record, dict) or not {"f", "a", "k", "et"} <= record.keys():
        return _poison("job record is not an arq job object (f, a, k, et)")
    if record["f"] != JOB_FUNCTION or not isinstance(record["a"], list) or len(record["a"]) != 1:
        return _poison(f"job record is not a promptq job ({JOB_FUNCTION} with one argument)")
    if record["k"] or not isinstance(record["et"], int | float):
        return _poison("job record has keyword arguments or a bad enqueue time")
    record.setdefault("t", None)
    return record


def _poison(reason: str) -> dict[str, Any]:
    return {**POISON_FUNCTION_ARGS, "a": [{UNDECODABLE: reason}]}
