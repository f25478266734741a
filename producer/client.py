"""Producer (asyncio) and SyncProducer (Django, Flask, scripts): submit jobs, read and wait for results.

Neither imports openai or the worker: a web app needs only Redis and this package.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self, cast

import redis
import redis.asyncio
from redis.exceptions import NoScriptError

from producer.contract import (
    ARQ_JOB_KEY_PREFIX,
    DEFAULT_MAX_PAYLOAD_BYTES,
    DEFAULT_REDIS_URL,
    DEFAULT_RESULT_TTL_S,
    QUEUE_NAME,
    JobResult,
    encode_job,
    result_key,
)
from producer.env import env_int, env_redis_url
from producer.validation import InvalidJobError, PromptJob

__all__ = ["JobNotFoundError", "Producer", "ProducerConfig", "SyncProducer"]

# Writes the queued result document, arq's job record and the queue entry together, unless the id
# is already known (queued, running, or finished and not yet expired): then it writes nothing.
# KEYS: result document, arq job record, queue.
# ARGV: job id, job record, queue score (ms), queued document, time to live of both keys (ms).
SUBMIT_LUA = """
if redis.call('EXISTS', KEYS[1], KEYS[2]) > 0 then return 0 end
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[5])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
redis.call('SET', KEYS[1], ARGV[4], 'PX', ARGV[5])
return 1
"""
SUBMIT_CHUNK = 1_000
"""Jobs sent in one pipelined round trip by ``submit_many``."""
MIN_QUEUED_TTL_S = 86_400
"""A queued job and its document live at least this long, however short the result TTL."""
DEFAULT_WAIT_TIMEOUT_S = 60.0


class JobNotFoundError(LookupError):
    """No result document exists for this job id (never submitted, or expired)."""


@dataclass(frozen=True, slots=True)
class ProducerConfig:
    redis_url: str = DEFAULT_REDIS_URL
    result_ttl_s: int = DEFAULT_RESULT_TTL_S
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ProducerConfig:
        """``REDIS_URL``, ``PROMPTQ_RESULT_TTL_S`` and ``PROMPTQ_MAX_PAYLOAD_BYTES``."""
        env = os.environ if env is None else env
        return cls(
            redis_url=env_redis_url(env, DEFAULT_REDIS_URL),
            result_ttl_s=env_int(env, "PROMPTQ_RESULT_TTL_S", DEFAULT_RESULT_TTL_S),
            max_payload_bytes=env_int(env, "PROMPTQ_MAX_PAYLOAD_BYTES", DEFAULT_MAX_PAYLOAD_BYTES),
        )


SubmitCall = tuple[list[str], list[str]]


class _Jobs:
    """What both producers share: validation and the submit script's arguments."""

    def __init__(self, config: ProducerConfig) -> None:
        self.config = config

    def build(self, prompt: str | None = None, **kwargs: Any) -> PromptJob:
        return PromptJob.build(prompt, max_payload_bytes=self.config.max_payload_bytes, **kwargs)

    def build_many(self, items: Iterable[str | Mapping[str, Any]]) -> list[PromptJob]:
        jobs = []
        for i, item in enumerate(items):
            try:
                if isinstance(item, str):
                    jobs.append(self.build(item))
                elif isinstance(item, Mapping):
                    jobs.append(self.build(**item))
                else:
                    raise InvalidJobError("must be a prompt string or a dict of submit arguments")
            except (InvalidJobError, TypeError) as e:
                raise InvalidJobError(f"item {i}: {e}") from None
        return jobs

    def chunks(self, jobs: list[PromptJob]) -> Iterator[list[SubmitCall]]:
        """The submit script's arguments, ``SUBMIT_CHUNK`` jobs at a time (one round trip each).

        Re-sending a chunk is safe: the script writes nothing for an id it already knows.
        """
        now_s = time.time()
        for start in range(0, len(jobs), SUBMIT_CHUNK):
            yield [self.submit_call(job, now_s) for job in jobs[start : start + SUBMIT_CHUNK]]

    def submit_call(self, job: PromptJob, now_s: float) -> SubmitCall:
        now_ms = int(now_s * 1000)
        queued = JobResult(
            job_id=job.job_id, status="queued", model=job.model, metadata=job.metadata, enqueued_at=round(now_s, 3)
        )
        ttl_ms = max(self.config.result_ttl_s, MIN_QUEUED_TTL_S) * 1000
        keys = [result_key(job.job_id), ARQ_JOB_KEY_PREFIX + job.job_id, QUEUE_NAME]
        args = [job.job_id, encode_job(job.payload_json, now_ms), str(now_ms), queued.to_json(), str(ttl_ms)]
        return keys, args


class _Waiter:
    """The schedule of one ``wait``: polls at 5 ms, growing to 100 ms, until the deadline.

    (The roadmap replaces polling by a notification; the contract of ``wait`` stays.)
    """

    def __init__(self, job_id: str, timeout_s: float | None) -> None:
        self.job_id, self.timeout_s = job_id, timeout_s
        self.deadline = None if timeout_s is None else time.monotonic() + timeout_s
        self.delay_s = 0.005

    def sleep_s(self, result: JobResult | None) -> float | None:
        """None when ``result`` is final; else how long to sleep before the next read."""
        if result is None:
            raise JobNotFoundError(f"no job {self.job_id!r} (never submitted, or its result expired)")
        if result.done:
            return None
        delay_s, self.delay_s = self.delay_s, min(self.delay_s * 1.5, 0.1)
        if self.deadline is None:
            return delay_s
        left_s = self.deadline - time.monotonic()
        if left_s <= 0:
            raise TimeoutError(f"job {self.job_id!r} still {result.status} after {self.timeout_s} s")
        return min(delay_s, left_s)


