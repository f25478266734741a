"""The ``promptq`` command end to end (a real worker process, the simulator)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from devtools.stack import ROOT, Simulator, Worker, free_port
from producer.cli import main
from tests.conftest import worker_env

pytestmark = pytest.mark.process

LINES = 300


def batch_lines(n: int) -> list[str]:
    """Half in the Batch API's input format, half plain; every prompt distinct."""
    lines = []
    for i in range(n):
        if i % 2:
            body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"prompt {i}"}], "max_tokens": 20}
            lines.append(
                json.dumps({"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions", "body": body})
            )
        else:
            lines.append(json.dumps({"prompt": f"prompt {i}", "custom_id": f"req-{i}", "temperature": 0.2}))
    return lines


def promptq(redis_url: str, *args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(["--redis-url", redis_url, *args], out=out, err=err)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def worker(redis_url: str, sim: Simulator) -> Iterator[Worker]:
    with Worker(worker_env(redis_url, sim, PROMPTQ_MAX_JOBS="50")) as w:
        yield w


def test_a_batch_survives_an_interrupted_submit_and_worker_and_comes_back_in_input_order(
    redis_url: str, sim: Simulator, tmp_path: Path
) -> None:
    lines = batch_lines(LINES)
    full = tmp_path / "eval.jsonl"
    full.write_text("\n".join(lines) + "\n")
    partial = tmp_path / "partial.jsonl"  # what a submit killed part-way had sent
    partial.write_text("\n".join(lines[:120]) + "\n")

    code, out, _ = promptq(redis_url, "--json", "submit", str(partial), "--batch", "eval")
    assert code == 0 and json.loads(out)["new"] == 120
    code, out, _ = promptq(redis_url, "--json", "submit", str(full), "--batch", "eval")
    assert code == 0 and (json.loads(out)["new"], json.loads(out)["already"]) == (180, 120)
    code, out, _ = promptq(redis_url, "--json", "submit", str(full))  # the batch name defaults to the file's
    assert code == 0 and json.loads(out) == {"batch": "eval", "jobs": LINES, "new": 0, "already": LINES, "bad_lines": 0}

    sim.configure(latency_ms=100)
    env = worker_env(redis_url, sim, PROMPTQ_MAX_JOBS="50", PROMPTQ_SHUTDOWN_GRACE_S="0")
    with Worker(env):  # interrupted part-way: SIGTERM, no grace, its calls put back
        code, _, _ = promptq(redis_url, "wait", "eval", "--timeout", "0.5")
        assert code == 3  # timed out: not done yet
    assert 0 < int(json.loads(promptq(redis_url, "--json", "status", "eval")[1]).get("succeeded", 0)) < LINES
    target = tmp_path / "out.jsonl"
    with Worker(env):
        code, out, err = promptq(redis_url, "collect", "eval", "-o", str(target), "--timeout", "60")
    assert code == 0, err
    assert f"batch=eval done={LINES}/{LINES} failed=0" in err  # plain progress lines off a terminal
    assert f"{LINES} succeeded" in out
    written = [json.loads(line) for line in target.read_text().splitlines()]
    assert [w["custom_id"] for w in written] == [f"req-{i}" for i in range(LINES)]
    for i, w in enumerate(written):
        assert w["error"] is None and w["response"]["status_code"] == 200
        body = w["response"]["body"]
        assert body["choices"][0]["message"]["content"] == f"prompt {i}"
        assert body["object"] == "chat.completion" and body["usage"]["total_tokens"] > 0
    # every job ran once, except the calls cut by the interruption (50 slots at most)
    assert LINES <= sim.stats()["completions"] <= LINES + 50


def test_a_batch_api_file_mixing_the_three_endpoints_comes_back_in_the_batch_output_format(
    redis_url: str, tmp_path: Path, worker: Worker
) -> None:
    def line(i: int, url: str, body: dict[str, Any]) -> str:
        return json.dumps({"custom_id": f"r{i}", "method": "POST", "url": url, "body": body})

    lines = [
        line(0, "/v1/chat/completions", {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "chat 0"}]}),
        line(1, "/v1/embeddings", {"model": "text-embedding-3-small", "input": ["emb 1", "emb 1b"], "dimensions": 8}),
        line(2, "/v1/responses", {"model": "gpt-4o-mini", "input": "resp 2", "instructions": "short"}),
        line(3, "/v1/embeddings", {"model": "text-embedding-3-small", "input": "emb 3", "encoding_format": "float"}),
        line(4, "/v1/completions", {"model": "gpt-3.5-turbo-instruct", "prompt": "legacy"}),
    ]
    source = tmp_path / "mixed.jsonl"
    source.write_text("\n".join(lines) + "\n")
    code, _, err = promptq(redis_url, "submit", str(source))
    assert code == 2 and "mixed.jsonl:5: only POST requests to" in err  # the legacy endpoint is named, the rest go
    target = tmp_path / "out.jsonl"
    code, _, err = promptq(redis_url, "collect", "mixed", "-o", str(target), "--timeout", "30")
    assert code == 0, err
    written = [json.loads(w) for w in target.read_text().splitlines()]
    assert [w["custom_id"] for w in written] == ["r0", "r1", "r2", "r3"]
    chat, embeddings, response, single = (w["response"]["body"] for w in written)
    assert chat["object"] == "chat.completion" and chat["choices"][0]["message"]["content"] == "chat 0"
    assert embeddings["object"] == "list" and [d["index"] for d in embeddings["data"]] == [0, 1]
    assert all(len(d["embedding"]) == 8 and isinstance(d["embedding"][0], float) for d in embeddings["data"])
    assert embeddings["usage"]["prompt_tokens"] > 0
    assert response["object"] == "response" and response["output_text"] == "resp 2"
    assert response["output"][0]["content"][0]["text"] == "resp 2" and response["usage"]["input_tokens"] > 0
    assert len(single["data"]) == 1 and len(single["data"][0]["embedding"]) == 1536


