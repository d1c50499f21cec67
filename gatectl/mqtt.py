"""The MQTT link (CONTRACT section 5): the journal's events to the park's broker, and
customs' orders (approvals, spot checks) from it.

Wiring (one link per process, only when the config has an ``mqtt`` section)::

    link = MqttLink(site)              # config from site.config.mqtt; creates its table
    site.subscribe(link.on_events)     # every journal write wakes the publisher
    site.add_task(link.run, "mqtt")    # before site.run()

Topics, under ``topic_prefix`` (default ``gatectl/<site id>``), QoS 1:

- ``status``: retained ``online`` after each connect; the last will (retained
  ``offline``) covers a crash or a lost network, and a clean stop publishes the events
  journaled last (for up to ``STOP_DRAIN_S``), then ``offline`` itself before
  disconnecting (a clean DISCONNECT suppresses the will).
- ``lanes/{lane}/state``: retained JSON of ``LaneService.snapshot()``, on connect and when
  it changes (device counters alone do not count as a change; they are refreshed every
  ``state_refresh`` seconds), at most one per ``state_min_interval`` per lane.
- ``lanes/{lane}/events``: every journaled event of the lane, the journal's JSON body as
  is; events of the site-wide pseudo lane ``_site`` go to ``site/events``.
- ``alarms``: every ``alarm.*`` event of any lane (``alarm.raised``, ``alarm.acknowledged``),
  in the same ordered pass as the lane topic.
- inbound ``cmd/replay``: journaled events published again, unchanged, on the lane's
  events topic, by ``gatectl.replay.Replayer`` (bounded, one request per lane at a time,
  served beside the live events).
- inbound ``cmd/approvals`` (to ``gatectl.orders``, which journals the outcome as
  ``approval.accepted``/``approval.refused``, hence published), and ``cmd/spot-checks``
  and ``cmd/lane-hours``: customs' signed commands (CONTRACT 8, ``gatectl.commands``),
  accepted once per ``command_id`` within 10 minutes of ``issued_at``; an unsigned or
  badly signed one is refused. Payloads are capped per topic before anything parses
  them (approvals 64 KB, commands 16 KB, replay requests 4 KB). An inbound message that
  cannot be applied is counted (``gatectl_input_refused_total``, surface ``mqtt``, or
  ``command`` for signed commands); each minute, one ``command.refused`` per topic and
  reason is journaled on ``_site`` with its ``count`` (junk is never journaled one by
  one), and the first of each is logged; nothing inbound stops the link.
- a journaled event whose body cannot be read (not UTF-8 or not JSON) is reported once
  with file, lane and seq and skipped: the cursor passes it, the events after it go out.

Delivery: the journal is the outbox. The link keeps one cursor per lane in the journal
file (table ``mqtt_cursor``: the highest ``seq`` the broker acknowledged) and publishes
every event with ``seq`` above it, in ``seq`` order, reading at most ``batch_per_lane``
events per lane and ``batch_max`` in all per pass (memory stays bounded whatever the
backlog). aiomqtt's ``publish(qos=1)`` returns only when the broker's PUBACK arrived
(paho marks a QoS 1 message published in its PUBACK handler, not when written), so the
cursor of a lane moves over the longest run of acknowledged events only, both topics of
an alarm included. Delivery is at least once: after a lost connection or a crash the
events after the durable cursor are published again, so subscribers may see an event
twice (same ``event_id`` and ``seq``); the link leaves no gap and sends no later event of a lane
before an earlier one's first copy. The durable cursor is written at most every
``cursor_save_interval`` seconds and when a session ends, so a crash costs a few
duplicates, not an fsync per event. A PUBACK means the broker took the message over;
what it does with it is the broker's business: an MQTT 3.1.1 broker whose ACL denies
the topic still acknowledges and drops the message, and a subscriber's queue on the
broker has limits of its own (Mosquitto's ``max_queued_messages``), so the account of
the link needs publish rights on ``{prefix}/#`` and read rights on ``{prefix}/cmd/#``.

The backlog (``depth()``) is the events journaled and not yet acknowledged: the sum over
lanes of the lane's last ``seq`` minus its cursor. It costs no disk of its own; the
events are in the journal whether or not the broker is there, so a long outage grows
nothing but this number. Above ``backlog_warning`` (10 000) events the link logs a
WARNING, once until it has fallen back under half of that. When the disk fills, the
journal write fails and the lanes fail closed (the journal keeps the events queued,
reports itself faulty and lifts nothing automatically); those events get their ``seq``
and reach MQTT only once the journal takes them. A cursor write that
fails is logged (WARNING, once until one succeeds); delivery goes on from the cursor in
memory, and a restart before a later write succeeds re-publishes from the older cursor.
Events removed from the journal before they were published (there is no pruning yet)
would be skipped, never invented.

Connection: a fresh aiomqtt ``Client`` per attempt (no paho state, like half-sent
messages of the previous connection, carries over), a persistent session
(``clean_session=False`` under a stable client id, so QoS 1 commands sent during a short
outage are delivered on reconnect), jittered exponential backoff between attempts,
0.5 s doubling to a cap of 3 s. One ERROR per outage (the first failure), DEBUG for the retries, INFO when the
link is back, with the backlog. Commands a broker keeps as retained messages are refused,
not re-applied on every reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import re
import socket
import sqlite3
import ssl
import time
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import aiomqtt
import structlog

from gatectl.approvals import MAX_APPROVAL_BYTES
from gatectl.commands import MAX_COMMAND_BYTES, CommandRefused
from gatectl.events import Stamped
from gatectl.journal import JournalError, WriteTx
from gatectl.refusals import RefusedRecords, decode_row, report_damaged_row
from gatectl.replay import MAX_REQUEST_BYTES, Replayer

if TYPE_CHECKING:
    from gatectl.service import Site

log = structlog.get_logger("gatectl.mqtt")

#: A session that lasted this long resets the reconnect backoff.
STABLE_S = 10.0
#: Inbound messages aiomqtt may hold before the link reads them.
INCOMING_QUEUE = 10_000
#: On a clean stop, how long the link goes on publishing the backlog before ``offline``.
STOP_DRAIN_S = 1.5

#: Lane id of site-wide events (gatectl.service.SITE_LANE); their topic is ``site/events``.
SITE_LANE = "_site"

SCHEMA = """
CREATE TABLE IF NOT EXISTS mqtt_cursor (
    lane_id    TEXT PRIMARY KEY,
    seq        INTEGER NOT NULL,     -- highest seq of the lane the broker acknowledged
    updated_at TEXT NOT NULL
)
"""

# The body as bytes: a row that is not UTF-8 is a damaged row to skip, not a failed read.
_EVENTS_SQL = "SELECT seq, type, CAST(body AS BLOB) FROM events WHERE lane_id = ? AND seq > ? ORDER BY seq LIMIT ?"
# Distinct lane ids by skip-scan over the (lane_id, seq) primary key: one probe per lane.
_LANES_SQL = """
WITH RECURSIVE l(id) AS (
    SELECT MIN(lane_id) FROM events
    UNION ALL
    SELECT (SELECT MIN(lane_id) FROM events WHERE lane_id > l.id) FROM l WHERE l.id IS NOT NULL
)
SELECT id FROM l WHERE id IS NOT NULL
"""


def default_client_id(site_id: str) -> str:
    """``gatectl-<site>-<host>``: stable across restarts (the persistent session) and
    different between lane PCs."""
    host = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:40] or "host"
    return f"gatectl-{site_id}-{host}"


def tls_context(tls: Any) -> ssl.SSLContext:
    """A client context from the config's ``tls`` (ca_file, cert_file, key_file):
    the broker's certificate and host name verified against ``ca_file`` (or the system
    store), and our certificate offered when one is configured."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(tls.ca_file) if tls.ca_file else None)
    if tls.cert_file is not None:
        ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file) if tls.key_file else None)
    return ctx


