"""Batches for the ``promptq`` command: JSONL in (the OpenAI Batch API's input format or a plain
one), a manifest in Redis, progress, and JSONL out in the Batch API's output format.

A job's id is ``{batch}:{custom_id}`` (or ``{batch}:{line number}`` without one; a custom_id that
is not a valid id is hashed), so submitting the same file again enqueues nothing new: an
interrupted ``submit`` is simply run again.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from producer.writes import Writes
from promptq_core.contract import (
    CHAT_ENDPOINT,
    EMBEDDINGS_ENDPOINT,
    ENDPOINTS,
    RESPONSES_ENDPOINT,
    JobResult,
    dumps,
)
from promptq_core.prices import Price, cost_usd
from promptq_core.validation import JOB_ID_RE, InvalidJobError, valid_batch_name

__all__ = ["BadLine", "Batch", "Progress", "Tracker", "output_line", "parse_jsonl", "valid_batch_name"]

QUEUE_FIELDS = ("priority", "fairness_key", "tier", "webhook_url")
"""promptq's own fields a Batch API line may carry beside its body."""


@dataclass(frozen=True, slots=True)
class BadLine:
    line_no: int
    message: str


@dataclass(frozen=True, slots=True)
class Batch:
    """A parsed batch file: the jobs' submit arguments (``job_id`` included) in input order."""

    name: str
    items: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    """(custom_id, submit arguments) for each good line."""
    bad: list[BadLine] = field(default_factory=list)

    def manifest(self, now_s: float) -> str:
        return dumps(
            {"name": self.name, "submitted_at": round(now_s, 3), "items": [[c, a["job_id"]] for c, a in self.items]}
        )


def parse_jsonl(
    lines: Iterable[str],
    batch: str,
    writes: Writes,
    *,
    priority: int | None = None,
    fairness_key: str | None = None,
    tier: str | None = None,
    webhook_url: str | None = None,
) -> Batch:
    """Read each line as the Batch API's ``{"custom_id", "method", "url", "body"}`` or as plain
    ``{"prompt" | "messages", ...options, "custom_id"?}``; check it as ``submit`` would.

    A line may set its own ``priority``, ``fairness_key``, ``tier`` and ``webhook_url`` (in the Batch
    API's format, beside ``body``); else it takes those given here, and the fairness key defaults to the batch's
    name, so batches submitted together take turns."""
    parsed = Batch(valid_batch_name(batch))
    seen: dict[str, int] = {}
    for line_no, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            custom_id, arguments = _arguments(line, line_no)
            if custom_id in seen:
                raise InvalidJobError(f"custom_id {custom_id!r} repeats line {seen[custom_id]}")
            if "queue" in arguments:
                raise InvalidJobError("a line may not name a queue: the whole batch goes to --queue (or PROMPTQ_QUEUE)")
            arguments["job_id"] = _job_id(batch, custom_id)
            arguments.setdefault("fairness_key", fairness_key or batch)
            if priority is not None:
                arguments.setdefault("priority", priority)
            if tier is not None:
                arguments.setdefault("tier", tier)
            if webhook_url is not None:
                arguments.setdefault("webhook_url", webhook_url)
            writes.build(**arguments)  # the same checks as submit, before anything is written
        except (InvalidJobError, TypeError, ValueError) as e:
            parsed.bad.append(BadLine(line_no, str(e)))
            continue
        seen[custom_id] = line_no
        parsed.items.append((custom_id, arguments))
    return parsed


