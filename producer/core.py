"""One core under both producers: what each method does with Redis, as a generator, without I/O.

Each method here *yields* the steps it needs (a Redis command, a Lua script, the facts the
eviction guard reads) and is sent back each step's reply; it *returns* the method's answer.
``Producer`` awaits each step, ``SyncProducer`` runs it blocking: the two differ in nothing but
that (and :func:`advance` is their whole loop).

    def get(job_id):                       # a method of the core
        raw = yield Command("get", queue.result(job_id))
        return parse(raw)

Only ``wait`` is not here: each driver waits for the done message its own way (see
``producer.notify``), around :class:`Deadline`.
"""

from __future__ import annotations

import time
from collections.abc import Generator, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from producer.errors import JobConflictError, JobNotFoundError, RetryRefusedError
from producer.notify import FALLBACK_POLL_S, READ_CHUNK
from producer.overview import (
    OVERVIEW_BACKENDS,
    OVERVIEW_BATCHES,
    OVERVIEW_FAILURES,
    OVERVIEW_KEYS_MAX,
    OVERVIEW_MINUTES,
    SCAN_MAX,
    Overview,
    backends_named,
)
from producer.streams import READ_BLOCK_MS, StreamCursor
from producer.types import DEPTHS_KEYS_MAX, Cancellation, QueueDepths, StreamEvent
from producer.writes import Bound, Writes
from promptq_core.contract import (
    COLLECTING,
    FAILED,
    PROVIDER_BATCHES,
    PROVIDER_BATCHES_ENDED,
    JobResult,
    QueueKeys,
    Reply,
    as_text,
    circuit_key,
    loads,
    queue_keys,
)
from promptq_core.scripts import Value, script
from promptq_core.validation import PromptJob, valid_batch_name

__all__ = [
    "CANCEL_ATTEMPTS",
    "DEFAULT_WAIT_TIMEOUT_S",
    "SCRIPTS",
    "Command",
    "Deadline",
    "GuardFacts",
    "Op",
    "Script",
    "Step",
]

SCRIPTS = ("submit", "submit_many", "retry", "cancel", "depths", "overview", "fleet", "open_batch")
"""The Lua scripts a producer runs (``producer/lua/``, and ``depths`` from the core), registered once per producer."""
CANCEL_ATTEMPTS = 20
"""Times ``cancel`` reads again when the document changes under it (a worker starting the job)."""
DEFAULT_WAIT_TIMEOUT_S = 60.0

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Command:
    """A Redis command, by its redis-py method name: its reply is sent back."""

    name: str
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, name: str, *args: Any, **kwargs: Any) -> Command:
        return cls(name, args, kwargs)


@dataclass(frozen=True, slots=True)
class Script:
    """One of :data:`SCRIPTS` with its keys and arguments. With ``replicas``, it is followed on the
    same connection by ``WAIT replicas timeout_ms``. The reply sent back: ``(its reply, replicas
    that confirmed)``, the second None when none were asked for."""

    name: str
    keys: list[str]
    args: list[Value]
    replicas: int = 0
    timeout_ms: int = 0


@dataclass(frozen=True, slots=True)
class GuardFacts:
    """What the eviction guard needs to know of this Redis (``promptq_core.guard.RedisFacts``)."""


Step = Command | Script | GuardFacts
Op = Generator[Step, Any, T]
"""A core method: yields steps, is sent their replies, returns the answer."""


def parse(raw: bytes | str | None) -> JobResult | None:
    return None if raw is None else JobResult.from_json(raw)


# -- writes ---------------------------------------------------------------------------------------
def _guard_once(writes: Writes) -> Op[None]:
    """Once, before a producer's first write: is this Redis safe to write to (``promptq_core.guard``)?"""
    if not writes.checked:
        writes.check((yield GuardFacts()))


def _write(writes: Writes, name: str, bound: Bound) -> Script:
    keys, args = bound
    config = writes.config
    return Script(name, keys, args, config.min_replicas, config.replica_timeout_ms)


def _confirmed(writes: Writes, reply: tuple[Any, int | None]) -> Any:
    """A write script's reply; :class:`NotReplicatedError` when fewer replicas confirmed it than asked."""
    answer, acked = reply
    if acked is not None:
        writes.replicated(acked)
    return answer


