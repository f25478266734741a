"""The Batch tier: batch-tier jobs sent in provider batches (the provider's Batch API, at its batch
price), and their answers read back into the jobs' result documents.

A worker's attempt at a batch-tier job does not call the API: it puts the job in the collection of
its backend, endpoint and model (``collect.lua``: the job is ``batched``). One worker at a time per
queue (``lead.lua``) then moves the queue's provider batches through their steps
(``contract.PROVIDER_BATCH_STEPS``), each recorded in Redis (``batch_step.lua``) before the next is
taken, so that a worker killed at any step loses no job and starts no provider batch twice:

=========  ==========================================================  ==========================
step       what was done                                               the next step, if killed
=========  ==========================================================  ==========================
sealed     its jobs chosen from a collection that is full              upload (again)
           (``PROMPTQ_BATCH_MAX_LINES``, 190 MB) or whose window is
           over (``PROMPTQ_BATCH_WINDOW_S``): ``seal.lua``
uploaded   its JSONL file uploaded (``custom_id`` = the job id)        create
creating   its creation asked, with promptq's id in the provider       find it among the
           batch's ``metadata``                                        provider's batches by that
                                                                       id; create only if absent
created    the provider's id recorded; it is looked at after           look again
           ``PROMPTQ_BATCH_POLL_S``, then less and less often (at
           least every 10 minutes)
reading    it ended: its output and error files are read, their        read again (answers
           answers settled in runs (``batch_settle.lua``)              settled before are skipped)
ended      every job has its answer
=========  ==========================================================  ==========================

An answer is written as a live call's would be (``llm.answer``), with ``tier: "batch"`` and the
provider batch's id; a failed line with a retryable error goes into a later provider batch while the
job has tries left; an expired or cancelled provider batch's unanswered jobs go into a later one, or
back in line to run live (``PROMPTQ_BATCH_EXPIRED``). A job cancelled meanwhile keeps its cancelled
document: its answer is dropped. A file that was uploaded but not recorded (a worker killed during
the upload) is left at the provider, unused.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import secrets
import tempfile
import time
from collections.abc import AsyncIterator
from typing import IO, TYPE_CHECKING, Any, Final

import httpx2
import openai
from redis.asyncio import Redis

from promptq_core.background import REDIS_TROUBLE, Background
from promptq_core.contract import (
    COLLECTING,
    PROVIDER_BATCHES,
    JobResult,
    QueueKeys,
    Reply,
    as_text,
    dumps,
    loads,
)
from promptq_core.validation import InvalidJobError, PromptJob
from worker import llm
from worker.backends import Backend
from worker.jobs import BATCH_KEEP_S
from worker.lifecycle import report_finished
from worker.logs import get_logger
from worker.scripts import WorkerScript

if TYPE_CHECKING:
    from worker.config import WorkerConfig
    from worker.state import WorkerState

__all__ = ["Batcher"]

log = get_logger("promptq.batch")

TICK_S: Final = 1.0
"""The lead looks for full collections and due steps this often (more often when
``PROMPTQ_BATCH_WINDOW_S`` or ``PROMPTQ_BATCH_POLL_S`` is shorter)."""
MAX_BYTES: Final = 190_000_000
"""A provider batch's requests together at most (OpenAI takes files of 200 MB)."""
POLL_MAX_S: Final = 600.0
ANSWERS_CHUNK: Final = 200
"""Answers settled in one script call."""
CHUNK: Final = 500
"""Job records read in one command while a file is written."""
ENDED: Final = frozenset({"completed", "expired", "cancelled", "failed"})
"""The provider's statuses of a batch that will answer no more."""
RETRY_S: Final = 30.0
"""A step the provider refused for a passing reason (5xx, no connection) is tried again this much later."""
FIND_BACK_S: Final = 3600
"""A provider batch being found again (step ``creating``) was created at most this long before its jobs were sealed."""
METADATA_ID: Final = "promptq_batch"
"""The provider batch's ``metadata`` field holding promptq's id of it."""


