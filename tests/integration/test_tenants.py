"""Tenants over the HTTP API (a real uvicorn, worker and Redis): keys made by the CLI and kept
hashed, each tenant in its own namespace of ids, held to its policy; and the edge's other guards
(who may call without a key, hosts, cross-site requests, security headers, errors that say little)."""

from __future__ import annotations

import asyncio
import dataclasses
import http.client
import io
import json
import socket
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast
from urllib.error import HTTPError
from urllib.request import Request, urlopen

import pytest
import redis

from devtools.stack import Api, Simulator, Worker, free_port
from producer import Producer
from producer.cli.commands import main
from promptq_core.contract import API_KEYS_KEY, DELAYED, TENANTS_KEY, queue_keys
from promptq_core.prices import Price
from tests.conftest import run_burst, start_worker, stop_worker, worker_env
from worker.config import WorkerConfig
from worker.jobs import BUDGET_RECHECK_S

pytestmark = pytest.mark.process

TOKEN = "operator-token-0123456789"


@pytest.fixture(scope="module")
def api(redis_server_url: str) -> Iterator[Api]:
    with Api({"REDIS_URL": redis_server_url, "PROMPTQ_API_TOKEN": TOKEN}) as server:
        yield server


@pytest.fixture
def tenant_worker(redis_url: str, sim: Simulator) -> Iterator[Worker]:
    """A worker process for one test (one left running would take the next tests' jobs)."""
    with Worker(worker_env(redis_url, sim)) as worker:
        yield worker


def call(
    api: Api, method: str, path: str, body: Any = None, key: str | None = TOKEN, headers: dict[str, str] | None = None
) -> tuple[int, Any, dict[str, str]]:
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    sent = {**({"Authorization": f"Bearer {key}"} if key else {}), **(headers or {})}
    if data is not None:
        sent.setdefault("Content-Type", "application/json")
    request = Request(api.url + path, data=data, method=method, headers=sent)
    try:
        with urlopen(request, timeout=10) as response:
            raw, status, got = response.read(), response.status, dict(response.headers)
    except HTTPError as e:
        with e:
            raw, status, got = e.read(), e.code, dict(e.headers)
    kind = got.get("content-type", "")
    return status, json.loads(raw) if kind.startswith("application/json") else raw.decode(), got


