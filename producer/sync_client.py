"""SyncProducer: :class:`producer.client.Producer`'s methods, blocking, for Django and Flask views
and plain scripts. Each runs the same method of ``producer.core``, its steps run blocking."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator, Mapping
from types import TracebackType
from typing import Any, Self, TypeVar

import redis
from redis.exceptions import NoScriptError

from producer import core, keys
from producer.core import DEFAULT_WAIT_TIMEOUT_S, Command, Deadline, Op, Script, Step
from producer.errors import redis_errors
from producer.notify import CONFIRM_TIMEOUT_S, published_result
from producer.overview import Overview
from producer.streams import StreamCursor
from producer.types import Cancellation, ProducerConfig, QueueDepths, StreamEvent
from producer.writes import Writes, config_of
from promptq_core.connect import load_everywhere_sync, sync_client
from promptq_core.contract import JobResult
from promptq_core.guard import read_facts_sync
from promptq_core.scripts import script
from promptq_core.tenants import KeyEntry, Policy

__all__ = ["SyncProducer"]

T = TypeVar("T")


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
        self._writes = Writes(config_of(redis_url, config))
        self._owns_client = client is None
        self.redis = client if client is not None else sync_client(self.config.redis_url)
        self._scripts = {name: self.redis.register_script(script(name).source) for name in core.SCRIPTS}

    @property
    def config(self) -> ProducerConfig:
        return self._writes.config

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
        return self._run(core.submit(self._writes, prompt, kwargs))

    def submit_many(self, items: Iterable[str | Mapping[str, Any]]) -> list[str]:
        """See :meth:`Producer.submit_many`."""
        return self._run(core.submit_many(self._writes, items))

    def get(self, job_id: str, *, queue: str | None = None) -> JobResult | None:
        """See :meth:`Producer.get`."""
        return self._run(core.get(self._writes.queue(queue), job_id))

    def get_many(self, job_ids: Iterable[str], *, queue: str | None = None) -> list[JobResult | None]:
        """See :meth:`Producer.get_many`."""
        return self._run(core.get_many(self._writes.queue(queue), job_ids))

    def known(self, job_ids: Iterable[str], *, queue: str | None = None) -> int:
        """See :meth:`Producer.known`."""
        return self._run(core.known(self._writes.queue(queue), job_ids))

    def wait(
        self, job_id: str, timeout: float | None = DEFAULT_WAIT_TIMEOUT_S, *, queue: str | None = None
    ) -> JobResult:
        """See :meth:`Producer.wait`."""
        deadline = Deadline(job_id, timeout)
        keys = self._writes.queue(queue)
        pubsub = self.redis.pubsub()  # type: ignore[no-untyped-call]
        with redis_errors(self.config.redis_url), contextlib.closing(pubsub) as ps:
            ps.subscribe(keys.done(job_id))  # confirmed before the first read: no result can slip between
            _message(ps, CONFIRM_TIMEOUT_S, "subscribe")
            result = self.get(job_id, queue=keys.name)
            while (delay_s := deadline.sleep_s(result)) is not None:
                message = _message(ps, delay_s)
                while (more := ps.get_message(timeout=0)) is not None:  # more than one message: drain them
                    message = more if more["type"] == "message" else message
                final = published_result(message["data"]) if message else None
                result = final or self.get(job_id, queue=keys.name)  # the message carries the document
        assert result is not None
        return result

    def open_batch(self, name: str, total: int, *, queue: str | None = None) -> None:
        """See :meth:`Producer.open_batch`."""
        self._run(core.open_batch(self._writes, self._writes.queue(queue), name, total))

    def save_manifest(self, name: str, manifest: str, *, queue: str | None = None) -> None:
        """See :meth:`Producer.save_manifest`."""
        self._run(core.save_manifest(self._writes, self._writes.queue(queue), name, manifest))

    def batch_counts(self, name: str, *, queue: str | None = None) -> dict[str, float] | None:
        """See :meth:`Producer.batch_counts`."""
        return self._run(core.batch_counts(self._writes.queue(queue), name))

    def manifest(self, name: str, *, queue: str | None = None) -> str | None:
        """See :meth:`Producer.manifest`."""
        return self._run(core.manifest(self._writes.queue(queue), name))

    def depths(self, *, queue: str | None = None) -> QueueDepths:
        """See :meth:`Producer.depths`."""
        return self._run(core.depths(self._writes.queue(queue)))

    def provider_batches(self, *, queue: str | None = None) -> dict[str, list[dict[str, Any]]]:
        """See :meth:`Producer.provider_batches`."""
        return self._run(core.provider_batches(self._writes.queue(queue)))

    def overview(self, *, queue: str | None = None) -> Overview:
        """See :meth:`Producer.overview`."""
        return self._run(core.overview(self._writes.queue(queue)))

    def failed(self, limit: int = 100, *, queue: str | None = None) -> list[JobResult]:
        """See :meth:`Producer.failed`."""
        return self._run(core.failed(self._writes.queue(queue), limit))

    def retry(self, job_id: str, *, queue: str | None = None) -> str:
        """See :meth:`Producer.retry`."""
        return self._run(core.retry(self._writes, self._writes.queue(queue), job_id))

    def cancel(self, job_id: str, *, queue: str | None = None) -> Cancellation:
        """See :meth:`Producer.cancel`."""
        return self._run(core.cancel(self._writes.queue(queue), job_id))

    def ping(self) -> bool:
        """See :meth:`Producer.ping`."""
        return self._run(core.ping())

    def create_key(self, tenant: str, **policy: Any) -> tuple[str, str]:
        """See :meth:`Producer.create_key`."""
        return self._run(keys.create_key(tenant, policy))

    def update_tenant(self, tenant: str, **policy: Any) -> Policy:
        """See :meth:`Producer.update_tenant`."""
        return self._run(keys.update_tenant(tenant, policy))

    def tenants(self) -> tuple[dict[str, Policy], list[KeyEntry]]:
        """See :meth:`Producer.tenants`."""
        return self._run(keys.tenants())

    def revoke_key(self, key_id: str) -> bool:
        """See :meth:`Producer.revoke_key`."""
        return self._run(keys.revoke_key(key_id))

    def spent(self, tenant: str) -> dict[str, float]:
        """See :meth:`Producer.spent`."""
        return self._run(keys.spent(tenant))

    def tenant_of(self, key: str) -> Policy | None:
        """See :meth:`Producer.tenant_of`."""
        return self._run(keys.tenant_of(key))

    def stream(self, job_id: str, after: str = "0", *, queue: str | None = None) -> Iterator[StreamEvent]:
        """See :meth:`Producer.stream`."""
        cursor = StreamCursor(self._writes.queue(queue), job_id, after)
        while not cursor.finished:
            yield from self._run(core.stream_read(cursor))

    # -- the driver -------------------------------------------------------------------------------
    def _run(self, op: Op[T]) -> T:
        """A core method, its steps run one by one."""
        with redis_errors(self.config.redis_url):
            done, value = core.advance(op, None)
            while not done:
                done, value = core.advance(op, self._do(value))
            return value  # type: ignore[no-any-return]

    def _do(self, step: Step) -> Any:
        if isinstance(step, Command):
            return getattr(self.redis, step.name)(*step.args, **step.kwargs)
        if isinstance(step, Script):
            return self._script(step)
        return read_facts_sync(self.redis)

    def _script(self, step: Script) -> tuple[Any, int | None]:
        run = self._scripts[step.name]
        if not step.replicas:
            try:
                return run(keys=step.keys, args=step.args), None
            except NoScriptError:  # a node that lacks it even after redis-py loaded it (a promoted replica)
                load_everywhere_sync(self.redis, script(step.name).source)
                return run(keys=step.keys, args=step.args), None
        with self.redis.pipeline(transaction=False) as pipe:
            run(keys=step.keys, args=step.args, client=pipe)
            pipe.wait(step.replicas, step.timeout_ms)
            reply, acked = pipe.execute()
        return reply, int(acked)


def _message(pubsub: Any, timeout_s: float, kind: str = "message") -> Any:
    """The next message of this ``kind`` within ``timeout_s`` (a published one, or the confirmation
    of the subscription), or None."""
    until = time.monotonic() + timeout_s
    while (left_s := until - time.monotonic()) > 0:
        if (message := pubsub.get_message(timeout=left_s)) is not None and message["type"] == kind:
            return message
    return None
