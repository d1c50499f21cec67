"""The zone central's ingest: every lane PC's topics in, every event once in PostgreSQL.

One ``Central`` per process. Its tasks:

- **mqtt**: one aiomqtt client under a fixed client id with a persistent session
  (``clean_session=False``, QoS 1), so what lane PCs publish while the central is away
  waits on the broker (in a shared group a clean session instead: see ``_client``). Per configured prefix filter ``P`` it subscribes to
  ``P/lanes/+/events`` and ``P/site/events`` (as ``$share/GROUP/...`` with
  ``shared_group``: instances share the events) and, never shared, ``P/lanes/+/state``
  and ``P/status`` (retained: every instance keeps the whole zone's view). Each event is
  checked (JSON object, bounded size, uuid ``event_id``, ``seq`` ≥ 1, ``site_id``, the
  topic's ``lane_id``, ``type``, ``ts`` with offset) inside paho's callback; junk is
  counted per reason and logged at a bounded rate, never stored. Good events go to the
  inbox; acknowledgements go out in groups, and are held while the inbox holds
  ``queue_max``: the broker then stops at its in-flight window and keeps the rest, so
  memory stays bounded whatever the backlog.
- **writer**: takes what arrived while the last transaction ran (at most ``batch_max``:
  batches grow with the load, a lone event waits for nothing) and stores it in
  one transaction (``Store.ingest``) in the database thread. A failing database keeps the
  batch and retries with backoff (one ERROR per outage); a batch PostgreSQL refuses as data
  (not as an outage) is stored event by event, and the refused ones are counted as junk.
- **gaps**: every ``gap_interval`` asks the store which lanes have a missing range older
  than ``gap_grace_s`` and no replay in flight, and publishes ``{prefix}/cmd/replay``
  ``{"lane_id", "from_seq", "to_seq"}`` (at most ``replay_max``, the lane's limit); the
  replayed events come back on the lane's events topic like any other. A lane first seen
  with ``last_seq`` N in its retained state and nothing stored is a gap 1..N: that is the
  backfill of a site whose events were published before the central existed.
- **states**: the retained lane states, saved every second (the latest of each lane).

An event is acknowledged to the broker once it is in the bounded queue (manual
acknowledgements), not once committed: a queue of events read and not yet committed is lost
from the broker when the process dies. The lane's journal still has them, and the gap they
leave (visible from the lane's later events or its retained ``last_seq``) is filled by
replay: the end-to-end promise rests on the lane journals, not on the broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import re
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

import aiomqtt
import psycopg
import structlog

from gatectl.central.config import ZoneConfig
from gatectl.central.store import Incoming, IngestResult, ReplayRequest, Store

log = structlog.get_logger("gatectl.central")

MAX_EVENT_BYTES = 64 * 1024
MAX_STATE_BYTES = 256 * 1024
_EVENTS = re.compile(r"^(?P<prefix>.+)/lanes/(?P<lane>[^/]+)/events$")
_SITE_EVENTS = re.compile(r"^(?P<prefix>.+)/site/events$")
_STATE = re.compile(r"^(?P<prefix>.+)/lanes/(?P<lane>[^/]+)/state$")
_STATUS = re.compile(r"^(?P<prefix>.+)/status$")
_SITE_ID = re.compile(r"^[a-z0-9-]{1,64}$")
SITE_LANE = "_site"
#: Acknowledgements are sent in groups of this many, or after this delay: one wake-up of
#: the socket writer for several. Below a broker's in-flight window per client
#: (Mosquitto: max_inflight_messages, 20 by default), so it never waits for them.
ACK_EVERY = 8
ACK_DELAY_S = 0.002


class Junk(ValueError):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def parse_event(prefix: str, lane: str, payload: bytes, received: float) -> Incoming:
    """One event from MQTT, checked; raises ``Junk`` with the reason."""
    if len(payload) > MAX_EVENT_BYTES:
        raise Junk("too_large", f"event larger than {MAX_EVENT_BYTES} bytes")
    try:
        text = payload.decode("utf-8")
        body = json.loads(text)
    except (UnicodeDecodeError, ValueError) as exc:
        raise Junk("malformed", f"not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise Junk("malformed", "an event is a JSON object")
    if "\\u0000" in text:
        raise Junk("malformed", "NUL characters are not stored")
    try:
        event_id = str(uuid.UUID(body["event_id"]))
        seq = body["seq"]
        site_id, lane_id, type_ = body["site_id"], body["lane_id"], body["type"]
        ts = datetime.fromisoformat(body["ts"])
    except KeyError as exc:
        raise Junk("incomplete", f"no {exc.args[0]}") from None
    except (TypeError, ValueError, AttributeError) as exc:
        raise Junk("invalid", f"bad event_id or ts: {exc}") from None
    if isinstance(seq, bool) or not isinstance(seq, int) or not 1 <= seq < 2**62:
        raise Junk("invalid", "seq must be a whole number >= 1")
    if not isinstance(site_id, str) or not _SITE_ID.match(site_id):
        raise Junk("invalid", "site_id must be lowercase letters, digits and dashes")
    if lane_id != lane:
        raise Junk("wrong_topic", f"lane_id {lane_id!r} published on the topic of lane {lane!r}")
    if not isinstance(type_, str) or not 0 < len(type_) <= 64:
        raise Junk("invalid", "type must be a short string")
    if ts.tzinfo is None:
        raise Junk("invalid", "ts must carry its UTC offset")
    return Incoming(event_id, ts, site_id, lane_id, seq, type_, text, prefix, received, body)


class _RateLog:
    """At most one log line per ``interval`` per key; the rest are counted in it."""

    def __init__(self, interval: float = 10.0) -> None:
        self.interval = interval
        self._last: dict[str, float] = {}
        self._suppressed: Counter[str] = Counter()

    def warning(self, key: str, what: str, /, **kw: Any) -> None:
        now = time.monotonic()
        if now - self._last.get(key, float("-inf")) >= self.interval:
            self._last[key] = now
            log.warning(what, suppressed=self._suppressed.pop(key, 0), **kw)
        else:
            self._suppressed[key] += 1


class _Inbox:
    """Events read and not yet stored, in arrival order; bounded by the acknowledgements
    (see ``Central._ack``), not by refusing: a message the broker sent is never dropped."""

    def __init__(self) -> None:
        self.events: list[Incoming] = []
        self.ready = asyncio.Event()

    def put(self, ev: Incoming) -> None:
        self.events.append(ev)
        self.ready.set()

    def take(self, most: int) -> list[Incoming]:
        batch = self.events[:most]
        del self.events[:most]
        if not self.events:
            self.ready.clear()
        return batch

    def qsize(self) -> int:
        return len(self.events)

    def empty(self) -> bool:
        return not self.events


class Central:
    """Ingest, gap repair, lane states and zone alarms for one instance. See the module."""

    def __init__(self, config: ZoneConfig, *, gap_interval: float = 0.5, state_interval: float = 1.0,
                 backoff_initial: float = 0.2, backoff_max: float = 5.0) -> None:
        self.config = config
        self.store = Store(config.database.url)
        self.db = ThreadPoolExecutor(1, thread_name_prefix="gatectl-central-db")
        self.queue = _Inbox()
        self.queue_max = config.ingest.queue_max
        # Acknowledgements not sent yet: (paho client, mid). Sent in groups (one wake-up of
        # the socket writer for several), and held while the inbox is full.
        self._acks: list[int] = []
        self._ack_client: Any = None
        self._ack_timer: asyncio.TimerHandle | None = None
        self._subscribing = False
        self._topics: dict[str, tuple[str, str] | None] = {}  # events topic -> (prefix, lane)
        self.gap_interval = gap_interval
        self.state_interval = state_interval
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.zone_topic = f"{config.mqtt.zone_topic_prefix}/alarms"

        # What this instance knows of the zone (retained messages: every instance sees all).
        self.states: dict[tuple[str, str], dict] = {}  # (site, lane) -> latest retained state
        self.state_prefix: dict[tuple[str, str], str] = {}
        self.online: dict[str, bool] = {}  # prefix -> retained status
        self.prefix_site: dict[str, str] = {}  # prefix -> site id (from events and states)
        self._pending_states: dict[tuple[str, str], tuple[str, str, str, dict, int | None]] = {}
        self._outbound: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue(maxsize=10_000)
        self._listeners: list[Callable[[str, Any], None]] = []
        self._ratelog = _RateLog()

        # Figures (metrics, tests, benches).
        self.counters: Counter[str] = Counter()
        self.junk: Counter[str] = Counter()
        self.lags: deque[float] = deque(maxlen=100_000)  # commit time - event ts, seconds
        self.contiguous: dict[tuple[str, str], int] = {}
        self.mqtt_connected = False
        self._client_now: aiomqtt.Client | None = None
        self.db_ok = False
        self._db_failing = False
        self._mqtt_failing = False

    # ------------------------------------------------------------------ listeners

    def listen(self, callback: Callable[[str, Any], None]) -> Callable[[], None]:
        """``callback(kind, data)`` on ``lanes`` (changed lane states), ``sites``,
        ``alarm`` (a new zone alarm or a lane's alarm event), ``completeness``."""
        self._listeners.append(callback)
        return lambda: self._listeners.remove(callback)

    def _emit(self, kind: str, data: Any) -> None:
        for cb in list(self._listeners):
            try:
                cb(kind, data)
            except Exception:  # noqa: BLE001 - a broken screen client must not stop ingest
                log.exception("listener failed")

    def site_of(self, prefix: str) -> str:
        return self.prefix_site.get(prefix) or prefix.rsplit("/", 1)[-1]

    async def in_db(self, fn: Callable, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.db, fn, *args)

    # ------------------------------------------------------------------ running

    async def start_db(self, timeout: float = 30.0) -> None:
        """Connect and migrate (retrying while the database starts)."""
        end = time.monotonic() + timeout
        while True:
            try:
                await self.in_db(self.store.connect)
                self.db_ok = True
                return
            except psycopg.OperationalError as exc:
                if time.monotonic() > end:
                    raise
                log.warning("database not reachable yet", error=str(exc).strip()[:300])
                await asyncio.sleep(1.0)

    async def run(self, stop: asyncio.Event) -> None:
        tasks = [asyncio.create_task(coro, name=name) for coro, name in (
            (self._mqtt_loop(), "central:mqtt"), (self._writer(), "central:writer"),
            (self._gaps(), "central:gaps"), (self._save_states(), "central:states"))]
        try:
            await stop.wait()
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self._drain_on_stop()
            await self.in_db(self.store.close)
            self.db.shutdown(wait=True)

    async def _drain_on_stop(self) -> None:
        """Store what was read already (briefly): a clean stop loses nothing it can keep."""
        batch = self.queue.take(len(self.queue.events))
        if batch:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await self._store_batch(batch)

    # ------------------------------------------------------------------ MQTT

    def _client(self) -> aiomqtt.Client:
        from gatectl.mqtt import tls_context

        cfg = self.config.mqtt
        client = aiomqtt.Client(
            cfg.host, cfg.port, identifier=cfg.client_id, username=cfg.username, password=cfg.password,
            tls_context=tls_context(cfg.tls) if cfg.tls is not None else None,
            # A broker keeps queueing a group's share for a dead member's persistent session
            # (Mosquitto does), so in a group each instance has a clean session: when one dies
            # its share goes to the others at once; what no instance was there for comes back
            # by replay from the lane journals.
            clean_session=cfg.shared_group is not None, keepalive=30, timeout=10,
        )
        client.pending_calls_threshold = 1000
        # paho acknowledges a QoS 1 message when it has read it, whatever the application
        # does with it; aiomqtt reads the socket whatever its queue holds. With manual
        # acknowledgements, a message is acknowledged once it is in the bounded queue, so a
        # store that falls behind stops the acknowledgements, and the broker (at most its
        # max_inflight_messages unacknowledged) stops sending: memory stays bounded.
        paho = client._client  # noqa: SLF001 - aiomqtt 2 has no option for what follows
        paho.manual_ack_set(True)
        # Events take a short way: checked and put in the inbox inside paho's callback, not
        # converted to aiomqtt messages and handed through its queue one task per message
        # (that and a socket-writer wake-up per acknowledgement cost more than the rest of
        # ingest). States and statuses go aiomqtt's way.
        generic = paho.on_message

        def on_message(paho_client: Any, userdata: Any, message: Any) -> None:
            try:
                handled = self._on_event(paho_client, message)
            except Exception:  # noqa: BLE001 - one odd message must not stop ingest
                self.junk["internal_error"] += 1
                log.exception("message not handled", topic=message.topic)
                self._ack(paho_client, message)
                return
            if not handled:
                generic(paho_client, userdata, message)

        paho.on_message = on_message
        # A persistent session delivers at once, before the subscriptions are renewed.
        self._acks, self._ack_client = [], paho
        return client

    def subscriptions(self) -> list[str]:
        group = self.config.mqtt.shared_group
        shared = f"$share/{group}/" if group else ""
        out = []
        for p in self.config.mqtt.prefixes:
            out += [f"{shared}{p}/lanes/+/events", f"{shared}{p}/site/events", f"{p}/lanes/+/state", f"{p}/status"]
        return out

    async def _mqtt_loop(self) -> None:
        backoff = self.backoff_initial
        while True:
            started = time.monotonic()
            try:
                async with self._client() as client:
                    # One SUBSCRIBE for all. A persistent session's backlog flows at once; its
                    # acknowledgements wait until the SUBACK is in (the broker then pauses at
                    # its in-flight window), or a large backlog can hold the SUBACK back past
                    # the timeout.
                    self._subscribing = True
                    await client.subscribe([(topic, 1) for topic in self.subscriptions()])
                    self._subscribing = False
                    self._flush_acks()
                    self.mqtt_connected = True
                    self._client_now = client
                    self.counters["mqtt_connects"] += 1
                    if self._mqtt_failing:
                        log.info("broker reachable again")
                        self._mqtt_failing = False
                    else:
                        log.info("connected to the broker", broker=f"{self.config.mqtt.host}:{self.config.mqtt.port}",
                                 client_id=self.config.mqtt.client_id, subscriptions=self.subscriptions())
                    sender = asyncio.create_task(self._send(client))
                    try:
                        async for message in client.messages:
                            try:
                                await self._on_message(message)
                            except Exception:  # noqa: BLE001 - one odd message must not stop ingest
                                self.junk["internal_error"] += 1
                                log.exception("message not handled", topic=message.topic.value)
                            if message.qos > 0:
                                client._client.ack(message.mid, message.qos)  # noqa: SLF001
                    finally:
                        sender.cancel()
                        with contextlib.suppress(BaseException):
                            await sender
            except aiomqtt.MqttError as exc:
                if not self._mqtt_failing:
                    self._mqtt_failing = True
                    log.error("broker connection lost", error=str(exc))
            finally:
                self.mqtt_connected = False
                self._client_now = None
                # Unacknowledged mids belong to that connection; the broker sends those
                # messages again on the next (persistent session) or they come by replay.
                self._acks, self._ack_client = [], None
            if time.monotonic() - started > 10:
                backoff = self.backoff_initial
            await asyncio.sleep(backoff * random.uniform(0.5, 1.0))
            backoff = min(backoff * 2, self.backoff_max)

    async def _send(self, client: aiomqtt.Client) -> None:
        while True:
            topic, payload = await self._outbound.get()
            try:
                await client.publish(topic, payload, qos=1)
            except aiomqtt.MqttError:
                with contextlib.suppress(asyncio.QueueFull):
                    self._outbound.put_nowait((topic, payload))  # after reconnect
                raise

    async def relay(self, topic: str, payload: bytes, timeout: float = 5.0) -> None:
        """Publish now and wait for the broker's PUBACK (raises ``aiomqtt.MqttError``
        when the broker is not reachable: the caller tells its client)."""
        client = self._client_now
        if client is None:
            raise aiomqtt.MqttError("the broker is not connected")
        await client.publish(topic, payload, qos=1, timeout=timeout)

    def prefix_of(self, site_id: str) -> str | None:
        for prefix in sorted(set(self.prefix_site) | set(self.online) | set(self.state_prefix.values())):
            if self.site_of(prefix) == site_id:
                return prefix
        return None

    def publish(self, topic: str, payload: dict) -> None:
        data = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
        try:
            self._outbound.put_nowait((topic, data))
        except asyncio.QueueFull:
            self.counters["outbound_dropped"] += 1

    def _on_event(self, paho_client: Any, message: Any) -> bool:
        """An event from paho's callback (the event loop's thread): checked, put in the
        inbox, its acknowledgement queued. False: not an events topic."""
        topic = message.topic
        where = self._topics.get(topic, False)
        if where is False:
            m = _EVENTS.match(topic) or _SITE_EVENTS.match(topic)
            where = None if m is None else (m["prefix"], m.groupdict().get("lane") or SITE_LANE)
            if len(self._topics) >= 100_000:
                self._topics.clear()  # bounded whatever topics arrive
            self._topics[topic] = where
        if where is None:
            return False
        prefix, lane = where
        self.counters["received"] += 1
        try:
            ev = parse_event(prefix, lane, message.payload, time.time())
        except Junk as exc:
            self.junk[exc.reason] += 1
            self._ratelog.warning(f"junk:{exc.reason}", "event refused", topic=topic, reason=exc.reason,
                                  message=str(exc))
            self._ack(paho_client, message)
            return True
        known = self.prefix_site.get(prefix)
        if known is None:
            self.prefix_site[prefix] = ev.site_id
        elif known != ev.site_id:
            self.junk["wrong_site"] += 1
            self._ratelog.warning("junk:wrong_site", "event refused", topic=topic, reason="wrong_site",
                                  message=f"site {ev.site_id!r} on the prefix of site {known!r}")
            self._ack(paho_client, message)
            return True
        self.queue.put(ev)
        self._ack(paho_client, message)
        return True

    def _ack(self, paho_client: Any, message: Any) -> None:
        if message.qos == 0 or paho_client is not self._ack_client:
            return
        self._acks.append(message.mid)
        if len(self._acks) >= ACK_EVERY:
            self._flush_acks()
        elif self._ack_timer is None:
            self._ack_timer = asyncio.get_running_loop().call_later(ACK_DELAY_S, self._flush_acks)

    def _flush_acks(self) -> None:
        """Send the queued acknowledgements, unless the inbox is full: then they wait for
        the writer to take a batch, the broker (at most its in-flight window unacknowledged
        per client) stops sending, and memory stays bounded whatever the backlog."""
        if self._ack_timer is not None:
            self._ack_timer.cancel()
            self._ack_timer = None
        if not self._acks or self._subscribing or self.queue.qsize() >= self.queue_max:
            return
        paho_client, mids = self._ack_client, self._acks
        self._acks = []
        if paho_client is None:
            return
        for mid in mids:
            paho_client.ack(mid, 1)

    async def _on_message(self, message: aiomqtt.Message) -> None:
        topic = message.topic.value
        payload = message.payload if isinstance(message.payload, bytes) else str(message.payload or "").encode()
        m = _STATE.match(topic)
        if m is not None:
            self._on_state(m["prefix"], m["lane"], payload)
            return
        m = _STATUS.match(topic)
        if m is not None:
            await self._on_status(m["prefix"], payload)
            return
        self.junk["unknown_topic"] += 1

    def _on_state(self, prefix: str, lane: str, payload: bytes) -> None:
        if not payload:
            return  # a retained state cleared
        try:
            if len(payload) > MAX_STATE_BYTES:
                raise ValueError("state too large")
            state = json.loads(payload)
            if not isinstance(state, dict):
                raise ValueError("a lane state is a JSON object")
        except ValueError as exc:
            self.junk["bad_state"] += 1
            self._ratelog.warning("junk:bad_state", "lane state refused", prefix=prefix, lane=lane, message=str(exc))
            return
        site = state.get("site_id") if isinstance(state.get("site_id"), str) else None
        if site is not None and _SITE_ID.match(site):
            self.prefix_site.setdefault(prefix, site)
        site = self.site_of(prefix)
        key = (site, lane)
        self.states[key] = state
        self.state_prefix[key] = prefix
        last_seq = state.get("last_seq")
        if isinstance(last_seq, bool) or not isinstance(last_seq, int) or last_seq < 0:
            last_seq = None
        self._pending_states[key] = (prefix, site, lane, state, last_seq)
        self._emit("lanes", {key: state})

    async def _on_status(self, prefix: str, payload: bytes) -> None:
        text = payload.decode("utf-8", errors="replace").strip()
        if text not in ("online", "offline"):
            self.junk["bad_status"] += 1
            return
        online = text == "online"
        self.online[prefix] = online
        site = self.site_of(prefix)
        self._emit("sites", {"prefix": prefix, "site_id": site, "online": online})
        try:
            alarm = await self.in_db(self.store.site_status, prefix, site, online)
        except psycopg.Error as exc:
            self._db_down(exc)
            return
        if alarm is not None:
            self._zone_alarm(alarm)

    def _zone_alarm(self, alarm: dict) -> None:
        self.counters["zone_alarms"] += 1
        log.warning("zone alarm", alarm=alarm["alarm"], sites=alarm["site_ids"])
        self.publish(self.zone_topic, {"zone_id": self.config.zone.id, **alarm})
        self._emit("alarm", alarm)

    # ------------------------------------------------------------------ storing

    async def _writer(self) -> None:
        batch_max = self.config.ingest.batch_max
        while True:
            await self.queue.ready.wait()
            # Whatever arrived while the last transaction ran is the next batch: batches
            # grow with the load, and a lone event waits for nothing.
            batch = self.queue.take(batch_max)
            self._flush_acks()  # room again in the inbox
            await self._store_batch(batch)

    async def _store_batch(self, batch: list[Incoming]) -> None:
        backoff = self.backoff_initial
        while True:
            try:
                result = await self.in_db(self.store.ingest, batch)
            except (psycopg.OperationalError, psycopg.errors.AdminShutdown, psycopg.InterfaceError,
                    psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure) as exc:
                self._db_down(exc)
                await asyncio.sleep(backoff * random.uniform(0.5, 1.0))
                backoff = min(backoff * 2, self.backoff_max)
                continue
            except psycopg.Error as exc:
                if len(batch) == 1:
                    self.junk["refused_by_database"] += 1
                    self._ratelog.warning("junk:db", "event refused by the database", error=str(exc).strip()[:300],
                                          event_id=batch[0].event_id)
                    return
                for ev in batch:  # find the one PostgreSQL will not take; store the rest
                    await self._store_batch([ev])
                return
            self._db_up()
            self._stored(batch, result)
            return

    def _db_down(self, exc: BaseException) -> None:
        self.db_ok = False
        if not self._db_failing:
            self._db_failing = True
            log.error("database unavailable; events wait (the broker keeps the rest)",
                      error=str(exc).strip()[:300], queued=self.queue.qsize())

    def _db_up(self) -> None:
        self.db_ok = True
        if self._db_failing:
            self._db_failing = False
            log.info("database reachable again")

    def _stored(self, batch: list[Incoming], result: IngestResult) -> None:
        self.counters["stored"] += result.stored
        self.counters["duplicates"] += result.duplicates
        self.counters["batches"] += 1
        at = result.committed_at
        self.lags.extend(at - ev.ts.timestamp() for ev in batch)
        changed = {k: v for k, v in result.lanes.items() if self.contiguous.get(k) != v}
        self.contiguous.update(result.lanes)
        if changed:
            self._emit("completeness", changed)
        for problem in result.fold_problems:
            self._ratelog.warning("fold", "event not folded into passages", problem=problem)
        for alarm in result.alarms:
            self._zone_alarm(alarm)
        for ev in batch:
            if ev.type == "alarm.raised":
                body = ev.data if ev.data is not None else json.loads(ev.body)
                self._emit("alarm", {"source": "lane", "event": body})

    # ------------------------------------------------------------------ gaps and states

    async def _gaps(self) -> None:
        cfg = self.config.ingest
        while True:
            await asyncio.sleep(self.gap_interval)
            try:
                requests: list[ReplayRequest] = await self.in_db(
                    self.store.plan_replays, cfg.gap_grace_s, cfg.replay_timeout_s, cfg.replay_max)
            except psycopg.Error as exc:
                self._db_down(exc)
                continue
            for r in requests:
                self.counters["replays_requested"] += 1
                log.info("replay requested", site=r.site_id, lane=r.lane_id, from_seq=r.from_seq, to_seq=r.to_seq)
                self.publish(f"{r.prefix}/cmd/replay", {"lane_id": r.lane_id, "from_seq": r.from_seq,
                                                        "to_seq": r.to_seq})

    async def _save_states(self) -> None:
        while True:
            await asyncio.sleep(self.state_interval)
            if not self._pending_states:
                continue
            pending, self._pending_states = self._pending_states, {}
            try:
                await self.in_db(self.store.save_states, list(pending.values()))
            except psycopg.Error as exc:
                self._db_down(exc)
                for k, v in pending.items():
                    self._pending_states.setdefault(k, v)
