"""A worker's running jobs and the cancels that reach them."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from worker.lease import Leases
from worker.queue import JobQueue


async def test_a_cancel_that_comes_before_the_job_starts_here_keeps_it_from_starting() -> None:
    leases = Leases(cast(dict[str, JobQueue], {}), lease_s=15)
    assert not leases.cancel("claimed-a-moment-ago")  # no task holds it yet
    assert leases.cancelled_before_start("claimed-a-moment-ago")
    assert not leases.cancelled_before_start("claimed-a-moment-ago")  # once
    assert not leases.cancelled_before_start("another")


async def test_a_cancel_stops_the_task_holding_the_job() -> None:
    leases = Leases(cast(dict[str, JobQueue], {}), lease_s=15)
    started = asyncio.Event()

    async def job() -> Any:
        with leases.holding("j"):
            started.set()
            await asyncio.sleep(60)

    task = asyncio.create_task(job())
    await started.wait()
    assert leases.cancel("j") and leases.cancelled("j")
    await asyncio.gather(task, return_exceptions=True)
    assert task.cancelled() and "j" not in leases.running
