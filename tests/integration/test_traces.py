"""OpenTelemetry traces end to end: a caller process with its own span submits jobs, a worker process
runs them, both export over OTLP/HTTP to a receiver the test runs, and the spans are read back
(decoded with opentelemetry-proto): one trace from the caller's span through the job to the LLM
call, the GenAI attributes, no prompt text unless asked for, retries visible; the HTTP API and
the CLI carry a caller's context the same way."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.request import Request, urlopen

import pytest
import redis

from devtools.otlp import OtlpReceiver, ReceivedSpan
from devtools.stack import ROOT, Api, Simulator, Worker
from tests.conftest import worker_env

pytestmark = pytest.mark.process

SECRET = "the launch code is 0000-tango"
CALLER = """
import json, sys
from opentelemetry import trace
from producer import SyncProducer
from promptq_core import tracing

tracing.setup("caller")
with SyncProducer() as p:
    with trace.get_tracer("caller").start_as_current_span("caller") as span:
        ids = [p.submit(prompt, **options) for prompt, options in json.loads(sys.argv[1])]
    results = [p.wait(i, timeout=30) for i in ids]
tracing.shutdown()
context = span.get_span_context()
print(json.dumps({"trace_id": format(context.trace_id, "032x"), "span_id": format(context.span_id, "016x"),
                  "docs": [r.to_doc() for r in results]}))
"""


def otel_env(receiver: OtlpReceiver, **extra: str) -> dict[str, str]:
    return {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "100", **extra}


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as r:
        yield r


@pytest.fixture(scope="module")
def traced_worker(redis_server_url: str, sim_process: Simulator, receiver: OtlpReceiver) -> Iterator[Worker]:
    env = worker_env(redis_server_url, sim_process, PROMPTQ_MAX_TRIES="2", **otel_env(receiver))
    with Worker(env) as worker:
        yield worker


def call_as_caller(redis_url: str, receiver: OtlpReceiver, jobs: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    env = {**os.environ, "REDIS_URL": redis_url, **otel_env(receiver)}
    done = subprocess.run(
        [sys.executable, "-c", CALLER, json.dumps(jobs)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    answer: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return answer


def of_job(spans: list[ReceivedSpan], job_id: str) -> list[ReceivedSpan]:
    """The job's attempt spans, and their children."""
    attempts = [s for s in spans if s.name == "promptq.process" and s.attributes.get("messaging.message.id") == job_id]
    ids = {s.span_id for s in attempts}
    return attempts + [s for s in spans if s.parent_id in ids]


def test_one_trace_runs_from_the_callers_span_through_the_job_to_the_llm_call(
    redis_server_url: str, sim: Simulator, receiver: OtlpReceiver, traced_worker: Worker
) -> None:
    caller = call_as_caller(redis_server_url, receiver, [(SECRET, {"max_tokens": 30, "temperature": 0.2})])
    [doc] = caller["docs"]
    assert doc["status"] == "succeeded"
    spans = receiver.wait_for(lambda got: len(of_job(got, doc["job_id"])) == 2)
    [process, llm] = of_job(spans, doc["job_id"])
    [root] = [s for s in spans if s.name == "caller" and s.service == "caller" and s.span_id == caller["span_id"]]

    assert process.trace_id == llm.trace_id == root.trace_id == caller["trace_id"]  # one trace
    assert process.parent_id == root.span_id and process.links == [(root.trace_id, root.span_id)]
    assert (process.service, process.kind, process.error) == ("promptq-worker", "CONSUMER", False)
    assert process.attributes["messaging.system"] == "promptq"
    assert process.attributes["messaging.operation.type"] == "process"
    assert process.attributes["promptq.attempt"] == 1 and process.attributes["promptq.outcome"] == "succeeded"
    assert process.attributes["promptq.queue_wait_ms"] >= 0

    assert llm.parent_id == process.span_id and llm.kind == "CLIENT"
    assert llm.name == f"chat {doc['model']}"
    a = llm.attributes
    assert a["gen_ai.operation.name"] == "chat" and a["gen_ai.provider.name"] == "openai"
    assert a["gen_ai.request.model"] == doc["model"] and a["gen_ai.response.model"]
    assert a["gen_ai.request.max_tokens"] == 30 and a["gen_ai.request.temperature"] == 0.2
    assert a["gen_ai.usage.input_tokens"] == doc["usage"]["prompt_tokens"]
    assert a["gen_ai.usage.output_tokens"] == doc["usage"]["completion_tokens"]
    assert a["gen_ai.response.finish_reasons"] == [doc["finish_reason"]]
    assert a["server.address"] == "127.0.0.1"
    everything = repr([(s.attributes, s.events) for s in spans])
    assert "launch code" not in everything  # no prompt or answer text by default


