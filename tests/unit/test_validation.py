"""Every refusal at submit names the problem; valid jobs keep what they were given."""

from __future__ import annotations

import json
from typing import Any

import pytest

from promptq_core.contract import dumps
from promptq_core.validation import InvalidJobError, PromptJob

NESTED: Any = "bottom"
for _ in range(950):  # a 2 KB body that once reached Python's recursion limit
    NESTED = [NESTED]

BAD: list[tuple[dict[str, Any], str]] = [
    ({}, "exactly one of prompt or messages"),
    ({"prompt": "hi", "messages": [{"role": "user", "content": "hi"}]}, "exactly one of prompt or messages"),
    ({"prompt": ""}, "prompt must be a non-empty string"),
    ({"prompt": "   "}, "prompt must be a non-empty string"),
    ({"prompt": 42}, "prompt must be a non-empty string"),
    ({"messages": []}, "messages must be a non-empty list"),
    ({"messages": "hi"}, "messages must be a non-empty list"),
    ({"messages": ["hi"]}, "messages[0] must be an object"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role must be one of"),
    ({"messages": [{"content": "hi"}]}, "messages[0].role must be one of"),
    ({"messages": [{"role": "user", "content": ""}]}, "messages[0].content must not be empty"),
    ({"messages": [{"role": "user"}]}, "messages[0].content must be a string or a list"),
    ({"messages": [{"role": "user", "content": []}]}, "non-empty list of parts"),
    ({"messages": [{"role": "user", "content": "a", "colour": 1}]}, "messages[0] has unknown fields: 'colour'"),
    ({"messages": [{"role": "tool", "content": "42"}]}, "needs a tool_call_id"),
    ({"prompt": "hi", "model": ""}, "model must be a model name of 1 to 200"),
    ({"prompt": "hi", "job_id": ""}, "job_id must be 1 to 200 of"),
    ({"prompt": "hi", "job_id": "has space"}, "got 'has space'"),
    ({"prompt": "hi", "job_id": "x" * 201}, "and 161 more characters"),
    ({"prompt": "hi", "job_id": "a/b/c"}, "after an optional tenant/"),
    ({"prompt": "hi", "job_id": "x#y"}, "got 'x#y'"),
    ({"prompt": "hi", "model": "m" * 201}, "model must be a model name of 1 to 200"),
    ({"prompt": "hi", "model": "gpt\x1b]0;owned\x07"}, "got 'gpt\\x1b]0;owned\\x07'"),
    ({"prompt": "hi", "model": "gpt 4"}, "model must be a model name"),
    ({"prompt": "hi", "fallbacks": ["ok", "bad\u202e"]}, "each of fallbacks must be a model name"),
    ({"prompt": "hi", "extra_body": {"model": "gpt-4o"}}, "extra_body may not set model"),
    ({"prompt": "hi", "extra_body": {"messages": []}}, "extra_body may not set messages"),
    ({"prompt": "hi", "extra_body": {"n": 50}}, "extra_body may not set n"),
    ({"prompt": "hi", "extra_body": {"stream": True}}, "extra_body may not set stream"),
    ({"prompt": "hi", "extra_body": {"max_tokens": 100000}}, "pass it as the parameter max_tokens"),
    ({"prompt": "hi", "extra_body": {"bad key": 1}}, "is not a field name"),
    ({"prompt": "hi", "extra_body": {f"k{i}": i for i in range(65)}}, "at most 64 fields"),
    ({"input": "x", "endpoint": "/v1/embeddings", "model": "e", "extra_body": {"input": "y"}}, "may not set input"),
    ({"input": "x", "endpoint": "/v1/responses", "extra_body": {"background": True}}, "may not set background"),
    ({"prompt": "hi", "temperature": "9" * 100_000}, "and 99960 more characters"),
    ({"prompt": "hi", "tier": "cheap"}, "tier must be one of live, flex, batch, got 'cheap'"),
    ({"prompt": "hi", "tier": "batch", "stream": True}, "a batch-tier job cannot stream"),
    ({"prompt": "hi", "tier": "flex", "service_tier": "auto"}, "service_tier is set by the tier (flex)"),
    ({"prompt": "hi", "metadata": {"note": "\ud83d"}}, "metadata holds a lone surrogate"),
    ({"messages": [{"role": "user", "content": "a \udc00 b"}]}, "messages holds a lone surrogate"),
    ({"prompt": "hi", "metadata": {"deep": NESTED}}, "metadata is nested more than 64 levels deep"),
    ({"prompt": "hi", "response_format": {"type": "json_schema", "x": NESTED}}, "params is nested more than 64"),
    ({"prompt": "hi", "temperature": 3}, "temperature must be a number from 0 to 2"),
    ({"prompt": "hi", "temperature": float("nan")}, "temperature must be a number from 0 to 2"),
    ({"prompt": "hi", "temperature": True}, "temperature must be a number from 0 to 2"),
    ({"prompt": "hi", "max_tokens": 0}, "max_tokens must be a positive integer"),
    ({"prompt": "hi", "stop": ["a", "b", "c", "d", "e"]}, "stop must be"),
    ({"prompt": "hi", "temprature": 0.5}, "unknown parameter 'temprature'"),
    ({"prompt": "hi", "n": 2}, "n is not supported"),
    ({"prompt": "hi", "stream": "yes"}, "stream must be true or false"),
    ({"prompt": "hi", "metadata": ["not", "a", "dict"]}, "metadata must be a dict with string keys"),
    ({"prompt": "hi", "metadata": {1: "x"}}, "metadata must be a dict with string keys"),
    ({"prompt": "hi", "metadata": {"when": object()}}, "metadata must be JSON-serialisable"),
    ({"prompt": "hi", "extra_body": {"top_k": {1, 2}}}, "params must be JSON-serialisable"),
    ({"prompt": "hi", "priority": 10}, "priority must be an integer from 0 (runs first) to 9"),
    ({"prompt": "hi", "priority": -1}, "priority must be an integer from 0"),
    ({"prompt": "hi", "priority": 2.0}, "priority must be an integer from 0"),
    ({"prompt": "hi", "priority": "1"}, "priority must be an integer from 0"),
    ({"prompt": "hi", "priority": True}, "priority must be an integer from 0"),
    ({"prompt": "hi", "fairness_key": ""}, "fairness_key must be 1 to 128 bytes"),
    ({"prompt": "hi", "fairness_key": "é" * 65}, "fairness_key must be 1 to 128 bytes"),
    ({"prompt": "hi", "fairness_key": "line\nbreak"}, "printable characters, got 'line\\nbreak'"),
    ({"prompt": "hi", "fairness_key": "a\u202eb"}, "printable characters"),
    ({"prompt": "hi", "fairness_key": "c1\x85"}, "printable characters"),
    ({"prompt": "hi", "fairness_key": "zero\u200bwidth"}, "printable characters"),
    ({"prompt": "hi", "fairness_key": "\ud800"}, "fairness_key must be 1 to 128 bytes"),
    ({"prompt": "hi", "fairness_key": 42}, "fairness_key must be a string, got int"),
]


@pytest.mark.parametrize(("kwargs", "message"), BAD, ids=[m for _, m in BAD])
def test_bad_input_is_refused_with_a_message_naming_the_problem(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidJobError) as e:
        PromptJob.build(**kwargs)
    assert message in str(e.value)
    assert isinstance(e.value, ValueError)


def test_payload_over_the_limit_is_refused() -> None:
    with pytest.raises(InvalidJobError, match=r"over the limit of 1000 \(PROMPTQ_MAX_PAYLOAD_BYTES\)"):
        PromptJob.build("x" * 2000, max_payload_bytes=1000)
    assert PromptJob.build("x" * 900, max_payload_bytes=1000)


def test_prompt_becomes_one_user_message_and_parameters_pass_through() -> None:
    job = PromptJob.build(
        "What is the capital of Vietnam?",
        model="gpt-4o-mini",
        job_id="order-42",
        metadata={"user": 7},
        temperature=0.7,
        max_tokens=50,
        stop=["\n"],
        extra_body={"top_k": 5},
        seed=None,
    )
    assert job.job_id == "order-42"
    assert job.messages == [{"role": "user", "content": "What is the capital of Vietnam?"}]
    assert job.params == {"temperature": 0.7, "max_tokens": 50, "stop": ["\n"], "extra_body": {"top_k": 5}}
    assert json.loads(job.payload_json) == {
        "messages": job.messages,
        "model": "gpt-4o-mini",
        "params": job.params,
        "metadata": {"user": 7},
    }


def test_generated_ids_are_unique() -> None:
    assert len({PromptJob.build("hi").job_id for _ in range(100)}) == 100


def test_assistant_tool_calls_and_tool_messages_are_accepted() -> None:
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "weather?"}]},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function"}]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    ]
    assert PromptJob.build(messages=messages).messages == messages