def submit(writes: Writes, prompt: str | None, kwargs: Mapping[str, Any]) -> Op[str]:
    job = writes.build(prompt, **kwargs)
    call = writes.submit(job, time.time())
    yield from _guard_once(writes)
    if _confirmed(writes, (yield _write(writes, "submit", call))) == Reply.CONFLICT:
        raise JobConflictError(job.job_id)
    return job.job_id


def submit_many(writes: Writes, items: Iterable[str | Mapping[str, Any]]) -> Op[list[str]]:
    items = list(items)
    jobs = writes.build_many(items)
    yield from _guard_once(writes)
    calls = list(writes.chunks(jobs))
    chosen = [job for job, item in zip(jobs, items, strict=True) if isinstance(item, Mapping) and "job_id" in item]
    if len(calls) > 1 and chosen:  # each chunk's script checks its ids; a conflict in a later one writes nothing either
        yield from _no_conflict(chosen)
    for call in calls:  # a round trip each
        outcome, detail = _confirmed(writes, (yield _write(writes, "submit_many", call)))
        if outcome == Reply.CONFLICT:  # (that chunk wrote nothing; earlier ones enqueued only new ids)
            raise JobConflictError(as_text(detail))
    return [job.job_id for job in jobs]


def _no_conflict(jobs: list[PromptJob]) -> Op[None]:
    """:class:`JobConflictError` for an id known, or given twice, with another request (a read before
    any write, for a call of more than one chunk)."""
    asked: dict[tuple[str, str], str] = {}
    for job in jobs:
        if asked.setdefault((job.queue, job.job_id), job.request) != job.request:
            raise JobConflictError(job.job_id)
    by_queue: dict[str, list[PromptJob]] = {}
    for job in jobs:
        by_queue.setdefault(job.queue, []).append(job)
    for name, queued in by_queue.items():
        keys = queue_keys(name)
        for start in range(0, len(queued), READ_CHUNK):
            chunk = queued[start : start + READ_CHUNK]
            docs = yield Command.of("mget", [keys.result(j.job_id) for j in chunk])
            for job, raw in zip(chunk, docs, strict=True):
                if raw is not None and (known := parse(raw).request) and known != job.request:  # type: ignore[union-attr]
                    raise JobConflictError(job.job_id)


def retry(writes: Writes, queue: QueueKeys, job_id: str) -> Op[str]:
    yield from _guard_once(writes)
    doc, record = yield Command.of("mget", Writes.retry_reads(queue, job_id))
    call = writes.retry(queue, job_id, doc, record, time.time())
    outcome = _confirmed(writes, (yield _write(writes, "retry", call)))
    if (outcome := as_text(outcome)) == Reply.NO_DOCUMENT:  # a race lost to expiry or to another retry
        raise RetryRefusedError(f"job {job_id!r} is unknown or its result has expired")
    if outcome == Reply.NOT_FAILED:
        raise RetryRefusedError(f"job {job_id!r} is no longer failed (retried already?)")
    return job_id


def cancel(queue: QueueKeys, job_id: str) -> Op[Cancellation]:
    for _ in range(CANCEL_ATTEMPTS):
        doc = yield Command.of("get", queue.result(job_id))
        call = Writes.cancel(queue, job_id, doc, time.time())
        if isinstance(call, Cancellation):
            return call
        (keys, args), cancelled = call
        done, _ = yield Script("cancel", keys, args)
        if done == Reply.CANCELLED:
            return Cancellation(job_id, cancelled=True, result=cancelled)
    raise RuntimeError(f"job {job_id!r} kept changing while it was being cancelled")


# -- reads ----------------------------------------------------------------------------------------
def get(queue: QueueKeys, job_id: str) -> Op[JobResult | None]:
    return parse((yield Command.of("get", queue.result(job_id))))


def _document_keys(queue: QueueKeys, job_ids: Iterable[str]) -> Iterator[list[str]]:
    """The jobs' document keys, ``READ_CHUNK`` to a command."""
    keys = [queue.result(i) for i in job_ids]
    for start in range(0, len(keys), READ_CHUNK):
        yield keys[start : start + READ_CHUNK]


