"""promptq's producer: what a web app or a script imports to submit prompt jobs and read results.

    from producer import Producer, SyncProducer, JobResult

It never imports openai or the worker. Its names load on first use, so that ``producer.contract``
(the key names and the result document, standard library only, which the worker imports too)
loads without the client or redis-py.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from producer.calls import Cancellation, ProducerConfig, QueueDepths, RetryRefusedError
    from producer.client import Producer
    from producer.contract import JobError, JobResult, Usage
    from producer.env import ConfigError
    from producer.errors import EvictionPolicyError, NotReplicatedError, QueueFullError, QueueUnavailableError
    from producer.streams import JobNotFoundError, StreamEvent
    from producer.sync_client import SyncProducer
    from producer.validation import InvalidJobError

_HOME = {
    "Cancellation": "producer.calls",
    "ConfigError": "producer.env",
    "EvictionPolicyError": "producer.errors",
    "InvalidJobError": "producer.validation",
    "JobError": "producer.contract",
    "JobNotFoundError": "producer.streams",
    "JobResult": "producer.contract",
    "NotReplicatedError": "producer.errors",
    "Producer": "producer.client",
    "ProducerConfig": "producer.calls",
    "QueueDepths": "producer.calls",
    "QueueFullError": "producer.errors",
    "QueueUnavailableError": "producer.errors",
    "RetryRefusedError": "producer.calls",
    "StreamEvent": "producer.streams",
    "SyncProducer": "producer.sync_client",
    "Usage": "producer.contract",
}

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


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module 'producer' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOME[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOME])
