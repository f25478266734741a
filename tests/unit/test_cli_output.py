"""The command line's progress output, without Redis."""

from __future__ import annotations

from producer.cli.batch import Progress, output_line
from producer.cli.commands import _bar
from promptq_core.contract import JobError, JobResult


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