def test_failures_come_out_as_batch_api_errors_and_can_be_retried(
    redis_url: str, sim: Simulator, tmp_path: Path, worker: Worker
) -> None:
    sim.configure(error_rate=1.0, error_statuses=[400])
    source = tmp_path / "bad.jsonl"
    source.write_text("\n".join(batch_lines(4)) + "\n")
    assert promptq(redis_url, "submit", str(source))[0] == 0
    target = tmp_path / "out.jsonl"
    code, _, _ = promptq(redis_url, "collect", "bad", "-o", str(target), "--timeout", "30")
    assert code == 2
    for line in target.read_text().splitlines():
        item = json.loads(line)
        assert (
            item["response"] is None and item["error"]["code"] == "bad_request" and item["error"]["status_code"] == 400
        )
    sim.configure(error_rate=0.0)
    code, out, _ = promptq(redis_url, "--json", "retry-failed", "bad")
    assert code == 0 and json.loads(out) == {"retried": 4}
    code, out, _ = promptq(redis_url, "--json", "wait", "bad", "--timeout", "30")
    assert code == 0 and json.loads(out)["succeeded"] == 4


def test_bad_lines_are_named_and_strict_refuses_the_file(redis_url: str, tmp_path: Path) -> None:
    source = tmp_path / "mixed.jsonl"
    good = json.dumps({"prompt": "fine"})
    source.write_text(
        "\n".join([good, "{not json", json.dumps({"prompt": "hi", "temperature": 9}), good, json.dumps({"x": 1})])
    )
    code, _, err = promptq(redis_url, "submit", str(source), "--strict")
    assert code == 1 and "refused" in err
    assert redis.Redis.from_url(redis_url).dbsize() == 0
    code, out, err = promptq(redis_url, "--json", "submit", str(source))
    assert code == 2
    assert f"{source}:2: not JSON" in err and f"{source}:3: temperature must be" in err and f"{source}:5:" in err
    assert json.loads(out)["jobs"] == 2 and json.loads(out)["bad_lines"] == 3
    code, out, _ = promptq(redis_url, "--json", "status", "mixed")
    assert code == 0 and json.loads(out)["waiting"] == 2
    code, out, _ = promptq(redis_url, "--json", "status")
    assert code == 0 and json.loads(out)["waiting"] == 2


def test_a_batch_shares_the_workers_under_its_name_unless_told_otherwise(
    redis_url: str, sync_producer: Any, tmp_path: Path
) -> None:
    (tmp_path / "nightly.jsonl").write_text(
        "\n".join(
            [
                json.dumps({"prompt": "plain"}),
                json.dumps({"prompt": "own key", "fairness_key": "vip", "priority": 1}),
                json.dumps(
                    {
                        "custom_id": "api",
                        "method": "POST",
                        "url": "/v1/chat/completions",
                        "priority": 0,
                        "body": {"messages": [{"role": "user", "content": "api line"}]},
                    }
                ),
                json.dumps({"prompt": "bad", "priority": 12}),
                json.dumps({"prompt": "bad too", "fairness_key": ""}),
            ]
        )
    )
    code, _, err = promptq(redis_url, "submit", str(tmp_path / "nightly.jsonl"), "--priority", "7")
    assert code == 2 and ":4: priority must be an integer from 0" in err and ":5: fairness_key must be" in err
    assert sync_producer.depths().ready == {0: {"nightly": 1}, 1: {"vip": 1}, 7: {"nightly": 1}}
    code, out, _ = promptq(redis_url, "--json", "status")
    assert code == 0 and json.loads(out)["ready"] == {"0": {"nightly": 1}, "1": {"vip": 1}, "7": {"nightly": 1}}
    code, out, _ = promptq(redis_url, "status")
    assert "priority 7: 1 waiting (nightly 1)" in out
    (tmp_path / "other.jsonl").write_text(json.dumps({"prompt": "x"}))
    code, _, err = promptq(redis_url, "submit", str(tmp_path / "other.jsonl"), "--fairness-key", "team-a")
    assert code == 0 and sync_producer.depths().ready[5] == {"team-a": 1}
    with pytest.raises(SystemExit):
        promptq(redis_url, "submit", str(tmp_path / "other.jsonl"), "--priority", "high")