class LostLeadError(Exception):
    """Another worker leads the queue's provider batches now: this one stops where it is."""


class Batcher:
    """One worker's part in the Batch tier: while it leads a queue's provider batches, it seals
    collections, and moves each provider batch on by one step when it is due."""

    def __init__(self, redis: Redis, state: WorkerState, worker_id: str) -> None:
        self.redis, self.state, self.worker_id = redis, state, worker_id
        self._lead = WorkerScript(redis, "lead")
        self._seal = WorkerScript(redis, "seal", rides_out=True)
        self._step = WorkerScript(redis, "batch_step", rides_out=True)
        self._settle = WorkerScript(redis, "batch_settle", rides_out=True)
        self._loop = Background("promptq-provider-batches")

    @property
    def config(self) -> WorkerConfig:
        return self.state.config

    def start(self) -> None:
        self._loop.start(self._run)

    async def stop(self) -> None:
        await self._loop.stop()

    async def _run(self) -> None:
        while True:
            for queue in self.state.queues:  # a queue whose shard fails holds up no other's
                try:
                    await self.tick(queue.keys)
                except LostLeadError:
                    log.info("batch.lead_lost", queue=queue.keys.name)
                except REDIS_TROUBLE as e:
                    log.warning("batch.redis_error", queue=queue.keys.name, error=str(e))
                except Exception:  # a bug: logged, and the next tick goes on
                    log.exception("batch.internal_error", queue=queue.keys.name)
            await asyncio.sleep(max(0.05, min(TICK_S, self.config.batch.window_s / 2, self.config.batch.poll_s)))

    async def tick(self, keys: QueueKeys) -> None:
        """Seal the collections that are due, then take every provider batch's due step (the lead
        renewed meanwhile, however long a step takes)."""
        if not await self._leads(keys):
            return
        renewing = Background("promptq-provider-batches-lead")
        renewing.start(lambda: self._keep_leading(keys))
        try:
            await self._due(keys)
        finally:
            await renewing.stop()

    async def _keep_leading(self, keys: QueueKeys) -> None:
        while True:
            await asyncio.sleep(self.config.lease_s / 3)
            with contextlib.suppress(*REDIS_TROUBLE):  # (the step's own calls meet it too)
                await self._leads(keys)

    async def _due(self, keys: QueueKeys) -> None:
        now_ms = await self._now_ms()
        window_ms = self.config.batch.window_s * 1000
        for raw, joined_ms in await self.redis.zrange(keys.key(COLLECTING), 0, -1, withscores=True):
            collection = as_text(raw)
            full = await self.redis.zcard(keys.collect(collection)) >= self.config.batch.max_lines
            if full or joined_ms + window_ms <= now_ms:
                await self._seal_one(keys, collection)
        due = await self.redis.zrangebyscore(keys.key(PROVIDER_BATCHES), "-inf", now_ms, start=0, num=20)
        for raw in due:
            await self._take_step(keys, as_text(raw))

    async def _leads(self, keys: QueueKeys) -> bool:
        ttl_ms = round(self.config.lease_s * 1000)  # (a dead worker's lead passes on as its jobs' leases do)
        return bool(await self._lead(keys, worker=self.worker_id, ttl_ms=ttl_ms) == Reply.LEADS)

    async def _still_leads(self, keys: QueueKeys) -> None:
        if not await self._leads(keys):
            raise LostLeadError

    async def _now_ms(self) -> int:
        seconds, micros = await self.redis.time()
        return int(seconds) * 1000 + int(micros) // 1000

    # -- sealed ------------------------------------------------------------------------------------
    async def _seal_one(self, keys: QueueKeys, collection: str) -> None:
        batch_id = "pq_" + secrets.token_hex(8)
        lines, size = await self._seal(
            keys,
            collect=keys.collect(collection),
            batch=keys.provider_batch(batch_id),
            jobs=keys.provider_batch_jobs(batch_id),
            batch_id=batch_id,
            collection=collection,
            max_lines=self.config.batch.max_lines,
            max_bytes=MAX_BYTES,
        )
        if lines:
            log.info("batch.sealed", batch=batch_id, collection=collection, lines=int(lines), bytes=int(size))

    # -- each step -------------------------------------------------------------------------------
    async def _take_step(self, keys: QueueKeys, batch_id: str) -> None:
        stored: dict[Any, Any] = await self.redis.hgetall(keys.provider_batch(batch_id))  # type: ignore[misc]
        record = {as_text(k): as_text(v) for k, v in stored.items()}
        if not record:  # (its record expired: nothing to do)
            await self.redis.zrem(keys.key(PROVIDER_BATCHES), batch_id)
            return
        backend_name, endpoint, model = record["collection"].split(" ", 2)
        backend = next((b for b in self.config.all_backends() if b.name == backend_name), None)
        if backend is None:  # the fleet's backends changed: it waits for a worker that has it
            await self._record(keys, batch_id, record["step"], due_in_s=RETRY_S)
            log.warning("batch.backend_unknown", batch=batch_id, backend=backend_name)
            return
        batch = _Batch(keys, batch_id, record, backend, endpoint, model)
        try:
            steps = {
                "sealed": self._upload,
                "uploaded": self._create,
                "creating": self._find_or_create,
                "created": self._poll,
                "reading": self._read,
            }
            if (step := steps.get(record["step"])) is not None:
                await step(batch)
        except (
            openai.APIConnectionError,
            openai.APITimeoutError,
            openai.InternalServerError,
            httpx2.TransportError,
            TimeoutError,
        ) as e:
            log.warning("batch.provider_unreachable", batch=batch_id, step=record["step"], error=type(e).__name__)
            await self._record(keys, batch_id, record["step"], due_in_s=RETRY_S)
        except openai.RateLimitError:
            await self._record(keys, batch_id, record["step"], due_in_s=RETRY_S)
        except openai.APIStatusError as e:  # the provider refuses this batch (a 4xx): its jobs fail with its word
            type_, _retryable = llm.classify(e.status_code, e.code)
            message = e.message[:1000]
            if e.status_code in (404, 405) and record["step"] == "sealed":  # (a server without the Files API)
                message = (
                    f"backend {backend_name!r} answered {e.status_code} to its file's upload: it may not offer the "
                    f'Batch API (PROMPTQ_BATCH_API, "batch": true); {message}'
                )
            error = llm.LLMError(type_, message, retryable=False, status_code=e.status_code)
            await self._refused(batch, record["step"], error)
        except (LostLeadError, *REDIS_TROUBLE):
            raise
        except Exception:  # a bug: logged; the batch is looked at again later, not at every tick
            log.exception("batch.step_failed", batch=batch_id, step=record["step"])
            await self._record(keys, batch_id, record["step"], due_in_s=RETRY_S)

    @property
    def _creating_grace_s(self) -> float:
        """How long a request to create a provider batch may be under way: its bound (the request
        timeout, around the whole call), and the time its lead takes to pass on should its worker die."""
        return self.config.request_timeout_s + self.config.lease_s

    def _client(self, batch: _Batch) -> openai.AsyncOpenAI:
        return self.state.clients.take(batch.backend.name)

    async def _record(
        self,
        keys: QueueKeys,
        batch_id: str,
        at_step: str,
        *,
        due_in_s: float = 0.0,
        ended: bool = False,
        check: tuple[str, str] = ("", ""),
        **fields: Any,
    ) -> bool:
        """Record what a step learnt (``step=`` when it moves on), if the batch is still at ``at_step``
        (and its field ``check[0]`` holds ``check[1]``: the attempt at the step is still this one)."""
        pairs = [str(x) for name, value in fields.items() for x in (name, value)]
        reply = await self._step(
            keys,
            batch=keys.provider_batch(batch_id),
            jobs=keys.provider_batch_jobs(batch_id),
            batch_id=batch_id,
            at_step=at_step,
            due_in_ms=-1 if ended else round(due_in_s * 1000),
            keep_ms=self.config.result_ttl_s * 1000,
            check_field=check[0],
            check_value=check[1],
            fields=pairs,
        )
        return bool(reply == Reply.STEP_RECORDED)

    async def _upload(self, batch: _Batch) -> None:
        keys = batch.keys
        ids = [as_text(i) for i in await self.redis.zrange(keys.provider_batch_jobs(batch.id), 0, -1)]
        with tempfile.TemporaryFile() as file:
            lines, invalid = await self._write_lines(batch, ids, file)
            if invalid:
                await self._settle_answers(batch, invalid)
            if not lines:  # every job was cancelled (or invalid) meanwhile
                await self._record(keys, batch.id, "sealed", ended=True, step="ended", status="empty")
                return
            await self._still_leads(keys)
            file.seek(0)
            uploaded = await self._client(batch).files.create(file=(f"{batch.id}.jsonl", file), purpose="batch")
        if await self._record(keys, batch.id, "sealed", step="uploaded", file_id=uploaded.id, lines=lines):
            log.info("batch.uploaded", batch=batch.id, file_id=uploaded.id, lines=lines)
            batch.record.update(step="uploaded", file_id=uploaded.id)
            await self._create(batch)

    async def _write_lines(self, batch: _Batch, ids: list[str], file: IO[bytes]) -> tuple[int, list[_Answer]]:
        """Write the jobs' requests as JSONL lines; ``(lines written, the answers of invalid jobs)``."""
        keys, lines, invalid = batch.keys, 0, []
        url = batch.endpoint  # (the API's path, /v1/...)
        own_model = batch.backend.serves(batch.model) or batch.model
        for start in range(0, len(ids), CHUNK):
            run = ids[start : start + CHUNK]
            records = await self.redis.mget([keys.record(i) for i in run])
            for job_id, record in zip(run, records, strict=True):
                if record is None:  # cancelled meanwhile
                    continue
                try:
                    job = _job(keys, job_id, record, self.config.max_payload_bytes)
                except InvalidJobError as e:
                    invalid.append(_Answer(job_id, error=llm.LLMError("invalid_payload", str(e), retryable=False)))
                    continue
                _, body = llm.request(job, own_model)
                line = {"custom_id": job_id, "method": "POST", "url": url, "body": body}
                file.write(dumps(line).encode() + b"\n")
                lines += 1
            await self._still_leads(keys)
        return lines, invalid

    async def _create(self, batch: _Batch) -> None:
        """Ask the provider for the batch, once ``creating`` (with this attempt's token) is recorded.
        An answer that does not say it was not created (a timeout, a 5xx) leaves it at
        ``creating``: it is looked for before it is asked for again."""
        keys = batch.keys
        token = str(await self._now_ms())
        if not await self._record(
            keys, batch.id, "uploaded", due_in_s=self._creating_grace_s, step="creating", creating_ms=token
        ):
            return
        metadata = {METADATA_ID: batch.id, "promptq_queue": keys.name}
        try:
            async with asyncio.timeout(self.config.request_timeout_s):
                created = await self._client(batch).batches.create(
                    input_file_id=batch.record["file_id"],
                    endpoint=batch.endpoint,  # type: ignore[arg-type]
                    completion_window="24h",
                    metadata=metadata,
                )
        except openai.APIStatusError as e:
            if e.status_code >= 500 or e.status_code in (408, 409, 429):  # (it may exist): looked for first
                log.warning("batch.create_unsure", batch=batch.id, status_code=e.status_code)
                return
            type_, _retryable = llm.classify(e.status_code, e.code)
            refused = llm.LLMError(type_, e.message[:1000], retryable=False, status_code=e.status_code)
            await self._refused(batch, "creating", refused)
            return
        await self._created(batch, created, token)

    async def _created(self, batch: _Batch, created: Any, token: str) -> None:
        """Record the provider batch created in the attempt ``token``; one that another attempt
        superseded meanwhile is cancelled at the provider (its jobs are in the other's)."""
        if await self._record(
            batch.keys,
            batch.id,
            "creating",
            due_in_s=self.config.batch.poll_s,
            check=("creating_ms", token),
            step="created",
            provider_batch=created.id,
            status=created.status,
        ):
            log.info("batch.created", batch=batch.id, provider_batch=created.id, lines=batch.record.get("lines"))
            return
        log.warning("batch.created_twice", batch=batch.id, provider_batch=created.id, note="cancelled at the provider")
        await self._client(batch).batches.cancel(created.id)

    async def _find_or_create(self, batch: _Batch) -> None:
        """A provider batch left at ``creating`` (its worker died asking, or could not tell whether
        the provider made it): once that request cannot be under way any more, find it at the
        provider by promptq's id, or create it."""
        keys, token = batch.keys, batch.record.get("creating_ms", "0")
        waited_s = (await self._now_ms() - int(token)) / 1000
        grace_s = self._creating_grace_s
        if waited_s < grace_s:
            await self._record(keys, batch.id, "creating", due_in_s=grace_s - waited_s)
            return
        since_s = int(batch.record.get("sealed_ms", "0")) // 1000 - FIND_BACK_S
        async with asyncio.timeout(self.config.request_timeout_s * 3):
            found = await self._find(batch, since_s)
        if found is not None:
            log.info("batch.found_again", batch=batch.id, provider_batch=found.id)
            await self._created(batch, found, token)
        elif await self._record(keys, batch.id, "creating", check=("creating_ms", token), step="uploaded"):
            batch.record["step"] = "uploaded"
            await self._create(batch)

    async def _find(self, batch: _Batch, since_s: int) -> Any:
        async for found in self._client(batch).batches.list(limit=100):
            if (found.metadata or {}).get(METADATA_ID) == batch.id:
                return found
            if found.created_at < since_s:
                return None
        return None

    async def _poll(self, batch: _Batch) -> None:
        keys, polls = batch.keys, int(batch.record.get("polls", "0")) + 1
        found = await self._client(batch).batches.retrieve(batch.record["provider_batch"])
        counts = dumps(found.request_counts.model_dump() if found.request_counts else {})
        if found.status not in ENDED:
            due_in_s = min(POLL_MAX_S, self.config.batch.poll_s * 2**polls)
            await self._record(
                keys, batch.id, "created", due_in_s=due_in_s, status=found.status, counts=counts, polls=polls
            )
            return
        errors = found.errors.data if found.errors and found.errors.data else []
        reason = "; ".join(e.message or e.code or "" for e in errors)[:1000]
        fields: dict[str, Any] = dict(status=found.status, counts=counts, polls=polls, error=reason)
        fields.update(output_file_id=found.output_file_id or "", error_file_id=found.error_file_id or "")
        if await self._record(keys, batch.id, "created", step="reading", **fields):
            log.info(
                "batch.ended_at_provider", batch=batch.id, provider_batch=found.id, status=found.status, counts=counts
            )
            batch.record.update(step="reading", **{k: str(v) for k, v in fields.items()})
            await self._read(batch)

    # -- reading ---------------------------------------------------------------------------------
    async def _read(self, batch: _Batch) -> None:
        keys = batch.keys
        for name in ("output_file_id", "error_file_id"):
            if file_id := batch.record.get(name):
                async for answers in self._answers(batch, file_id):
                    await self._settle_answers(batch, answers)
                    await self._still_leads(keys)
        left = [as_text(i) for i in await self.redis.zrange(keys.provider_batch_jobs(batch.id), 0, -1)]
        status = batch.record.get("status", "")
        for start in range(0, len(left), ANSWERS_CHUNK):
            run = left[start : start + ANSWERS_CHUNK]
            await self._settle_answers(
                batch, [_unanswered(job_id, status, batch.record.get("error", "")) for job_id in run]
            )
        if await self._record(keys, batch.id, "reading", ended=True, step="ended"):
            log.info(
                "batch.read", batch=batch.id, provider_batch=batch.record.get("provider_batch"), unanswered=len(left)
            )

    async def _answers(self, batch: _Batch, file_id: str) -> AsyncIterator[list[_Answer]]:
        """The answers of one output or error file, read as it streams, in runs of ``ANSWERS_CHUNK``."""
        run: list[_Answer] = []
        async with self._client(batch).files.with_streaming_response.content(file_id) as response:
            async for line in response.iter_lines():
                if not line.strip():
                    continue
                answer = _answer_of(line)
                if answer is None:
                    log.warning("batch.unreadable_line", batch=batch.id, file_id=file_id)
                    continue
                run.append(answer)
                if len(run) >= ANSWERS_CHUNK:
                    yield run
                    run = []
        if run:
            yield run

    async def _refused(self, batch: _Batch, at_step: str, error: llm.LLMError) -> None:
        """The provider refused the provider batch itself (not a passing error): its jobs fail with its word."""
        keys = batch.keys
        ids = [as_text(i) for i in await self.redis.zrange(keys.provider_batch_jobs(batch.id), 0, -1)]
        log.warning("batch.refused", batch=batch.id, error_type=error.type, status_code=error.status_code)
        for start in range(0, len(ids), ANSWERS_CHUNK):
            await self._settle_answers(batch, [_Answer(i, error=error) for i in ids[start : start + ANSWERS_CHUNK]])
        await self._record(keys, batch.id, at_step, ended=True, step="ended", status="refused", error=error.message)

    async def _settle_answers(self, batch: _Batch, answers: list[_Answer]) -> None:
        """Turn a run of answers into the jobs' documents, settle them in one script, report the ended."""
        keys = batch.keys
        ids = [a.job_id for a in answers]
        docs = await self.redis.mget([keys.result(i) for i in ids])
        records = await self.redis.mget([keys.record(i) for i in ids])
        settled: list[tuple[JobResult, llm.LLMError | None]] = []
        values: list[str] = []
        for answer, doc, record in zip(answers, docs, records, strict=True):
            if doc is None:
                continue  # expired: nothing of it to write
            base = JobResult.from_json(doc)
            if base.done:  # cancelled: its answer is dropped (the script lets go of it)
                values += [answer.job_id, "dropped", ""]
                settled.append((base, None))
                continue
            how, result, error = self._outcome(batch, answer, base, keys, record)
            values += [answer.job_id, how, result.to_json()]
            settled.append((result, error) if how in ("succeeded", "failed") else (result, None))
        if not values:
            return
        replies = await self._settle(
            keys,
            jobs=keys.provider_batch_jobs(batch.id),
            collect=keys.collect(batch.record["collection"]),
            ttl_ms=self.config.result_ttl_s * 1000,
            collection=batch.record["collection"],
            keep_ms=round((BATCH_KEEP_S + self.config.result_ttl_s) * 1000),
            answers=values,
        )
        for (result, error), ended in zip(settled, replies, strict=True):
            if not ended:
                continue
            if result.done:
                await report_finished(self.state, result, error)
            else:
                log.info(
                    "job.batched_again",
                    job_id=result.job_id,
                    status=result.status,
                    error_type=result.error and result.error.type,
                )

    def _outcome(
        self, batch: _Batch, answer: _Answer, base: JobResult, keys: QueueKeys, record: bytes | None
    ) -> tuple[str, JobResult, llm.LLMError | None]:
        """``(how, document, error)`` for one job's answer (``batch_settle.lua``'s ``how``)."""
        now = round(time.time(), 3)
        latency_ms = None if base.started_at is None else max(0, round((now - base.started_at) * 1000))
        base = dataclasses.replace(
            base, provider_batch=batch.record.get("provider_batch") or None, backend=batch.backend.name
        )
        error = answer.error
        if record is None:  # (kept two days past its sending: gone only if Redis lost it)
            lost = llm.LLMError(
                "request_expired", "its request expired from Redis before its answer was read", retryable=True
            )
            failed = dataclasses.replace(
                base, status="failed", error=lost.to_error(), finished_at=now, latency_ms=latency_ms
            )
            return "failed", failed, lost
        if answer.body is not None:
            try:
                job = _job(keys, base.job_id, record, self.config.max_payload_bytes)
                completion = llm.answer(job, answer.body)
            except (InvalidJobError, llm.LLMError) as e:
                error = e if isinstance(e, llm.LLMError) else llm.LLMError("invalid_payload", str(e), retryable=False)
            else:
                return "succeeded", completion.succeeded(base, finished_at=now, latency_ms=latency_ms), None
        assert error is not None
        if error.type == EXPIRED_ERROR and self.config.batch.expired == "live":  # its try given back
            queued = dataclasses.replace(base, status="queued", attempts=base.attempts - 1, started_at=None)
            return "live", dataclasses.replace(queued, error=error.to_error()), error
        if error.retryable and base.attempts < self.config.max_tries:
            return "again", dataclasses.replace(base, attempts=base.attempts + 1, error=error.to_error()), error
        failed = dataclasses.replace(
            base, status="failed", error=error.to_error(), finished_at=now, latency_ms=latency_ms
        )
        return "failed", failed, error


