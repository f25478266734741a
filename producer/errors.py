"""What the producer raises when Redis is away, full or unsafe, and the mapping from redis-py's errors.

Every error says where it looked (the URL, password redacted) and what to do.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import redis

from producer.env import redact_url

__all__ = ["EvictionPolicyError", "NotReplicatedError", "QueueFullError", "QueueUnavailableError", "redis_errors"]


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
