"""The command line's progress output, without Redis."""

from __future__ import annotations

from producer.cli.batch import Progress, output_line
from producer.cli.commands import _backend_lines, _bar
from promptq_core.contract import JobError, JobResult, budget_share
from worker.metrics import MinuteUse


def test_the_progress_bar_shows_counts_rate_tokens_and_eta() -> None:
    p = Progress(total=200, by_status={"succeeded": 90, "failed": 10, "queued": 100}, tokens=12345)
    bar = _bar(p, rate=20.0)
    assert bar.startswith("[" + "█" * 12 + "░" * 12 + "]")
    assert "100/200 · 10 failed · 20.0 jobs/s · 12,345 tokens · ETA 5 s" in bar
    assert "ETA ?" in _bar(p, rate=0.0)


def test_a_failed_job_is_an_error_line_and_an_expired_one_says_so() -> None:
    failed = JobResult("b:1", "failed", error=JobError("server_error", "boom", 500, True))
    assert output_line("1", failed) == (
        '{"id":"batch_req_b:1","custom_id":"1","response":null,'
        '"error":{"code":"server_error","message":"boom","status_code":500}}'
    )
    assert '"error":{"code":"expired"' in output_line("2", None)


def test_status_names_each_backends_mean_call_and_budget_in_use() -> None:
    up = {"name": "a", "up": True, "probe_in_s": None, "down_for_s": None, "calls": 9, "errors": 1}
    lines = _backend_lines(
        [{**up, "mean_call_ms": 412.5, "budget_in_use": 0.625}, {**up, "name": "b", "mean_call_ms": None}], 3
    )
    assert lines.splitlines() == [
        "",
        "backends; 3 job(s) waiting for one:",
        "  a: up; 9 call(s), 1 error(s), 412.5 ms a call since the workers started; 62% of its budget in use",
        "  b: up; 9 call(s), 1 error(s) since the workers started",
    ]


def test_the_last_minutes_budget_drops_what_is_older_and_the_largest_share_is_in_use() -> None:
    use = MinuteUse()
    use.add("a", "m", 100, now_s=1000)
    use.add("a", "m", 50, now_s=1000.5)
    use.add("a", "n", 10, now_s=1030)
    assert use.last_minute(now_s=1040) == {"a": {"m": (2, 150), "n": (1, 10)}}
    assert use.last_minute(now_s=1060) == {"a": {"n": (1, 10)}}  # the second 1000 is over a minute old
    assert budget_share({"budget": {"m": [2, 150, 4, None], "n": [1, 10, None, 20]}}) == 0.5
    assert budget_share({"budget": {"m": [2, 150, None, None]}}) is None
