"""Webhooks end to end (real Redis, real workers, the simulator's receiver): a job naming a
``webhook_url`` has its final document POSTed there when it ends, signed per the Standard Webhooks
specification (checked with the ``standardwebhooks`` package), retried with the same id, sent for a
cancel and for a batch-tier job too; hosts the operator has not allowed are refused at submit and at
delivery."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from devtools.stack import Simulator
from producer import InvalidJobError, Producer
from producer.types import ProducerConfig
from promptq_core.webhooks import WebhookHosts, new_secret, secret_from_env
from tests.conftest import start_worker, stop_worker
from worker import webhooks
from worker.config import BatchRules, WorkerConfig

SECRET = new_secret()
LOCAL = WebhookHosts(("127.0.0.1",))


@pytest.fixture
async def local_producer(redis_url: str) -> AsyncIterator[Producer]:
    """A producer whose operator allows webhooks to this machine (the simulator's receiver)."""
    async with Producer(config=ProducerConfig(redis_url=redis_url, webhook_hosts=LOCAL)) as p:
        yield p


@pytest.fixture
def hook_config(worker_config: WorkerConfig, monkeypatch: pytest.MonkeyPatch) -> WorkerConfig:
    monkeypatch.setattr(webhooks, "FIRST_RETRY_S", 0.2)  # (retries a fifth of a second apart, doubling)
    monkeypatch.setattr(webhooks, "TICK_S", 0.05)
    key = secret_from_env({"PROMPTQ_WEBHOOK_SECRET": SECRET})
    return dataclasses.replace(worker_config, webhook_secret=key, webhook_hosts=LOCAL)


def hook_url(sim: Simulator, name: str) -> str:
    return sim.base_url.removesuffix("/v1") + f"/_sim/hooks/{name}"


async def hooks_when(sim: Simulator, done: Any, timeout_s: float = 15.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    while not done(hooks := sim.hooks()):
        assert time.monotonic() < deadline, f"deliveries so far: {hooks}"
        await asyncio.sleep(0.05)
    return hooks


def verified(hook: dict[str, Any]) -> Any:
    """The delivery's body, once the package's own check of its signature passed."""
    return Webhook(SECRET).verify(hook["body"], hook["headers"])


async def test_a_finished_job_is_posted_to_its_webhook_signed(
    local_producer: Producer, hook_config: WorkerConfig, sim: Simulator
) -> None:
    job_id = await local_producer.submit("hello hook", webhook_url=hook_url(sim, "one"), metadata={"row": 7})
    worker, main = start_worker(hook_config)
    try:
        (hook,) = await hooks_when(sim, lambda h: len(h) >= 1)
        result = await local_producer.get(job_id)
    finally:
        await stop_worker(worker, main)
    assert result is not None and result.ok
    assert hook["path"] == "/_sim/hooks/one" and hook["answered"] == 204
    assert verified(hook) == result.to_doc()  # the final document, as stored
    assert hook["headers"]["webhook-id"].startswith("msg_")
    assert abs(int(hook["headers"]["webhook-timestamp"]) - time.time()) < 30
    tampered = {**hook, "body": hook["body"].replace("hello", "HELLO")}
    with pytest.raises(WebhookVerificationError):
        verified(tampered)


async def test_a_failed_delivery_is_sent_again_with_the_same_id_until_it_is_taken(
    local_producer: Producer, hook_config: WorkerConfig, sim: Simulator
) -> None:
    sim.configure(hook_fail_first=2)
    await local_producer.submit("retry me", webhook_url=hook_url(sim, "again"))
    worker, main = start_worker(hook_config)
    try:
        hooks = await hooks_when(sim, lambda h: any(x["answered"] == 204 for x in h))
        await asyncio.sleep(0.5)  # (no delivery after the one taken)
        hooks = sim.hooks()
    finally:
        await stop_worker(worker, main)
    assert [h["answered"] for h in hooks] == [503, 503, 204]
    assert len({h["headers"]["webhook-id"] for h in hooks}) == 1  # one delivery, tried three times
    assert all(verified(h)["status"] == "succeeded" for h in hooks)


async def test_a_cancelled_job_and_a_batch_tier_job_are_posted_too(
    local_producer: Producer, hook_config: WorkerConfig, sim: Simulator
) -> None:
    cancelled = await local_producer.submit("never mind", webhook_url=hook_url(sim, "cancel"))
    assert (await local_producer.cancel(cancelled)).cancelled
    batched = await local_producer.submit("by tomorrow", tier="batch", webhook_url=hook_url(sim, "batch"))
    config = dataclasses.replace(hook_config, batch_api=True, batch=BatchRules(window_s=0.2, poll_s=0.1))
    worker, main = start_worker(config)
    try:
        hooks = await hooks_when(sim, lambda h: len(h) >= 2)
    finally:
        await stop_worker(worker, main)
    by_path = {h["path"]: verified(h) for h in hooks}
    assert by_path["/_sim/hooks/cancel"]["status"] == "cancelled"
    assert by_path["/_sim/hooks/cancel"]["job_id"] == cancelled
    batch_doc = by_path["/_sim/hooks/batch"]
    assert batch_doc["job_id"] == batched and batch_doc["status"] == "succeeded"
    assert batch_doc["tier"] == "batch" and batch_doc["provider_batch"]


async def test_hosts_the_operator_has_not_allowed_are_refused_at_submit_and_at_delivery(
    producer: Producer, local_producer: Producer, hook_config: WorkerConfig, sim: Simulator, sync_redis: Any
) -> None:
    for url, why in [
        (hook_url(sim, "x"), "not public"),
        ("http://10.1.2.3/hook", "not public"),
        ("http://localhost:8080/hook", "not public"),
        ("ftp://example.com/hook", "http:// or https://"),
        ("https://user:secret@example.com/hook", "credentials"),
        ("https://example.com/a b", "characters"),
        ("https://example.com/" + "a" * 2000, "at most 2000"),
    ]:
        with pytest.raises(InvalidJobError, match=why) as refused:
            await producer.submit("hook", webhook_url=url)
        assert "user:secret" not in str(refused.value)  # (a URL's credentials are never echoed)
    assert await producer.known([]) == 0
    # A job its producer allowed, read by a worker whose operator did not: no delivery at all.
    job_id = await local_producer.submit("hook", webhook_url=hook_url(sim, "nope"))
    strict = dataclasses.replace(hook_config, webhook_hosts=WebhookHosts())
    worker, main = start_worker(strict)
    try:
        result = await local_producer.wait(job_id, timeout=10)
        deadline = time.monotonic() + 5
        while sync_redis.zcard("promptq:{default}:webhooks"):
            assert time.monotonic() < deadline, "the delivery was not dropped"
            await asyncio.sleep(0.05)
    finally:
        await stop_worker(worker, main)
    assert result.ok and sim.hooks() == []


async def test_a_webhook_url_in_metadata_or_params_is_not_the_jobs_webhook(
    local_producer: Producer, hook_config: WorkerConfig, sim: Simulator
) -> None:
    smuggled = {"webhook_url": hook_url(sim, "smuggled")}
    cancelled = await local_producer.submit("x", metadata=smuggled)
    assert (await local_producer.cancel(cancelled)).cancelled
    batched = await local_producer.submit("y", tier="batch", metadata=smuggled, extra_body=smuggled)
    config = dataclasses.replace(hook_config, batch_api=True, batch=BatchRules(window_s=0.1, poll_s=0.1))
    worker, main = start_worker(config)
    try:
        assert (await local_producer.wait(batched, timeout=15)).ok
        await asyncio.sleep(0.5)
    finally:
        await stop_worker(worker, main)
    assert sim.hooks() == []
