"""Producer (asyncio): submit jobs, read, wait for, stream and cancel results; and what
``SyncProducer`` (``producer.sync_client``) shares with it.

Neither imports openai or the worker: a web app needs only Redis and this package.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from types import TracebackType
from typing import Any, Self

import redis
import redis.asyncio

from producer.calls import (
    DEPTHS_KEYS_MAX,
    Calls,
    Cancellation,
    ProducerConfig,
    QueueDepths,
    RetryRefusedError,
)
from producer.connect import async_client
from producer.contract import FAILED_SET, JobResult, result_key
from producer.errors import (
    EvictionPolicyError,
    NotReplicatedError,
    QueueFullError,
    QueueUnavailableError,
    redis_errors,
)
from producer.guard import read_facts
from producer.notify import FALLBACK_POLL_S, DoneWatcher
from producer.scripts import script
from producer.streams import READ_BLOCK_MS, JobNotFoundError, StreamCursor, StreamEvent

__all__ = [
    "Cancellation",
    "EvictionPolicyError",
    "JobNotFoundError",
    "NotReplicatedError",
    "Producer",
    "ProducerConfig",
    "QueueDepths",
    "QueueFullError",
    "QueueUnavailableError",
    "RetryRefusedError",
    "StreamEvent",
]

CANCEL_ATTEMPTS = 20
"""Times ``cancel`` reads again when the document changes under it (a worker starting the job)."""

DEFAULT_WAIT_TIMEOUT_S = 60.0


class _Waiter:
    """The deadline of one ``wait``; between reads it waits for the job's done message, at most
    ``FALLBACK_POLL_S`` (see ``producer.notify``)."""

    def __init__(self, job_id: str, timeout_s: float | None) -> None:
        self.job_id, self.timeout_s = job_id, timeout_s
        self.deadline = None if timeout_s is None else time.monotonic() + timeout_s

    def sleep_s(self, result: JobResult | None) -> float | None:
        """None when ``result`` is final; else how long to sleep before the next read."""
        if result is None:
            raise JobNotFoundError(f"no job {self.job_id!r} (never submitted, or its result expired)")
        if result.done:
            return None
        delay_s = FALLBACK_POLL_S
        if self.deadline is None:
            return delay_s
        left_s = self.deadline - time.monotonic()
        if left_s <= 0:
            raise TimeoutError(f"job {self.job_id!r} still {result.status} after {self.timeout_s} s")
        return min(delay_s, left_s)


def _config(redis_url: str | None, config: ProducerConfig | None) -> ProducerConfig:
    config = config or ProducerConfig.from_env()
    return config if redis_url is None else config.with_url(redis_url)


def _parse(raw: bytes | None) -> JobResult | None:
    return None if raw is None else JobResult.from_json(raw)


class Producer:
    """Submit prompt jobs and read their results, from asyncio code (FastAPI, scripts).

    ``Producer()`` reads ``REDIS_URL`` (default ``redis://localhost:6379/0``); pass ``redis_url`` or a
    ready ``redis.asyncio.Redis`` client to override. Use it as ``async with Producer() as p:``.
    Every method raises :class:`QueueUnavailableError` when Redis does not answer.
    """

    def __init__(
        self,
        redis_url: str | None = None,
        *,
        config: ProducerConfig | None = None,
        client: redis.asyncio.Redis | None = None,
    ) -> None:
        self._calls = Calls(_config(redis_url, config))
        self._owns_client = client is None
        self.redis = client if client is not None else async_client(self.config.redis_url)
        self._submit = self.redis.register_script(script("submit").source)
        self._submit_many = self.redis.register_script(script("submit_many").source)
        self._retry = self.redis.register_script(script("retry").source)
        self._cancel = self.redis.register_script(script("cancel").source)
        self._depths = self.redis.register_script(script("depths").source)
        self._watcher = DoneWatcher(self.redis)

    @property
    def config(self) -> ProducerConfig:
        return self._calls.config

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._watcher.aclose()
        if self._owns_client:
            await self.redis.aclose()

    async def submit(self, prompt: str | None = None, **kwargs: Any) -> str:
        """Validate and enqueue one job; return its id.

        Keyword arguments: ``messages`` (instead of ``prompt``), ``model``, ``job_id`` (idempotent:
        an id already queued, running or finished is returned as is, nothing enqueued), ``metadata``,
        ``priority`` (0 runs first, 9 last; default 5), ``fairness_key`` (jobs under different keys
        take turns at one priority; default: one shared key), ``stream``, and Chat Completions
        parameters (``temperature``, ``max_tokens``, ...).
        """
        job = self._calls.build(prompt, **kwargs)
        keys, args = self._calls.submit(job, time.time())
        with redis_errors(self.config.redis_url):
            await self._check()
            await self._write(self._submit, keys, args)
        return job.job_id

    async def submit_many(self, items: Iterable[str | Mapping[str, Any]]) -> list[str]:
        """Validate every item, then enqueue them all in pipelined round trips; return the ids in order.

        An item is a prompt string or a dict of :meth:`submit` arguments. One bad item refuses the
        whole call before anything is written.
        """
        jobs = self._calls.build_many(items)
        with redis_errors(self.config.redis_url):
            await self._check()
            sending: asyncio.Task[Any] | None = None
            try:
                for keys, args in self._calls.chunks(jobs):  # encodes a chunk while Redis runs the last
                    if sending is not None:
                        await sending
                    sending = asyncio.ensure_future(self._write(self._submit_many, keys, args))
            finally:
                if sending is not None:
                    await sending
        return [job.job_id for job in jobs]

    async def _write(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        """Run a write script; with ``PROMPTQ_MIN_REPLICAS``, and its WAIT on the same connection."""
        if not self.config.min_replicas:
            return await script(keys=keys, args=args)
        async with self.redis.pipeline(transaction=False) as pipe:
            await script(keys=keys, args=args, client=pipe)
            pipe.wait(self.config.min_replicas, self.config.replica_timeout_ms)
            reply, acked = await pipe.execute()
        self._calls.replicated(int(acked))
        return reply

    async def _check(self) -> None:
        """Once, before the first write: is this Redis safe to write to (``producer.guard``)?"""
        if not self._calls.checked:
            self._calls.check(await read_facts(self.redis))

    async def get(self, job_id: str) -> JobResult | None:
        """The job's result document now, or None for an unknown (or expired) id."""
        with redis_errors(self.config.redis_url):
            return _parse(await self.redis.get(result_key(job_id)))

    async def wait(self, job_id: str, timeout: float | None = DEFAULT_WAIT_TIMEOUT_S) -> JobResult:  # noqa: ASYNC109
        """Return the result once its status is terminal; raise ``TimeoutError`` after ``timeout`` s."""
        waiter = _Waiter(job_id, timeout)
        with redis_errors(self.config.redis_url):
            async with self._watcher.watching(job_id) as done:  # subscribed before the first read
                result = _parse(done.first) if done.read else await self.get(job_id)
                while (delay_s := waiter.sleep_s(result)) is not None:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(delay_s):
                            await done.event.wait()
                    done.event.clear()
                    result = done.final or await self.get(job_id)  # the message carries the document
        assert result is not None
        return result

    async def depths(self) -> QueueDepths:
        """How many jobs wait where, for the whole fleet: ready per priority and fairness key,
        running, deferred for a retry, failed."""
        keys, args = script("depths").bind(keys_max=DEPTHS_KEYS_MAX)
        with redis_errors(self.config.redis_url):
            return QueueDepths.from_reply(await self._depths(keys=keys, args=args))

    async def failed(self, limit: int = 100) -> list[JobResult]:
        """The most recently failed jobs, newest first (those whose result has not expired)."""
        with redis_errors(self.config.redis_url):
            ids = await self.redis.zrevrange(FAILED_SET, 0, _last_index(limit))
            docs = await self.redis.mget([result_key(i.decode()) for i in ids]) if ids else []
        return _failed(docs)

    async def retry(self, job_id: str) -> str:
        """Put a failed job back in the queue (same id, same request, tries counted afresh).

        Raises :class:`RetryRefusedError` (a ``ValueError``) if the job is not failed or its request
        has expired. Retrying an id twice queues it once.
        """
        with redis_errors(self.config.redis_url):
            await self._check()
            doc, record = await self.redis.mget(Calls.retry_reads(job_id))
            keys, args = self._calls.retry(job_id, doc, record, time.time())
            _retried(job_id, await self._write(self._retry, keys, args))
        return job_id

    async def cancel(self, job_id: str) -> Cancellation:
        """Cancel a job: a queued one never calls the API, a running one has its request stopped;
        its status becomes ``cancelled`` and it is not retried. A finished or unknown job is left
        as it is (``Cancellation.cancelled`` is False and its ``message`` says why)."""
        with redis_errors(self.config.redis_url):
            for _ in range(CANCEL_ATTEMPTS):
                doc = await self.redis.get(result_key(job_id))
                call = Calls.cancel(job_id, doc, time.time())
                if isinstance(call, Cancellation):
                    return call
                (keys, args), cancelled = call
                if await self._cancel(keys=keys, args=args):
                    return Cancellation(job_id, cancelled=True, result=cancelled)
        raise RuntimeError(f"job {job_id!r} kept changing while it was being cancelled")

    async def stream(self, job_id: str, after: str = "0") -> AsyncIterator[StreamEvent]:
        """The job's events as they come: ``delta`` (a piece of the answer), ``restart`` (a retry
        begins: drop the text so far) and, last, ``done`` with the final result. Replays what was
        written already; ``after`` (an event's ``id``) resumes behind that event. A job submitted
        without ``stream=True`` yields only its ``done`` event."""
        cursor = StreamCursor(job_id, after)
        with redis_errors(self.config.redis_url):
            while not cursor.finished:
                reply = await self.redis.xread(**cursor.read_args(), block=READ_BLOCK_MS)
                if not reply and (final := cursor.ended(await self.redis.get(cursor.doc_key))) is not None:
                    reply = await self.redis.xread(**cursor.read_args())  # what came meanwhile
                    if not reply:
                        yield cursor.done(None, final)
                        return
                for event in cursor.events(reply):
                    if event.type == "done":
                        event = cursor.done(event, _parse(await self.redis.get(cursor.doc_key)))
                    yield event


def _last_index(limit: int) -> int:
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise ValueError(f"limit must be a positive integer, got {limit!r}")
    return limit - 1


def _failed(docs: Iterable[bytes | None]) -> list[JobResult]:
    return [r for r in map(_parse, docs) if r is not None and r.status == "failed"]


def _retried(job_id: str, outcome: Any) -> None:
    """The retry script's answer; a race lost to another retry or to expiry is refused clearly."""
    if outcome in (b"unknown", "unknown"):
        raise RetryRefusedError(f"job {job_id!r} is unknown or its result has expired")
    if outcome in (b"not_failed", "not_failed"):
        raise RetryRefusedError(f"job {job_id!r} is no longer failed (retried already?)")
