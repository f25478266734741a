"""The HTTP API, served by a real uvicorn process, with a real worker process and the simulator."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.error import HTTPError
from urllib.request import Request, urlopen

import pytest

from devtools.stack import ROOT, Api, Simulator, Worker, free_port
from producer import ProducerConfig, SyncProducer
from promptq_core.contract import decode_vector
from tests.conftest import worker_env

pytestmark = pytest.mark.process

TOKEN = "test-api-token-0123"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
OPENAPI_SNAPSHOT = ROOT / "docs" / "openapi.json"


@pytest.fixture(scope="module")
def api(redis_server_url: str) -> Iterator[Api]:
    with Api({"REDIS_URL": redis_server_url, "PROMPTQ_API_TOKEN": TOKEN, "PROMPTQ_SSE_KEEPALIVE_S": "0.2"}) as server:
        yield server


@pytest.fixture(scope="module")
def http_worker(redis_server_url: str, sim_process: Simulator) -> Iterator[Worker]:
    with Worker(worker_env(redis_server_url, sim_process)) as worker:
        yield worker


def call(
    api: Api, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, Any, dict[str, str]]:
    data = None if body is None else json.dumps(body).encode()
    request = Request(api.url + path, data=data, method=method, headers={**AUTH, **(headers or {})})
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urlopen(request, timeout=10) as response:
            raw, status, got = response.read(), response.status, dict(response.headers)
    except HTTPError as e:
        raw, status, got = e.read(), e.code, dict(e.headers)
    kind = got.get("content-type", "")
    return status, json.loads(raw) if kind.startswith("application/json") else raw.decode(), got


def sse(text: str) -> list[tuple[str | None, str, Any]]:
    """(id, event, data) of each Server-Sent Event."""
    out = []
    for frame in text.strip().split("\n\n"):
        if frame.startswith(":"):  # a keep-alive comment
            continue
        fields = dict(line.split(": ", 1) for line in frame.splitlines())
        out.append((fields.get("id"), fields["event"], json.loads(fields["data"])))
    return out


JUST_SUBMITTED = {"queued", "running", "succeeded"}
"""The answer to a submit is the document as it is then: a running worker may have taken the job already."""


def test_embeddings_and_responses_jobs_go_through_the_http_api(api: Api, http_worker: Worker) -> None:
    jobs = [
        {"endpoint": "/v1/embeddings", "input": ["over http"], "model": "text-embedding-3-small", "dimensions": 4},
        {"endpoint": "/v1/responses", "input": "over http", "instructions": "echo"},
    ]
    status, docs, _ = call(api, "POST", "/v1/jobs", jobs)
    assert status == 202 and [d["endpoint"] for d in docs] == ["/v1/embeddings", "/v1/responses"]
    status, text, _ = call(api, "GET", f"/v1/jobs/{docs[0]['job_id']}/events")
    embedded = sse(text)[-1][2]
    assert embedded["status"] == "succeeded" and len(decode_vector(embedded["embeddings"][0])) == 4
    status, text, _ = call(api, "GET", f"/v1/jobs/{docs[1]['job_id']}/events")
    responded = sse(text)[-1][2]
    assert responded["content"] == "over http" and responded["output"][0]["type"] == "message"
    status, body, _ = call(api, "POST", "/v1/jobs", {"endpoint": "/v1/embeddings", "input": "x"})
    assert status == 422 and "needs a model" in body["detail"]


def test_submit_get_and_stream_one_job(api: Api, http_worker: Worker, redis_url: str, sim: Simulator) -> None:
    status, doc, _ = call(api, "POST", "/v1/jobs", {"prompt": "hello over http", "stream": True, "max_tokens": 50})
    assert status == 202 and doc["status"] in JUST_SUBMITTED and doc["job_id"]
    status, text, headers = call(api, "GET", f"/v1/jobs/{doc['job_id']}/events")
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    events = sse(text)
    assert [e[1] for e in events][-1] == "done" and {e[1] for e in events[:-1]} == {"delta"}
    assert "".join(e[2]["text"] for e in events[:-1]) == "hello over http"
    final = events[-1][2]
    assert final["status"] == "succeeded" and final["content"] == "hello over http"
    # Last-Event-ID resumes behind the given event
    status, text, _ = call(
        api, "GET", f"/v1/jobs/{doc['job_id']}/events", headers={"Last-Event-ID": events[-2][0] or ""}
    )
    assert [e[1] for e in sse(text)] == ["done"]
    status, got, _ = call(api, "GET", f"/v1/jobs/{doc['job_id']}")
    assert status == 200 and got == final


def test_a_list_of_jobs_answers_with_every_document(api: Api, http_worker: Worker, redis_url: str) -> None:
    status, docs, _ = call(api, "POST", "/v1/jobs", [{"prompt": "one"}, {"prompt": "two", "job_id": "mine-2"}])
    assert status == 202 and len(docs) == 2 and docs[1]["job_id"] == "mine-2"
    assert all(d["status"] in JUST_SUBMITTED for d in docs)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"prompt": "hi", "temperature": 3}, "temperature must be a number from 0 to 2"),
        ({"prompt": "hi", "promt": "typo"}, "unknown parameter 'promt'"),
        ({}, "give exactly one of prompt or messages"),
        ([], "at least 1 item"),
        ({"prompt": "hi", "fairness_key": "a\u0000b"}, "printable characters"),
        ({"prompt": "hi", "fairness_key": "é" * 100}, "1 to 128 bytes"),
        ({"prompt": "hi", "priority": 10}, "priority"),
        ({"prompt": "hi", "priority": "1"}, "priority"),
        ({"prompt": "hi", "fairness_key": ""}, "fairness_key"),
    ],
)
def test_bad_jobs_get_422_with_the_reason(api: Api, redis_url: str, body: Any, message: str) -> None:
    status, doc, _ = call(api, "POST", "/v1/jobs", body)
    assert status == 422 and message in json.dumps(doc["detail"], ensure_ascii=False)


def test_a_job_body_sets_its_priority_and_fairness_key(api: Api, http_worker: Worker, redis_url: str) -> None:
    status, doc, _ = call(api, "POST", "/v1/jobs", {"prompt": "now", "priority": 0, "fairness_key": "web"})
    assert status == 202 and (doc["priority"], doc["fairness_key"]) == (0, "web")
    deadline = time.monotonic() + 10
    while doc["status"] not in {"succeeded", "failed"} and time.monotonic() < deadline:
        time.sleep(0.02)
        doc = call(api, "GET", f"/v1/jobs/{doc['job_id']}")[1]
    assert doc["status"] == "succeeded" and (doc["priority"], doc["fairness_key"]) == (0, "web")


def test_unknown_ids_get_404_and_cancel_works(api: Api, http_worker: Worker, redis_url: str, sim: Simulator) -> None:
    for method, path in [("GET", "/v1/jobs/nope"), ("GET", "/v1/jobs/nope/events"), ("DELETE", "/v1/jobs/nope")]:
        status, doc, _ = call(api, method, path)
        assert status == 404 and "nope" in doc["detail"], (method, path)
    sim.configure(hang_rate=1.0)  # the job runs until cancelled
    _, doc, _ = call(api, "POST", "/v1/jobs", {"prompt": "cancel me", "stream": True})
    path = f"/v1/jobs/{doc['job_id']}"
    deadline = time.monotonic() + 10
    while sim.stats()["in_flight"] == 0 and time.monotonic() < deadline:  # its call is at the API
        time.sleep(0.02)
    assert call(api, "GET", path)[1]["status"] == "running"
    status, outcome, _ = call(api, "DELETE", path)
    assert status == 200 and outcome["cancelled"] and outcome["result"]["status"] == "cancelled"
    status, again, _ = call(api, "DELETE", path)
    assert status == 200 and not again["cancelled"] and "already cancelled" in again["message"]
    _, text, _ = call(api, "GET", path + "/events")
    assert [(e[1], e[2]["status"]) for e in sse(text)] == [("done", "cancelled")]
    assert sim.stats()["requests"] == 1


def test_a_silent_stream_sends_keepalive_comments(
    api: Api, http_worker: Worker, redis_url: str, sim: Simulator
) -> None:
    sim.configure(hang_rate=1.0)  # the call never answers: nothing to send until the cancel
    _, doc, _ = call(api, "POST", "/v1/jobs", {"prompt": "silent", "stream": True})
    path = f"/v1/jobs/{doc['job_id']}"
    threading.Timer(1.0, lambda: call(api, "DELETE", path)).start()
    status, text, _ = call(api, "GET", path + "/events")
    assert status == 200 and text.count(": keep-alive\n\n") >= 3  # one every 0.2 s here
    assert [(e[1], e[2]["status"]) for e in sse(text)] == [("done", "cancelled")]


def test_the_token_is_required(api: Api, redis_url: str) -> None:
    for headers in [{"Authorization": ""}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}]:
        status, doc, got = call(api, "POST", "/v1/jobs", {"prompt": "hi"}, headers=headers)
        assert status == 401 and got.get("www-authenticate") == "Bearer" and "token" in doc["detail"], headers
    assert call(api, "GET", "/healthz", headers={"Authorization": ""})[:2] == (200, {"ok": True})


def test_a_last_event_id_that_is_not_an_event_id_gets_400(
    api: Api, http_worker: Worker, redis_url: str, sim: Simulator
) -> None:
    _, doc, _ = call(api, "POST", "/v1/jobs", {"prompt": "hi"})
    path = f"/v1/jobs/{doc['job_id']}/events"
    for bad in ("null", "abc", "1-2-3", "-1"):
        status, answer, _ = call(api, "GET", path, headers={"Last-Event-ID": bad})
        assert status == 400 and "is not an event id" in answer["detail"], bad
    status, text, _ = call(api, "GET", path, headers={"Last-Event-ID": "0"})
    assert status == 200 and sse(text)[-1][1] == "done"


def test_a_body_over_the_limit_gets_413_before_it_is_read(redis_url: str) -> None:
    with Api({"REDIS_URL": redis_url, "PROMPTQ_MAX_BODY_BYTES": "1000", "PROMPTQ_API_TOKEN": TOKEN}) as small:
        status, doc, _ = call(small, "POST", "/v1/jobs", {"prompt": "x" * 2000})
        assert status == 413 and "over 1000 bytes" in doc["detail"]
        # without a Content-Length (chunked): refused once the bytes read pass the limit
        with socket.create_connection(("127.0.0.1", small.port)) as s:
            s.sendall(
                b"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n"
            )
            for _ in range(3):
                s.sendall(b"200\r\n" + b"x" * 0x200 + b"\r\n")
            s.sendall(b"0\r\n\r\n")
            assert s.recv(4096).startswith(b"HTTP/1.1 413")
        assert call(small, "POST", "/v1/jobs", {"prompt": "fits"})[0] == 202


def test_a_failed_job_is_retried_over_http_and_the_dashboard_sees_it(
    api: Api, http_worker: Worker, sim: Simulator, redis_url: str
) -> None:
    sim.configure(error_rate=1.0, error_statuses=[400])
    status, doc, _ = call(api, "POST", "/v1/jobs", {"prompt": "fails once", "job_id": "http-retry-1"})
    assert status == 202
    status, text, _ = call(api, "GET", "/v1/jobs/http-retry-1/events")
    assert sse(text)[-1][2]["status"] == "failed"
    time.sleep(1.1)  # the dashboard's figures are computed once a second: these are new
    status, board, _ = call(api, "GET", "/v1/dashboard")
    assert status == 200 and [f["job_id"] for f in board["failures"]] == ["http-retry-1"]
    assert board["queue"]["totals"]["failed"] == 1 and len(board["minutes"]) == 15

    sim.configure(error_rate=0.0)
    status, doc, _ = call(api, "POST", "/v1/jobs/http-retry-1/retry")
    assert status == 202 and doc["status"] in JUST_SUBMITTED
    status, text, _ = call(api, "GET", "/v1/jobs/http-retry-1/events")
    assert sse(text)[-1][2]["status"] == "succeeded"
    status, doc, _ = call(api, "POST", "/v1/jobs/http-retry-1/retry")
    assert status == 409 and "not failed" in doc["detail"]
    assert call(api, "POST", "/v1/jobs/never-was/retry")[0] == 404
    assert call(api, "GET", "/v1/dashboard", headers={"Authorization": "Bearer wrong"})[0] == 401


def test_a_batchs_jobs_are_listed_a_page_at_a_time(api: Api, redis_url: str) -> None:
    with SyncProducer(config=ProducerConfig(redis_url=redis_url)) as producer:
        ids = [f"paged:{i}" for i in range(5)]
        producer.open_batch("paged", len(ids))
        producer.submit_many([{"prompt": f"p{i}", "job_id": j} for i, j in enumerate(ids)])
        producer.save_manifest(
            "paged", json.dumps({"name": "paged", "items": [[str(i), j] for i, j in enumerate(ids)]})
        )
    status, page, _ = call(api, "GET", "/v1/batches/paged?offset=3&limit=10")
    assert status == 200 and (page["total"], page["offset"]) == (5, 3)
    assert [(i["custom_id"], i["job_id"]) for i in page["items"]] == [("3", "paged:3"), ("4", "paged:4")]
    assert all(i["status"] in JUST_SUBMITTED for i in page["items"])
    assert call(api, "GET", "/v1/batches/nope")[0] == 404
    assert call(api, "GET", "/v1/batches/paged?limit=0")[0] == 422
    time.sleep(1.1)  # the dashboard's figures are computed once a second: these are new
    status, board, _ = call(api, "GET", "/v1/dashboard")
    assert [(b["name"], b["total"]) for b in board["batches"]] == [("paged", 5)]


def test_every_error_answers_in_one_shape(api: Api, redis_url: str) -> None:
    for body in ({"prompt": "hi", "priority": "1"}, {"prompt": 5}, [{"prompt": "a"}] * 0):
        status, doc, _ = call(api, "POST", "/v1/jobs", body)
        assert status == 422 and isinstance(doc["detail"], str) and doc["detail"], body


def test_redis_down_gets_503() -> None:
    with Api({"REDIS_URL": f"redis://127.0.0.1:{free_port()}/0", "PROMPTQ_API_TOKEN": TOKEN}) as down:
        status, doc, _ = call(down, "POST", "/v1/jobs", {"prompt": "hi"})
        assert status == 503 and "unavailable" in doc["detail"]
        assert call(down, "GET", "/healthz")[0] == 503


def test_the_openapi_schema_is_the_documented_one(api: Api) -> None:
    status, schema, _ = call(api, "GET", "/openapi.json")
    assert status == 200
    assert set(schema["paths"]) == {
        "/v1/jobs",
        "/v1/jobs/{job_id}",
        "/v1/jobs/{job_id}/events",
        "/v1/jobs/{job_id}/retry",
        "/v1/dashboard",
        "/v1/batches/{name}",
        "/healthz",
    }
    assert set(schema["paths"]["/v1/jobs/{job_id}"]) == {"get", "delete"}
    if os.environ.get("PROMPTQ_WRITE_OPENAPI"):
        OPENAPI_SNAPSHOT.write_text(json.dumps(schema, indent=2) + "\n")
    assert schema == json.loads(Path(OPENAPI_SNAPSHOT).read_text()), "run `make openapi` and commit docs/openapi.json"
