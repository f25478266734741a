"""Webhook deliveries: a job that names a ``webhook_url`` has its final result document POSTed there
when it ends, signed per the Standard Webhooks specification (``promptq_core.webhooks``).

The step that ends a job (``finish.lua``, ``batch_settle.lua``, ``cancel.lua``) records the delivery
in the same step (``WEBHOOKS``, ``webhook:{id}``), so none is lost to a crash. Every worker takes
the deliveries due in its queues (``webhook_take.lua``: each is its own for ``SEND_S``) and sends
them from its own task, never from a job slot, a few at a time, to the address it resolved and
checked itself (the request goes there, its ``Host`` and TLS name the URL's): a 2xx answer ends the
delivery; any other answer, a timeout, no connection or no address sends it again later
(``retry_after_s``: 5 s, doubling up to an hour, with jitter), with the same ``webhook-id``, for a
day after the job ended; then it is given up (``webhook.gave_up``). A host that resolves to a
private address is refused at once (``webhook.refused``), as is, when ``PROMPTQ_WEBHOOK_HOSTS``
lists hosts, any host it does not list (a listed one may be private). Nothing of the URL but its
host is logged.
"""

from __future__ import annotations

import asyncio
import random
import socket
import time
from typing import Any, Final
from urllib.parse import urlsplit

import httpx2
from redis.asyncio import Redis

from promptq_core.background import REDIS_TROUBLE, Background
from promptq_core.contract import WEBHOOK_GIVE_UP_MS, WEBHOOKS, QueueKeys, as_text
from promptq_core.webhooks import HOSTS_ENV, WebhookHosts, host_of, sign
from worker.logs import get_logger
from worker.scripts import WorkerScript

__all__ = ["Deliveries", "retry_after_s"]

log = get_logger("promptq.webhook")

TICK_S: Final = 0.5
"""A worker looks for due deliveries this often."""
SEND_S: Final = 60.0
"""A delivery taken is this worker's for this long (its lookup and request are bounded far below)."""
TIMEOUT_S: Final = 10.0
"""A receiver has this long to answer, from the connection to the last byte."""
AT_ONCE: Final = 16
"""Deliveries one worker sends at once at most."""
FIRST_RETRY_S: Final = 5.0
MAX_RETRY_S: Final = 3600.0
USER_AGENT: Final = "promptq-webhooks"


def retry_after_s(tries: int) -> float:
    """The wait before a delivery's next try, after ``tries`` failed ones: 5 s doubling up to an
    hour, each drawn from its upper half (equal jitter)."""
    step = min(MAX_RETRY_S, FIRST_RETRY_S * 2.0 ** max(0, tries - 1))
    return step / 2 + random.random() * step / 2


