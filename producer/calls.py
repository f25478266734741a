"""The producer's Redis calls, without the I/O: its settings, its Lua scripts and their arguments.

``Producer`` and ``SyncProducer`` send what this module builds, so both behave the same.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from producer.contract import (
    ARQ_JOB_KEY_PREFIX,
    ARQ_RETRY_KEY_PREFIX,
    CANCEL_CHANNEL,
    DEFAULT_MAX_PAYLOAD_BYTES,
    DEFAULT_REDIS_URL,
    DEFAULT_RESULT_TTL_S,
    FAILED_JOB_KEY_PREFIX,
    FAILED_SET,
    QUEUE_NAME,
    RESULT_KEY_PREFIX,
    STREAM_MAXLEN,
    WAKE_CHANNEL,
    JobResult,
    done_channel,
    dumps,
    encode_job,
    queued_doc,
    result_key,
    stream_key,
)
from producer.env import env_int, env_redis_url
from producer.validation import InvalidJobError, PromptJob

__all__ = [
    "CANCEL_LUA",
    "RETRY_LUA",
    "SUBMIT_CHUNK",
    "SUBMIT_LUA",
    "SUBMIT_MANY_LUA",
    "Calls",
    "Cancellation",
    "ProducerConfig",
    "RetryRefusedError",
]

# Writes the queued result document, arq's job record and the queue entry together, unless the id
# is already known (queued, running, or finished and not yet expired): then it writes nothing.
# KEYS: result document, arq job record, queue.
# ARGV: job id, job record, queue score (ms), queued document, time to live of both keys (ms), and
# the channel to wake idle workers on.
SUBMIT_LUA = """
if redis.call('EXISTS', KEYS[1], KEYS[2]) > 0 then return 0 end
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[5])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
redis.call('SET', KEYS[1], ARGV[4], 'PX', ARGV[5])
redis.call('PUBLISH', ARGV[6], '1')
return 1
"""

# Puts a failed job back in the queue, if it is still failed and still unqueued (a second retry of
# the same id finds it queued and does nothing).
# KEYS: result document, kept job record, arq job record, arq try counter, queue, failed set.
# ARGV: job id, job record, queue score (ms), queued document, time to live (ms), wake channel.
RETRY_LUA = """
local current = redis.call('GET', KEYS[1])
if not current then return 'unknown' end
if cjson.decode(current)['status'] ~= 'failed' then return 'not_failed' end
if redis.call('EXISTS', KEYS[3]) == 1 then return 'not_failed' end
redis.call('SET', KEYS[3], ARGV[2], 'PX', ARGV[5])
redis.call('DEL', KEYS[2], KEYS[4])
redis.call('ZADD', KEYS[5], ARGV[3], ARGV[1])
redis.call('ZREM', KEYS[6], ARGV[1])
redis.call('SET', KEYS[1], ARGV[4], 'PX', ARGV[5])
redis.call('PUBLISH', ARGV[6], '1')
return 'ok'
"""

# submit_many's script: one call enqueues a whole chunk, with the same checks as SUBMIT_LUA.
# KEYS: queue. ARGV: queue score (ms); time to live (ms); wake channel; result key prefix; job record
# key prefix; the chunk: for each job its id, its job record and its queued document, every field
# ended by a newline (none can hold one: ids are checked, JSON escapes it). One argument for the
# whole chunk keeps the client's packing cheap. (The per-job keys are built here, so promptq needs
# a single Redis, not Redis Cluster.) Returns how many jobs were new.
SUBMIT_MANY_LUA = """
local chunk, at, added = ARGV[6], 1, 0
while at <= #chunk do
  local e1 = string.find(chunk, '\\n', at, true)
  local e2 = string.find(chunk, '\\n', e1 + 1, true)
  local e3 = string.find(chunk, '\\n', e2 + 1, true)
  local id = string.sub(chunk, at, e1 - 1)
  local doc_key, job_key = ARGV[4] .. id, ARGV[5] .. id
  if redis.call('EXISTS', doc_key, job_key) == 0 then
    redis.call('SET', job_key, string.sub(chunk, e1 + 1, e2 - 1), 'PX', ARGV[2])
    redis.call('ZADD', KEYS[1], ARGV[1], id)
    redis.call('SET', doc_key, string.sub(chunk, e2 + 1, e3 - 1), 'PX', ARGV[2])
    added = added + 1
  end
  at = e3 + 1
end
if added > 0 then redis.call('PUBLISH', ARGV[3], '1') end
return added
"""

# Marks a job cancelled, if its document is still the one read (else returns 0: read again).
# A queued job leaves the queue (it never calls the API); a running one is named on the cancel
# channel, where the worker running it stops its request. Either way the job's stream gets its
# done entry and waiters hear of it.
# KEYS: result document, arq job record, arq try counter, queue, stream.
# ARGV: the document as read, the cancelled document, job id, '1' if it was running, done channel,
# cancel channel, stream length.
CANCEL_LUA = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
if ARGV[4] == '1' then
  redis.call('PUBLISH', ARGV[6], ARGV[3])
else
  redis.call('DEL', KEYS[2], KEYS[3])
  redis.call('ZREM', KEYS[4], ARGV[3])
end
redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[7], '*', 'type', 'done', 'status', 'cancelled')
local ttl = redis.call('PTTL', KEYS[1])
if ttl > 0 then redis.call('PEXPIRE', KEYS[5], ttl) end
redis.call('PUBLISH', ARGV[5], ARGV[2])
return 1
"""

