"""The worker's garbage collector, set for many short jobs.

A job allocates thousands of short-lived objects (its request, headers and answer, the result
document) that reference counting frees at once; hardly any are cyclic garbage. With CPython's
default thresholds (700, 10, 10) the collector still ran every few jobs, and its full collections
(11 over 6,500 jobs of a batch, about 46 ms each) walked the whole heap of the imported packages
(openai, pydantic, redis): about a tenth of the worker's CPU. While a worker runs:

- what start-up made is frozen (``gc.freeze``): modules, classes and settings are not walked again;
- the youngest generation is collected after :data:`YOUNG` net allocations instead of 700.

Cyclic garbage is still collected, less often. Both are undone when the last worker of the process
that settled in stops (the tests run several in one process; ``worker.settings`` calls
:func:`restore` only for a worker whose start-up reached :func:`settle_in`).
"""

from __future__ import annotations

import gc

YOUNG = 10_000
"""Net allocations of tracked objects between two collections of the youngest generation."""

_held: list[tuple[int, int, int]] = []
"""The thresholds before each worker of this process started, the first one's last."""


def settle_in() -> None:
    """Once start-up is done: freeze what it made and collect the young less often."""
    if not _held:
        gc.collect()  # (what start-up left as garbage is not frozen with the rest)
        gc.freeze()
    _held.append(gc.get_threshold())
    gc.set_threshold(YOUNG, *gc.get_threshold()[1:])


def restore() -> None:
    """When a worker stops: the thresholds as they were; the last one unfreezes the heap."""
    if not _held:
        return
    gc.set_threshold(*_held.pop())
    if not _held:
        gc.unfreeze()
