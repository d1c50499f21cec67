"""Writing events into a journal from a test, as bodies: what the lanes and records would
have journaled, without running them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from gatectl import events as ev
from gatectl.journal import Entry, Journal


def write(journal: Journal, lane_id: str, entries: list[Entry], **kw: Any) -> list[dict]:
    """Journal ``entries`` on ``lane_id`` and wait; the events as their JSON bodies."""
    return [ev.encode(s) for s in journal.write(lane_id, entries, **kw)]


def record(site: Any, lane_id: str, type_: str, data: dict[str, Any], ts: datetime | None = None) -> dict:
    """One event of ``type_`` with the JSON fields ``data``, on a site's journal."""
    return write(site.journal, lane_id, [Entry.of(type_, ts or site.now(), data)])[0]