def promptq(redis_url: str, *args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(["--redis-url", redis_url, *args], out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def new_key(redis_url: str, tenant: str, *policy: str) -> str:
    code, out, err = promptq(redis_url, "--json", "keys", "create", "--tenant", tenant, *policy)
    assert code == 0, err
    key: str = json.loads(out)["key"]
    return key


def test_keys_are_printed_once_kept_hashed_listed_and_revoked_at_once(
    api: Api, redis_url: str, sync_redis: redis.Redis
) -> None:
    key = new_key(redis_url, "acme", "--max-priority", "3", "--rpm", "60", "--models", "gpt-4o-mini")
    assert key.startswith("pq_")
    entries = cast("dict[bytes, bytes]", sync_redis.hgetall(API_KEYS_KEY))
    kept = json.dumps({k.decode(): v.decode() for k, v in entries.items()})
    secret = key.split("_", 2)[2]  # (pq_{key id}_{secret}: the secret may hold "_" too, or end with one)
    assert key not in kept and secret not in kept  # only its SHA-256 is kept
    code, out, _ = promptq(redis_url, "keys", "list")
    key_id = key.split("_")[1]
    assert code == 0 and f"key {key_id}: tenant acme" in out and "priority 3 to 9; rpm 60; models gpt-4o-mini" in out
    assert key not in out
    assert call(api, "GET", "/v1/jobs/nothing-here", key=key)[0] == 404  # the key works
    assert promptq(redis_url, "keys", "revoke", key_id)[0] == 0
    status, body, _ = call(api, "GET", "/v1/jobs/nothing-here", key=key)
    assert status == 401 and body == {"detail": "wrong bearer token or key"}
    assert promptq(redis_url, "keys", "revoke", key_id)[0] == 1  # no such key any more
    code, _, err = promptq(redis_url, "keys", "update", "--tenant", "nobody", "--rpm", "5")
    assert code == 1 and "no tenant 'nobody'" in err
    assert json.loads(sync_redis.hget(TENANTS_KEY, "acme") or b"{}")["rpm"] == 60  # type: ignore[arg-type]


def test_each_tenant_reaches_only_its_own_jobs(api: Api, tenant_worker: Worker, redis_url: str) -> None:
    a, b = new_key(redis_url, "acme"), new_key(redis_url, "bolt")
    status, mine, _ = call(api, "POST", "/v1/jobs", {"prompt": "acme's order", "job_id": "order-42"}, key=a)
    assert status == 202 and mine["job_id"] == "order-42" and mine["fairness_key"] == "acme"
    status, theirs, _ = call(api, "POST", "/v1/jobs", {"prompt": "bolt's order", "job_id": "order-42"}, key=b)
    assert status == 202 and theirs["job_id"] == "order-42"  # the same id: another job
    call(api, "POST", "/v1/jobs", {"prompt": "acme only", "job_id": "only-a"}, key=a)
    for key, text in ((a, "acme's order"), (b, "bolt's order")):
        status, text_events, _ = call(api, "GET", "/v1/jobs/order-42/events", key=key)
        assert status == 200 and f'"content":"{text}"' in text_events and '"job_id":"order-42"' in text_events
    for method, path in (
        ("GET", "/v1/jobs/only-a"),
        ("GET", "/v1/jobs/only-a/events"),
        ("DELETE", "/v1/jobs/only-a"),
        ("POST", "/v1/jobs/only-a/retry"),
    ):
        status, body, _ = call(api, method, path, key=b)
        assert (status, body) == (404, {"detail": "no job 'only-a' (never submitted, or its result expired)"})
    status, body, _ = call(api, "GET", "/v1/jobs/only-a?tenant=acme", key=b)
    assert status == 422 and "operator's parameter" in body["detail"]
    # The operator reaches a tenant's job by naming the tenant; its own namespace is another.
    assert call(api, "GET", "/v1/jobs/order-42")[0] == 404
    status, doc, _ = call(api, "GET", "/v1/jobs/order-42?tenant=acme")
    assert status == 200 and doc["job_id"] == "acme/order-42"
    # A tenant's dashboard: its own line and failures, none of the fleet's figures.
    status, view, _ = call(api, "GET", "/v1/dashboard", key=b)
    assert status == 200 and view["failures"] == [] and view["workers"] == [] and view["batches"] == []
    assert all(row["key"] == "bolt" for row in view["queue"]["rows"])
    assert call(api, "GET", "/v1/batches/anything", key=b)[0] == 404


def test_a_tenant_key_is_held_to_its_policy(api: Api, redis_url: str) -> None:
    key = new_key(redis_url, "capped", "--max-priority", "7", "--queues", "default", "--models", "gpt-4o-mini,small")
    refused = [
        ({"prompt": "x", "priority": 2}, "priority 2 is above this key's ceiling: its jobs may ask for 7 to 9"),
        ({"prompt": "x", "model": "small", "fairness_key": "spread-1"}, "fairness_key is the tenant's (capped)"),
        ({"prompt": "x", "model": "small", "queue": "gpu"}, "queue 'gpu' is not one this key may use (default)"),
        ({"prompt": "x", "model": "gpt-4o"}, "model 'gpt-4o' is not one this key may use"),
        ({"prompt": "x"}, "name a model: this key may use gpt-4o-mini, small"),
        ({"prompt": "x", "model": "small", "fallbacks": ["gpt-4o"]}, "model 'gpt-4o' is not one"),
        ({"prompt": "x", "model": "small", "job_id": "other/x"}, "job_id: String should match pattern"),
        ({"prompt": "x", "model": "small", "tenant": "someone-else"}, "tenant is not a field of a job"),
        ({"prompt": "x", "model": "small", "max_payload_bytes": 10**9}, "max_payload_bytes is not a field"),
        ({"prompt": "x", "model": "small", "webhook_hosts": ["10.0.0.1"]}, "webhook_hosts is not a field"),
        ({"prompt": "x", "model": "small", "webhook_url": "http://10.0.0.1/in"}, "host '10.0.0.1' is not public"),
        ({"prompt": "x", "model": "small", "webhook_url": "http://[fe80::1]/in"}, "host 'fe80::1' is not public"),
        ({"prompt": "x", "model": "small", "job_id": "t"}, None),
    ]
    for body, message in refused:
        status, answer, _ = call(api, "POST", "/v1/jobs", body, key=key)
        if message is None:
            assert status == 202 and answer["job_id"] == "t" and answer["fairness_key"] == "capped"
            continue
        assert status == 422 and message in answer["detail"], (body, answer)
    status, doc, _ = call(api, "POST", "/v1/jobs", {"prompt": "x", "model": "small"}, key=key)
    assert status == 202 and (doc["priority"], doc["fairness_key"]) == (7, "capped")
    # The operator is held to nothing of that.
    status, doc, _ = call(api, "POST", "/v1/jobs", {"prompt": "x", "priority": 0, "fairness_key": "ops"})
    assert status == 202 and doc["priority"] == 0


def test_a_reused_id_with_another_request_is_409_and_nothing_changes(api: Api, redis_url: str) -> None:
    first = {"prompt": "the victim's prompt", "job_id": "order-1001"}
    assert call(api, "POST", "/v1/jobs", first)[0] == 202
    assert call(api, "POST", "/v1/jobs", first)[0] == 202  # the same request again: nothing new
    status, body, _ = call(api, "POST", "/v1/jobs", {"prompt": "the squatter's text", "job_id": "order-1001"})
    assert status == 409 and "submitted before with another request" in body["detail"]
    status, body, _ = call(api, "POST", "/v1/jobs", {"prompt": "x", "job_id": "nightly:x"})
    assert status == 422  # ids with ':' are the CLI's batches' jobs


def _outside_address() -> str | None:
    """An address of this machine that is not loopback, if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # (nothing is sent)
            address: str = s.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


def test_without_a_token_only_loopback_callers_are_served_unless_opened(redis_url: str) -> None:
    outside = _outside_address()
    if outside is None:
        pytest.skip("this machine has no address but loopback")
    env = {"REDIS_URL": redis_url, "PROMPTQ_API_HOSTS": "*"}
    with Api(env, host=outside) as api:
        status, body, _ = call(api, "GET", "/v1/dashboard", key=None)
        assert status == 401 and body["detail"] == "only loopback clients may call without a key"
        key = new_key(redis_url, "far")
        assert call(api, "GET", "/v1/dashboard", key=key)[0] == 200  # a tenant's key works from anywhere
    with Api({**env, "PROMPTQ_API_OPEN": "1"}, host=outside) as api:
        assert call(api, "GET", "/v1/dashboard", key=None)[0] == 200
        assert "WARNING" in api.output() and "any caller that reaches this port is the operator" in api.output()


def test_cross_site_requests_hosts_and_headers(redis_url: str) -> None:
    with Api({"REDIS_URL": redis_url}) as api:  # no token: loopback is the operator
        form = {"Content-Type": "application/x-www-form-urlencoded"}
        status, body, _ = call(api, "POST", "/v1/jobs/x/retry", b"a=1", key=None, headers=form)
        assert status == 403 and "Content-Type: application/json" in body["detail"]
        assert call(api, "POST", "/v1/jobs/x/retry", b"{}", key=None)[0] == 404  # JSON: an ordinary answer
        assert call(api, "DELETE", "/v1/jobs/x", key=None)[0] == 403
        status, body, _ = call(api, "GET", "/v1/dashboard", key=None, headers={"Host": "evil.example"})
        assert status == 400 and "does not serve the host 'evil.example'" in body["detail"]
        assert call(api, "GET", "/healthz", key=None, headers={"Host": "10.1.2.3:8000"})[0] == 200  # probes
        status, _, headers = call(api, "GET", "/v1/dashboard", key=None)
        assert headers["x-frame-options"] == "DENY" and headers["x-content-type-options"] == "nosniff"
        assert headers["content-security-policy"].startswith("default-src 'none'")
        assert call(api, "GET", "/docs", key=None)[0] == 404 and call(api, "GET", "/redoc", key=None)[0] == 404
        for page in ("/", "/dashboard"):
            status, html, headers = call(api, "GET", page, key=None)
            policy = headers["content-security-policy"]
            assert status == 200 and "script-src 'sha256-" in policy and "frame-ancestors 'none'" in policy
            assert "https://" not in html and "http://" not in policy


def test_what_goes_wrong_is_said_without_secrets_or_echoes(redis_url: str) -> None:
    secret = "hunter2-in-the-query"
    down = f"redis://127.0.0.1:{free_port()}/0?password={secret}"
    with Api({"REDIS_URL": down}) as api:
        status, body, _ = call(api, "POST", "/v1/jobs", {"prompt": "x"}, key=None)
        assert status == 503 and body == {"detail": "the queue is unavailable for a moment; try again shortly"}
        assert secret not in api.output()
    code, out, err = promptq(down, "status")
    assert code == 1 and secret not in out + err and "password=***" in err
    with Api({"REDIS_URL": redis_url, "PROMPTQ_MAX_PAYLOAD_BYTES": "2000"}) as api:
        big = {"prompt": "x" * 5000}
        status, body, _ = call(api, "POST", "/v1/jobs", big, key=None)
        assert status == 413 and "over 4000 bytes" in body["detail"]
        nested: Any = "x"
        for _ in range(950):
            nested = [nested]
        for job, message in (
            ({"prompt": "hi", "metadata": {"a": "\ud83d"}}, "metadata holds a lone surrogate"),
            ({"prompt": "hi", "metadata": {"a": nested}}, "metadata is nested more than 64 levels"),
            ({"prompt": "hi", "extra_body": {"model": "gpt-4o", "n": 50}}, "extra_body may not set model"),
            ({"prompt": "hi", "model": "m" * 300}, "model: String should match pattern"),
            ({"prompt": "hi", "temperature": "9" * 1500}, "and 1460 more characters"),
        ):
            raw = json.dumps(job).encode()  # (json.dumps escapes the surrogate as \\ud83d: valid JSON)
            status, body, _ = call(api, "POST", "/v1/jobs", raw, key=None)
            assert status == 422 and message in body["detail"] and len(body["detail"]) < 400, (job, body)
        assert call(api, "GET", "/v1/jobs/a%20b", key=None)[0] == 422  # an id outside the grammar
        status, body, _ = call(api, "POST", "/v1/jobs", b"[" * 1500 + b"]" * 1500, key=None)
        assert status in (400, 422)  # (Python's reader gives up, or the job's check refuses it: not a 500)


def test_the_cli_reports_bad_text_as_bad_lines(redis_url: str, tmp_path: Any) -> None:
    lines = [
        json.dumps({"prompt": "fine"}),
        json.dumps({"prompt": "lone \ud83d surrogate"}),
        json.dumps({"prompt": "deep", "metadata": {"a": [[[[[[]]]]]] * 1}}).replace(
            "[[[[[[]]]]]]", "[" * 2000 + "]" * 2000
        ),
        json.dumps({"prompt": "hi", "extra_body": {"model": "gpt-4o"}}),
    ]
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    code, _, err = promptq(redis_url, "submit", str(path))
    assert code == 2, err
    assert "bad.jsonl:2: messages holds a lone surrogate" in err
    deep = ("bad.jsonl:3: JSON nested too deep to read", "bad.jsonl:3: metadata is nested more than 64 levels")
    assert any(report in err for report in deep)  # (Python 3.13's reader takes deeper JSON than 3.11's)
    assert "bad.jsonl:4: extra_body may not set model" in err


def test_no_prompt_text_reaches_a_log_line_at_any_level(redis_url: str, sim: Simulator) -> None:
    marker = "SECRET-PROMPT-7f3a"
    sim.configure(error_rate=0.5, error_statuses=[500, 400])
    env = worker_env(redis_url, sim, PROMPTQ_LOG_LEVEL="debug", PROMPTQ_LOG_FORMAT="json", PROMPTQ_MAX_TRIES="3")
    with Worker(env) as worker, Api({"REDIS_URL": redis_url}) as api:
        for i in range(12):
            body = {"prompt": f"{marker} {i}", "metadata": {"note": marker}, "stream": i % 2 == 0}
            assert call(api, "POST", "/v1/jobs", body, key=None)[0] == 202
        status, _, _ = call(api, "POST", "/v1/jobs", {"prompt": marker, "priority": "high"}, key=None)
        assert status == 422
        producer = redis.Redis.from_url(redis_url)
        started = time.monotonic()
        while time.monotonic() - started < 30:  # until every job has ended
            docs = [cast("bytes | None", producer.get(k)) for k in producer.scan_iter(queue_keys().result("*"))]
            if docs and all(b'"status":"succeeded"' in d or b'"status":"failed"' in d for d in docs if d):
                break
            time.sleep(0.2)
        producer.close()
        logs = worker.output() + api.output()
    assert '"level": "debug"' in logs or '"level":"debug"' in logs  # it did log at debug
    assert marker not in logs


async def _ended(producer: Producer, ids: list[str]) -> Counter[str]:
    return Counter(r.status if r else "gone" for r in await producer.get_many(ids))


async def test_a_tenant_at_60_rpm_gets_no_more_while_the_other_is_unaffected(
    producer: Producer, worker_config: WorkerConfig
) -> None:
    await producer.create_key("slow", rpm=60)
    await producer.create_key("free")
    slow = await producer.submit_many([{"prompt": f"slow {i}", "tenant": "slow"} for i in range(8)])
    free = await producer.submit_many([{"prompt": f"free {i}", "tenant": "free"} for i in range(8)])
    worker, main = start_worker(dataclasses.replace(worker_config, max_jobs=4))
    try:
        await asyncio.sleep(3)
        ended_slow, ended_free = await _ended(producer, slow), await _ended(producer, free)
    finally:
        await stop_worker(worker, main)
    assert ended_free["succeeded"] == 8  # its jobs did not wait behind the slow tenant's
    assert 2 <= ended_slow["succeeded"] <= 4, ended_slow  # one a second, without a burst


async def test_a_tenant_keeps_to_its_calls_in_flight(
    producer: Producer, worker_config: WorkerConfig, sim: Simulator
) -> None:
    await producer.create_key("narrow", max_in_flight=2)
    sim.configure(latency_ms=200)
    ids = await producer.submit_many([{"prompt": f"narrow {i}", "tenant": "narrow"} for i in range(8)])
    await run_burst(dataclasses.replace(worker_config, max_jobs=8))
    assert (await _ended(producer, ids))["succeeded"] == 8
    assert sim.stats()["peak_in_flight"] == 2


async def test_a_spent_budget_stops_the_tenant_within_its_calls_in_flight(
    producer: Producer, worker_config: WorkerConfig, redis_url: str
) -> None:
    prices = {"gpt-4o-mini": Price(1_000_000.0, 1_000_000.0)}  # a dollar a token: one job spends it
    await producer.create_key("spender", budget_usd=1.0, budget_period="day")
    _, other_key = await producer.create_key("other", budget_usd=1000.0)
    ids = await producer.submit_many([{"prompt": f"spend {i}", "tenant": "spender"} for i in range(10)])
    others = await producer.submit_many([{"prompt": f"other {i}", "tenant": "other"} for i in range(3)])
    worker, main = start_worker(dataclasses.replace(worker_config, max_jobs=2, prices=prices))
    try:
        await asyncio.sleep(2)
        ended = await _ended(producer, ids)
        assert (await _ended(producer, others))["succeeded"] == 3
    finally:
        await stop_worker(worker, main)
    assert 1 <= ended["succeeded"] <= 2, ended  # past the budget: at most the calls in flight then
    waiting = [r for r in await producer.get_many(ids) if r and r.status == "queued"]
    assert len(waiting) >= 8 and all(r.error and r.error.type == "over_budget" for r in waiting)
    client = redis.Redis.from_url(redis_url)  # held up to an hour at a time, kept alive while it waits
    keys = queue_keys()
    assert cast(int, client.pttl(keys.record(waiting[0].job_id))) > worker_config.result_ttl_s * 1000
    due = cast(float, client.zscore(keys.key(DELAYED), waiting[0].job_id))
    assert 0 < due / 1000 - time.time() <= BUDGET_RECHECK_S
    client.close()
    assert (await producer.spent("spender"))["day"] >= 1.0
    with Api({"REDIS_URL": redis_url}) as api:
        _, spender = await producer.create_key("spender")
        status, body, headers = call(api, "POST", "/v1/jobs", {"prompt": "more"}, key=spender)
        assert status == 429 and "budget of $1 a day is spent" in body["detail"] and "renews at" in body["detail"]
        assert 0 < int(headers["retry-after"]) <= 86_400
        assert call(api, "POST", "/v1/jobs", {"prompt": "more"}, key=other_key)[0] == 202


def test_event_streams_are_capped_and_end_in_time(redis_url: str) -> None:
    env = {
        "REDIS_URL": redis_url,
        "PROMPTQ_SSE_MAX_S": "2",
        "PROMPTQ_SSE_MAX_PER_TENANT": "2",
        "PROMPTQ_SSE_MAX_STREAMS": "3",
        "PROMPTQ_SSE_KEEPALIVE_S": "0.5",
    }
    with Api(env) as api:
        key = new_key(redis_url, "watcher")
        for i in range(3):  # no worker: they stay queued, their streams silent
            assert call(api, "POST", "/v1/jobs", {"prompt": "x", "job_id": f"w{i}"}, key=key)[0] == 202
        assert call(api, "POST", "/v1/jobs", {"prompt": "x", "job_id": "op"}, key=None)[0] == 202

        def stream(path: str, with_key: str | None) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
            conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=10)
            conn.request("GET", path, headers={"Authorization": f"Bearer {with_key}"} if with_key else {})
            return conn, conn.getresponse()

        opened = [stream("/v1/jobs/w0/events", key), stream("/v1/jobs/w1/events", key)]
        assert [r.status for _, r in opened] == [200, 200]
        conn, refused = stream("/v1/jobs/w2/events", key)
        assert refused.status == 429 and b"2 event streams open" in refused.read()
        conn.close()
        opened.append(stream("/v1/jobs/op/events", None))
        conn, full = stream("/v1/jobs/op/events", None)
        assert full.status == 503 and full.headers["Retry-After"] == "5"
        conn.close()
        assert call(api, "POST", "/v1/jobs", {"prompt": "still taken"}, key=None)[0] == 202  # submits go on
        started = time.monotonic()
        for conn, response in opened:  # each ends at its time (the job still queued), for the client to resume
            assert b"time is up" in response.read()
            conn.close()
        assert 1.5 <= time.monotonic() - started <= 6
        conn, again = stream("/v1/jobs/w2/events", key)  # the places are free again
        assert again.status == 200
        conn.close()
        for _ in range(5):  # clients gone before their first event give their places back too
            with socket.create_connection(("127.0.0.1", api.port)) as s:
                head = f"GET /v1/jobs/w0/events HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n\r\n"
                s.sendall(head.encode())
        time.sleep(0.5)
        opened = [stream("/v1/jobs/w0/events", key), stream("/v1/jobs/w1/events", key)]
        assert [r.status for _, r in opened] == [200, 200]
        for conn, _ in opened:
            conn.close()


def test_the_dashboard_is_computed_once_however_many_tabs_ask(redis_url: str, sync_redis: redis.Redis) -> None:
    def scripts_run() -> int:
        stats = cast("dict[str, dict[str, int]]", sync_redis.info("commandstats"))
        return sum(stats.get(f"cmdstat_{c}", {}).get("calls", 0) for c in ("evalsha", "eval"))

    with Api({"REDIS_URL": redis_url}) as api:
        assert call(api, "GET", "/v1/dashboard", key=None)[0] == 200  # (its scripts loaded)
        time.sleep(1.1)
        before = scripts_run()
        with ThreadPoolExecutor(20) as pool:
            answers = list(pool.map(lambda _: call(api, "GET", "/v1/dashboard", key=None)[0], range(20)))
        assert answers == [200] * 20
        assert scripts_run() - before <= 4  # one overview (two scripts), twice if the second ticked over


async def test_a_tenants_tokens_a_minute_hold_it_back(producer: Producer, worker_config: WorkerConfig) -> None:
    await producer.create_key("wordy", tpm=1200)  # 20 tokens a second
    ids = await producer.submit_many([{"prompt": f"wordy {i}", "tenant": "wordy", "max_tokens": 50} for i in range(6)])
    worker, main = start_worker(dataclasses.replace(worker_config, max_jobs=6))
    try:
        await asyncio.sleep(3)
        ended = await _ended(producer, ids)
    finally:
        await stop_worker(worker, main)
    assert 1 <= ended["succeeded"] <= 3, ended  # each reserves about 55 tokens: one every ~3 s, no burst
