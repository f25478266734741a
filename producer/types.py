"""The client library's public types: its settings (``ProducerConfig``) and what its methods answer
(``QueueDepths``, ``Cancellation``, ``StreamEvent``); what they raise is in ``producer.errors``.

The result document (``JobResult``, ``Usage``, ``JobError``) lives in ``promptq_core.contract``, which
the worker shares, and ``QueueDepths`` (what the queue's ``depths`` script answers, which the worker's
metrics read too) in ``promptq_core.depths``; ``InvalidJobError`` beside the checks that raise it
(``promptq_core.validation``), ``ConfigError`` beside the environment's readers
(``promptq_core.env``). ``producer`` exports them all.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from promptq_core.connect import is_cluster
from promptq_core.contract import (
    DEFAULT_MAX_PAYLOAD_BYTES,
    DEFAULT_QUEUE,
    DEFAULT_REDIS_URL,
    DEFAULT_RESULT_TTL_S,
    JobResult,
    queue_keys,
)
from promptq_core.depths import DEPTHS_KEYS_MAX, QueueDepths
from promptq_core.env import NO_REPLICAS_ON_CLUSTER, ConfigError, env_flag, env_int, env_queue, env_redis_url
from promptq_core.guard import ALLOW_EVICTION_ENV
from promptq_core.webhooks import WebhookHosts

__all__ = [
    "DEFAULT_REPLICA_TIMEOUT_MS",
    "DEPTHS_KEYS_MAX",
    "Cancellation",
    "ProducerConfig",
    "QueueDepths",
    "StreamEvent",
]


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


DEFAULT_REPLICA_TIMEOUT_MS = 1000


@dataclass(frozen=True, slots=True)
class ProducerConfig:
    redis_url: str = DEFAULT_REDIS_URL
    result_ttl_s: int = DEFAULT_RESULT_TTL_S
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    allow_eviction: bool = False
    """Write to a Redis whose ``maxmemory-policy`` may evict keys (``PROMPTQ_ALLOW_EVICTION``), with a warning."""
    min_replicas: int = 0
    """Replicas that must confirm each submit (``PROMPTQ_MIN_REPLICAS``; 0: none, the primary's word is enough)."""
    replica_timeout_ms: int = DEFAULT_REPLICA_TIMEOUT_MS
    """How long a submit waits for them (``PROMPTQ_REPLICA_TIMEOUT_MS``)."""
    queue: str = DEFAULT_QUEUE
    """The queue jobs go to and are read from unless a call names another (``PROMPTQ_QUEUE``)."""
    webhook_hosts: WebhookHosts = field(default_factory=WebhookHosts)
    """The hosts a job's ``webhook_url`` may name (``PROMPTQ_WEBHOOK_HOSTS``; none listed: any public one)."""

    def __post_init__(self) -> None:
        queue_keys(self.queue)  # a ValueError naming a bad queue name
        if self.min_replicas and is_cluster(self.redis_url):
            raise ConfigError(NO_REPLICAS_ON_CLUSTER)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ProducerConfig:
        """``REDIS_URL``, ``PROMPTQ_RESULT_TTL_S``, ``PROMPTQ_MAX_PAYLOAD_BYTES``, ``PROMPTQ_ALLOW_EVICTION``,
        ``PROMPTQ_MIN_REPLICAS``, ``PROMPTQ_REPLICA_TIMEOUT_MS``, ``PROMPTQ_QUEUE`` and
        ``PROMPTQ_WEBHOOK_HOSTS``."""
        env = os.environ if env is None else env
        redis_url = env_redis_url(env, DEFAULT_REDIS_URL)
        min_replicas = env_int(env, "PROMPTQ_MIN_REPLICAS", 0, minimum=0)
        if min_replicas and is_cluster(redis_url):
            raise ConfigError(NO_REPLICAS_ON_CLUSTER)
        return cls(
            redis_url=redis_url,
            result_ttl_s=env_int(env, "PROMPTQ_RESULT_TTL_S", DEFAULT_RESULT_TTL_S),
            max_payload_bytes=env_int(env, "PROMPTQ_MAX_PAYLOAD_BYTES", DEFAULT_MAX_PAYLOAD_BYTES),
            allow_eviction=env_flag(env, ALLOW_EVICTION_ENV),
            min_replicas=min_replicas,
            replica_timeout_ms=env_int(env, "PROMPTQ_REPLICA_TIMEOUT_MS", DEFAULT_REPLICA_TIMEOUT_MS),
            queue=env_queue(env, "PROMPTQ_QUEUE"),
            webhook_hosts=WebhookHosts.from_env(env),
        )

    def with_url(self, redis_url: str) -> ProducerConfig:
        return dataclasses.replace(self, redis_url=redis_url)


EventType = Literal["delta", "restart", "done"]


@dataclass(frozen=True, slots=True)
class StreamEvent:
    """One event of a job's stream.

    ``delta``: ``text`` is the next piece of the answer. ``restart``: a new attempt (number
    ``attempt``) begins after a failed one; drop the text gathered so far. ``done``: the last
    event; ``result`` is the job's final document (``status`` succeeded, failed or cancelled)."""

    id: str
    """The entry's id in the Redis stream: pass it as ``after`` to resume behind this event."""
    type: EventType
    text: str | None = None
    attempt: int | None = None
    result: JobResult | None = None