def test_worker_side_validation_round_trips_and_refuses_strangers() -> None:
    job = PromptJob.build("hi", temperature=0.1, metadata={"a": [1, 2, []]})
    again = PromptJob.from_payload(job.job_id, json.loads(job.payload_json), 10_000)
    assert again == job
    with pytest.raises(InvalidJobError, match="unknown fields: prompt_text"):
        PromptJob.from_payload("j", {"prompt_text": "hi"}, 10_000)
    with pytest.raises(InvalidJobError, match="not a JSON object"):
        PromptJob.from_payload("j", ["hi"], 10_000)


def test_payload_json_is_compact_and_strict() -> None:
    job = PromptJob.build("héllo")
    assert job.payload_json == dumps(json.loads(job.payload_json))
    assert " " not in job.payload_json.replace("héllo", "")


def test_priority_and_fairness_key_travel_in_the_payload_only_when_not_the_default() -> None:
    plain = PromptJob.build("hi", priority=5, fairness_key="default")
    assert "priority" not in plain.payload_json and "fairness_key" not in plain.payload_json
    job = PromptJob.build("hi", priority=0, fairness_key="tenant-42 ü" + "x" * 115)
    assert (job.priority, job.fairness_key) == (0, "tenant-42 ü" + "x" * 115)
    again = PromptJob.from_payload(job.job_id, json.loads(job.payload_json), 10_000)
    assert (again.priority, again.fairness_key) == (job.priority, job.fairness_key)
    assert (plain.priority, plain.fairness_key) == (5, "default")


TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_a_trace_context_travels_in_the_payload_and_is_checked() -> None:
    job = PromptJob.build("hi", trace={"traceparent": TRACEPARENT, "tracestate": "vendor=1"})
    assert json.loads(job.payload_json)["trace"] == {"traceparent": TRACEPARENT, "tracestate": "vendor=1"}
    again = PromptJob.from_payload(job.job_id, json.loads(job.payload_json), 1 << 20)
    assert again.trace == job.trace
    assert "trace" not in json.loads(PromptJob.build("hi").payload_json)  # none unless given (or traces on)
    for bad, words in (
        ("00-abc", "trace must be"),
        ({"traceparent": "00-xyz"}, "not a W3C traceparent"),
        ({"traceparent": TRACEPARENT, "baggage": "x"}, "trace must be"),
        ({"traceparent": TRACEPARENT, "tracestate": "x" * 600}, "at most 512"),
    ):
        with pytest.raises(InvalidJobError, match=words):
            PromptJob.build("hi", trace=bad)


def test_the_request_digest_names_what_is_asked_not_when_or_from_where() -> None:
    trace = {"traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01"}
    first = PromptJob.build("hi", job_id="j", metadata={"u": 1}, deadline_s=60)
    again = PromptJob.build("hi", job_id="j", metadata={"u": 1}, deadline_s=30, trace=trace)
    assert len(first.request) == 16 and first.request == again.request
    assert json.loads(again.payload_json)["trace"] == trace  # the delivery fields still travel
    for other in ({"prompt": "hello"}, {"prompt": "hi", "metadata": {"u": 2}}, {"prompt": "hi", "model": "m"}):
        assert PromptJob.build(job_id="j", **other).request != first.request
    worker_side = PromptJob.from_payload("j", json.loads(again.payload_json), 1 << 20)
    assert worker_side.request == first.request and worker_side.payload_json == again.payload_json


def test_the_same_request_with_its_keys_in_another_order_has_the_same_digest() -> None:
    one = PromptJob.build("hi", job_id="j", metadata={"a": 1, "b": {"x": 1, "y": 2}}, temperature=0.1, top_p=0.5)
    two = PromptJob.build("hi", job_id="j", top_p=0.5, temperature=0.1, metadata={"b": {"y": 2, "x": 1}, "a": 1})
    assert one.request == two.request


def test_a_tier_travels_in_the_payload_unless_live() -> None:
    assert "tier" not in json.loads(PromptJob.build("hi", tier="live").payload_json)
    flex = PromptJob.build("hi", tier="flex")
    assert json.loads(flex.payload_json)["tier"] == "flex" and flex.tier == "flex"
    assert PromptJob.from_payload(flex.job_id, json.loads(flex.payload_json), 10_000).tier == "flex"
    assert PromptJob.build("hi", tier="batch").request != PromptJob.build("hi").request  # another request
