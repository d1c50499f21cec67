"""Clean-up on the way out that a repeated cancellation cannot cut short.

A stop cancels a task and then cancels it again every so often: a library waiting with
``asyncio.wait_for`` on Python 3.11 can lose a cancellation that lands as its future
completes, and a stop must not hang on that. The cancelled task's own clean-up (a serial
port closing in the transport's thread, a pulse switching its coil off, the tasks it
started stopping in turn) then has to survive those repeats: cut short, it leaves work
pending on a loop that is about to close, destroyed half done. So the clean-up waits with
``wait_through``, bounded, and raises the cancellation once it is done.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

__all__ = ["STOP_ROUND_S", "wait_through"]

#: How often a stop cancels again the tasks it waits for.
STOP_ROUND_S = 0.2


async def wait_through(
    futures: Iterable[asyncio.Future],
    timeout: float,
    *,
    recancel: Iterable[asyncio.Task] = (),
    every: float = STOP_ROUND_S,
) -> bool:
    """Wait up to ``timeout`` seconds for ``futures`` (futures or tasks) to be done,
    cancelling the tasks in ``recancel`` again every ``every`` seconds; whether this wait
    was cancelled meanwhile.

    A cancellation of this wait does not end it: the caller raises ``CancelledError``
    once its clean-up is done, and logs what of ``futures`` is still pending after the
    bound (a stop moves on rather than hang).
    """
    waited, again = set(futures), list(recancel)
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    cancelled = False
    while (pending := {f for f in waited if not f.done()}) and (left := end - loop.time()) > 0:
        try:
            await asyncio.wait(pending, timeout=min(left, every))
        except asyncio.CancelledError:
            cancelled = True
        for task in again:
            task.cancel()  # (no-op on a task that is done)
    return cancelled