SUBMIT_CHUNK = 1_000
"""Jobs sent in one pipelined round trip by ``submit_many``."""
MIN_QUEUED_TTL_S = 86_400
"""A queued job and its document live at least this long, however short the result TTL."""

Call = tuple[list[str], list[str]]


def _queued(job_id: str, model: str | None, metadata: Any, now_s: float) -> str:
    """The document a job has while it waits in the queue (JSON)."""
    return queued_doc(job_id, model, metadata, round(now_s, 3))


@dataclass(frozen=True, slots=True)
class Cancellation:
    """What ``cancel`` did: ``cancelled`` is False when the job had already finished (``result``
    says how) or is unknown (``result`` is None)."""

    job_id: str
    cancelled: bool
    result: JobResult | None

    @property
    def message(self) -> str:
        if self.cancelled:
            return f"job {self.job_id!r} cancelled"
        if self.result is None:
            return f"no job {self.job_id!r} (never submitted, or its result expired): nothing to cancel"
        return f"job {self.job_id!r} already {self.result.status}: nothing to cancel"


class RetryRefusedError(ValueError):
    """``retry`` was asked for a job that is not failed, or whose request is no longer kept."""


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


class Calls:
    """Validation, and the arguments of each script, for one producer's settings."""

    def __init__(self, config: ProducerConfig) -> None:
        self.config = config
        self.queued_ttl_ms = max(config.result_ttl_s, MIN_QUEUED_TTL_S) * 1000

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

    def chunks(self, jobs: list[PromptJob]) -> Iterator[Call]:
        """``SUBMIT_MANY_LUA``'s arguments, ``SUBMIT_CHUNK`` jobs at a time (one round trip each).

        Re-sending a chunk is safe: the script writes nothing for an id it already knows.
        """
        now_s = time.time()
        now_ms = int(now_s * 1000)
        head = [str(now_ms), str(self.queued_ttl_ms), WAKE_CHANNEL, RESULT_KEY_PREFIX, ARQ_JOB_KEY_PREFIX]
        for start in range(0, len(jobs), SUBMIT_CHUNK):
            fields: list[str] = []
            for job in jobs[start : start + SUBMIT_CHUNK]:
                fields += (
                    job.job_id,
                    encode_job(job.payload_json, now_ms),
                    _queued(job.job_id, job.model, job.metadata, now_s),
                )
            fields.append("")  # the last field ends with a newline too
            yield [QUEUE_NAME], [*head, "\n".join(fields)]

    def submit(self, job: PromptJob, now_s: float) -> Call:
        now_ms = int(now_s * 1000)
        keys = [result_key(job.job_id), ARQ_JOB_KEY_PREFIX + job.job_id, QUEUE_NAME]
        args = [
            job.job_id,
            encode_job(job.payload_json, now_ms),
            str(now_ms),
            _queued(job.job_id, job.model, job.metadata, now_s),
            str(self.queued_ttl_ms),
            WAKE_CHANNEL,
        ]
        return keys, args

    @staticmethod
    def cancel(job_id: str, doc: bytes | None, now_s: float) -> tuple[Call, JobResult] | Cancellation:
        """The cancel script's arguments for the document as read, with the cancelled document they
        write; or the answer if there is nothing to cancel."""
        current = None if doc is None else JobResult.from_json(doc)
        if current is None or current.done:
            return Cancellation(job_id, cancelled=False, result=current)
        cancelled = dataclasses.replace(current, status="cancelled", finished_at=round(now_s, 3))
        keys = [result_key(job_id), ARQ_JOB_KEY_PREFIX + job_id, ARQ_RETRY_KEY_PREFIX + job_id, QUEUE_NAME]
        args = [
            doc.decode() if isinstance(doc, bytes) else str(doc),
            cancelled.to_json(),
            job_id,
            "1" if current.status == "running" else "0",
            done_channel(job_id),
            CANCEL_CHANNEL,
            str(STREAM_MAXLEN),
        ]
        return ([*keys, stream_key(job_id)], args), cancelled

    @staticmethod
    def retry_reads(job_id: str) -> list[str]:
        """The keys ``retry`` reads first: the result document and the kept job record."""
        return [result_key(job_id), FAILED_JOB_KEY_PREFIX + job_id]

    def retry(self, job_id: str, doc: bytes | None, record: bytes | None, now_s: float) -> Call:
        """The retry script's arguments; :class:`RetryRefusedError` when the job cannot be retried."""
        if doc is None:
            raise RetryRefusedError(f"job {job_id!r} is unknown or its result has expired")
        failed = JobResult.from_json(doc)
        if failed.status != "failed":
            raise RetryRefusedError(f"job {job_id!r} is {failed.status}, not failed")
        if record is None:
            raise RetryRefusedError(f"job {job_id!r}: its request is no longer kept (it expires with the result)")
        now_ms = int(now_s * 1000)
        fresh = json.loads(record)
        fresh["et"] = now_ms
        keys = [
            *self.retry_reads(job_id),
            ARQ_JOB_KEY_PREFIX + job_id,
            ARQ_RETRY_KEY_PREFIX + job_id,
            QUEUE_NAME,
            FAILED_SET,
        ]
        args = [
            job_id,
            dumps(fresh),
            str(now_ms),
            _queued(job_id, failed.model, failed.metadata, now_s),
            str(self.queued_ttl_ms),
            WAKE_CHANNEL,
        ]
        return keys, args
