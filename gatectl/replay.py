"""The lane PC's side of ``{prefix}/cmd/replay`` (CONTRACT 8): publish journaled events
again, unchanged, so a consumer (the zone central) can fill a gap the broker never kept.

A request is ``{"lane_id", "from_seq", "to_seq"}``. It is checked (a JSON object, a lane
of this site or ``_site``, whole numbers ``1 <= from_seq <= to_seq``) and served in
``seq`` order on the lane's events topic (``site/events`` for ``_site``), at most
``MAX_EVENTS`` events: a wider request is served up to ``from_seq + MAX_EVENTS - 1`` and
the consumer asks again for the rest. One request per lane at a time; later ones wait in
that lane's queue (``MAX_QUEUED`` per lane, beyond that refused). Replays publish what the
journal holds; seqs it does not hold (never journaled) are simply not sent.

The journal is read on a connection of its own, read-only, in a worker thread, a page of
``PAGE`` events at a time: the lanes' event loop and the journal's writer never wait for a
replay, and memory holds one page whatever the range. A refused request is counted
(``gatectl_input_refused_total{surface="replay"}``) and logged at a bounded rate, never
journaled (anyone who may publish on the command topic could otherwise fill the journal).
A journaled event whose body cannot be read (not UTF-8, not JSON) is reported once with
the file, lane and seq and left out of the replay; the rest is served.

Wiring (``gatectl.mqtt.MqttLink``): ``Replayer(journal_path, lanes, topic_of, refusals=...)``;
``submit(payload)`` from the command reader; ``run(publish)`` as a task of each session,
``publish(topic, bytes)`` awaiting the broker's PUBACK.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

import structlog

from gatectl.refusals import Refusals, decode_row, report_damaged_row

log = structlog.get_logger("gatectl.replay")

MAX_EVENTS = 10_000
MAX_QUEUED = 16
PAGE = 500
MAX_REQUEST_BYTES = 4096
SITE_LANE = "_site"


class ReplayRefused(ValueError):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class ReplayRequest:
    lane_id: str
    from_seq: int
    to_seq: int


def parse_request(data: bytes, lanes: Iterable[str]) -> ReplayRequest:
    """A replay request, checked and bounded; raises ``ReplayRefused``."""
    if len(data) > MAX_REQUEST_BYTES:
        raise ReplayRefused("too_large", f"a replay request is at most {MAX_REQUEST_BYTES} bytes")
    try:
        body = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ReplayRefused("malformed", f"not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ReplayRefused("malformed", "a replay request is a JSON object")
    extra = set(body) - {"lane_id", "from_seq", "to_seq"}
    if extra:
        raise ReplayRefused("malformed", f"unknown keys: {', '.join(sorted(extra))}")
    lane = body.get("lane_id")
    if not isinstance(lane, str) or (lane not in set(lanes) and lane != SITE_LANE):
        raise ReplayRefused("unknown_lane", f"no lane {lane!r}")
    lo, hi = body.get("from_seq"), body.get("to_seq")
    for name, value in (("from_seq", lo), ("to_seq", hi)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ReplayRefused("invalid", f"{name} must be a whole number >= 1")
    if hi < lo:
        raise ReplayRefused("invalid", "to_seq is below from_seq")
    return ReplayRequest(lane, lo, min(hi, lo + MAX_EVENTS - 1))


class Replayer:
    def __init__(self, journal_path: str, lanes: Iterable[str], topic_of: Callable[[str], str],
                 refusals: Refusals | None = None) -> None:
        self.journal_path = journal_path
        self.refusals = refusals
        self.lanes = frozenset(lanes)
        self.topic_of = topic_of
        self._queues: dict[str, deque[ReplayRequest]] = {}
        self._wake = asyncio.Event()
        self._db: sqlite3.Connection | None = None
        self._log_at: dict[str, float] = {}
        self.counters: Counter[str] = Counter()  # requests, served, events, refused:<reason>

    # ------------------------------------------------------------------ requests

    def submit(self, data: bytes) -> ReplayRequest | None:
        """Queue a request from the command topic; None (counted, logged) if refused."""
        try:
            req = parse_request(data, self.lanes)
        except ReplayRefused as exc:
            self._refused(exc.reason, str(exc))
            return None
        queue = self._queues.setdefault(req.lane_id, deque())
        if req in queue:
            self.counters["duplicate"] += 1  # the same gap asked twice: once is enough
            return req
        if len(queue) >= MAX_QUEUED:
            self._refused("busy", f"{MAX_QUEUED} replays of lane {req.lane_id} wait already")
            return None
        queue.append(req)
        self.counters["requests"] += 1
        self._wake.set()
        return req

    def pending(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def _refused(self, reason: str, message: str) -> None:
        self.counters[f"refused:{reason}"] += 1
        if self.refusals is not None:
            self.refusals.count("replay", reason, message)
            return  # logged there, at a bounded rate
        now = time.monotonic()
        if now - self._log_at.get(reason, float("-inf")) >= 10.0:
            self._log_at[reason] = now
            log.warning("replay request refused", reason=reason, message=message,
                        refused_so_far=self.counters[f"refused:{reason}"])

    # ------------------------------------------------------------------ serving

    async def run(self, publish: Callable[[str, bytes], Awaitable[None]]) -> None:
        """Serve queued requests, lane after lane (round robin), until cancelled. A
        request interrupted by a lost connection stays at the head of its queue."""
        try:
            while True:
                self._wake.clear()
                served = False
                for lane in sorted(self._queues):
                    queue = self._queues[lane]
                    if not queue:
                        continue
                    await self._serve(queue[0], publish)
                    queue.popleft()
                    served = True
                if not served:
                    await self._wake.wait()
        finally:
            if self._db is not None:
                with contextlib.suppress(sqlite3.Error):
                    self._db.close()
                self._db = None

    async def _serve(self, req: ReplayRequest, publish: Callable[[str, bytes], Awaitable[None]]) -> None:
        topic = self.topic_of(req.lane_id)
        pos, sent = req.from_seq - 1, 0
        while pos < req.to_seq:
            last, page = await asyncio.to_thread(self._page, req.lane_id, pos, req.to_seq)
            if last is None:
                break
            # Pipelined: paho sends in call order; each publish returns on its PUBACK.
            await asyncio.gather(*(publish(topic, body) for _, body in page))
            pos = last
            sent += len(page)
        self.counters["served"] += 1
        self.counters["events"] += sent
        log.info("replayed", lane=req.lane_id, from_seq=req.from_seq, to_seq=req.to_seq, events=sent)

    def _page(self, lane: str, after: int, upto: int) -> tuple[int | None, list[tuple[int, bytes]]]:
        """The next page after ``after``: the last seq read (None: nothing left) and the
        events to send, damaged rows left out."""
        if self._db is None:
            self._db = sqlite3.connect(f"file:{self.journal_path}?mode=ro", uri=True, check_same_thread=False)
            self._db.execute("PRAGMA busy_timeout=5000")
        rows = self._db.execute(
            "SELECT seq, CAST(body AS BLOB) FROM events WHERE lane_id = ? AND seq > ? AND seq <= ? ORDER BY seq"
            " LIMIT ?",
            (lane, after, upto, PAGE),
        ).fetchall()
        page: list[tuple[int, bytes]] = []
        for seq, body in rows:
            data = bytes(body) if body is not None else b""
            try:
                decode_row(data)
            except ValueError as exc:
                report_damaged_row(self.journal_path, lane, seq, str(exc), self.refusals, where="replay")
                self.counters["damaged"] += 1
                continue
            page.append((seq, data))
        return (rows[-1][0] if rows else None), page
