"""Refused outside input: counted, logged at a bounded rate, journaled only in aggregate.

Every surface that takes input from outside (the local API, MQTT, approvals, signed
commands, replay requests, and the journal file's own rows) reports what it refused
here. Three things happen, none of them proportional to the junk:

- a count per surface and reason (``Refusals.counts``), shown by ``GET /metrics`` as
  ``gatectl_input_refused_total{surface, reason}``. Reasons come from the closed sets of
  :data:`REASONS`; anything else is counted as ``other`` (a bug to look at, not a new
  time series per value);
- a WARNING log line for the first refusal of a surface and reason, then at most one per
  ``log_interval`` (with how many were refused since the last line);
- for surfaces whose refusals belong in the record (MQTT commands, approvals from
  outside), :class:`RefusedRecords`: one ``command.refused`` per source, topic, reason and
  lane each interval, carrying the ``count``. Junk is never journaled one by one.

    refusals = Refusals()
    refusals.count("api", "too_large", "body larger than 16384 bytes", route="/api/v1/...")
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future
from datetime import datetime
from typing import Any, Final

import structlog

from gatectl.approvals import REASON_CODES as APPROVAL_REASONS
from gatectl.events import CommandRefused
from gatectl.journal import Entry, Journal
from gatectl.limits import JSON_REFUSALS

log = structlog.get_logger("gatectl.refusals")

OTHER: Final = "other"
SITE_LANE: Final = "_site"

#: Every surface and the reasons it refuses for. Stable: metric labels and docs use them.
REASONS: Final[dict[str, tuple[str, ...]]] = {
    "api": (
        *JSON_REFUSALS,
        "invalid",  # a body or query that is well-formed JSON but not what the route takes
        "bad_query",  # a query parameter that is unknown, repeated or out of range
        "unknown_lane",
        "unauthorized",  # no bearer token
        "forbidden",  # a wrong token, or a role that may not do this
        "actor_mismatch",  # a body naming another actor than the token's user
        "no_plate_camera",  # a plate posted for a lane without plate_camera
        "drill_state",  # a drill started during one, or ended without one
        "rate_limited",
        "too_many_connections",
        "header_timeout",
        "body_timeout",
        "internal_error",
    ),
    "mqtt": ("too_large", "retained", "busy", "unknown_topic", "malformed", "unknown_lane", "invalid",
             "internal_error"),
    "approval": APPROVAL_REASONS,
    "command": (
        "malformed",
        "unknown_command",
        "wrong_topic",
        "unsigned",
        "unknown_key",
        "bad_signature",
        "unknown_lane",
        "expired",
        "not_yet_valid",
        "replayed",
        "invalid",
    ),
    "replay": ("too_large", "malformed", "unknown_lane", "invalid", "busy"),
    "journal": ("damaged_row",),
}


class Refusals:
    """Counts and a bounded log of refused input, for one process. Thread-safe: the
    journal's readers report damaged rows from their threads."""

    def __init__(self, log_interval: float = 60.0) -> None:
        self.log_interval = log_interval
        self.counts: Counter[tuple[str, str]] = Counter()
        self._logged: dict[tuple[str, str], tuple[float, int]] = {}
        self._lock = threading.Lock()

    @staticmethod
    def key(surface: str, reason: str) -> tuple[str, str]:
        if surface not in REASONS:
            return (OTHER, OTHER)
        return (surface, reason if reason in REASONS[surface] else OTHER)

    def count(self, surface: str, reason: str, message: str = "", **fields: Any) -> None:
        """One refusal. Logged if it is the first of its surface and reason in an interval."""
        key = self.key(surface, reason)
        now = time.monotonic()
        with self._lock:
            self.counts[key] += 1
            total = self.counts[key]
            last = self._logged.get(key)
            if last is not None and now - last[0] < self.log_interval:
                return
            self._logged[key] = (now, total)
        since = total - last[1] if last is not None else 1
        log.warning("input refused", surface=surface, reason=reason, message=message[:300],
                    refused_since_last_line=since, refused_total=total,
                    **{k: (v[:200] if isinstance(v, str) else v) for k, v in fields.items()})

    def total(self, surface: str | None = None, reason: str | None = None) -> int:
        with self._lock:
            return sum(n for (s, r), n in self.counts.items()
                       if (surface is None or s == surface) and (reason is None or r == reason))

    def snapshot(self) -> dict[tuple[str, str], int]:
        """Every surface and reason with its count, zeros included (for ``/metrics``)."""
        with self._lock:
            out = {(s, r): 0 for s, reasons in REASONS.items() for r in (*reasons, OTHER)}
            out.update(self.counts)
            return out