def _config(redis_url: str | None, config: ProducerConfig | None) -> ProducerConfig:
    config = config or ProducerConfig.from_env()
    if redis_url is not None:
        config = ProducerConfig(redis_url, config.result_ttl_s, config.max_payload_bytes)
    return config


def _parse(raw: bytes | None) -> JobResult | None:
    return None if raw is None else JobResult.from_json(raw)


class Producer:
    """Submit prompt jobs and read their results, from asyncio code (FastAPI, scripts).

    ``Producer()`` reads ``REDIS_URL`` (default ``redis://localhost:6379/0``); pass ``redis_url`` or a
    ready ``redis.asyncio.Redis`` client to override. Use it as ``async with Producer() as p:``.
    """

    def __init__(
        self,
        redis_url: str | None = None,
        *,
        config: ProducerConfig | None = None,
        client: redis.asyncio.Redis | None = None,
    ) -> None:
        self._jobs = _Jobs(_config(redis_url, config))
        self._owns_client = client is None
        self.redis = client if client is not None else redis.asyncio.Redis.from_url(self.config.redis_url)
        self._submit = self.redis.register_script(SUBMIT_LUA)

    @property
    def config(self) -> ProducerConfig:
        return self._jobs.config

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._owns_client:
            await self.redis.aclose()

    async def submit(self, prompt: str | None = None, **kwargs: Any) -> str:
        """Validate and enqueue one job; return its id.

        Keyword arguments: ``messages`` (instead of ``prompt``), ``model``, ``job_id`` (idempotent:
        an id already queued, running or finished is returned as is, nothing enqueued), ``metadata``,
        and Chat Completions parameters (``temperature``, ``max_tokens``, ...).
        """
        job = self._jobs.build(prompt, **kwargs)
        keys, args = self._jobs.submit_call(job, time.time())
        await self._submit(keys=keys, args=args)
        return job.job_id

    async def submit_many(self, items: Iterable[str | Mapping[str, Any]]) -> list[str]:
        """Validate every item, then enqueue them all in pipelined round trips; return the ids in order.

        An item is a prompt string or a dict of :meth:`submit` arguments. One bad item refuses the
        whole call before anything is written.
        """
        jobs = self._jobs.build_many(items)
        for calls in self._jobs.chunks(jobs):
            for _ in range(2):  # a second time only if Redis had lost the script (restart, SCRIPT FLUSH)
                async with self.redis.pipeline(transaction=False) as pipe:
                    for keys, args in calls:
                        pipe.evalsha(self._submit.sha, len(keys), *keys, *args)
                    try:
                        await pipe.execute()
                        break
                    except NoScriptError:
                        await self.redis.script_load(SUBMIT_LUA)
        return [job.job_id for job in jobs]

    async def get(self, job_id: str) -> JobResult | None:
        """The job's result document now, or None for an unknown (or expired) id."""
        return _parse(await self.redis.get(result_key(job_id)))

    async def wait(self, job_id: str, timeout: float | None = DEFAULT_WAIT_TIMEOUT_S) -> JobResult:  # noqa: ASYNC109
        """Return the result once its status is terminal; raise ``TimeoutError`` after ``timeout`` s."""
        waiter = _Waiter(job_id, timeout)
        while (delay_s := waiter.sleep_s(result := await self.get(job_id))) is not None:  # noqa: ASYNC110
            await asyncio.sleep(delay_s)
        assert result is not None
        return result


class SyncProducer:
    """The same API as :class:`Producer`, blocking, for Django and Flask views and plain scripts.

    Thread-safe: one instance (one connection pool) can serve every request of a process.
    """

    def __init__(
        self,
        redis_url: str | None = None,
        *,
        config: ProducerConfig | None = None,
        client: redis.Redis | None = None,
    ) -> None:
        self._jobs = _Jobs(_config(redis_url, config))
        self._owns_client = client is None
        self.redis = client if client is not None else redis.Redis.from_url(self.config.redis_url)
        self._submit = self.redis.register_script(SUBMIT_LUA)

    @property
    def config(self) -> ProducerConfig:
        return self._jobs.config

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._owns_client:
            self.redis.close()

    def submit(self, prompt: str | None = None, **kwargs: Any) -> str:
        """See :meth:`Producer.submit`."""
        job = self._jobs.build(prompt, **kwargs)
        keys, args = self._jobs.submit_call(job, time.time())
        self._submit(keys=keys, args=args)
        return job.job_id

    def submit_many(self, items: Iterable[str | Mapping[str, Any]]) -> list[str]:
        """See :meth:`Producer.submit_many`."""
        jobs = self._jobs.build_many(items)
        for calls in self._jobs.chunks(jobs):
            for _ in range(2):  # a second time only if Redis had lost the script (restart, SCRIPT FLUSH)
                with self.redis.pipeline(transaction=False) as pipe:
                    for keys, args in calls:
                        pipe.evalsha(self._submit.sha, len(keys), *keys, *args)
                    try:
                        pipe.execute()
                        break
                    except NoScriptError:
                        self.redis.script_load(SUBMIT_LUA)
        return [job.job_id for job in jobs]

    def get(self, job_id: str) -> JobResult | None:
        """See :meth:`Producer.get`."""
        return _parse(cast("bytes | None", self.redis.get(result_key(job_id))))

    def wait(self, job_id: str, timeout: float | None = DEFAULT_WAIT_TIMEOUT_S) -> JobResult:
        """See :meth:`Producer.wait`."""
        waiter = _Waiter(job_id, timeout)
        while (delay_s := waiter.sleep_s(result := self.get(job_id))) is not None:
            time.sleep(delay_s)
        assert result is not None
        return result
