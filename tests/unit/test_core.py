"""The client's I/O-free layers, without Redis: ``producer.core``'s steps driven by hand (as both
clients drive them), ``producer.writes``' bound scripts, ``producer.streams``' cursor, the overview
read from its script's reply."""

from __future__ import annotations

import json
from typing import Any

import pytest

from producer import core
from producer.core import Command, GuardFacts, Script
from producer.errors import EvictionPolicyError, JobNotFoundError, RetryRefusedError
from producer.streams import StreamCursor
from producer.types import Cancellation, ProducerConfig
from producer.writes import Writes
from promptq_core.contract import JobResult, Reply, queue_keys
from promptq_core.guard import RedisFacts

SAFE = RedisFacts(policy="noeviction", version=(7, 2, 0))


def drive(op: core.Op[Any], replies: list[Any]) -> tuple[list[Any], Any]:
    """Run ``op`` with ``replies`` sent to its steps in turn: the steps it yielded, and its answer."""
    steps: list[Any] = []
    done, value = core.advance(op, None)
    while not done:
        steps.append(value)
        done, value = core.advance(op, replies[len(steps) - 1])
    return steps, value


def test_submit_checks_the_redis_once_then_writes_one_script() -> None:
    writes = Writes(ProducerConfig())
    steps, job_id = drive(core.submit(writes, "hello", {"job_id": "a"}), [SAFE, (Reply.ENQUEUED, None)])
    assert job_id == "a" and isinstance(steps[0], GuardFacts)
    [write] = steps[1:]
    assert (
        isinstance(write, Script)
        and write.name == "submit"
        and write.keys[:2] == [queue_keys().result("a"), queue_keys().record("a")]
    )
    steps, _ = drive(core.submit(writes, "again", {"job_id": "b"}), [(Reply.ENQUEUED, None)])
    assert [type(s) for s in steps] == [Script]  # checked once per producer


def test_a_redis_that_may_evict_is_refused_before_anything_is_written() -> None:
    evicting = RedisFacts(policy="allkeys-lru", version=(7, 2, 0))
    with pytest.raises(EvictionPolicyError, match="maxmemory-policy"):
        drive(core.submit(Writes(ProducerConfig()), "hello", {}), [evicting])


def test_cancel_reads_then_cancels_or_answers_what_it_found() -> None:
    queued = JobResult("j", "queued", attempts=0).to_json().encode()
    steps, answer = drive(core.cancel(queue_keys(), "j"), [queued, (Reply.CANCELLED, None)])
    assert [type(s) for s in steps] == [Command, Script] and steps[1].name == "cancel"
    assert answer.cancelled and answer.result.status == "cancelled"
    changed = [queued, (Reply.CHANGED_MEANWHILE, None), queued, (Reply.CANCELLED, None)]
    steps, answer = drive(core.cancel(queue_keys(), "j"), changed)  # the document changed between read and write: again
    assert len(steps) == 4 and answer.cancelled
    done = JobResult("j", "succeeded", attempts=1).to_json().encode()
    _, answer = drive(core.cancel(queue_keys(), "j"), [done])
    assert answer == Cancellation("j", cancelled=False, result=JobResult.from_json(done))


def test_retry_names_why_it_is_refused() -> None:
    writes = Writes(ProducerConfig())
    failed = JobResult("j", "failed", attempts=3).to_json().encode()
    record = json.dumps({"t": 1, "f": "promptq", "a": [{}], "k": {}, "et": 1}).encode()
    _, job_id = drive(core.retry(writes, queue_keys(), "j"), [SAFE, (failed, record), (Reply.RETRIED, None)])
    assert job_id == "j"
    with pytest.raises(RetryRefusedError, match="no longer failed"):
        drive(core.retry(writes, queue_keys(), "j"), [(failed, record), (Reply.NOT_FAILED.encode(), None)])
    with pytest.raises(RetryRefusedError, match="not failed"):
        drive(
            core.retry(writes, queue_keys(), "j"), [(JobResult("j", "running", attempts=1).to_json().encode(), record)]
        )


