"""SyncProducer: :class:`producer.client.Producer`'s methods, blocking, for Django and Flask views
and plain scripts."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator, Mapping
from types import TracebackType
from typing import Any, Self, cast

import redis

from producer.calls import (
    DEPTHS_KEYS_MAX,
    Calls,
    Cancellation,
    ProducerConfig,
    QueueDepths,
)
from producer.client import (
    CANCEL_ATTEMPTS,
    DEFAULT_WAIT_TIMEOUT_S,
    _config,
    _failed,
    _last_index,
    _parse,
    _retried,
    _Waiter,
)
from producer.connect import sync_client
from producer.contract import FAILED_SET, JobResult, done_channel, result_key
from producer.errors import redis_errors
from producer.guard import read_facts_sync
from producer.notify import published_result
from producer.scripts import script
from producer.streams import READ_BLOCK_MS, StreamCursor, StreamEvent

__all__ = ["SyncProducer"]


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
        self._calls = Calls(_config(redis_url, config))
        self._owns_client = client is None
        self.redis = client if client is not None else sync_client(self.config.redis_url)
        self._submit = self.redis.register_script(script("submit").source)
        self._submit_many = self.redis.register_script(script("submit_many").source)
        self._retry = self.redis.register_script(script("retry").source)
        self._cancel = self.redis.register_script(script("cancel").source)
        self._depths = self.redis.register_script(script("depths").source)

    @property
    def config(self) -> ProducerConfig:
        return self._calls.config

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
        job = self._calls.build(prompt, **kwargs)
        keys, args = self._calls.submit(job, time.time())
        with redis_errors(self.config.redis_url):
            self._check()
            self._write(self._submit, keys, args)
        return job.job_id

    def submit_many(self, items: Iterable[str | Mapping[str, Any]]) -> list[str]:
        """See :meth:`Producer.submit_many`."""
        jobs = self._calls.build_many(items)
        with redis_errors(self.config.redis_url):
            self._check()
            for keys, args in self._calls.chunks(jobs):
                self._write(self._submit_many, keys, args)
        return [job.job_id for job in jobs]

    def _write(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        """See :meth:`Producer._write`."""
        if not self.config.min_replicas:
            return script(keys=keys, args=args)
        with self.redis.pipeline(transaction=False) as pipe:
            script(keys=keys, args=args, client=pipe)
            pipe.wait(self.config.min_replicas, self.config.replica_timeout_ms)
            reply, acked = pipe.execute()
        self._calls.replicated(int(acked))
        return reply

    def _check(self) -> None:
        """See :meth:`Producer._check`."""
        if not self._calls.checked:
            self._calls.check(read_facts_sync(self.redis))

    def get(self, job_id: str) -> JobResult | None:
        """See :meth:`Producer.get`."""
        with redis_errors(self.config.redis_url):
            return _parse(self._read(result_key(job_id)))

    def wait(self, job_id: str, timeout: float | None = DEFAULT_WAIT_TIMEOUT_S) -> JobResult:
        """See :meth:`Producer.wait`."""
        waiter = _Waiter(job_id, timeout)
        pubsub = self.redis.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
        with redis_errors(self.config.redis_url), contextlib.closing(pubsub) as ps:
            ps.subscribe(done_channel(job_id))  # before the first read: no result can slip between
            result = self.get(job_id)
            while (delay_s := waiter.sleep_s(result)) is not None:
                message = ps.get_message(timeout=delay_s)
                while (more := ps.get_message(timeout=0)) is not None:  # more than one message: drain them
                    message = more
                final = published_result(message["data"]) if message else None
                result = final or self.get(job_id)  # the message carries the document
        assert result is not None
        return result

    def depths(self) -> QueueDepths:
        """See :meth:`Producer.depths`."""
        keys, args = script("depths").bind(keys_max=DEPTHS_KEYS_MAX)
        with redis_errors(self.config.redis_url):
            return QueueDepths.from_reply(self._depths(keys=keys, args=args))

    def failed(self, limit: int = 100) -> list[JobResult]:
        """See :meth:`Producer.failed`."""
        with redis_errors(self.config.redis_url):
            ids = cast("list[bytes]", self.redis.zrevrange(FAILED_SET, 0, _last_index(limit)))
            docs = cast("list[bytes | None]", self.redis.mget([result_key(i.decode()) for i in ids])) if ids else []
        return _failed(docs)

    def retry(self, job_id: str) -> str:
        """See :meth:`Producer.retry`."""
        with redis_errors(self.config.redis_url):
            self._check()
            doc, record = cast("list[bytes | None]", self.redis.mget(Calls.retry_reads(job_id)))
            keys, args = self._calls.retry(job_id, doc, record, time.time())
            _retried(job_id, self._write(self._retry, keys, args))
        return job_id

    def cancel(self, job_id: str) -> Cancellation:
        """See :meth:`Producer.cancel`."""
        with redis_errors(self.config.redis_url):
            for _ in range(CANCEL_ATTEMPTS):
                doc = self._read(result_key(job_id))
                call = Calls.cancel(job_id, doc, time.time())
                if isinstance(call, Cancellation):
                    return call
                (keys, args), cancelled = call
                if self._cancel(keys=keys, args=args):
                    return Cancellation(job_id, cancelled=True, result=cancelled)
        raise RuntimeError(f"job {job_id!r} kept changing while it was being cancelled")

    def stream(self, job_id: str, after: str = "0") -> Iterator[StreamEvent]:
        """See :meth:`Producer.stream`."""
        cursor = StreamCursor(job_id, after)
        with redis_errors(self.config.redis_url):
            while not cursor.finished:
                reply = self.redis.xread(**cursor.read_args(), block=READ_BLOCK_MS)
                if not reply and (final := cursor.ended(self._read(cursor.doc_key))) is not None:
                    reply = self.redis.xread(**cursor.read_args())  # what came meanwhile
                    if not reply:
                        yield cursor.done(None, final)
                        return
                for event in cursor.events(reply):
                    if event.type == "done":
                        event = cursor.done(event, _parse(self._read(cursor.doc_key)))
                    yield event

    def _read(self, key: str) -> bytes | None:
        return cast("bytes | None", self.redis.get(key))
