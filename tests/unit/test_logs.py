"""The worker's log lines: a logged exception shows its traceback, never its frames' locals (a
local may hold a prompt or a key)."""

from __future__ import annotations

import logging

import pytest

from worker.logs import configure_logging, get_logger

MARKER = "SECRET-PROMPT-TEXT-91c2"


def _fail(messages: list[dict[str, str]]) -> None:
    api_key = "sk-" + MARKER  # noqa: F841 (a local a traceback with locals would show)
    raise ValueError("the call failed")


@pytest.mark.parametrize("log_format", ["json", "console"])
def test_a_logged_exception_carries_no_locals(log_format: str, capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(log_format, "debug")
    try:
        try:
            _fail([{"role": "user", "content": MARKER}])
        except ValueError:
            get_logger("promptq.job").exception("job.internal_error")
        err = capsys.readouterr().err
        assert "job.internal_error" in err and "ValueError" in err and "the call failed" in err
        assert MARKER not in err
    finally:
        logging.getLogger().handlers = []
