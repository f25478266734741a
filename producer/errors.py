"""Every error the client raises, and redis-py's errors turned into them (each saying where it looked,
the URL's password redacted, and what to do)::

    ConnectionError
    └── QueueUnavailableError      Redis did not answer, or cannot take the job: nothing was written
        ├── QueueFullError         Redis is out of memory (noeviction) and refused the write
        ├── NotReplicatedError     fewer replicas than PROMPTQ_MIN_REPLICAS confirmed the write
        └── EvictionPolicyError    Redis may evict keys: promptq refuses to write there
    LookupError
    └── JobNotFoundError           no such job (never submitted, or its result expired)
    ValueError
    ├── RetryRefusedError          retry() of a job that is not failed, or whose request is gone
    ├── JobConflictError           a job id already known with another request
    ├── InvalidJobError            (promptq_core.validation) a job that fails its checks
    └── ConfigError                (promptq_core.env) a setting that fails its checks
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import redis

from promptq_core.env import redact_url

__all__ = [
    "EvictionPolicyError",
    "JobConflictError",
    "JobNotFoundError",
    "NotReplicatedError",
    "QueueFullError",
    "QueueUnavailableError",
    "RetryRefusedError",
    "redis_errors",
]


class QueueUnavailableError(ConnectionError):
    """Redis did not answer (or cannot take the job): nothing was submitted (or read). The message
    says where it looked."""


class QueueFullError(QueueUnavailableError):
    """Redis is out of memory (``maxmemory`` reached under ``noeviction``) and refused the write:
    nothing of the refused call was written. Workers finishing jobs free memory; try again later."""

    retry_after_s = 5
    """A wait to suggest before trying again (the HTTP API's ``Retry-After``)."""


class NotReplicatedError(QueueUnavailableError):
    """With ``PROMPTQ_MIN_REPLICAS`` set, the write reached the primary but fewer replicas confirmed
    it in time: it would be lost if the primary failed now. Sending it again is safe: the same job
    ids enqueue nothing twice."""


class EvictionPolicyError(QueueUnavailableError):
    """Redis may evict keys under memory pressure (a ``maxmemory-policy`` other than ``noeviction``):
    queued jobs and results could vanish without an error, so promptq refuses to write there (unless
    ``PROMPTQ_ALLOW_EVICTION=1``)."""


class RetryRefusedError(ValueError):
    """``retry`` was asked for a job that is not failed, or whose request is no longer kept."""


class JobConflictError(ValueError):
    """A submit named a job id that is known (queued, running, or finished and kept) with another
    request: nothing of the call was written. Choose another id, or wait until the result expires."""

    def __init__(self, job_id: str) -> None:
        super().__init__(
            f"job {job_id!r} was submitted before with another request: ids are the caller's to keep "
            "unique (the same id with the same request enqueues nothing new)"
        )
        self.job_id = job_id


class JobNotFoundError(LookupError):
    """No result document exists for this job id (never submitted, or expired)."""


@contextlib.contextmanager
def redis_errors(redis_url: str) -> Iterator[None]:
    """redis-py's errors as promptq's: unavailable, refused credentials, out of memory."""
    where = redact_url(redis_url)
    refused = f"Redis at {where} refused access ({{}}): check the credentials in REDIS_URL"
    try:
        yield
    except (redis.AuthenticationError, redis.exceptions.AuthorizationError, redis.exceptions.NoPermissionError) as e:
        raise QueueUnavailableError(refused.format(e)) from e
    except (redis.ConnectionError, redis.TimeoutError) as e:
        raise QueueUnavailableError(f"Redis at {where} is unavailable: {e}") from e
    except (redis.exceptions.ClusterError, redis.exceptions.TryAgainError) as e:  # a slot without a primary, a moment
        raise QueueUnavailableError(f"Redis Cluster at {where} is unavailable for a moment: {e}") from e
    except redis.exceptions.RedisClusterException as e:
        if "not enabled" in str(e):
            raise QueueUnavailableError(f"Redis at {where} is not in cluster mode: use REDIS_URL=redis://") from e
        raise QueueUnavailableError(f"Redis Cluster at {where} is unavailable: {e}") from e
    except redis.exceptions.OutOfMemoryError as e:
        raise QueueFullError(
            f"Redis at {where} is out of memory (maxmemory reached) and refused the write: nothing of this "
            "call was written. Workers finishing jobs free memory (results expire after PROMPTQ_RESULT_TTL_S); "
            "try again shortly, or raise Redis's maxmemory"
        ) from e
    except redis.ResponseError as e:
        if "unauthenticated" in str(e):  # a long command sent without a password
            raise QueueUnavailableError(refused.format(e)) from e
        raise
