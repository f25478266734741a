"""Which API failures are worth another attempt."""

from __future__ import annotations

import pytest

from worker.llm import classify


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        (400, None, ("bad_request", False)),
        (401, "invalid_api_key", ("authentication", False)),
        (403, None, ("permission_denied", False)),
        (404, "model_not_found", ("not_found", False)),
        (408, None, ("request_timeout", True)),
        (409, None, ("conflict", True)),
        (422, None, ("unprocessable_entity", False)),
        (429, "rate_limit_exceeded", ("rate_limited", True)),
        (429, None, ("rate_limited", True)),
        (429, "insufficient_quota", ("insufficient_quota", False)),
        (418, None, ("client_error", False)),
        (500, None, ("server_error", True)),
        (502, None, ("server_error", True)),
        (503, None, ("server_error", True)),
        (529, None, ("server_error", True)),
    ],
)
def test_classify(status: int, code: str | None, expected: tuple[str, bool]) -> None:
    assert classify(status, code) == expected