def _arguments(line: str, line_no: int) -> tuple[str, dict[str, Any]]:
    try:
        item = json.loads(line)
    except ValueError as e:
        raise InvalidJobError(f"not JSON: {e}") from None
    except RecursionError:
        raise InvalidJobError("JSON nested too deep to read") from None
    if not isinstance(item, dict):
        raise InvalidJobError("must be a JSON object")
    custom_id = item.pop("custom_id", None)
    if custom_id is None:
        custom_id = str(line_no)
    elif not isinstance(custom_id, str) or not custom_id:
        raise InvalidJobError("custom_id must be a non-empty string")
    if "body" in item:  # the Batch API's format
        url = item.get("url", CHAT_ENDPOINT)
        if item.get("method", "POST") != "POST" or url not in ENDPOINTS:
            raise InvalidJobError(f"only POST requests to {', '.join(ENDPOINTS)} can be run")
        unknown = set(item) - {"method", "url", "body", *QUEUE_FIELDS}
        if unknown or not isinstance(item["body"], dict):
            raise InvalidJobError(
                "a Batch API line has custom_id, method, url and a body object "
                "(and may have priority, fairness_key, tier, webhook_url)"
            )
        queue_fields = {k: item[k] for k in QUEUE_FIELDS if k in item}
        if overlap := sorted(queue_fields.keys() & item["body"].keys()):
            raise InvalidJobError(f"{', '.join(overlap)} given twice, beside and inside body")
        item = {**item["body"], **queue_fields}
        if url != CHAT_ENDPOINT:
            item["endpoint"] = url
    if "job_id" in item:
        raise InvalidJobError("job_id is not allowed: ids come from the batch name and custom_id")
    return custom_id, item


def _job_id(batch: str, custom_id: str) -> str:
    job_id = f"{batch}:{custom_id}"
    if JOB_ID_RE.fullmatch(job_id):
        return job_id
    return f"{batch}:{hashlib.sha256(custom_id.encode()).hexdigest()[:32]}"


def manifest_items(raw: str | None, name: str) -> list[tuple[str, str]]:
    """A saved manifest's ``(custom_id, job_id)`` pairs; :class:`LookupError` when there is none."""
    if raw is None:
        raise LookupError(f"no batch {name!r} (never submitted, or expired)")
    return [(c, j) for c, j in json.loads(raw)["items"]]


@dataclass
class Progress:
    """A batch's counts at one moment."""

    total: int
    by_status: dict[str, int] = field(default_factory=dict)
    tokens: int = 0
    cost_usd: float | None = None
    at_s: float = field(default_factory=time.monotonic)

    @classmethod
    def of(cls, results: Iterable[JobResult | None], total: int, prices: dict[str, Price]) -> Progress:
        progress = cls(total)
        for r in results:
            status = "expired" if r is None else r.status
            progress.by_status[status] = progress.by_status.get(status, 0) + 1
            if r is not None and r.usage is not None:
                progress.tokens += r.usage.total_tokens
                if (cost := cost_usd(prices, r.model, r.usage, r.tier)) is not None:
                    progress.cost_usd = (progress.cost_usd or 0.0) + cost
        return progress

    @classmethod
    def of_tally(cls, tally: dict[str, float], total: int) -> Progress:
        """The counts the workers' roll-ups keep (a second behind at most; a job run again counts
        each time it ends, so they are capped at the total)."""
        progress = cls(total)
        left = total
        for status in ("succeeded", "failed", "cancelled"):
            if n := min(left, int(tally.get(status, 0))):
                progress.by_status[status] = n
                left -= n
        if left:
            progress.by_status["waiting"] = left
        progress.tokens = int(tally.get("tokens", 0))
        progress.cost_usd = tally.get("cost_usd")
        return progress

    @property
    def finished(self) -> int:
        return sum(self.by_status.get(s, 0) for s in ("succeeded", "failed", "cancelled", "expired"))

    @property
    def done(self) -> bool:
        return self.finished >= self.total

    def to_json(self) -> dict[str, Any]:
        return {"total": self.total, **self.by_status, "tokens": self.tokens, "cost_usd": self.cost_usd}


