"""promptq's producer: what a web app or a script imports to submit prompt jobs and read results.

    from producer import Producer, SyncProducer, JobResult

It never imports openai or the worker.
"""

from __future__ import annotations

from producer.client import (
    Cancellation,
    EvictionPolicyError,
    JobNotFoundError,
    NotReplicatedError,
    Producer,
    ProducerConfig,
    QueueDepths,
    QueueFullError,
    QueueUnavailableError,
    RetryRefusedError,
    StreamEvent,
)
from producer.contract import JobError, JobResult, Usage
from producer.env import ConfigError
from producer.sync_client import SyncProducer
from producer.validation import InvalidJobError

__all__ = [
    "Cancellation",
    "ConfigError",
    "EvictionPolicyError",
    "InvalidJobError",
    "JobError",
    "JobNotFoundError",
    "JobResult",
    "NotReplicatedError",
    "Producer",
    "ProducerConfig",
    "QueueDepths",
    "QueueFullError",
    "QueueUnavailableError",
    "RetryRefusedError",
    "StreamEvent",
    "SyncProducer",
    "Usage",
]
