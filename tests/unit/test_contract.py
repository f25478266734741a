"""The result document and the job record, as other programs read them."""

from __future__ import annotations

import base64
import dataclasses
import json
import struct
from typing import Any

import pytest
from arq.jobs import deserialize_job_raw

from promptq_core.contract import (
    EMBEDDINGS_ENDPOINT,
    ENDPOINTS,
    JOB_FUNCTION,
    LEGACY_QUEUE,
    JobError,
    JobResult,
    Usage,
    decode_vector,
    encode_job,
    encode_vector,
    queue_keys,
    split_arq_id,
)

DOCUMENTED_FIELDS = [
    "job_id",
    "status",
    "attempts",
    "model",
    "endpoint",
    "content",
    "output",
    "embeddings",
    "finish_reason",
    "usage",
    "error",
    "metadata",
    "priority",
    "fairness_key",
    "queue",
    "tier",
    "backend",
    "provider_batch",
    "request",
    "enqueued_at",
    "started_at",
    "finished_at",
    "latency_ms",
]


def test_names() -> None:
    assert LEGACY_QUEUE == "promptq:queue"
    gpu = queue_keys("gpu")
    assert gpu.result("abc") == "promptq:{gpu}:result:abc" and gpu.key("levels") == "promptq:{gpu}:levels"
    assert gpu.record("order-42") == "arq:job:{gpu}order-42" and gpu.arq_id("order-42") == "{gpu}order-42"
    assert split_arq_id(gpu.arq_id("a{b}:c")) == ("gpu", "a{b}:c")  # the first braces are the queue's
    assert queue_keys() == queue_keys("default")
    for bad in ("", "x" * 65, "a b", "a{b}", "a:b", "é"):
        with pytest.raises(ValueError, match="queue name"):
            queue_keys(bad)
    with pytest.raises(ValueError, match="not a promptq job's arq id"):
        split_arq_id("order-42")


def test_every_key_of_a_queue_hashes_to_its_slot() -> None:
    """The part of a key Redis Cluster hashes: the text between its first braces, here the queue's name."""
    gpu = queue_keys("gpu")
    keys = [gpu.result("a"), gpu.record("{x}"), gpu.tries("a"), gpu.stream("a"), gpu.ready(5, "{k}"), gpu.stats(1)]
    assert {k[k.index("{") + 1 : k.index("}")] for k in keys} == {"gpu"}


def test_result_document_has_exactly_the_documented_fields_and_round_trips() -> None:
    r = JobResult(
        job_id="j1",
        status="failed",
        attempts=2,
        model="gpt-4o-mini",
        usage=Usage(1, 2, 3),
        error=JobError("server_error", "boom", 500, True),
        metadata={"user": 7},
        enqueued_at=1.5,
        started_at=2.0,
        finished_at=2.5,
        latency_ms=500,
    )
    doc = json.loads(r.to_json())
    assert list(doc) == DOCUMENTED_FIELDS
    assert doc["usage"] == {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}
    assert doc["error"] == {"type": "server_error", "message": "boom", "status_code": 500, "retryable": True}
    assert JobResult.from_json(r.to_json()) == r
    assert r.done and not r.ok
    assert [f.name for f in dataclasses.fields(JobResult)] == DOCUMENTED_FIELDS


def test_reading_tolerates_extra_fields_and_refuses_nonsense() -> None:
    doc = {"job_id": "j", "status": "queued", "future_field": 1, "usage": {"prompt_tokens": 1, "extra": 2}}
    r = JobResult.from_doc(doc)
    assert r.usage == Usage(1, 0, 0) and not r.done
    with pytest.raises(ValueError, match="unknown status"):
        JobResult.from_doc({"job_id": "j", "status": "exploded"})
    with pytest.raises(ValueError, match="not a JSON object"):
        JobResult.from_doc([1])


