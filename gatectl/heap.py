"""What a long-running process built at start-up, kept out of the garbage collector's way.

A full collection of Python's cyclic garbage collector stops every thread of the process
for as long as it takes to walk every tracked object. In ``gatectl run`` that heap is
mostly start-up's (modules, config, pydantic models, drivers, the API): walking it took
60–90 ms about 20 s into the daemon's life, a stop of the lanes' control loop long enough
to be the decision's and the loop lag's p99 (``docs/performance.md``). ``gc.freeze()``
moves every object alive at that moment out of the collector's view for good; later
collections walk only what came after. Only for processes that are one service's alone:
a process that builds and drops services (the tests) would keep their garbage forever.
"""

from __future__ import annotations

import asyncio
import gc

#: When, after start, what exists is frozen: at once, and again once the first
#: connections and caches have settled.
FREEZE_AFTER_S = (0.0, 5.0)


def freeze_after_start(loop: asyncio.AbstractEventLoop) -> None:
    for after in FREEZE_AFTER_S:
        loop.call_later(after, gc.freeze)


def frozen_objects() -> int:
    return gc.get_freeze_count()


__all__ = ["FREEZE_AFTER_S", "freeze_after_start", "frozen_objects"]
