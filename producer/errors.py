"""redis-py's errors as the producer's (``producer.types``: unavailable, full, unsafe), each saying
where it looked (the URL, password redacted) and what to do.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import redis

from producer.types import QueueFullError, QueueUnavailableError
from promptq_core.env import redact_url

__all__ = ["redis_errors"]


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
