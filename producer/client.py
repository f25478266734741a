"""Producer (asyncio): submit jobs, read, wait for, stream and cancel results.

Each method runs a method of ``producer.core`` (which ``SyncProducer`` runs too), awaiting its
steps. It never imports openai or the worker: a web app needs only Redis and this package.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable, Mapping
from types import TracebackType
from typing import Any, Self, TypeVar

import redis
import redis.asyncio
from redis.exceptions import NoScriptError

from producer import core, keys
from producer.core import DEFAULT_WAIT_TIMEOUT_S, Command, Deadline, Op, Script, Step
from producer.errors import redis_errors
from producer.hub import StreamHub, Watch
from producer.notify import FALLBACK_POLL_S, DoneWatcher, Signal
from producer.overview import Overview
from producer.streams import StreamCursor
from producer.types import Cancellation, ProducerConfig, QueueDepths, StreamEvent
from producer.writes import Writes, config_of
from promptq_core.connect import async_client, load_everywhere
from promptq_core.contract import JobResult
from promptq_core.guard import read_facts
from promptq_core.scripts import script
from promptq_core.tenants import KeyEntry, Policy

__all__ = ["Producer"]

T = TypeVar("T")


class Producer:
    """Submit prompt jobs and read their results, from asyncio code (FastAPI, scripts).

    ``Producer()`` reads ``REDIS_URL`` (default ``redis://localhost:6379/0``); pass ``redis_url`` or a
    ready ``redis.asyncio.Redis`` client to override. Use it as ``async with Producer() as p:``.
    Every method raises :class:`QueueUnavailableError` when Redis does not answer.
    """

    def __init__(
        self,
        redis_url: str | None = None,
        *,
        config: ProducerConfig | None = None,
        client: redis.asyncio.Redis | None = None,
    ) -> None:
        self._writes = Writes(config_of(redis_url, config))
        self._owns_client = client is None
        self.redis = client if client is not None else async_client(self.config.redis_url)
        self._scripts = {name: self.redis.register_script(script(name).source) for name in core.SCRIPTS}
        self._watcher = DoneWatcher(self.redis)
        self._hub = StreamHub(self.redis)

    @property
    def config(self) -> ProducerConfig:
        return self._writes.config

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._watcher.aclose()
        await self._hub.aclose()
        if self._owns_client:
            await self.redis.aclose()

    async def submit(self, prompt: str | None = None, **kwargs: Any) -> str:
        """Validate and enqueue one job; return its id.

        Keyword arguments: ``messages`` (instead of ``prompt``), ``model``, ``queue`` (the named
        queue; default the producer's, ``PROMPTQ_QUEUE`` or ``default``), ``job_id`` (idempotent
        within its queue: an id already queued, running or finished there is returned as is,
        nothing enqueued), ``metadata``,
        ``priority`` (0 runs first, 9 last; default 5), ``fairness_key`` (jobs under different keys
        take turns at one priority; default: one shared key), ``stream``, and Chat Completions
        parameters (``temperature``, ``max_tokens``, ...).
        """
        return await self._run(core.submit(self._writes, prompt, kwargs))

    async def submit_many(self, items: Iterable[str | Mapping[str, Any]]) -> list[str]:
        """Validate every item, then enqueue them all in pipelined round trips; return the ids in order.

        An item is a prompt string or a dict of :meth:`submit` arguments. One bad item refuses the
        whole call before anything is written.
        """
        return await self._run(core.submit_many(self._writes, items))

    async def get(self, job_id: str, *, queue: str | None = None) -> JobResult | None:
        """The job's result document now, or None for an unknown (or expired) id. Every method
        that names a job looks for it in ``queue`` (default: the producer's)."""
        return await self._run(core.get(self._writes.queue(queue), job_id))

    async def get_many(self, job_ids: Iterable[str], *, queue: str | None = None) -> list[JobResult | None]:
        """The result documents of these jobs, in their order (None for an unknown or expired id),
        read a thousand at a time."""
        return await self._run(core.get_many(self._writes.queue(queue), job_ids))

    async def known(self, job_ids: Iterable[str], *, queue: str | None = None) -> int:
        """How many of these jobs exist (queued, running, or ended with a result not yet expired)."""
        return await self._run(core.known(self._writes.queue(queue), job_ids))

    async def wait(
        self,
        job_id: str,
        timeout: float | None = DEFAULT_WAIT_TIMEOUT_S,  # noqa: ASYNC109
        *,
        queue: str | None = None,
    ) -> JobResult:
        """Return the result once its status is terminal; raise ``TimeoutError`` after ``timeout`` s."""
        deadline = Deadline(job_id, timeout)
        keys = self._writes.queue(queue)
        with redis_errors(self.config.redis_url):
            async with self._watcher.watching(keys, job_id) as done:  # subscribed before the first read
                result = core.parse(done.first) if done.read else await self.get(job_id, queue=keys.name)
                while (delay_s := deadline.sleep_s(result)) is not None:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(delay_s):
                            await done.event.wait()
                    done.event.clear()
                    result = done.final or await self.get(job_id, queue=keys.name)  # the message carries the document
        assert result is not None
        return result

    async def open_batch(self, name: str, total: int, *, queue: str | None = None) -> None:
        """Start counting a batch of ``total`` jobs (ids ``{name}:...``, in ``queue``) before
        submitting them: the dashboard shows its progress once its manifest is saved
        (``save_manifest``)."""
        await self._run(core.open_batch(self._writes, self._writes.queue(queue), name, total))

    async def save_manifest(self, name: str, manifest: str, *, queue: str | None = None) -> None:
        """Keep a batch's manifest (JSON: its name and its ``[custom_id, job_id]`` items) in its
        queue as long as its jobs' documents live."""
        await self._run(core.save_manifest(self._writes, self._writes.queue(queue), name, manifest))

    async def batch_counts(self, name: str, *, queue: str | None = None) -> dict[str, float] | None:
        """A batch's tally, one read (the workers add to it every second): ``total``,
        ``succeeded``, ``failed``, ``cancelled``, ``tokens``, ``cost_usd`` (fields with nothing yet
        are absent); None for a batch without one (never opened, or expired)."""
        return await self._run(core.batch_counts(self._writes.queue(queue), name))

    async def manifest(self, name: str, *, queue: str | None = None) -> str | None:
        """A batch's manifest as saved, or None (never saved, or expired)."""
        return await self._run(core.manifest(self._writes.queue(queue), name))

    async def depths(self, *, queue: str | None = None) -> QueueDepths:
        """How many jobs wait where in ``queue`` (default: the producer's): ready per priority and
        fairness key, running, deferred for a retry, failed."""
        return await self._run(core.depths(self._writes.queue(queue)))

    async def overview(self, *, queue: str | None = None) -> Overview:
        """The queue and the fleet at a glance, as the dashboard shows them: the queue per
        priority and fairness key, the workers, the last 15 minutes (jobs, latency, tokens and cost
        per model), the batches' progress and the newest failures."""
        return await self._run(core.overview(self._writes.queue(queue)))

    async def provider_batches(self, *, queue: str | None = None) -> dict[str, list[dict[str, Any]]]:
        """The Batch tier in ``queue``: ``collecting``, the jobs waiting to be sent per backend,
        endpoint and model (``jobs``, ``since``: when the oldest joined), and ``provider_batches``,
        those not ended and the newest ended (``id``, ``provider_batch``: the provider's id,
        ``step``, the provider's ``status``, ``lines``, its ``counts``, ``sealed_at``, ``ended_at``,
        ``error``)."""
        return await self._run(core.provider_batches(self._writes.queue(queue)))

    async def failed(self, limit: int = 100, *, queue: str | None = None) -> list[JobResult]:
        """The most recently failed jobs, newest first (those whose result has not expired)."""
        return await self._run(core.failed(self._writes.queue(queue), limit))

    async def retry(self, job_id: str, *, queue: str | None = None) -> str:
        """Put a failed job back in its queue (same id, same request, tries counted afresh).

        Raises :class:`RetryRefusedError` (a ``ValueError``) if the job is not failed or its request
        has expired. Retrying an id twice queues it once.
        """
        return await self._run(core.retry(self._writes, self._writes.queue(queue), job_id))

    async def cancel(self, job_id: str, *, queue: str | None = None) -> Cancellation:
        """Cancel a job: a queued one never writes the API, a running one has its request stopped;
        its status becomes ``cancelled`` and it is not retried. A finished or unknown job is left
        as it is (``Cancellation.cancelled`` is False and its ``message`` says why)."""
        return await self._run(core.cancel(self._writes.queue(queue), job_id))

    async def ping(self) -> bool:
        """Whether Redis answers (:class:`QueueUnavailableError` when it does not)."""
        return await self._run(core.ping())

    # -- tenants (``promptq keys``; see promptq_core.tenants) ----------------------------------------
    async def create_key(self, tenant: str, **policy: Any) -> tuple[str, str]:
        """A new API key for ``tenant``: ``(key id, key)``. The key is shown only here (Redis keeps
        its SHA-256). ``policy``: fields of :class:`~promptq_core.tenants.Policy` to set."""
        return await self._run(keys.create_key(tenant, policy))

    async def update_tenant(self, tenant: str, **policy: Any) -> Policy:
        """Change a tenant's policy (``LookupError`` for an unknown tenant)."""
        return await self._run(keys.update_tenant(tenant, policy))

    async def tenants(self) -> tuple[dict[str, Policy], list[KeyEntry]]:
        """Every tenant's policy, and every key's entry (never a key)."""
        return await self._run(keys.tenants())

    async def revoke_key(self, key_id: str) -> bool:
        """Forget a key by its id (refused from the next request on); False when there is none."""
        return await self._run(keys.revoke_key(key_id))

    async def spent(self, tenant: str) -> dict[str, float]:
        """What a tenant's finished jobs cost in USD this ``day`` and this ``month`` (UTC), as its
        budget counts it."""
        return await self._run(keys.spent(tenant))

    async def tenant_of(self, key: str) -> Policy | None:
        """The policy of the tenant a key belongs to; None for no tenant's key."""
        return await self._run(keys.tenant_of(key))

    async def stream(self, job_id: str, after: str = "0", *, queue: str | None = None) -> AsyncIterator[StreamEvent]:
        """The job's events as they come: ``delta`` (a piece of the answer), ``restart`` (a retry
        begins: drop the text so far) and, last, ``done`` with the final result. Replays what was
        written already; ``after`` (an event's ``id``) resumes behind that event. A job submitted
        without ``stream=True`` yields only its ``done`` event."""
        keys = self._writes.queue(queue)
        cursor = StreamCursor(keys, job_id, after)
        # Subscribed to the job's done channel first (its end is heard of, not polled for), then
        # what the stream holds, then one blocking read for every stream of this producer.
        async with self._watcher.watching(keys, job_id) as done:
            for event in await self._run(core.stream_read(cursor, block=False)):
                yield event
            if cursor.finished:
                return
            async with self._hub.watching(cursor.key, cursor.position) as watch:
                while not cursor.finished:
                    for event in await self._next_events(cursor, watch, done):
                        yield event

    async def _next_events(self, cursor: StreamCursor, watch: Watch, done: Signal) -> list[StreamEvent]:
        """The next events of a watched stream: what the hub brings, or the end once the job's done
        message comes (or, as a safety net, once ``FALLBACK_POLL_S`` passes with nothing)."""
        got = asyncio.ensure_future(watch.inbox.get())
        ended = asyncio.ensure_future(done.event.wait())
        try:
            await asyncio.wait({got, ended}, timeout=FALLBACK_POLL_S, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ended.cancel()
            if not got.done():
                got.cancel()
        if got.done() and not got.cancelled():
            entries = got.result()
            if isinstance(entries, BaseException):
                with redis_errors(self.config.redis_url):
                    raise entries
            return await self._run(core.stream_events(cursor, [(cursor.key, entries)]))
        done.event.clear()
        return await self._run(core.stream_read(cursor, block=False))  # ended? (else nothing yet)

    # -- the driver -------------------------------------------------------------------------------
    async def _run(self, op: Op[T]) -> T:
        """A core method, its steps awaited one by one."""
        with redis_errors(self.config.redis_url):
            done, value = core.advance(op, None)
            while not done:
                done, value = core.advance(op, await self._do(value))
            return value  # type: ignore[no-any-return]

    async def _do(self, step: Step) -> Any:
        if isinstance(step, Command):
            return await getattr(self.redis, step.name)(*step.args, **step.kwargs)
        if isinstance(step, Script):
            return await self._script(step)
        return await read_facts(self.redis)

    async def _script(self, step: Script) -> tuple[Any, int | None]:
        run = self._scripts[step.name]
        if not step.replicas:
            try:
                return await run(keys=step.keys, args=step.args), None
            except NoScriptError:  # a node that lacks it even after redis-py loaded it (a promoted replica)
                await load_everywhere(self.redis, script(step.name).source)
                return await run(keys=step.keys, args=step.args), None
        async with self.redis.pipeline(transaction=False) as pipe:
            await run(keys=step.keys, args=step.args, client=pipe)
            pipe.wait(step.replicas, step.timeout_ms)
            reply, acked = await pipe.execute()
        return reply, int(acked)
