"""Reading a job's event stream (``promptq:{queue}:stream:{job_id}``), without the I/O.

``Producer.stream`` and ``SyncProducer.stream`` drive a :class:`StreamCursor`: they read the
stream from a position with a blocking ``XREAD``, and the cursor turns entries into
:class:`StreamEvent` values and decides when the stream has ended. A reader that comes late
replays from the start (position ``"0"``); one that reconnects passes the ``id`` of the last
event it saw. A job submitted without ``stream=True`` has no deltas: its stream is only its
``done`` event, read from its result document once the job ends.
"""

from __future__ import annotations

from typing import Any

from producer.errors import JobNotFoundError
from producer.types import StreamEvent
from promptq_core.contract import JobResult, QueueKeys, as_text

__all__ = ["READ_BLOCK_MS", "READ_COUNT", "StreamCursor", "entry_order"]

READ_BLOCK_MS = 1000
"""A blocking read waits this long before the cursor looks at the result document."""
READ_COUNT = 500
"""Entries fetched in one read at most."""


class StreamCursor:
    """Where one reader is in a job's stream, and what it has learnt."""

    def __init__(self, queue: QueueKeys, job_id: str, after: str = "0") -> None:
        if not isinstance(after, str) or not after:
            raise ValueError(f"after must be a stream entry id such as '0' or '1700000000000-0', got {after!r}")
        self.job_id, self.position = job_id, after
        self.key, self.doc_key = queue.stream(job_id), queue.result(job_id)
        self.finished = False

    def read_args(self) -> dict[str, Any]:
        return {"streams": {self.key: self.position}, "count": READ_COUNT}

    def events(self, reply: Any) -> list[StreamEvent]:
        """The events in an ``XREAD`` reply (the last one ``done`` if the stream ended there)."""
        out: list[StreamEvent] = []
        for _key, entries in reply or []:
            for raw_id, fields in entries:
                entry_id = as_text(raw_id)
                if entry_order(entry_id) <= entry_order(self.position):
                    continue  # read already (two readers of one stream: a hub's and the cursor's own)
                self.position = entry_id
                event = _event(entry_id, {as_text(k): as_text(v) for k, v in fields.items()})
                out.append(event)
                if event.type == "done":
                    self.finished = True
                    return out
        return out

    def ended(self, doc: bytes | None) -> JobResult | None:
        """After a read that found nothing: the final document if the job has ended, else None."""
        if doc is None:
            raise JobNotFoundError(f"no job {self.job_id!r} (never submitted, or its result expired)")
        result = JobResult.from_json(doc)
        return result if result.done else None

    def done(self, event: StreamEvent | None, result: JobResult | None) -> StreamEvent:
        """The ``done`` event carrying the final document (``event`` is the stream's own, if any)."""
        self.finished = True
        return StreamEvent(id=event.id if event else self.position, type="done", result=result)


def entry_order(entry_id: str) -> tuple[int, int]:
    """A stream entry id as a sortable pair (``0`` is the start)."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _event(entry_id: str, fields: dict[str, str]) -> StreamEvent:
    kind = fields.get("type")
    if kind == "delta":
        return StreamEvent(id=entry_id, type="delta", text=fields.get("text", ""))
    if kind == "restart":
        return StreamEvent(id=entry_id, type="restart", attempt=int(fields.get("attempt", "0")))
    return StreamEvent(id=entry_id, type="done")