def test_result_cancel_and_errors(redis_url: str, tmp_path: Path) -> None:
    source = tmp_path / "one.jsonl"
    source.write_text(json.dumps({"prompt": "cancel me", "custom_id": "c1"}) + "\n")
    promptq(redis_url, "submit", str(source))
    code, out, _ = promptq(redis_url, "--json", "cancel", "one:c1")
    assert code == 0 and json.loads(out)["cancelled"]
    code, out, _ = promptq(redis_url, "result", "one:c1")
    assert code == 2 and json.loads(out)["status"] == "cancelled"
    assert promptq(redis_url, "result", "nope")[0] == 1
    code, _, err = promptq(redis_url, "wait", "no-such-batch")
    assert code == 1 and "no batch 'no-such-batch'" in err
    code, _, err = promptq(f"redis://127.0.0.1:{free_port()}/0", "status")
    assert code == 1 and "unavailable" in err


def test_the_console_script_is_installed() -> None:
    done = subprocess.run(
        [str(Path(sys.executable).with_name("promptq")), "--help"], capture_output=True, text=True, cwd=ROOT
    )
    assert done.returncode == 0 and "collect" in done.stdout


def test_a_batchs_status_is_one_read_of_its_tally(redis_url: str, sync_redis: redis.Redis, tmp_path: Path) -> None:
    rows = tmp_path / "big.jsonl"
    rows.write_text("".join(json.dumps({"prompt": f"row {i} " + "x" * 1500}) + "\n" for i in range(3000)))
    assert promptq(redis_url, "submit", str(rows))[0] == 0

    def sent() -> int:
        return int(sync_redis.info("stats")["total_net_output_bytes"])  # type: ignore[index]

    before = sent()
    code, out, _ = promptq(redis_url, "--json", "status", "big")
    assert code == 0 and json.loads(out)["waiting"] == 3000
    assert sent() - before < 20_000  # not the 3,000 documents (4.5 MB)
    before = sent()
    assert promptq(redis_url, "wait", "big", "--timeout", "1.2")[0] == 3  # about three polls
    assert sent() - before < 3 * 2_000 * 2_500  # a sweep of 2,000 pending documents a poll at most


def test_the_readmes_batch_tier_walk_through(redis_url: str, sim: Simulator, tmp_path: Path) -> None:
    """``promptq submit rows.jsonl --tier batch``, a worker with the Batch API, ``promptq status``,
    ``promptq collect``: every row answered through one provider batch, none live, at half the price."""
    source = tmp_path / "rows.jsonl"
    source.write_text("\n".join(batch_lines(40)) + "\n")
    code, _, err = promptq(redis_url, "submit", str(source), "--tier", "batch", "--batch", "enrich-0412")
    assert code == 0, err
    env = worker_env(redis_url, sim, PROMPTQ_BATCH_API="1", PROMPTQ_BATCH_MAX_LINES="40", PROMPTQ_BATCH_POLL_S="0.2")
    prices = json.dumps({"gpt-4o-mini": {"input": 0.15, "output": 0.60}})
    with Worker({**env, "PROMPTQ_PRICES": prices}):
        code, _, err = promptq(redis_url, "wait", "enrich-0412", "--timeout", "30")
        assert code == 0, err
        code, status, _ = promptq(redis_url, "status")
    assert "provider batch pq_" in status and "40 line(s) of gpt-4o-mini" in status
    target = tmp_path / "out.jsonl"
    code, _, err = promptq(redis_url, "collect", "enrich-0412", "-o", str(target))
    assert code == 0, err
    written = [json.loads(w) for w in target.read_text().splitlines()]
    assert [w["custom_id"] for w in written] == [f"req-{i}" for i in range(40)]
    assert all(w["response"]["status_code"] == 200 for w in written)
    stats = sim.stats()
    assert stats["batches"] == 1 and stats["batch_lines"] == 40 and stats["requests"] == 0
