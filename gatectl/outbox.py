"""Delivery from the journal's outbox: retried with backoff until acknowledged, in order.

One sender per target. The head of a target's queue blocks the rest, so items reach the
target in the order they were journaled (per lane, and across lanes too), and an item is
marked delivered only after the target acknowledged it: at least once, across restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import sqlite3
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import structlog

from gatectl.journal import Journal, JournalError

log = structlog.get_logger("gatectl.outbox")

Deliver = Callable[[str, dict[str, Any]], Awaitable[None]]


class OutboxSender:
    def __init__(
        self,
        journal: Journal,
        target: str,
        deliver: Deliver,
        now: Callable[[], datetime],
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
    ) -> None:
        self.journal = journal
        self.target = target
        self._deliver = deliver
        self._now = now
        self._wake = asyncio.Event()
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self.delivered = 0
        self.failures = 0
        self._failing = False

    def wake(self) -> None:
        self._wake.set()

    async def close(self) -> None:
        close = getattr(self._deliver, "close", None)
        if close is not None:
            await close()

    async def run(self) -> None:
        backoff = self._backoff_initial
        while True:
            self._wake.clear()
            try:
                items = await self.journal.read(lambda db: self.journal.outbox_next(self.target))
            except (JournalError, sqlite3.Error) as exc:
                log.error("outbox unreadable", target=self.target, error=str(exc))
                items = []
            if not items:
                await self._wake.wait()
                continue
            for item in items:
                try:
                    await self._deliver(item["kind"], item["payload"])
                except Exception as exc:  # noqa: BLE001 - any failure means "try again later"
                    self.failures += 1
                    with contextlib.suppress(JournalError):
                        await asyncio.wrap_future(self.journal.outbox_failed(item["id"], repr(exc)))
                    if not self._failing:
                        self._failing = True
                        log.error("outbox delivery failing", target=self.target, item=item["id"], error=str(exc))
                    await self._sleep_or_wake(backoff * random.uniform(0.5, 1.0))
                    backoff = min(backoff * 2, self._backoff_max)
                    break
                try:
                    await asyncio.wrap_future(self.journal.outbox_delivered(item["id"], self._now()))
                except JournalError as exc:
                    # Delivered but not marked: it goes again later (at least once).
                    log.error("outbox delivery not recorded", target=self.target, item=item["id"], error=str(exc))
                    break
                self.delivered += 1
                backoff = self._backoff_initial
                if self._failing:
                    self._failing = False
                    log.info("outbox delivering again", target=self.target)

    async def _sleep_or_wake(self, seconds: float) -> None:
        # A new item does not cut a backoff short: the head must go first anyway.
        await asyncio.sleep(seconds)
