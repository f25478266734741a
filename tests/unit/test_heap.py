"""The worker's collector settings: set once start-up is done, undone by the last worker to stop."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from worker import heap


@pytest.fixture
def collector() -> Iterator[tuple[int, int, int]]:
    before = gc.get_threshold()
    yield before
    while heap._held:  # (a failed test leaves nothing set for the next)
        heap.restore()
    gc.set_threshold(*before)
    gc.unfreeze()


def test_start_up_is_frozen_and_the_young_are_collected_less_often(collector: tuple[int, int, int]) -> None:
    made_at_start_up = [object() for _ in range(3)], {"a": [1]}
    heap.settle_in()
    assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == (heap.YOUNG, *collector[1:])
    del made_at_start_up
    heap.restore()
    assert gc.get_threshold() == collector
    assert gc.get_freeze_count() == 0


def test_the_last_of_two_workers_to_stop_restores_the_collector(collector: tuple[int, int, int]) -> None:
    heap.settle_in()
    frozen = gc.get_freeze_count()
    heap.settle_in()  # a second worker in the same process: nothing more is frozen
    assert gc.get_freeze_count() == frozen
    heap.restore()
    assert gc.get_threshold() == (heap.YOUNG, *collector[1:])
    assert gc.get_freeze_count() == frozen
    heap.restore()
    assert gc.get_threshold() == collector
    assert gc.get_freeze_count() == 0
    heap.restore()  # a worker whose start-up failed before settling in: nothing to undo
    assert gc.get_threshold() == collector


def test_a_worker_that_never_settled_in_leaves_the_others_settings(collector: tuple[int, int, int]) -> None:
    import asyncio

    from worker.settings import on_shutdown

    heap.settle_in()  # another worker of this process, running
    asyncio.run(on_shutdown({}))  # this one's start-up failed before it settled in
    assert gc.get_threshold() == (heap.YOUNG, *collector[1:])
    assert gc.get_freeze_count() > 0
