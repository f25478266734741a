"""What a producer writes to Redis, without the I/O: jobs built and checked, each write script's keys
and arguments for its settings (``producer.types.ProducerConfig``), and the checks before its first
write and after a replicated one.

``Producer`` and ``SyncProducer`` send what this module builds, so both behave the same.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from producer.errors import EvictionPolicyError, NotReplicatedError, QueueUnavailableError, RetryRefusedError
from producer.types import Cancellation, ProducerConfig
from promptq_core.contract import (
    JobResult,
    QueueKeys,
    as_text,
    batch_of,
    dumps,
    encode_job,
    queue_keys,
    queued_doc,
)
from promptq_core.env import redact_url
from promptq_core.guard import ALLOW_EVICTION_ENV, RedisFacts, eviction_problem, mode_problem, version_problem
from promptq_core.scripts import Value, script
from promptq_core.tracing import current_trace
from promptq_core.validation import InvalidJobError, PromptJob, check_queue

__all__ = ["SUBMIT_CHUNK", "Writes", "config_of"]

log = logging.getLogger("promptq.producer")

SUBMIT_CHUNK = 1_000
"""Jobs sent in one pipelined round trip by ``submit_many``."""
MIN_QUEUED_TTL_S = 86_400
"""A queued job and its document live at least this long, however short the result TTL."""

Bound = tuple[list[str], list[Value]]
"""A script's keys and arguments, bound (``LuaScript.bind``)."""


def config_of(redis_url: str | None, config: ProducerConfig | None) -> ProducerConfig:
    """A producer's settings: ``config``, else the environment's; ``redis_url`` over either."""
    config = config or ProducerConfig.from_env()
    return config if redis_url is None else config.with_url(redis_url)


