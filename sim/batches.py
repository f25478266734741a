"""The simulator's Files and Batch API, as OpenAI shapes them (``/v1/files``, ``/v1/batches``).

A file is kept in memory as uploaded (multipart, ``purpose`` and ``file``). A batch reads its input
file (JSONL: ``custom_id``, ``method``, ``url``, ``body``), is ``in_progress`` for ``batch_delay_ms``,
then answers every line as the live endpoint would (``sim.endpoints``) and ends ``completed``, with
an output file (the answered lines) and an error file (lines failed at ``batch_line_error_rate``);
with ``batch_expire`` it ends ``expired`` instead, every line in the error file as ``batch_expired``.
Cancelling an unfinished batch ends it ``cancelled``. Lines answered here are counted apart from live
calls (``batch_lines``).
"""

from __future__ import annotations

import asyncio
import email.parser
import email.policy
import itertools
import json
import random
import time
from dataclasses import dataclass, field
from typing import Any

from sim import endpoints
from sim.behaviour import SimConfig, chance

__all__ = ["BatchStore", "FileUpload", "multipart"]

BATCH_ENDPOINTS = ("/v1/chat/completions", "/v1/embeddings", "/v1/responses")


@dataclass
class FileUpload:
    id: str
    filename: str
    purpose: str
    content: bytes
    created_at: int = field(default_factory=lambda: int(time.time()))

    def to_doc(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.content),
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
        }


def multipart(body: bytes, content_type: str) -> dict[str, tuple[str | None, bytes]]:
    """The parts of a ``multipart/form-data`` body: name -> (filename, content)."""
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    parts: dict[str, tuple[str | None, bytes]] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if isinstance(name, str):
            content = part.get_payload(decode=True)
            parts[name] = (part.get_filename(), content if isinstance(content, bytes) else b"")
    return parts


class BatchStore:
    """The files and batches one simulator holds."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.files: dict[str, FileUpload] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self.lines = 0
        """Batch lines answered (not live calls)."""
        self._ids = itertools.count(1)
        self._tasks: set[asyncio.Task[None]] = set()
        self.rng = random.Random(config.seed)

    def upload(self, filename: str, purpose: str, content: bytes) -> FileUpload:
        upload = FileUpload(f"file-sim{next(self._ids)}", filename, purpose, content)
        self.files[upload.id] = upload
        return upload

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        """A new batch, from ``POST /v1/batches``'s body; ``ValueError`` for a bad one."""
        source = self.files.get(str(body.get("input_file_id")))
        if source is None:
            raise ValueError(f"no file {body.get('input_file_id')!r}")
        if body.get("endpoint") not in BATCH_ENDPOINTS:
            raise ValueError(f"endpoint must be one of {', '.join(BATCH_ENDPOINTS)}")
        if body.get("completion_window") != "24h":
            raise ValueError("completion_window must be 24h")
        metadata = body.get("metadata")
        if metadata is not None and not isinstance(metadata, dict):
            raise ValueError("metadata must be an object")
        now = int(time.time())
        lines = [line for line in source.content.decode().splitlines() if line.strip()]
        batch: dict[str, Any] = {
            "id": f"batch_sim{next(self._ids)}",
            "object": "batch",
            "endpoint": body["endpoint"],
            "errors": None,
            "input_file_id": source.id,
            "completion_window": "24h",
            "status": "in_progress",
            "output_file_id": None,
            "error_file_id": None,
            "created_at": now,
            "in_progress_at": now,
            "expires_at": now + 86_400,
            "finalizing_at": None,
            "completed_at": None,
            "failed_at": None,
            "expired_at": None,
            "cancelling_at": None,
            "cancelled_at": None,
            "request_counts": {"total": len(lines), "completed": 0, "failed": 0},
            "metadata": metadata,
        }
        self.batches[batch["id"]] = batch
        task = asyncio.get_running_loop().create_task(self._run(batch, lines))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return batch

    def cancel(self, batch_id: str) -> dict[str, Any] | None:
        batch = self.batches.get(batch_id)
        if batch is not None and batch["status"] in ("validating", "in_progress", "finalizing"):
            batch["status"], batch["cancelled_at"] = "cancelled", int(time.time())
        return batch

    def listing(self, limit: int, after: str | None) -> dict[str, Any]:
        newest = sorted(self.batches.values(), key=lambda b: int(b["id"].removeprefix("batch_sim")), reverse=True)
        if after is not None:
            ids = [b["id"] for b in newest]
            newest = newest[ids.index(after) + 1 :] if after in ids else []
        page = newest[:limit]
        return {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": len(newest) > limit,
        }

    async def _run(self, batch: dict[str, Any], lines: list[str]) -> None:
        await asyncio.sleep(self.config.batch_delay_ms / 1000)
        if batch["status"] != "in_progress":
            return  # cancelled meanwhile
        out: list[str] = []
        errors: list[str] = []
        for n, line in enumerate(lines):
            custom_id, answer = self._answer(line, batch["endpoint"])
            row: dict[str, Any] = {"id": f"batch_req_sim{batch['id']}_{n}", "custom_id": custom_id}
            if self.config.batch_expire:
                errors.append(json.dumps({**row, "response": None, "error": _expired()}))
            elif isinstance(answer, dict):
                out.append(json.dumps({**row, "response": answer, "error": None}))
            else:
                errors.append(json.dumps({**row, "response": answer[0], "error": answer[1]}))
        counts = batch["request_counts"]
        counts["completed"], counts["failed"] = (0 if self.config.batch_expire else len(out)), len(errors)
        now = int(time.time())
        if out:
            batch["output_file_id"] = self.upload("batch_output.jsonl", "batch_output", _jsonl(out)).id
        if errors:
            batch["error_file_id"] = self.upload("batch_errors.jsonl", "batch_output", _jsonl(errors)).id
        if self.config.batch_expire:
            batch["status"], batch["expired_at"] = "expired", now
        else:
            batch["status"], batch["finalizing_at"], batch["completed_at"] = "completed", now, now

    def _answer(self, line: str, endpoint: str) -> tuple[Any, Any]:
        """``(custom_id, the response)``, or ``(custom_id, (a failed response or None, an error or None))``."""
        custom_id = None
        try:
            request = json.loads(line)
            custom_id = request.get("custom_id")
            if request.get("url") != endpoint or request.get("method") != "POST":
                raise ValueError(f"each line's url must be the batch's endpoint {endpoint} and method POST")
            answer = endpoints.parse(endpoint, json.dumps(request.get("body")).encode(), self.config.reply)
        except (ValueError, AttributeError, endpoints.BadRequest) as e:
            return custom_id, (None, {"code": "invalid_request", "message": str(e)})
        self.lines += 1
        serial = next(self._ids)
        if chance(self.rng, self.config.batch_line_error_rate):
            body = {"error": {"message": "simulated error 500", "type": "server_error", "param": None, "code": None}}
            return custom_id, ({"status_code": 500, "request_id": f"req-sim-{serial}", "body": body}, None)
        return custom_id, {
            "status_code": 200,
            "request_id": f"req-sim-{serial}",
            "body": endpoints.plain_body(answer, serial),
        }


def _expired() -> dict[str, str]:
    return {
        "code": "batch_expired",
        "message": "This request could not be executed before the completion window expired.",
    }


def _jsonl(lines: list[str]) -> bytes:
    return ("\n".join(lines) + "\n").encode()