def get_many(queue: QueueKeys, job_ids: Iterable[str]) -> Op[list[JobResult | None]]:
    results: list[JobResult | None] = []
    for keys in _document_keys(queue, job_ids):
        results += map(parse, (yield Command.of("mget", keys)))
    return results


def known(queue: QueueKeys, job_ids: Iterable[str]) -> Op[int]:
    found = 0
    for keys in _document_keys(queue, job_ids):
        found += yield Command.of("exists", *keys)
    return found


def save_manifest(writes: Writes, queue: QueueKeys, name: str, manifest: str) -> Op[None]:
    yield from _guard_once(writes)
    yield Command.of("set", queue.batch(name), manifest, px=writes.queued_ttl_ms)


def open_batch(writes: Writes, queue: QueueKeys, name: str, total: int) -> Op[None]:
    valid_batch_name(name)
    yield from _guard_once(writes)
    keys, args = script("open_batch").bind(
        queue, tally=queue.batch_tally(name), name=name, total=int(total), ttl_ms=writes.queued_ttl_ms
    )
    yield Script("open_batch", keys, args)


def batch_counts(queue: QueueKeys, name: str) -> Op[dict[str, float] | None]:
    """A batch's tally as the workers' roll-ups keep it (None: the batch has none)."""
    raw = yield Command.of("hgetall", queue.batch_tally(name))
    return {as_text(k): float(v) for k, v in raw.items()} if raw else None


def manifest(queue: QueueKeys, name: str) -> Op[str | None]:
    raw = yield Command.of("get", queue.batch(name))
    return None if raw is None else as_text(raw)


def depths(queue: QueueKeys) -> Op[QueueDepths]:
    keys, args = script("depths").bind(queue, keys_max=DEPTHS_KEYS_MAX)
    reply, _ = yield Script("depths", keys, args)
    return QueueDepths.from_reply(reply, queue.name)


PROVIDER_BATCHES_SHOWN = 100
"""Provider batches not ended, and collections, that ``provider_batches`` shows at most."""
ENDED_SHOWN = 20
"""Ended provider batches it shows (the newest)."""


def provider_batches(queue: QueueKeys) -> Op[dict[str, list[dict[str, Any]]]]:
    """The Batch tier in ``queue``: the collections with jobs waiting to be sent (``collecting``),
    the provider batches not ended and the newest ended (``provider_batches``)."""
    collecting = yield Command.of("zrange", queue.key(COLLECTING), 0, PROVIDER_BATCHES_SHOWN - 1, withscores=True)
    waiting = []
    for raw, since_ms in collecting:
        name = as_text(raw)
        jobs = yield Command.of("zcard", queue.collect(name))
        backend, endpoint, model = _collection_parts(name)
        since = round(since_ms / 1000, 3) if since_ms else None
        waiting.append({"backend": backend, "endpoint": endpoint, "model": model, "jobs": int(jobs), "since": since})
    active = yield Command.of("zrange", queue.key(PROVIDER_BATCHES), 0, PROVIDER_BATCHES_SHOWN - 1)
    ended = yield Command.of("zrevrange", queue.key(PROVIDER_BATCHES_ENDED), 0, ENDED_SHOWN - 1)
    batches = []
    for raw in [*active, *ended]:
        record = yield Command.of("hgetall", queue.provider_batch(as_text(raw)))
        if record:
            batches.append(_provider_batch({as_text(k): as_text(v) for k, v in record.items()}))
    return {"collecting": waiting, "provider_batches": batches}


def _collection_parts(name: str) -> tuple[str, str, str]:
    """``(backend, endpoint, model)`` of a collection's name."""
    backend, _, rest = name.partition(" ")
    endpoint, _, model = rest.partition(" ")
    return backend, endpoint, model


def _provider_batch(record: dict[str, str]) -> dict[str, Any]:
    backend, endpoint, model = _collection_parts(record.get("collection", ""))
    try:
        counts = loads(record["counts"]) if record.get("counts") else None
    except ValueError:
        counts = None

    def seconds(name: str) -> float | None:
        value = record.get(name, "")
        return round(int(value) / 1000, 3) if value.isdigit() else None

    return {
        "id": record.get("id"),
        "provider_batch": record.get("provider_batch") or None,
        "step": record.get("step"),
        "status": record.get("status") or None,
        "backend": backend,
        "endpoint": endpoint,
        "model": model,
        "lines": int(record.get("lines", "0") or 0),
        "counts": counts if isinstance(counts, dict) else None,
        "sealed_at": seconds("sealed_ms"),
        "ended_at": seconds("ended_ms"),
        "error": record.get("error") or None,
    }