class Writes:
    """Validation, and the arguments of each script, for one producer's settings."""

    def __init__(self, config: ProducerConfig) -> None:
        self.config = config
        self.queued_ttl_ms = max(config.result_ttl_s, MIN_QUEUED_TTL_S) * 1000
        self.checked = False
        """The Redis was found safe to write to (``check``), once."""

    def replicated(self, acked: int) -> None:
        """After a write and its WAIT: :class:`NotReplicatedError` when fewer replicas confirmed it."""
        wanted = self.config.min_replicas
        if acked < wanted:
            raise NotReplicatedError(
                f"Redis at {redact_url(self.config.redis_url)} took the write, but {acked} of the {wanted} replicas "
                f"PROMPTQ_MIN_REPLICAS asks for confirmed it within {self.config.replica_timeout_ms} ms: it would be "
                "lost if the primary failed now. Submitting again is safe (the same job ids enqueue nothing twice)"
            )

    def check(self, facts: RedisFacts) -> None:
        """Before the first write: refuse a Redis that evicts keys (:class:`EvictionPolicyError`)
        unless ``allow_eviction``, then only warn; refuse a Redis older than 7.0."""
        where = redact_url(self.config.redis_url)
        if problem := version_problem(facts, where) or mode_problem(facts, self.config.redis_url, where):
            raise QueueUnavailableError(problem)
        if problem := eviction_problem(facts, where):
            if not self.config.allow_eviction:
                raise EvictionPolicyError(problem)
            log.warning("promptq: %s (allowed by %s)", problem, ALLOW_EVICTION_ENV)
        self.checked = True

    def queue(self, name: str | None) -> QueueKeys:
        """The keys of the queue ``name`` (checked), or of the producer's own (``PROMPTQ_QUEUE``)."""
        return queue_keys(self.config.queue if name is None else check_queue(name))

    def build(self, prompt: str | None = None, trace: Any = None, queue: Any = None, **kwargs: Any) -> PromptJob:
        """A checked job, in the producer's queue unless given one; with traces on, it carries the
        caller's trace context unless given one."""
        trace = trace if trace is not None else current_trace()
        return PromptJob.build(
            prompt,
            max_payload_bytes=self.config.max_payload_bytes,
            trace=trace,
            queue=self.config.queue if queue is None else queue,
            webhook_hosts=self.config.webhook_hosts,
            **kwargs,
        )

    def build_many(self, items: Iterable[str | Mapping[str, Any]]) -> list[PromptJob]:
        jobs = []
        trace = current_trace()
        for i, item in enumerate(items):
            try:
                if isinstance(item, str):
                    jobs.append(self.build(item, trace=trace))
                elif isinstance(item, Mapping):
                    jobs.append(self.build(**{"trace": trace, **item}))
                else:
                    raise InvalidJobError("must be a prompt string or a dict of submit arguments")
            except (InvalidJobError, TypeError) as e:
                raise InvalidJobError(f"item {i}: {e}") from None
        return jobs

    def chunks(self, jobs: list[PromptJob]) -> Iterator[Bound]:
        """``submit_many``'s arguments, ``SUBMIT_CHUNK`` jobs of one queue at a time (one round
        trip each; jobs for several queues go queue by queue, in the order each first appears).

        Re-sending a chunk is safe: the script writes nothing for an id it already knows.
        """
        now_s = time.time()
        now_ms, enqueued_at = int(now_s * 1000), round(now_s, 3)
        by_queue: dict[str, list[PromptJob]] = {}
        for job in jobs:
            by_queue.setdefault(job.queue, []).append(job)
        for name, queued in by_queue.items():
            for start in range(0, len(queued), SUBMIT_CHUNK):
                yield self._chunk(queue_keys(name), queued[start : start + SUBMIT_CHUNK], now_ms, enqueued_at)

    def _chunk(self, queue: QueueKeys, chunk: list[PromptJob], now_ms: int, enqueued_at: float) -> Bound:
        fields: list[str] = []
        for job in chunk:
            fields += (
                job.job_id,
                encode_job(job.payload_json, now_ms),
                queued_doc(
                    job.job_id,
                    job.model,
                    job.metadata,
                    enqueued_at,
                    job.priority,
                    job.fairness_key,
                    job.endpoint,
                    job.queue,
                    job.request,
                    job.tier,
                ),
                str(job.priority),
                job.fairness_key,
                job.request,
            )
        fields.append("")  # the last field ends with a newline too
        return script("submit_many").bind(queue, ttl_ms=self.queued_ttl_ms, count=len(chunk), chunk="\n".join(fields))

    def submit(self, job: PromptJob, now_s: float) -> Bound:
        keys = job.keys
        return script("submit").bind(
            keys,
            doc=keys.result(job.job_id),
            record=keys.record(job.job_id),
            job_id=job.job_id,
            record_json=encode_job(job.payload_json, int(now_s * 1000)),
            doc_json=queued_doc(
                job.job_id,
                job.model,
                job.metadata,
                round(now_s, 3),
                job.priority,
                job.fairness_key,
                job.endpoint,
                job.queue,
                job.request,
                job.tier,
            ),
            ttl_ms=self.queued_ttl_ms,
            priority=str(job.priority),
            fairness_key=job.fairness_key,
            request=job.request,
        )

    @staticmethod
    def cancel(
        queue: QueueKeys, job_id: str, doc: bytes | None, now_s: float
    ) -> tuple[Bound, JobResult] | Cancellation:
        """The cancel script's arguments for the document as read, with the cancelled document they
        write; or the answer if there is nothing to cancel."""
        current = None if doc is None else JobResult.from_json(doc)
        if current is None or current.done:
            return Cancellation(job_id, cancelled=False, result=current)
        cancelled = dataclasses.replace(current, status="cancelled", finished_at=round(now_s, 3))
        call = script("cancel").bind(
            queue,
            doc=queue.result(job_id),
            record=queue.record(job_id),
            tries=queue.tries(job_id),
            stream=queue.stream(job_id),
            doc_as_read=as_text(doc),
            cancelled_doc=cancelled.to_json(),
            job_id=job_id,
            model=current.model or "",
            batch=batch_of(job_id),
        )
        return call, cancelled

    @staticmethod
    def retry_reads(queue: QueueKeys, job_id: str) -> list[str]:
        """The keys ``retry`` reads first: the result document and the kept job record."""
        return [queue.result(job_id), queue.kept(job_id)]

    def retry(self, queue: QueueKeys, job_id: str, doc: bytes | None, record: bytes | None, now_s: float) -> Bound:
        """The retry script's arguments; :class:`RetryRefusedError` when the job cannot be retried."""
        if doc is None:
            raise RetryRefusedError(f"job {job_id!r} is unknown or its result has expired")
        failed = JobResult.from_json(doc)
        if failed.status != "failed":
            raise RetryRefusedError(f"job {job_id!r} is {failed.status}, not failed")
        if record is None:
            raise RetryRefusedError(f"job {job_id!r}: its request is no longer kept (it expires with the result)")
        fresh = json.loads(record)
        fresh["et"] = int(now_s * 1000)
        return script("retry").bind(
            queue,
            doc=queue.result(job_id),
            kept=queue.kept(job_id),
            record=queue.record(job_id),
            tries=queue.tries(job_id),
            job_id=job_id,
            record_json=dumps(fresh),
            doc_json=queued_doc(
                job_id,
                failed.model,
                failed.metadata,
                round(now_s, 3),
                failed.priority,
                failed.fairness_key,
                failed.endpoint,
                queue.name,
                failed.request,
                failed.tier,
            ),
            ttl_ms=self.queued_ttl_ms,
            priority=str(failed.priority),
            fairness_key=failed.fairness_key,
            batch=batch_of(job_id),
        )
