"""What the worker keeps of each endpoint's answer, as real OpenAI-compatible servers send them:
base64 or float vectors, one vector a token, no usage; output items and their text."""

from __future__ import annotations

import pytest

from promptq_core.contract import Usage, decode_vector, encode_vector
from worker.llm import LLMError, _body, _embeddings, _response


def _data(*embeddings: object) -> dict[str, object]:
    return {"data": [{"index": i, "embedding": e} for i, e in enumerate(embeddings)]}


def test_vectors_are_kept_as_base64_float32_whatever_the_server_sent() -> None:
    sent = encode_vector([0.25, -1.0])
    done = _embeddings({**_data(sent, [0.5, 2]), "usage": {"prompt_tokens": 4, "total_tokens": 4}}, {}, ["a", "b"])
    assert done.embeddings == [sent, encode_vector([0.5, 2.0])]
    assert done.usage == Usage(4, 0, 4) and done.content is None


def test_the_inputs_order_is_the_index_order_and_usage_may_be_missing() -> None:
    body = {"data": [{"index": 1, "embedding": [2.0]}, {"index": 0, "embedding": [1.0]}]}
    done = _embeddings(body, {}, ["first", "second"])
    assert [decode_vector(v) for v in done.embeddings or []] == [[1.0], [2.0]] and done.usage is None


def test_a_server_without_pooling_answers_a_vector_a_token_and_it_is_kept() -> None:
    done = _embeddings(_data([[1.0, 0.0], [0.0, 1.0]]), {}, "two tokens")
    assert done.embeddings == [[encode_vector([1.0, 0.0]), encode_vector([0.0, 1.0])]]


@pytest.mark.parametrize(
    ("body", "given", "message"),
    [
        ({"object": "list"}, "x", "without a list of embeddings"),
        (_data([1.0]), ["a", "b"], "1 embeddings for 2 inputs"),
        (_data("bm90IGZsb2F0cw"), "x", "unreadable embedding"),
        (_data(["one", "two"]), "x", "not a list of numbers"),
        (_data([]), "x", "not a list of numbers"),
        (_data([True, False]), "x", "not a list of numbers"),
    ],
)
def test_an_embedding_that_is_not_numbers_is_a_retryable_bad_response(
    body: object, given: object, message: str
) -> None:
    with pytest.raises(LLMError, match=message) as caught:
        _embeddings(body, {}, given)
    assert caught.value.type == "bad_response" and caught.value.retryable


def test_a_response_keeps_its_items_their_text_and_why_it_ended() -> None:
    message = {
        "type": "message",
        "content": [{"type": "output_text", "text": "Ha"}, {"type": "output_text", "text": "noi"}],
    }
    reasoning = {"type": "reasoning", "summary": []}
    usage = {"input_tokens": 5, "output_tokens": 2, "total_tokens": 7}
    done = _response(
        {"status": "completed", "output": [reasoning, message], "usage": usage}, {"x-ratelimit-limit-requests": "9"}
    )
    assert done.content == "Hanoi" and done.output == [reasoning, message] and done.finish_reason == "stop"
    assert done.usage == Usage(5, 2, 7) and done.rate_headers == {"x-ratelimit-limit-requests": "9"}
    cut = _response(
        {"status": "incomplete", "incomplete_details": {"reason": "max_output_tokens"}, "output": [message]}, {}
    )
    assert cut.finish_reason == "length"
    call = _response({"status": "completed", "output": [{"type": "function_call", "name": "f", "arguments": "{}"}]}, {})
    assert call.finish_reason == "tool_calls" and call.content is None
    with pytest.raises(LLMError, match="without a list of output items"):
        _response({"status": "completed"}, {})
    with pytest.raises(LLMError, match="the response failed: overloaded") as failed:
        _response({"status": "failed", "error": {"message": "overloaded"}, "output": []}, {})
    assert failed.value.retryable


def test_extra_body_goes_at_the_top_of_the_request() -> None:
    params = {"temperature": 0.5, "extra_body": {"top_k": 5}}
    assert _body({"model": "m"}, params) == {"model": "m", "temperature": 0.5, "top_k": 5}