def failed(queue: QueueKeys, limit: int) -> Op[list[JobResult]]:
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise ValueError(f"limit must be a positive integer, got {limit!r}")
    ids = yield Command.of("zrevrange", queue.key(FAILED), 0, limit - 1)
    results = (yield from get_many(queue, (i.decode() for i in ids))) if ids else []
    return [r for r in results if r is not None and r.status == "failed"]


def overview(queue: QueueKeys) -> Op[Overview]:
    """The queue's part (one script in its slot), then the fleet's: the workers (one script in
    theirs) and the circuits of the backends they name (a read each, in the backends' slot)."""
    keys, args = script("overview").bind(
        queue, keys_max=OVERVIEW_KEYS_MAX, scan_max=SCAN_MAX, minutes=OVERVIEW_MINUTES, batches=OVERVIEW_BATCHES
    )
    reply, _ = yield Script("overview", keys, args)
    keys, args = script("fleet").bind()
    workers, _ = yield Script("fleet", keys, args)
    circuits: list[Any] = []
    for name in backends_named(workers)[:OVERVIEW_BACKENDS]:
        state = yield Command.of("hmget", circuit_key(name), "open_until", "opened_at", "fails")
        circuits += [name, *(v or "0" for v in state)]
    failures = yield from failed(queue, OVERVIEW_FAILURES)
    return Overview.from_reply(reply, workers, circuits, failures, queue.name)


def ping() -> Op[bool]:
    return bool((yield Command.of("ping")))


def stream_read(cursor: StreamCursor, block: bool = True) -> Op[list[StreamEvent]]:
    """One read of a job's stream (blocking for up to ``READ_BLOCK_MS``, unless ``block`` is False):
    the events it brought, or the ``done`` event when nothing came and the job has ended. A driver
    reads until ``cursor.finished`` (see ``SyncProducer.stream``)."""
    reply = yield Command("xread", (), {**cursor.read_args(), **({"block": READ_BLOCK_MS} if block else {})})
    if not reply and (final := cursor.ended((yield Command.of("get", cursor.doc_key)))) is not None:
        reply = yield Command("xread", (), cursor.read_args())  # what came meanwhile
        if not reply:
            return [cursor.done(None, final)]
    return (yield from stream_events(cursor, reply))


def stream_events(cursor: StreamCursor, reply: Any) -> Op[list[StreamEvent]]:
    """The events of an ``XREAD`` reply (entries the cursor has passed are left out); a ``done``
    event carries the final document."""
    events: list[StreamEvent] = []
    for event in cursor.events(reply):
        if event.type == "done":
            event = cursor.done(event, parse((yield Command.of("get", cursor.doc_key))))
        events.append(event)
    return events


def advance(op: Op[T], reply: Any) -> tuple[bool, Any]:
    """Send ``op`` the reply to its last step: ``(False, its next step)``, or ``(True, its answer)``
    once it has returned. A driver starts it with ``reply`` None."""
    try:
        return False, op.send(reply)
    except StopIteration as returned:
        return True, returned.value


class Deadline:
    """The deadline of one ``wait``; between reads a driver waits for the job's done message, at
    most ``FALLBACK_POLL_S`` (see ``producer.notify``)."""

    def __init__(self, job_id: str, timeout_s: float | None) -> None:
        self.job_id, self.timeout_s = job_id, timeout_s
        self.deadline = None if timeout_s is None else time.monotonic() + timeout_s

    def sleep_s(self, result: JobResult | None) -> float | None:
        """None when ``result`` is final; else how long to wait before the next read."""
        if result is None:
            raise JobNotFoundError(f"no job {self.job_id!r} (never submitted, or its result expired)")
        if result.done:
            return None
        if self.deadline is None:
            return FALLBACK_POLL_S
        left_s = self.deadline - time.monotonic()
        if left_s <= 0:
            raise TimeoutError(f"job {self.job_id!r} still {result.status} after {self.timeout_s} s")
        return min(FALLBACK_POLL_S, left_s)