def test_a_stream_cursor_reads_events_and_ends_at_done() -> None:
    cursor = StreamCursor(queue_keys(), "j")
    assert cursor.read_args()["streams"] == {queue_keys().stream("j"): "0"}
    reply = [
        (
            queue_keys().stream("j").encode(),
            [
                (b"1-0", {b"type": b"delta", b"text": b"Hel"}),
                (b"2-0", {b"type": b"restart", b"attempt": b"2"}),
                (b"3-0", {b"type": b"done", b"status": b"succeeded"}),
                (b"4-0", {b"type": b"delta", b"text": b"after the end"}),
            ],
        )
    ]
    events = cursor.events(reply)
    assert [(e.type, e.text, e.attempt) for e in events] == [
        ("delta", "Hel", None),
        ("restart", None, 2),
        ("done", None, None),
    ]
    assert cursor.finished and cursor.position == "3-0"
    with pytest.raises(JobNotFoundError):
        StreamCursor(queue_keys(), "gone").ended(None)
    with pytest.raises(ValueError, match="stream entry id"):
        StreamCursor(queue_keys(), "j", after="")


def test_the_overview_reads_its_scripts_reply_into_rows_per_priority_and_key() -> None:
    from producer.overview import Overview

    now_ms = 1_764_000_000_000
    budget = {"m": [30, 3000, 60, None], "n": [1, 10, None, None], "bad": ["x", 1, 2]}  # (a bad row is passed over)
    calls = {
        "east": {"calls": 10, "errors": 2, "seconds": 5.0, "budget": budget},
        "west": {"calls": 0, "errors": 0, "seconds": 0},
    }
    entry = json.dumps(
        {"id": "w1", "host": "h", "pid": 1, "slots": 10, "busy": 3, "started_at": 1_763_999_990.0, "backends": calls}
    )
    reply = [
        now_ms,
        [4, 1, 2, 1],  # leased, delayed, failed, waiting for a backend
        [b"5", b"default", 7, b"0", b"web", 2],  # ready: priority, key, n...
        [b"5", b"default", 4],  # running
        [b"0", b"web", 1],  # deferred
        [],  # minutes
        [],  # batches
    ]
    workers = [b"w1", now_ms - 1000, entry.encode()]  # the fleet's: id, seen, entry
    circuits = [b"west", str(now_ms + 2500).encode(), str(now_ms - 30_000).encode(), b"5", b"east", b"0", b"0", b"1"]
    overview = Overview.from_reply(reply, workers, circuits, [JobResult("f", "failed", attempts=3)])
    assert overview.now == now_ms / 1000
    assert overview.queue["totals"] == {"ready": 9, "running": 4, "deferred": 1, "failed": 2, "waiting_for_backend": 1}
    east, west = overview.backends
    assert east == {
        "name": "east",
        "up": True,
        "down_for_s": None,
        "probe_in_s": None,
        "failures_in_a_row": 1,
        "calls": 10,
        "errors": 2,
        "mean_call_ms": 500.0,
        "budget": [
            {"model": "m", "requests": 30, "rpm": 60, "tokens": 3000, "tpm": None},
            {"model": "n", "requests": 1, "rpm": None, "tokens": 10, "tpm": None},
        ],
        "budget_in_use": 0.5,
    }
    assert (west["budget"], west["budget_in_use"]) == ([], None)
    assert (west["up"], west["down_for_s"], west["probe_in_s"], west["calls"]) == (False, 30.0, 2.5, 0)
    assert overview.queue["rows"] == [
        {"priority": 0, "key": "web", "ready": 2, "running": 0, "deferred": 1},
        {"priority": 5, "key": "default", "ready": 7, "running": 4, "deferred": 0},
    ]
    assert [w["id"] for w in overview.workers] == ["w1"] and [f["job_id"] for f in overview.failures] == ["f"]
