"""The retry policy: what the server advises, and backoff when it says nothing."""

from __future__ import annotations

import random

import pytest

from worker.retry import BACKOFF_CAP_S, MAX_RETRY_AFTER_S, backoff_s, parse_duration_s, retry_after_s

NOW_S = 1_700_000_000.0  # 2023-11-14T22:13:20Z


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, None),
        ({"retry-after-ms": "250"}, 0.25),
        ({"Retry-After-Ms": "250", "retry-after": "9"}, 0.25),
        ({"retry-after": "3"}, 3.0),
        ({"retry-after": "1.5"}, 1.5),
        ({"retry-after": "Tue, 14 Nov 2023 22:13:30 GMT"}, 10.0),
        ({"retry-after": "Tue, 14 Nov 2023 22:13:00 GMT"}, 0.0),
        ({"retry-after": "soon"}, None),
        ({"retry-after": "-4"}, None),
        ({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "20ms"}, 0.02),
        ({"x-ratelimit-remaining-requests": "5", "x-ratelimit-reset-requests": "20ms"}, None),
        (
            {
                "x-ratelimit-remaining-requests": "0",
                "x-ratelimit-reset-requests": "1s",
                "x-ratelimit-remaining-tokens": "0",
                "x-ratelimit-reset-tokens": "6m0s",
            },
            360.0,
        ),
    ],
)
def test_retry_after_reads_every_header_the_api_sends(headers: dict[str, str], expected: float | None) -> None:
    assert retry_after_s(headers, now_s=NOW_S) == expected


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("20ms", 0.02), ("1s", 1.0), ("6m0s", 360.0), ("1h2m3.5s", 3723.5), ("", None), ("5x", None), ("1s2", None)],
)
def test_parse_duration(text: str, seconds: float | None) -> None:
    assert parse_duration_s(text) == seconds


def test_backoff_is_capped_exponential_with_equal_jitter() -> None:
    rng = random.Random(7)
    for attempt, ceiling in [(1, 1.0), (2, 2.0), (3, 4.0), (10, BACKOFF_CAP_S)]:
        waits = [backoff_s(attempt, rng=rng) for _ in range(200)]
        assert all(ceiling / 2 <= w <= ceiling for w in waits)  # never a retry at once after a failure
        assert max(waits) > ceiling * 0.9  # the jitter spreads over the whole upper half
        assert min(waits) < ceiling * 0.6


def test_backoff_honours_the_server_advice_with_a_little_jitter_and_a_cap() -> None:
    rng = random.Random(7)
    waits = [backoff_s(1, 5.0, rng=rng) for _ in range(100)]
    assert all(5.0 <= w <= 5.5 for w in waits)
    assert backoff_s(1, 86_400.0, rng=rng) <= MAX_RETRY_AFTER_S * 1.1
