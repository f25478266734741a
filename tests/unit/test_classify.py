"""Which API failures are worth another attempt, and which bodies are not a Chat Completion."""

from __future__ import annotations

import pytest

from promptq_core.contract import Usage
from worker.llm import LLMError, _completion, classify


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
        (529, None, ("overloaded", True)),
    ],
)
def test_classify(status: int, code: str | None, expected: tuple[str, bool]) -> None:
    assert classify(status, code) == expected


COMPLETION = {
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
}


def test_a_completion_body_keeps_content_finish_reason_usage_and_rate_headers() -> None:
    headers = {"x-ratelimit-remaining-requests": "9", "content-type": "application/json"}
    c = _completion(COMPLETION, headers)
    assert (c.content, c.finish_reason, c.usage) == ("hi", "stop", Usage(5, 1, 6))
    assert c.rate_headers == {"x-ratelimit-remaining-requests": "9"}
    tool_call = {"choices": [{"message": {"role": "assistant", "content": None}, "finish_reason": "tool_calls"}]}
    c = _completion(tool_call, {})
    assert (c.content, c.finish_reason, c.usage) == (None, "tool_calls", None)
    no_finish_reason = {"choices": [{"message": {"content": "x"}}]}  # some servers leave it out
    assert _completion(no_finish_reason, {}).finish_reason is None
    partial_usage = {**COMPLETION, "usage": {"prompt_tokens": 5}}
    assert _completion(partial_usage, {}).usage is None


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([1, 2], "without choices"),
        ({"id": "x"}, "without choices"),
        ({"choices": []}, "without choices"),
        ({"choices": {"0": {}}}, "without choices"),
        ({"choices": ["text"]}, "not a chat message"),
        ({"choices": [{"text": "legacy completion", "finish_reason": "stop"}]}, "not a chat message"),
        ({"choices": [{"message": {"content": 7}, "finish_reason": "stop"}]}, "not a chat message"),
        ({"choices": [{"message": {"content": "x"}, "finish_reason": 1}]}, "not a chat message"),
    ],
)
def test_a_body_that_is_not_a_chat_completion_is_a_retryable_bad_response(body: object, message: str) -> None:
    with pytest.raises(LLMError, match=message) as e:
        _completion(body, {})
    assert e.value.type == "bad_response" and e.value.retryable