class _ClientLog(logging.Handler):
    """aiomqtt's and paho's log, kept out of the process log: paho logs a failed socket
    read as an ERROR on every attempt, and the link logs one ERROR per outage itself.
    The last error is kept to explain the outage (aiomqtt itself often says only
    "Operation timed out"); warnings are passed on."""

    def __init__(self, on_dropped: Any = None) -> None:
        super().__init__(logging.WARNING)
        self.last_error: str | None = None
        self.on_dropped = on_dropped  # aiomqtt's incoming queue full: counted, not logged each time
        self.logger = logging.Logger("gatectl.mqtt.client", logging.WARNING)  # unregistered: no propagation
        self.logger.addHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
        except Exception:  # noqa: BLE001 - a log line must not break the link
            text = str(record.msg)
        if text.startswith("Message queue is full") and self.on_dropped is not None:
            self.on_dropped()
            return
        if record.levelno >= logging.ERROR:
            self.last_error = text
            log.debug("mqtt client error", message=text)
        else:
            log.warning("mqtt client", message=text)


@dataclass(slots=True)
class _LaneState:
    key: str | None = None  # what the last published snapshot showed, counters aside
    at: float = float("-inf")  # loop time of that publish


class MqttLink:
    """One process's connection to the broker. See the module docstring."""

    def __init__(
        self,
        site: Site,
        *,
        backoff_initial: float = 0.5,
        # One TCP connect every few seconds is nothing to a broker, and a backlog waiting
        # out a 30 s cap missed the 10 s drain target after a long outage.
        backoff_max: float = 3.0,
        keepalive: int = 30,
        timeout: float = 10.0,
        batch_per_lane: int = 100,
        batch_max: int = 500,
        max_inflight: int = 100,
        state_min_interval: float = 0.2,
        state_poll: float = 1.0,
        state_refresh: float = 60.0,
        cursor_save_interval: float = 0.5,
        backlog_warning: int = 10_000,
        inbox_size: int = 1000,
        refused_interval: float = 60.0,
    ) -> None:
        cfg = site.config.mqtt
        if cfg is None:
            raise ValueError("the config has no mqtt section")
        self.site = site
        self.config = cfg
        self.journal = site.journal
        self.prefix = cfg.topic_prefix or f"gatectl/{site.config.site.id}"
        self.client_id = cfg.client_id or default_client_id(site.config.site.id)
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.keepalive = keepalive
        self.timeout = timeout
        self.batch_per_lane = batch_per_lane
        self.batch_max = batch_max
        self.max_inflight = max_inflight
        self.state_min_interval = state_min_interval
        self.state_poll = state_poll
        self.state_refresh = state_refresh
        self.cursor_save_interval = cursor_save_interval
        self.backlog_warning = backlog_warning

        self.status_topic = f"{self.prefix}/status"
        self.alarms_topic = f"{self.prefix}/alarms"
        self.approvals_topic = f"{self.prefix}/cmd/approvals"
        self.spot_checks_topic = f"{self.prefix}/cmd/spot-checks"
        self.lane_hours_topic = f"{self.prefix}/cmd/lane-hours"
        self.replay_topic = f"{self.prefix}/cmd/replay"
        self.refusals = site.orders.refusals
        self.replayer = Replayer(str(site.config.journal.path), site.lanes, self.events_topic,
                                 refusals=self.refusals)
        #: The signed command each command topic takes.
        self._signed_topics = {self.spot_checks_topic: "spot-check", self.lane_hours_topic: "lane-hours"}
        #: The largest payload each inbound topic takes; anything larger is refused unread.
        self._payload_max = {self.approvals_topic: MAX_APPROVAL_BYTES, self.spot_checks_topic: MAX_COMMAND_BYTES,
                             self.lane_hours_topic: MAX_COMMAND_BYTES, self.replay_topic: MAX_REQUEST_BYTES}

        self._cursor: dict[str, int] = {}  # acknowledged by the broker (in memory)
        self._saved: dict[str, int] = {}  # as written in mqtt_cursor
        self._last_save = float("-inf")
        self._lanes: set[str] = set(site.lanes) | {SITE_LANE}
        self._rr = 0
        self._states: dict[str, _LaneState] = {lane: _LaneState() for lane in site.lanes}
        self._wake = asyncio.Event()
        self._inbox: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue(maxsize=inbox_size)
        self._outage_since: float | None = None
        self._connected_at: float | None = None
        self._journal_failing = False
        self._cursor_failing = False
        self._backlog_warned = False
        self._state_failing: set[str] = set()
        self._client_log = _ClientLog(on_dropped=self._dropped)

        # Figures for tests and metrics.
        self.connected = False
        self.connects = 0
        self.outages = 0
        self.acknowledged = 0  # events acknowledged by the broker (both topics of an alarm: one)
        self.received = 0  # inbound messages, whatever became of them
        self.commands = {"approvals": 0, "spot_checks": 0, "lane_hours": 0, "refused": 0}
        self._schema_ok = False
        # Refused inbound messages by (topic, reason), journaled as one record per
        # ``refused_interval`` each with its count: junk is counted, not journaled one by one.
        self.refused_interval = refused_interval
        self._refused = RefusedRecords(self.journal, site.now, refused_interval)
        try:
            self.journal.run(self.ensure_schema).result()
        except Exception as exc:  # noqa: BLE001 - e.g. a full disk on the very first start: run() tries again
            log.error("mqtt cursor table unavailable; nothing is published until it is", error=str(exc))

    # ------------------------------------------------------------------ journal side

    def ensure_schema(self, tx: WriteTx) -> None:
        """A journal job: create the cursor table if needed and load the cursors (idempotent)."""
        db = tx.db
        db.execute(SCHEMA)  # (not executescript: that would COMMIT a transaction in progress)
        self._saved = {lane: seq for lane, seq in db.execute("SELECT lane_id, seq FROM mqtt_cursor")}
        for lane, seq in self._saved.items():  # never back over what this process saw acknowledged
            self._cursor[lane] = max(seq, self._cursor.get(lane, 0))
        self._lanes |= set(self._saved) | {lane for (lane,) in db.execute(_LANES_SQL)}
        for lane, seq in list(self._cursor.items()):
            last = self.journal.last_seq(lane)
            if seq > last:
                # A journal older than its cursor (restored from a backup?): publish what it holds.
                log.warning("mqtt cursor beyond the journal", lane=lane, cursor=seq, last_seq=last)
                self._cursor[lane] = last
        self._schema_ok = True

    def on_events(self, written: list[Stamped]) -> None:
        """``Site.subscribe`` callback: events were journaled; wake the publisher."""
        for st in written:
            self._lanes.add(st.lane_id)
        self._wake.set()

    def depth(self) -> int:
        """Events journaled and not yet acknowledged by the broker, all lanes."""
        return sum(max(0, self.journal.last_seq(lane) - self._cursor.get(lane, 0)) for lane in self._lanes)

    def cursor(self, lane_id: str) -> int:
        """The highest seq of ``lane_id`` the broker acknowledged."""
        return self._cursor.get(lane_id, 0)

    def _pending_lanes(self) -> list[str]:
        lanes = sorted(lane for lane in self._lanes if self.journal.last_seq(lane) > self._cursor.get(lane, 0))
        if not lanes:
            return lanes
        self._rr = (self._rr + 1) % len(lanes)
        return lanes[self._rr:] + lanes[: self._rr]

    def _read_batch(self, db: sqlite3.Connection) -> list[tuple[str, int, str, bytes | None]]:
        """The next events to publish: per lane the oldest after its cursor, bounded. A
        damaged row (its body not UTF-8 or not JSON) comes back with body None: reported
        once, never published, passed over by the cursor."""
        out: list[tuple[str, int, str, bytes | None]] = []
        budget = self.batch_max
        for lane in self._pending_lanes():
            if budget <= 0:
                break
            rows = db.execute(_EVENTS_SQL, (lane, self._cursor.get(lane, 0), min(budget, self.batch_per_lane)))
            for seq, type_, body in rows:
                data: bytes | None = bytes(body) if body is not None else b""
                try:
                    decode_row(data)
                except ValueError as exc:
                    report_damaged_row(self.journal.path, lane, seq, str(exc), self.refusals, where="mqtt")
                    data = None
                out.append((lane, seq, str(type_), data))
                budget -= 1
        return out

    def save_cursors(self, force: bool = False) -> None:
        """Write the acknowledged cursors to the journal file (at most every
        ``cursor_save_interval`` unless ``force``), as a journal job; not waited for."""
        changed = {lane: seq for lane, seq in self._cursor.items() if self._saved.get(lane) != seq}
        if not changed:
            return
        now = time.monotonic()
        if not force and now - self._last_save < self.cursor_save_interval:
            return
        self._last_save = now
        stamp = datetime.now().astimezone().isoformat()

        def job(tx: WriteTx) -> None:
            tx.db.executemany(
                "INSERT INTO mqtt_cursor (lane_id, seq, updated_at) VALUES (?, ?, ?)"
                " ON CONFLICT (lane_id) DO UPDATE SET seq = excluded.seq, updated_at = excluded.updated_at",
                [(lane, seq, stamp) for lane, seq in changed.items()],
            )

        def saved(future) -> None:
            if future.exception() is not None:
                if not self._cursor_failing:
                    self._cursor_failing = True
                    log.warning("mqtt cursor not saved; delivery goes on, a restart re-publishes",
                                error=str(future.exception()))
                return
            self._saved.update(changed)
            if self._cursor_failing:
                self._cursor_failing = False
                log.info("mqtt cursor saved again")

        # A lost cursor costs duplicates after a crash, never a gap: no fsync of its own.
        self.journal.run(job, durable=False).add_done_callback(saved)

    def _check_backlog(self) -> None:
        depth = self.depth()
        if depth > self.backlog_warning and not self._backlog_warned:
            self._backlog_warned = True
            log.warning("mqtt backlog large", backlog=depth, threshold=self.backlog_warning,
                        connected=self.connected)
        elif depth <= self.backlog_warning // 2 and self._backlog_warned:
            self._backlog_warned = False
            log.info("mqtt backlog back to normal", backlog=depth)

    # ------------------------------------------------------------------ topics

    def events_topic(self, lane_id: str) -> str:
        if lane_id == SITE_LANE:
            return f"{self.prefix}/site/events"
        return f"{self.prefix}/lanes/{lane_id}/events"

    def state_topic(self, lane_id: str) -> str:
        return f"{self.prefix}/lanes/{lane_id}/state"

    # ------------------------------------------------------------------ connection

    def _client(self) -> aiomqtt.Client:
        cfg = self.config
        client = aiomqtt.Client(
            cfg.host,
            cfg.port,
            identifier=self.client_id,
            logger=self._client_log.logger,
            username=cfg.username,
            password=cfg.password,
            tls_context=tls_context(cfg.tls) if cfg.tls is not None else None,
            will=aiomqtt.Will(self.status_topic, b"offline", qos=1, retain=True),
            clean_session=False,
            keepalive=self.keepalive,
            timeout=self.timeout,
            max_inflight_messages=self.max_inflight,
            # Read at once into the bounded inbox; this only bounds a backlog while the
            # loop is busy (a flood): beyond it paho's messages are dropped and counted.
            max_queued_incoming_messages=INCOMING_QUEUE,
        )
        # aiomqtt warns on every call beyond 10 pending; a batch is many by design.
        client.pending_calls_threshold = 2 * self.batch_max + 2 * len(self._states) + 16
        return client

    async def run(self) -> None:
        """Connect, publish, reconnect; forever (until cancelled, which stops cleanly)."""
        worker = asyncio.create_task(self._inbound_worker(), name="mqtt:inbound")
        backoff = self.backoff_initial
        try:
            while True:
                self._connected_at = None
                try:
                    if not self._schema_ok:
                        # Without the cursors, publishing would start from seq 1.
                        await asyncio.wrap_future(self.journal.run(self.ensure_schema))
                    await self._session()
                    error: BaseException = aiomqtt.MqttError("session ended")
                except Exception as exc:  # noqa: BLE001 - the link outlives every failure
                    error = exc
                if self._connected_at is not None and time.monotonic() - self._connected_at >= STABLE_S:
                    backoff = self.backoff_initial  # it was up for a while: a new outage
                self._down(error)
                self._check_backlog()
                await asyncio.sleep(backoff * random.uniform(0.5, 1.0))
                backoff = min(backoff * 2, self.backoff_max)
        finally:
            worker.cancel()
            with contextlib.suppress(BaseException):
                await _finish(worker, 1.0)
            with contextlib.suppress(Exception):
                self.save_cursors(force=True)

    def _down(self, error: BaseException) -> None:
        self.connected = False
        if self._outage_since is None:
            self._outage_since = time.monotonic()
            self.outages += 1
            # A broker away, refusing or misconfigured is expected; anything else is a bug: trace it.
            trace = {} if isinstance(error, (aiomqtt.MqttError, OSError)) else {"exc_info": error}
            log.error("mqtt link down", broker=f"{self.config.host}:{self.config.port}", error=_describe(error),
                      detail=self._client_log.last_error, backlog=self.depth(), **trace)
        else:
            log.debug("mqtt reconnect failed", error=_describe(error), detail=self._client_log.last_error)

    def _up(self) -> None:
        self.connected = True
        self.connects += 1
        self._connected_at = time.monotonic()
        if self._outage_since is not None:
            log.info("mqtt link restored", broker=f"{self.config.host}:{self.config.port}",
                     down_s=round(self._connected_at - self._outage_since, 1), backlog=self.depth())
            self._outage_since = None
        else:
            log.info("mqtt connected", broker=f"{self.config.host}:{self.config.port}", client_id=self.client_id,
                     prefix=self.prefix, backlog=self.depth())

    async def _session(self) -> None:
        """One connection: subscribe, announce, then publish and read until it breaks."""
        self._client_log.last_error = None
        client = self._client()
        await client.__aenter__()
        try:
            await client.subscribe(self.approvals_topic, qos=1)
            await client.subscribe(self.spot_checks_topic, qos=1)
            await client.subscribe(self.lane_hours_topic, qos=1)
            await client.subscribe(self.replay_topic, qos=1)
            await client.publish(self.status_topic, b"online", qos=1, retain=True)
            # Connected once it listens: a command sent from then on reaches the lane.
            self._up()
            await self._serve(client)
        except asyncio.CancelledError:
            # A clean stop: say so ourselves, the will is only for a crash.
            await _finish(asyncio.ensure_future(self._goodbye(client)), 3.0)
            raise
        except BaseException:
            await _finish(asyncio.ensure_future(self._drop(client)), 3.0)
            raise

    async def _goodbye(self, client: aiomqtt.Client) -> None:
        """A clean stop: publish what the lanes journaled last (briefly), then offline."""
        with contextlib.suppress(Exception):
            async with asyncio.timeout(STOP_DRAIN_S):
                while self.depth() and await self._drain_once(client):
                    pass
        self.save_cursors(force=True)
        with contextlib.suppress(Exception):
            await client.publish(self.status_topic, b"offline", qos=1, retain=True, timeout=1)
            log.info("mqtt offline published", backlog=self.depth())
        await self._drop(client)

    @staticmethod
    async def _drop(client: aiomqtt.Client) -> None:
        with contextlib.suppress(Exception):
            await client.__aexit__(None, None, None)
        # aiomqtt leaves the reason of an unexpected disconnect in a future nobody reads
        # once this client is dropped; read it so asyncio does not log it as lost.
        fut = getattr(client, "_disconnected", None)
        if isinstance(fut, asyncio.Future) and fut.done() and not fut.cancelled():
            fut.exception()

    async def _serve(self, client: aiomqtt.Client) -> None:
        """The reader notices a broken connection at once (aiomqtt's publish would only
        time out); whichever of reader and writer ends first ends the session."""
        reader = asyncio.create_task(self._read(client), name="mqtt:read")
        writer = asyncio.create_task(self._write(client), name="mqtt:write")
        replays = asyncio.create_task(self.replayer.run(lambda topic, body: client.publish(topic, body, qos=1)),
                                      name="mqtt:replay")
        try:
            done, _ = await asyncio.wait({reader, writer, replays}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (reader, writer, replays):
                task.cancel()
            with contextlib.suppress(BaseException):
                await _finish(asyncio.ensure_future(asyncio.wait({reader, writer, replays})), 2.0)
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
        raise aiomqtt.MqttError("mqtt session ended")

    # ------------------------------------------------------------------ outbound

    async def _write(self, client: aiomqtt.Client) -> None:
        try:
            await self._publish_states(client, force=True)
            while True:
                self._wake.clear()
                sent = await self._drain_once(client)
                await self._publish_states(client)
                self.save_cursors()
                self._check_backlog()
                if not sent:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self.state_poll):
                            await self._wake.wait()
        finally:
            self.save_cursors(force=True)

    async def _drain_once(self, client: aiomqtt.Client) -> int:
        try:
            batch = await self.journal.read(self._read_batch)
        except (sqlite3.Error, JournalError) as exc:
            if not self._journal_failing:
                self._journal_failing = True
                log.error("mqtt cannot read the journal", error=str(exc))
            await asyncio.sleep(1.0)
            return 0
        if self._journal_failing:
            self._journal_failing = False
            log.info("mqtt reads the journal again")
        if batch:
            await self._publish_events(client, batch)
        return len(batch)

    async def _publish_events(self, client: aiomqtt.Client, batch: list[tuple[str, int, str, bytes | None]]) -> None:
        """Publish ``batch`` (pipelined: paho sends in call order on one connection) and
        move each lane's cursor over its acknowledged prefix, whatever happens."""
        jobs: list[tuple[str, int, list[asyncio.Task]]] = []
        for lane, seq, type_, body in batch:
            if body is None:  # damaged: nothing to send, nothing to wait for
                jobs.append((lane, seq, []))
                continue
            topics = [self.events_topic(lane)]
            if type_.startswith("alarm."):
                topics.append(self.alarms_topic)
            # Tasks start in creation order, each calling paho's publish before its first await.
            jobs.append((lane, seq, [asyncio.ensure_future(client.publish(t, body, qos=1)) for t in topics]))
        tasks = [t for _, _, ts in jobs for t in ts]
        try:
            await asyncio.gather(*tasks)
        finally:
            blocked: set[str] = set()
            for lane, seq, ts in jobs:
                ok = all(t.done() and not t.cancelled() and t.exception() is None for t in ts)
                if ok and lane not in blocked:
                    if seq > self._cursor.get(lane, 0):
                        self._cursor[lane] = seq
                        self.acknowledged += 1
                else:
                    blocked.add(lane)
            for t in tasks:
                if not t.done():
                    t.cancel()
                elif not t.cancelled():
                    t.exception()

    async def _publish_states(self, client: aiomqtt.Client, force: bool = False) -> None:
        now = asyncio.get_running_loop().time()
        todo: list[tuple[str, str, asyncio.Task]] = []
        for lane_id, lane in self.site.lanes.items():
            st = self._states.setdefault(lane_id, _LaneState())
            if not force and now - st.at < self.state_min_interval:
                continue
            try:
                snap = lane.snapshot()
                # A consumer knows from these how far each lane goes (CONTRACT 8) and whose it is.
                snap.setdefault("last_seq", self.journal.last_seq(lane_id))
                snap.setdefault("site_id", self.site.config.site.id)
                key = _state_key(snap)
            except Exception as exc:  # noqa: BLE001 - a state we cannot show must not stop events
                if lane_id not in self._state_failing:
                    self._state_failing.add(lane_id)
                    log.error("lane state not published", lane=lane_id, error=repr(exc))
                continue
            self._state_failing.discard(lane_id)
            if not force and key == st.key and now - st.at < self.state_refresh:
                continue
            payload = json.dumps(snap, ensure_ascii=False, default=str, sort_keys=True).encode()
            todo.append((lane_id, key, asyncio.ensure_future(
                client.publish(self.state_topic(lane_id), payload, qos=1, retain=True))))
        if not todo:
            return
        try:
            await asyncio.gather(*(t for _, _, t in todo))
        finally:
            for lane_id, key, t in todo:
                if t.done() and not t.cancelled() and t.exception() is None:
                    self._states[lane_id] = _LaneState(key, now)
                elif not t.done():
                    t.cancel()

    # ------------------------------------------------------------------ inbound

    async def _read(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            self.received += 1
            topic = message.topic.value
            payload = message.payload
            if isinstance(payload, str):
                data = payload.encode()
            elif isinstance(payload, (bytes, bytearray)):
                data = bytes(payload)
            elif payload is None:
                data = b""
            else:
                data = str(payload).encode()
            cap = self._payload_max.get(topic, 0)
            if len(data) > cap:
                if cap:
                    self._refuse(topic, "too_large", f"{len(data)} bytes; this topic takes at most {cap}", b"")
                else:
                    self._refuse(topic, "unknown_topic", "not a command topic", b"")
                continue
            if message.retain:
                # A stored command would be applied again on every reconnect.
                self._refuse(topic, "retained", "commands must not be published retained", data)
                continue
            try:
                self._inbox.put_nowait((topic, data))
            except asyncio.QueueFull:
                self._refuse(topic, "busy", "too many commands waiting", data)
        raise aiomqtt.MqttError("message stream ended")

    async def _inbound_worker(self) -> None:
        """Apply commands one at a time, across reconnects; journal the refusals counted."""
        try:
            while True:
                try:
                    async with asyncio.timeout(self.refused_interval):
                        topic, data = await self._inbox.get()
                except TimeoutError:
                    self.flush_refused()
                    continue
                try:
                    await self.handle_command(topic, data)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - a command must never stop the link
                    log.exception("mqtt command failed", topic=topic)
                    self._refuse(topic, "internal_error", repr(exc), data)
                if self._refused.due():
                    self.flush_refused()
        finally:
            self.flush_refused()

    async def handle_command(self, topic: str, data: bytes) -> None:
        """Apply one inbound message (``cmd/approvals``, a signed command, ``cmd/replay``)."""
        if topic == self.replay_topic:
            self.replayer.submit(data)  # checked, counted and queued there (CONTRACT 8)
            return
        if topic == self.approvals_topic:
            self.commands["approvals"] += 1
            result = await self.site.orders.approval(data, source="mqtt")
            log.info("mqtt approval", status=result.get("status"), approval_id=result.get("approval_id"),
                     reason=result.get("reason"))
            return
        kind = self._signed_topics.get(topic)
        if kind is None:
            self._refuse(topic, "unknown_topic", "not a command topic", data)
            return
        try:
            result = await self.site.orders.signed_command(data, source="mqtt", expect=kind)
        except CommandRefused as exc:  # counted by the orders (surface "command")
            self._refuse(topic, exc.code, exc.message, data, count=False)
            return
        self.commands["spot_checks" if kind == "spot-check" else "lane_hours"] += 1
        log.info("mqtt signed command", command=kind, command_id=result["command_id"], lane=result["lane_id"])

    def _refuse(self, topic: str, reason: str, message: str, data: bytes, lane: Any = None,
                count: bool = True) -> None:
        """Count a refused message (surface ``mqtt``; signed commands are counted as
        ``command`` by the orders) and keep it for the interval's ``command.refused``."""
        self.commands["refused"] += 1
        if count:
            self.refusals.count("mqtt", reason, message, topic=topic[:200])
        self._refused.add(source="mqtt", topic=topic, reason=reason, message=message, lane=lane, payload=data)
        if self._refused.due():
            self.flush_refused()

    def _dropped(self) -> None:
        self.received += 1
        self.commands["refused"] += 1
        message = f"more than {INCOMING_QUEUE} messages waiting to be read: dropped"
        self.refusals.count("mqtt", "busy", message)
        self._refused.add(source="mqtt", topic=f"{self.prefix}/cmd/#", reason="busy", message=message)

    def flush_refused(self) -> None:
        """Journal what was refused since the last flush: one record per (topic, reason)."""
        self._refused.flush()


# ---------------------------------------------------------------------- helpers


def _state_key(snap: dict[str, Any]) -> str:
    """What counts as a change of a lane's state: everything but the device counters
    (which move with every poll), device health included."""
    view = {k: v for k, v in snap.items() if k != "devices"}
    devices = snap.get("devices")
    if isinstance(devices, dict):
        view["devices"] = {name: d.get("health") if isinstance(d, dict) else None for name, d in devices.items()}
    return json.dumps(view, sort_keys=True, default=str, ensure_ascii=False)


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    cause = exc.__cause__ or exc.__context__
    if isinstance(exc, aiomqtt.MqttError) and cause is not None and str(cause) and str(cause) not in text:
        text = f"{text}: {cause}"
    return text


async def _finish(task: asyncio.Future, timeout: float) -> None:
    """Wait up to ``timeout`` for ``task`` even while being cancelled (the site cancels
    its tasks again and again until they stop); re-raise the cancellation afterwards."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    cancelled = False
    while not task.done():
        remaining = end - loop.time()
        if remaining <= 0:
            task.cancel()
            break
        try:
            await asyncio.wait({task}, timeout=remaining)
        except asyncio.CancelledError:
            cancelled = True
    if task.done() and not task.cancelled():
        task.exception()
    if cancelled:
        raise asyncio.CancelledError


__all__ = ["MqttLink", "SITE_LANE", "default_client_id", "tls_context"]