class Deliveries:
    """One worker's webhook sender, over the queues it serves."""

    def __init__(self, redis: Redis, queues: tuple[QueueKeys, ...], secret: bytes | None, hosts: WebhookHosts) -> None:
        self.redis, self.queues, self.secret, self.hosts = redis, queues, secret, hosts
        self._take = WorkerScript(redis, "webhook_take")
        self._loop = Background("promptq-webhooks")
        self._client = httpx2.AsyncClient(timeout=TIMEOUT_S, follow_redirects=False)
        self._warned_unsigned = False

    def start(self) -> None:
        self._loop.start(self._run)

    async def stop(self) -> None:
        await self._loop.stop()
        await self._client.aclose()

    async def _run(self) -> None:
        while True:
            sent = 0
            for keys in self.queues:  # a queue whose shard fails holds up no other's
                try:
                    sent += await self.send_due(keys)
                except REDIS_TROUBLE as e:
                    log.warning("webhook.redis_error", queue=keys.name, error=str(e))
                except Exception:  # a bug: logged, and the next tick goes on
                    log.exception("webhook.internal_error", queue=keys.name)
            if not sent:
                await asyncio.sleep(TICK_S)

    async def send_due(self, keys: QueueKeys) -> int:
        """Send the deliveries due in one queue (``AT_ONCE`` at most); how many were taken."""
        ids = [as_text(i) for i in await self._take(keys, send_ms=round(SEND_S * 1000), want=AT_ONCE)]
        if ids:
            await asyncio.gather(*(self._deliver(keys, delivery) for delivery in ids))
        return len(ids)

    async def _deliver(self, keys: QueueKeys, delivery: str) -> None:
        stored: dict[Any, Any] = await self.redis.hgetall(keys.webhook(delivery))  # type: ignore[misc]
        fields = {as_text(k): v for k, v in stored.items()}
        if not fields:  # (expired: nothing to send)
            await self.redis.zrem(keys.key(WEBHOOKS), delivery)
            return
        url, body = as_text(fields["url"]), fields["body"]
        body = body if isinstance(body, bytes) else str(body).encode()
        host, tries = host_of(url), int(as_text(fields.get("tries", b"0"))) + 1
        job_id = as_text(fields.get("job_id", b""))
        address = await self._address(url)
        if address is None:
            log.warning("webhook.refused", job_id=job_id, host=host, note=f"not public, or not in {HOSTS_ENV}")
            return await self._forget(keys, delivery)
        outcome = await self._post(url, address, delivery, body) if address else "no_address"
        if outcome == "ok":
            log.info("webhook.delivered", job_id=job_id, host=host, tries=tries, delivery=delivery)
            return await self._forget(keys, delivery)
        since_ms = int(as_text(fields.get("since_ms", b"0")))
        wait_s = retry_after_s(tries)
        if time.time() * 1000 + wait_s * 1000 > since_ms + WEBHOOK_GIVE_UP_MS:
            log.warning("webhook.gave_up", job_id=job_id, host=host, tries=tries, outcome=outcome, delivery=delivery)
            return await self._forget(keys, delivery)
        log.info("webhook.failed", job_id=job_id, host=host, tries=tries, outcome=outcome, retry_in_s=round(wait_s, 1))
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hset(keys.webhook(delivery), "tries", str(tries))
            pipe.zadd(keys.key(WEBHOOKS), {delivery: int(time.time() * 1000 + wait_s * 1000)})
            await pipe.execute()

    async def _forget(self, keys: QueueKeys, delivery: str) -> None:
        await self.redis.zrem(keys.key(WEBHOOKS), delivery)
        await self.redis.delete(keys.webhook(delivery))

    async def _address(self, url: str) -> str | None:
        """The address to send to: the URL's host resolved once, here, and checked (the request then
        goes to that very address, so a second lookup cannot lead it elsewhere); None when the
        host may not be sent to (not listed, with a list; a non-public address, without); ``""``
        when it does not resolve now (a failed try: sent again later)."""
        host = host_of(url)
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            async with asyncio.timeout(TIMEOUT_S):
                found = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, TimeoutError):
            return "" if self.hosts.allows_name(host) else None
        addresses = [str(info[4][0]) for info in found]
        return addresses[0] if self.hosts.allows_addresses(host, addresses) else None

    async def _post(self, url: str, address: str, delivery: str, body: bytes) -> str:
        """Send one delivery to ``address`` (the URL's host, resolved and checked; the ``Host``
        header and the TLS server name stay the URL's): ``ok`` for a 2xx answer, else what went
        wrong (a status, ``timeout``...)."""
        timestamp = int(time.time())
        headers = {
            "content-type": "application/json",
            "user-agent": USER_AGENT,
            "webhook-id": delivery,
            "webhook-timestamp": str(timestamp),
        }
        if self.secret is not None:
            headers["webhook-signature"] = sign(self.secret, delivery, timestamp, body)
        elif not self._warned_unsigned:
            self._warned_unsigned = True
            log.warning("webhook.unsigned", note="PROMPTQ_WEBHOOK_SECRET is not set: deliveries go without a signature")
        parts = urlsplit(url)
        pinned = parts._replace(netloc=f"[{address}]" if ":" in address else address)
        if parts.port is not None:
            pinned = pinned._replace(netloc=f"{pinned.netloc}:{parts.port}")
        headers["host"] = parts.netloc
        try:
            async with asyncio.timeout(TIMEOUT_S):
                response = await self._client.post(
                    pinned.geturl(), content=body, headers=headers, extensions={"sni_hostname": host_of(url)}
                )
        except (httpx2.TimeoutException, TimeoutError):
            return "timeout"
        except httpx2.HTTPError as e:
            return type(e).__name__
        return "ok" if 200 <= response.status_code < 300 else str(response.status_code)