#: Damaged rows reported so far (each once per process); bounded.
_DAMAGED_SEEN: set[tuple[str, str, int]] = set()
_DAMAGED_MAX = 10_000
_damaged_lock = threading.Lock()


def report_damaged_row(path: str, lane_id: str, seq: int, error: str, refusals: Refusals | None = None,
                       where: str = "") -> None:
    """A journaled event whose body cannot be read (not UTF-8, not JSON): reported once
    per process with the file, lane and seq, so it can be found and dealt with; whoever met
    it skips it and goes on."""
    key = (path, lane_id, seq)
    with _damaged_lock:
        if key in _DAMAGED_SEEN:
            return
        if len(_DAMAGED_SEEN) >= _DAMAGED_MAX:
            _DAMAGED_SEEN.clear()
        _DAMAGED_SEEN.add(key)
    if refusals is not None:
        with refusals._lock:
            refusals.counts[("journal", "damaged_row")] += 1
    log.error("damaged event in the journal: skipped", file=path, lane=lane_id, seq=seq, error=error[:200],
              reader=where)


def decode_row(body: bytes | str) -> Any:
    """A stored event body as JSON, or ``ValueError`` (a damaged row)."""
    event = json.loads(body)
    if not isinstance(event, dict):
        raise ValueError("the body is not a JSON object")
    return event


class RefusedRecords:
    """Refusals worth a record, journaled in aggregate: at most one ``command.refused`` per
    (source, topic, reason, lane) each ``interval``, with its ``count``, the first
    message and the start of the first payload.

    The records go on the site-wide pseudo lane ``_site``; ``flush`` is called when
    ``due()`` (by the owner's loop) and when the owner stops.
    """

    def __init__(self, journal: Journal, now: Callable[[], datetime], interval: float = 60.0) -> None:
        self._journal = journal
        self._now = now
        self.interval = interval
        self._pending: dict[tuple[str, str, str, str | None], dict[str, Any]] = {}
        self._flushed = time.monotonic()

    def add(self, *, source: str, topic: str, reason: str, message: str, lane: str | None = None,
            payload: bytes | str = b"") -> None:
        key = (source[:40], topic[:200], reason[:64], lane[:64] if isinstance(lane, str) else None)
        entry = self._pending.get(key)
        if entry is None:
            text = payload.decode("utf-8", errors="replace") if isinstance(payload, (bytes, bytearray)) else payload
            entry = self._pending[key] = {"count": 0, "message": message[:500], "payload": text[:200]}
        entry["count"] += 1

    def pending(self) -> int:
        return sum(e["count"] for e in self._pending.values())

    def due(self) -> bool:
        return bool(self._pending) and time.monotonic() - self._flushed >= self.interval

    def flush(self) -> None:
        """Journal what was refused since the last flush: one record per key."""
        self._flushed = time.monotonic()
        pending, self._pending = self._pending, {}
        if not pending:
            return
        now = self._now()
        entries = [
            Entry(CommandRefused(source=source, topic=topic, reason=reason, message=e["message"], lane=lane,
                                       payload=e["payload"], count=e["count"]), now)
            for (source, topic, reason, lane), e in pending.items()
        ]

        def done(future: Future) -> None:
            if future.exception() is not None:
                log.error("refused input not journaled", error=str(future.exception()),
                          refused=sum(e["count"] for e in pending.values()))

        self._journal.append(SITE_LANE, entries).add_done_callback(done)


__all__ = ["OTHER", "REASONS", "Refusals", "RefusedRecords"]
