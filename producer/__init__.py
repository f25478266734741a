"""promptq's producer: what a web app or a script imports to submit prompt jobs and read results.

    from producer import Producer, SyncProducer, JobResult

It never imports openai or the worker. Its names load on first use, so that ``promptq_core.contract``
(the key names and the result document, standard library only, which the worker imports too)
loads without the client or redis-py.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from producer.client import Producer
    from producer.errors import (
        EvictionPolicyError,
        JobConflictError,
        JobNotFoundError,
        NotReplicatedError,
        QueueFullError,
        QueueUnavailableError,
        RetryRefusedError,
    )
    from producer.overview import Overview
    from producer.sync_client import SyncProducer
    from producer.types import Cancellation, ProducerConfig, QueueDepths, StreamEvent
    from promptq_core.contract import JobError, JobResult, Usage
    from promptq_core.env import ConfigError
    from promptq_core.validation import InvalidJobError

_HOME = {
    "Cancellation": "producer.types",
    "ConfigError": "promptq_core.env",
    "EvictionPolicyError": "producer.errors",
    "InvalidJobError": "promptq_core.validation",
    "JobError": "promptq_core.contract",
    "JobConflictError": "producer.errors",
    "JobNotFoundError": "producer.errors",
    "JobResult": "promptq_core.contract",
    "NotReplicatedError": "producer.errors",
    "Overview": "producer.overview",
    "Producer": "producer.client",
    "ProducerConfig": "producer.types",
    "QueueDepths": "producer.types",
    "QueueFullError": "producer.errors",
    "QueueUnavailableError": "producer.errors",
    "RetryRefusedError": "producer.errors",
    "StreamEvent": "producer.types",
    "SyncProducer": "producer.sync_client",
    "Usage": "promptq_core.contract",
}

__all__ = [
    "Cancellation",
    "ConfigError",
    "EvictionPolicyError",
    "InvalidJobError",
    "JobConflictError",
    "JobError",
    "JobNotFoundError",
    "JobResult",
    "NotReplicatedError",
    "Overview",
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


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module 'producer' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOME[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOME])