class Tracker:
    """A batch's jobs until every one has ended, from their documents: a document is read while
    its job is pending, at most ``SWEEP_MAX`` a sweep, in turn, and once more when it has ended,
    then never again; what ended is counted as it is found, nothing kept."""

    def __init__(self, job_ids: list[str], prices: dict[str, Price]) -> None:
        self.pending, self.prices = list(job_ids), prices
        self.ended = Progress(len(job_ids))
        self._at = 0

    @property
    def done(self) -> bool:
        return not self.pending

    def progress(self) -> Progress:
        """What has ended, and how many are still pending (``waiting``)."""
        now = Progress(self.ended.total, dict(self.ended.by_status), self.ended.tokens, self.ended.cost_usd)
        if self.pending:
            now.by_status["waiting"] = len(self.pending)
        return now

    def sweep(self, read: Callable[[list[str]], list[JobResult | None]]) -> None:
        """Read the next pending jobs' documents (``SWEEP_MAX`` at most) and count those that ended."""
        if self._at >= len(self.pending):
            self._at = 0
        chunk = self.pending[self._at : self._at + SWEEP_MAX]
        ended = {job_id for job_id, r in zip(chunk, read(chunk), strict=True) if self._count(r)}
        kept = [job_id for job_id in chunk if job_id not in ended]
        self.pending[self._at : self._at + len(chunk)] = kept
        self._at += len(kept)

    def _count(self, result: JobResult | None) -> bool:
        if result is not None and not result.done:
            return False
        one = Progress.of([result], 1, self.prices)
        for status, n in one.by_status.items():
            self.ended.by_status[status] = self.ended.by_status.get(status, 0) + n
        self.ended.tokens += one.tokens
        if one.cost_usd is not None:
            self.ended.cost_usd = (self.ended.cost_usd or 0.0) + one.cost_usd
        return True


SWEEP_MAX = 2_000
"""Documents a ``Tracker`` sweep reads at most."""


def output_line(custom_id: str, result: JobResult | None) -> str:
    """One line of the Batch API's output format: ``response`` for a success, else ``error``."""
    if result is None:
        error: dict[str, Any] | None = {"code": "expired", "message": "the result has expired"}
        response = None
    elif result.ok:
        error = None
        response = {"status_code": 200, "request_id": result.job_id, "body": _body(result)}
    else:
        e = result.error
        error = {"code": e.type if e else result.status, "message": e.message if e else f"job {result.status}"}
        response = None
        if e is not None and e.status_code is not None:
            error["status_code"] = e.status_code
    job_id = result.job_id if result else custom_id
    return dumps({"id": f"batch_req_{job_id}", "custom_id": custom_id, "response": response, "error": error})


def _body(result: JobResult) -> dict[str, Any]:
    """A succeeded job's answer as its endpoint gives it (the parts the result keeps)."""
    usage = result.usage
    if result.endpoint == EMBEDDINGS_ENDPOINT:
        vectors = result.vectors or []
        data = [{"object": "embedding", "index": i, "embedding": vector} for i, vector in enumerate(vectors)]
        tokens = None if usage is None else {"prompt_tokens": usage.prompt_tokens, "total_tokens": usage.total_tokens}
        return {"object": "list", "data": data, "model": result.model, "usage": tokens}
    if result.endpoint == RESPONSES_ENDPOINT:
        spent = None
        if usage is not None:
            spent = {
                "input_tokens": usage.prompt_tokens,
                "output_tokens": usage.completion_tokens,
                "total_tokens": usage.total_tokens,
            }
        return {
            "id": result.job_id,
            "object": "response",
            "created_at": int(result.finished_at or 0),
            "status": "incomplete" if result.finish_reason == "length" else "completed",
            "model": result.model,
            "output": result.output or [],
            "output_text": result.content,
            "usage": spent,
        }
    return {
        "id": result.job_id,
        "object": "chat.completion",
        "created": int(result.finished_at or 0),
        "model": result.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": result.content},
                "finish_reason": result.finish_reason,
            }
        ],
        "usage": None if usage is None else result.to_doc()["usage"],
    }