def test_job_record_is_json_that_arq_reads() -> None:
    raw = encode_job('{"messages":[{"role":"user","content":"hi"}],"model":null}', 1234)
    decoded: tuple[Any, ...] = deserialize_job_raw(raw.encode(), deserializer=json.loads)
    function, args, kwargs, job_try, enqueued_ms = decoded
    assert (function, kwargs, job_try, enqueued_ms) == (JOB_FUNCTION, {}, None, 1234)
    assert list(args) == [{"messages": [{"role": "user", "content": "hi"}], "model": None}]


def test_to_doc_matches_asdict_field_for_field() -> None:
    import dataclasses

    from promptq_core.contract import JobError

    full = JobResult(
        job_id="j",
        status="failed",
        attempts=2,
        model="m",
        content="c",
        finish_reason="stop",
        usage=Usage(1, 2, 3),
        error=JobError("server_error", "boom", 503, True),
        metadata={"k": [1, {"x": None}]},
        priority=0,
        fairness_key="tenant",
        enqueued_at=1.5,
        started_at=2.5,
        finished_at=3.5,
        latency_ms=7,
    )
    for r in (full, JobResult(job_id="j", status="queued")):
        assert r.to_doc() == dataclasses.asdict(r)
        assert list(r.to_doc()) == [f.name for f in dataclasses.fields(r)]


def test_the_queued_document_template_matches_the_result_document() -> None:
    from promptq_core.contract import queued_doc

    for job_id, model, metadata, at in [
        ("a", "gpt-4o-mini", None, 1.5),
        ("batch:1/x", None, {"user": 'Zoë "q" \\ \n', "n": [1, 2.5, None, True]}, 1795636687.123),
        ("z", "m\u2028", {}, 0.0),
    ]:
        expected = JobResult(job_id, "queued", model=model, metadata=metadata, enqueued_at=at).to_json()
        assert queued_doc(job_id, model, metadata, at) == expected
    for priority, key in [(0, "tenant-42"), (9, 'Zoë "q" \\ /'), (5, "default")]:
        expected = JobResult("j", "queued", priority=priority, fairness_key=key, enqueued_at=2.0).to_json()
        assert queued_doc("j", None, None, 2.0, priority, key) == expected
    for endpoint in ENDPOINTS:
        expected = JobResult("e", "queued", endpoint=endpoint, enqueued_at=3.0).to_json()
        assert queued_doc("e", None, None, 3.0, endpoint=endpoint) == expected


def test_a_document_of_promptq_0_1_reads_with_the_default_priority_and_key() -> None:
    r = JobResult.from_doc({"job_id": "old", "status": "queued"})
    assert (r.priority, r.fairness_key) == (5, "default")


def test_a_vector_round_trips_bit_for_bit_through_base64_float32() -> None:
    values = [0.1, -2.5, 3.4028234663852886e38, 1e-45, 0.0, -0.0, 1 / 3]
    as_float32 = list(struct.unpack(f"<{len(values)}f", struct.pack(f"<{len(values)}f", *values)))
    text = encode_vector(values)
    assert len(base64.b64decode(text)) == 4 * len(values)
    decoded = decode_vector(text)
    assert struct.pack(f"<{len(values)}f", *decoded) == struct.pack(f"<{len(values)}f", *as_float32)
    assert str(decoded[5]) == "-0.0"
    with pytest.raises(ValueError, match="whole number of float32"):
        decode_vector(base64.b64encode(b"12345").decode())
    with pytest.raises(ValueError):
        decode_vector("not base64!")


def test_an_embeddings_result_hands_out_plain_lists_of_floats() -> None:
    one, two = [0.5, -0.25], [[1.0], [2.0]]
    r = JobResult(
        "e", "succeeded", endpoint=EMBEDDINGS_ENDPOINT, embeddings=[encode_vector(one), [encode_vector(v) for v in two]]
    )
    assert JobResult.from_json(r.to_json()).vectors == [one, two]
    assert JobResult("c", "succeeded").vectors is None
    assert JobResult.from_doc({"job_id": "old", "status": "queued"}).endpoint == "/v1/chat/completions"