def test_a_retried_job_shows_each_attempt_and_why(
    redis_server_url: str, sim: Simulator, receiver: OtlpReceiver, traced_worker: Worker
) -> None:
    sim.configure(error_rate=1.0, error_statuses=[500])
    [doc] = call_as_caller(redis_server_url, receiver, [("will not work", {})])["docs"]
    assert doc["status"] == "failed" and doc["attempts"] == 2
    spans = receiver.wait_for(lambda got: len(of_job(got, doc["job_id"])) == 4)
    attempts = sorted(
        (s for s in of_job(spans, doc["job_id"]) if s.kind == "CONSUMER"), key=lambda s: s.attributes["promptq.attempt"]
    )
    first, second = attempts
    assert first.attributes["promptq.outcome"] == "retrying" and first.error
    [(_name, event)] = [e for e in first.events if e[0] == "promptq.retry"]
    assert event["error.type"] == "server_error" and event["promptq.delay_ms"] > 0
    assert second.attributes["promptq.outcome"] == "failed" and second.attributes["error.type"] == "server_error"
    calls = [s for s in of_job(spans, doc["job_id"]) if s.kind == "CLIENT"]
    assert len(calls) == 2 and all(c.error and c.attributes["error.type"] == "server_error" for c in calls)
    assert all(c.attributes["http.response.status_code"] == 500 for c in calls)


def test_content_is_recorded_only_when_asked_for(
    redis_server_url: str, sim_process: Simulator, receiver: OtlpReceiver, sim: Simulator
) -> None:
    elsewhere = redis_server_url.rsplit("/", 1)[0] + "/3"  # out of the other tests' worker's way
    redis.Redis.from_url(elsewhere).flushdb()
    env = worker_env(
        elsewhere,
        sim_process,
        OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT="true",
        OTEL_SERVICE_NAME="capturing-worker",
        **otel_env(receiver),
    )
    with Worker(env):
        [doc] = call_as_caller(elsewhere, receiver, [(SECRET, {})])["docs"]
    spans = receiver.wait_for(lambda got: len(of_job(got, doc["job_id"])) == 2)
    [llm] = [s for s in of_job(spans, doc["job_id"]) if s.kind == "CLIENT"]
    assert llm.service == "capturing-worker"
    assert json.loads(llm.attributes["gen_ai.input.messages"])[0]["parts"][0]["content"] == SECRET
    assert json.loads(llm.attributes["gen_ai.output.messages"])[0]["parts"][0]["content"] == doc["content"]


TRACE_ID, PARENT_ID = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"


def test_the_http_api_and_the_cli_carry_the_callers_context(
    redis_server_url: str, sim: Simulator, receiver: OtlpReceiver, traced_worker: Worker, tmp_path: Path
) -> None:
    traceparent = f"00-{TRACE_ID}-{PARENT_ID}-01"
    with Api({"REDIS_URL": redis_server_url, **otel_env(receiver)}) as api:
        request = Request(
            api.url + "/v1/jobs",
            data=json.dumps({"prompt": "over http"}).encode(),
            headers={"Content-Type": "application/json", "traceparent": traceparent},
            method="POST",
        )
        with urlopen(request, timeout=10) as response:
            job_id = json.loads(response.read())["job_id"]
        spans = receiver.wait_for(lambda got: len(of_job(got, job_id)) == 2 and any(s.kind == "SERVER" for s in got))
    [server] = [s for s in spans if s.kind == "SERVER" and s.trace_id == TRACE_ID]  # FastAPI's own, or promptq's
    assert server.parent_id == PARENT_ID and server.service == "promptq-api" and server.name == "POST /v1/jobs"
    [process] = [s for s in of_job(spans, job_id) if s.kind == "CONSUMER"]
    api_spans = {s.span_id for s in spans if s.service == "promptq-api" and s.trace_id == TRACE_ID}
    assert process.trace_id == TRACE_ID and process.parent_id in api_spans

    lines = tmp_path / "traced.jsonl"
    lines.write_text(json.dumps({"custom_id": "a", "prompt": "from the cli"}) + "\n")
    cli_trace = "5" * 32
    env = {
        **os.environ,
        "REDIS_URL": redis_server_url,
        "TRACEPARENT": f"00-{cli_trace}-{PARENT_ID}-01",
        **otel_env(receiver),
    }
    promptq = str(Path(sys.executable).with_name("promptq"))
    done = subprocess.run(
        [promptq, "submit", str(lines), "--batch", "traced"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    spans = receiver.wait_for(lambda got: len(of_job(got, "traced:a")) == 2)
    [command] = [s for s in spans if s.name == "promptq submit"]
    assert command.trace_id == cli_trace and command.parent_id == PARENT_ID and command.service == "promptq-cli"
    [process] = [s for s in of_job(spans, "traced:a") if s.kind == "CONSUMER"]
    assert process.trace_id == cli_trace and process.parent_id == command.span_id