@dataclasses.dataclass(slots=True)
class _Batch:
    keys: QueueKeys
    id: str
    record: dict[str, str]
    backend: Backend
    endpoint: str
    model: str


@dataclasses.dataclass(frozen=True, slots=True)
class _Answer:
    """One job's line of an output or error file: the body the API answered, or the error."""

    job_id: str
    body: Any = None
    error: llm.LLMError | None = None


EXPIRED_ERROR: Final = "batch_expired"


def _answer_of(line: bytes | str) -> _Answer | None:
    """One line of an output or error file (``custom_id``, ``response`` with ``status_code`` and
    ``body``, ``error``); None when it is not one."""
    try:
        row = json.loads(line)
    except ValueError:
        return None
    job_id = row.get("custom_id") if isinstance(row, dict) else None
    if not isinstance(job_id, str):
        return None
    response, error = row.get("response"), row.get("error")
    if isinstance(response, dict) and response.get("status_code") == 200:
        return _Answer(job_id, body=response.get("body"))
    if isinstance(response, dict) and isinstance(response.get("status_code"), int):
        return _Answer(job_id, error=llm.error_of(response["status_code"], response.get("body")))
    error = error if isinstance(error, dict) else {}
    code, message = str(error.get("code") or "batch_error"), str(error.get("message") or "the line failed")[:1000]
    if code == EXPIRED_ERROR:
        return _Answer(job_id, error=llm.LLMError(EXPIRED_ERROR, message, retryable=True))
    return _Answer(job_id, error=llm.LLMError("bad_request", f"{code}: {message}", retryable=False))


def _unanswered(job_id: str, status: str, reason: str) -> _Answer:
    """A job its ended provider batch left without an answer."""
    if status in ("expired", "cancelled"):
        message = f"its provider batch {status} before answering it"
        return _Answer(job_id, error=llm.LLMError(EXPIRED_ERROR, message, retryable=True))
    if status == "failed":
        message = f"the provider failed the batch: {reason or 'no reason given'}"
        return _Answer(job_id, error=llm.LLMError("batch_failed", message, retryable=False))
    return _Answer(
        job_id, error=llm.LLMError("no_answer", "its provider batch ended without its answer", retryable=True)
    )


def _job(keys: QueueKeys, job_id: str, record: bytes | str, max_payload_bytes: int) -> PromptJob:
    """The job whose arq record this is (``InvalidJobError`` for one that is not)."""
    try:
        payload = loads(record)["a"][0]
    except (ValueError, KeyError, IndexError, TypeError):
        raise InvalidJobError("its record is not a promptq job's") from None
    return PromptJob.from_payload(job_id, payload, max_payload_bytes, keys.name)
