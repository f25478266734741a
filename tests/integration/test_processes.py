"""Real processes: ``arq worker.Settings`` as an operator runs it, and the producer's import boundary."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from devtools.stack import ROOT, Simulator, Worker, wait_until
from producer import SyncProducer
from tests.conftest import TEST_API_KEY, worker_env

pytestmark = pytest.mark.process

SECRET_PROMPT = "my-private-diagnosis-7731"


def _json_lines(output: str) -> list[dict[str, Any]]:
    lines = [line for line in output.splitlines() if line.strip()]
    return [json.loads(line) for line in lines]  # every line is JSON, arq's own included


def test_a_worker_process_runs_jobs_and_logs_json_without_secrets(
    redis_url: str, sim: Simulator, sync_producer: SyncProducer
) -> None:
    sim.configure(require_api_key=TEST_API_KEY, latency_ms=20)
    env = worker_env(redis_url, sim, PROMPTQ_LOG_LEVEL="debug", PROMPTQ_MAX_JOBS="3")
    with Worker(env) as worker:
        ids = sync_producer.submit_many([f"{SECRET_PROMPT} #{i}" for i in range(6)])
        results = [sync_producer.wait(job_id, timeout=20) for job_id in ids]
        assert worker.stop() == 0  # SIGTERM: a clean exit
    assert all(r.ok and r.content and SECRET_PROMPT in r.content for r in results)
    assert sim.stats()["peak_in_flight"] <= 3

    output = worker.output()
    assert SECRET_PROMPT not in output and TEST_API_KEY not in output
    lines = _json_lines(output)
    finished = [line for line in lines if line["event"] == "job.finished"]
    assert Counter(line["job_id"] for line in finished) == Counter(ids)
    for line in finished:
        assert line["status"] == "succeeded" and line["attempts"] == 1 and line["model"] == "gpt-4o-mini"
        assert line["total_tokens"] > 0 and line["latency_ms"] >= 20 and line["level"] == "info"
        assert "timestamp" in line
    arq_lines = [line for line in lines if line.get("logger", "").startswith("arq")]
    assert arq_lines, "arq's own log lines go through the same JSON pipeline"
    job_lines = [line for line in arq_lines if "job_id" in line]
    assert {line["job_id"] for line in job_lines} <= set(ids)
    assert any(line["event"] == "worker.stopped" for line in lines)
    http_loggers = {line["logger"] for line in lines if line["level"] == "debug"} & {"httpcore", "httpcore2", "openai"}
    assert not http_loggers, "the HTTP client's DEBUG lines (request bodies, headers) stay off"


def test_at_info_level_a_job_logs_one_line(redis_url: str, sim: Simulator, sync_producer: SyncProducer) -> None:
    with Worker(worker_env(redis_url, sim)) as worker:
        job_id = sync_producer.submit("hello")
        sync_producer.wait(job_id, timeout=20)
        wait_until(lambda: "job.finished" in worker.output(), 5, "canonical line")
    per_job = [line for line in _json_lines(worker.output()) if line.get("job_id") == job_id]
    assert [line["event"] for line in per_job] == ["job.finished"]


def test_the_canonical_line_of_a_worker_process_names_the_backend_that_answered(
    redis_url: str, sim: Simulator, sync_producer: SyncProducer
) -> None:
    listing = [{"name": "primary", "base_url": sim.base_url, "models": ["gpt-4o-mini"]}]
    env = {"REDIS_URL": redis_url, "PROMPTQ_BACKENDS": json.dumps(listing), "PROMPTQ_POLL_DELAY_S": "0.02"}
    with Worker(env) as worker:
        ids = sync_producer.submit_many([f"which backend {i}" for i in range(3)])
        assert all(sync_producer.wait(job_id, timeout=20).backend == "primary" for job_id in ids)
        wait_until(lambda: worker.output().count('"job.finished"') == len(ids), 5, "canonical lines")
    finished = [line for line in _json_lines(worker.output()) if line["event"] == "job.finished"]
    assert sorted(line["job_id"] for line in finished) == sorted(ids)
    assert all(line["backend"] == "primary" and line["status"] == "succeeded" for line in finished)


def test_a_worker_process_with_backends_listed_warns_that_the_openai_variables_go_unused(
    redis_url: str, sim: Simulator, sync_producer: SyncProducer
) -> None:
    listing = [{"name": "listed", "base_url": sim.base_url, "models": ["gpt-4o-mini"]}]
    env = worker_env(redis_url, sim, PROMPTQ_BACKENDS=json.dumps(listing))  # with OPENAI_BASE_URL and _API_KEY
    with Worker(env) as worker:
        r = sync_producer.wait(sync_producer.submit("still served by the listing"), timeout=20)
    assert r.ok and r.backend == "listed"
    warnings = [line for line in _json_lines(worker.output()) if line["event"] == "worker.variables_ignored"]
    assert len(warnings) == 1 and warnings[0]["level"] == "warning"
    assert warnings[0]["variables"] == ["OPENAI_API_KEY", "OPENAI_BASE_URL"]
    assert TEST_API_KEY not in worker.output()  # it names the variables, never their values


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"PROMPTQ_MAX_JOBS": "lots"}, "PROMPTQ_MAX_JOBS"),
        ({"PROMPTQ_REQUEST_TIMEOUT_S": "30", "PROMPTQ_JOB_TIMEOUT_S": "20"}, "PROMPTQ_JOB_TIMEOUT_S"),
        ({"REDIS_URL": "http://localhost:6379"}, "REDIS_URL"),
        ({"OPENAI_BASE_URL": "", "OPENAI_API_KEY": ""}, "OPENAI_API_KEY"),
        ({"PROMPTQ_LOG_FORMAT": "xml"}, "PROMPTQ_LOG_FORMAT"),
    ],
)
def test_a_bad_setting_stops_the_worker_with_its_name(env: dict[str, str], variable: str) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PROMPTQ_", "OPENAI_", "REDIS_URL"))}
    clean.update({"OPENAI_API_KEY": "sk-x", **env})
    arq = str(Path(sys.executable).with_name("arq"))
    done = subprocess.run([arq, "worker.Settings"], env=clean, cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert done.returncode != 0
    assert variable in done.stderr
    assert "Traceback" not in done.stderr + done.stdout


def test_sigterm_while_idle_stops_promptly(redis_url: str, sim: Simulator) -> None:
    with Worker(worker_env(redis_url, sim)) as worker:
        worker.signal(signal.SIGTERM)
        assert worker.popen is not None
        assert worker.popen.wait(10) == 0
