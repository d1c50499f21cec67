"""The site: everything one gatectl process runs, and who owns which thread.

- **The control loop** (its own thread and asyncio loop) runs the lanes and nothing else:
  each lane's runtime and core (``gatectl.lane.runtime``), its card reader and
  weighbridge, the IO modules (``gatectl.io_routing``) and the release authorities. Its
  reaction to loops, limits and answers waits on no API request, MQTT message, ledger
  export or disk write.
- **The journal's writer thread** owns the SQLite write connection and commits every
  lane's appends in groups (``gatectl.journal``).
- **The service loop** (the thread that called ``Site.run``) runs everything around the
  lanes: the local API, the guard's screen, metrics, the MQTT link, the records, the
  ledger scheduler, the outbox senders and the orders' inbox (``gatectl.orders``).

They meet at a few points: orders reach a lane with ``Site.submit`` (on the control
loop), committed events reach the service side's subscribers (``Site.subscribe``) from
the writer thread, and each lane's view (``LaneService.snapshot``) is published by its
runtime after every step. The S8 card registry (``CardRegistry``) lives with the lanes.

``Site`` itself only builds all of this and runs and stops it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import structlog

from drivers.health import Health
from drivers.modbus_io import BusRegistry
from drivers.serial_device import CardReader, Weighbridge
from drivers.stopping import wait_through
from gatectl import events as ev
from gatectl.approvals import stored_countersigned
from gatectl.authorities.base import AuthorityError, PassRequest
from gatectl.authorities.gather_xml import GatherXmlAuthority
from gatectl.authorities.http_json import HttpJsonAuthority
from gatectl.config import LaneConfig, SiteConfig
from gatectl.config.models import SHARED_KINDS, WeeklyHours
from gatectl.events import Stamped
from gatectl.io_routing import IoRouting
from gatectl.heap import freeze_after_start
from gatectl.journal import Entry, Journal, JournalError
from gatectl.lane.commands import RequestRelease
from gatectl.lane.core import LaneCore, LaneRules
from gatectl.lane.hours import Schedule
from gatectl.lane.inputs import (
    ApprovalAccepted,
    CardRead,
    DeviceFault,
    DeviceRecovered,
    Input,
    ReleaseDecided,
    ReleaseFailed,
    WeightStable,
)
from gatectl.lane.passage import LaneRecord
from gatectl.lane.runtime import CardRegistry, LaneRuntime
from gatectl.ids import time_ordered_id
from gatectl.orders import SITE_LANE, Orders
from gatectl.outbox import OutboxSender

log = structlog.get_logger("gatectl.service")

#: Margin the core waits beyond the authority client's own timeout before holding.
DECISION_MARGIN = timedelta(seconds=1)
#: How often each loop's lag is sampled (the sleep whose overshoot is the lag).
LAG_SAMPLE_S = 0.05
#: A supervised service task that died is started again after this (doubling, capped).
RESTART_BACKOFF_S = (1.0, 30.0)
#: The interpreter's thread switch interval while the site runs (Python's default: 5 ms).
#: A thread waiting for the interpreter's lock waits at most about this long for a busy
#: thread to hand it over; the control loop and the journal writer wait for it at every
#: wake-up, and a reader thread paging through the journal takes and releases it at
#: every row, so it rarely falls free by itself (``docs/performance.md``, bench 8).
SWITCH_INTERVAL_S = 0.0005
#: How long ``cancel_all`` waits at most for the tasks it cancelled.
CANCEL_ALL_S = 10.0


async def cancel_all(tasks) -> None:
    """Cancel ``tasks`` and wait for them (``CANCEL_ALL_S`` at most), cancelling again any
    that swallowed it.

    Libraries waiting with ``asyncio.wait_for`` on Python 3.11 can lose a cancellation
    that lands as their future completes; a stop must not hang on that. A cancellation of
    this wait (a stop that repeats them, one level up) does not cut it short: the tasks
    finish their own clean-up (a serial port closing) first, and it is raised at the end.
    """
    pending = [t for t in tasks if not t.done()]
    for task in pending:
        task.cancel()
    cancelled = await wait_through(pending, CANCEL_ALL_S, recancel=pending)
    left = [t for t in pending if not t.done()]
    if left:
        log.error("tasks did not stop", tasks=[t.get_name() for t in left])
    if cancelled:
        raise asyncio.CancelledError


def make_authority(cfg):
    """The client for one configured release authority."""
    if cfg.protocol == "http-json":
        return HttpJsonAuthority(cfg.url, cfg.timeout_ms)
    if cfg.protocol == "gather-xml":
        return GatherXmlAuthority(
            cfg.host, cfg.port, cfg.area_id, cfg.timeout_ms, list(cfg.release_codes), byte_order=cfg.byte_order
        )
    raise ValueError(f"unknown authority protocol {cfg.protocol!r}")


def lane_authorities(lane: LaneConfig) -> dict[str | None, str]:
    """The authority a lane asks, by the kind asked (None: the lane's own)."""
    if lane.shared:
        return dict(lane.authorities or {})
    return {None: lane.authority} if lane.authority is not None else {}


def lane_schedule(lane: LaneConfig, site: SiteConfig) -> Schedule | None:
    """R2: the lane's open hours (None: always), with the site's holidays."""
    hours = lane.open_hours
    if hours == "always":
        return None
    holidays = frozenset(site.calendar.holidays)
    if isinstance(hours, WeeklyHours):
        return Schedule(tuple(tuple((w.start, w.end) for w in day) for day in hours.days), site.site.tz,
                        None if hours.holiday is None else tuple((w.start, w.end) for w in hours.holiday), holidays)
    return Schedule.daily(((w.start, w.end) for w in hours), site.site.tz, holidays)


def lane_rules(lane: LaneConfig, site: SiteConfig) -> LaneRules:
    timeout_ms = max((site.authorities[name].timeout_ms for name in lane_authorities(lane).values()), default=3000)
    barrier = lane.barrier
    weighs = lane.weighbridge is not None
    return LaneRules(
        lane_id=lane.id,
        kind=lane.kind,
        has_authority=bool(lane_authorities(lane)),
        has_weighbridge=weighs,
        has_exit_loop=lane.points.exit_loop is not None,
        min_vehicle_kg=lane.weighbridge.min_vehicle_kg if lane.weighbridge else 0.0,
        card_wait=timedelta(milliseconds=barrier.card_wait_ms),
        decision_wait=timedelta(milliseconds=timeout_ms) + DECISION_MARGIN,
        travel_timeout=timedelta(milliseconds=barrier.travel_timeout_ms),
        backout_wait=timedelta(milliseconds=barrier.backout_wait_ms),
        weigh_wait=timedelta(milliseconds=barrier.weigh_wait_ms),
        card_grace=timedelta(milliseconds=barrier.card_grace_ms),
        hours=lane_schedule(lane, site),
        whitelist={v.card: v.curb_weight_kg if weighs else None for v in site.administrative_vehicles},
        registered_plates={v.card: v.plate for v in site.administrative_vehicles},
        curb_tolerance_kg=lane.curb_weight_tolerance_kg,
        has_camera=lane.plate_camera is not None,
        plate_max_age=timedelta(milliseconds=lane.plate_camera.max_age_ms if lane.plate_camera else 30000),
        staff={m.card: m.name for m in site.staff},
        shared_kinds=SHARED_KINDS if lane.shared else (),
        barrier_devices=frozenset(
            getattr(lane.points, role).module for role in ("barrier_up", "barrier_down", "barrier_open", "barrier_close")
        ),
    )


class LaneAuthority:
    """A lane's release authorities (``AuthorityPort``): the core's request on the wire
    to the authority of the kind asked (one, on most lanes), the answer back as the core's
    input."""

    def __init__(self, clients: dict[str | None, Any], site_id: str, lane: LaneConfig) -> None:
        self.clients = clients
        self.site_id = site_id
        self.lane = lane

    async def ask(self, cmd: RequestRelease) -> ReleaseDecided | ReleaseFailed:
        lane = self.lane
        try:
            d = await self.clients[cmd.lane_kind].request(PassRequest(
                request_id=cmd.request_id, site_id=self.site_id, lane_id=lane.id, channel_no=lane.channel_no,
                direction=lane.direction, lane_kind=cmd.lane_kind or lane.kind, card_no=cmd.card, plate=cmd.plate,
                gross_weight_kg=cmd.gross_weight_kg, captured_at=cmd.captured_at,
            ))
        except AuthorityError as exc:
            return ReleaseFailed(cmd.request_id, exc.reason, exc.detail)
        return ReleaseDecided(d.request_id, d.decision, d.instruction_id, d.form_id, d.hint, d.declared_weight_kg)

    async def close(self) -> None:
        for client in self.clients.values():
            with contextlib.suppress(Exception):
                await client.close()


class LaneService:
    """One lane's wiring: its drivers, its runtime and core, and the view it publishes."""

    def __init__(self, site: Site, lane: LaneConfig) -> None:
        self.site = site
        self.config = lane
        self.id = lane.id
        self.restarts = 0
        self._coils = site.io.coils(lane)
        self._start_core()
        site.io.attach(lane, lambda values: self.runtime.feed_poll(values),
                       lambda module, h, reason: self._device_health(module, h, reason))
        self._last_stable: float | None = None
        self.card_reader = CardReader(
            f"{lane.id}/card_reader",
            lane.card_reader.port,
            lane.card_reader.baudrate,
            lane.card_reader.format,
            on_card=lambda card: self.runtime.feed(CardRead(card)),
            on_health=lambda h, reason: self._device_health("card_reader", h, reason),
            silence_s=None if lane.card_reader.silence_ms is None else lane.card_reader.silence_ms / 1000,
        )
        self.weighbridge: Weighbridge | None = None
        if lane.weighbridge is not None:
            self.weighbridge = Weighbridge(
                f"{lane.id}/weighbridge",
                lane.weighbridge.port,
                lane.weighbridge.baudrate,
                lane.weighbridge.format,
                lane.weighbridge.stable_samples,
                on_weight=self._on_weight,
                on_health=lambda h, reason: self._device_health("weighbridge", h, reason),
                silence_s=None if lane.weighbridge.silence_ms is None else lane.weighbridge.silence_ms / 1000,
            )
        self._modules = sorted({p.module for _, p in lane.points.items()})

    def _start_core(self, authority: LaneAuthority | None = None) -> None:
        """A core rebuilt from the journal (S7) and a runtime around it."""
        site, lane = self.site, self.config
        recovered, record = site.journal.recover(lane.id)
        record = _who_ordered(site.journal, record)
        self.core = LaneCore(lane_rules(lane, site.config), recovered=recovered, lane=record, new_id=time_ordered_id)
        if recovered is not None and recovered.card is not None:
            site.cards.observe(lane.id, ev.CardRead(card=recovered.card))
        self.runtime = LaneRuntime(
            self.core,
            journal=site.journal,
            coils=self._coils,
            authority=authority,  # made on the control loop (its connections live there)
            cards=site.cards,
            now=site.now,
            confirm_targets={kind: f"authority:{name}" for kind, name in lane_authorities(lane).items()},
            on_step=self._stepped,
            on_decision=lambda source, seconds: site.decided(lane.id, source, seconds),
        )
        for a in site.journal.approvals_for(lane.id, site.now()):
            self.runtime.feed(
                ApprovalAccepted(a["approval_id"], a["trigger"], a["max_lifts"], a["valid_from"], a["valid_until"],
                                 a["lifts_used"], a["document"].get("plate"), restored=True,
                                 countersigned=stored_countersigned(a["document"]))
            )
        self.view = self.core.snapshot()

    # ---------------------------------------------------------- driver facts

    def _on_weight(self, kg: float, stable: bool) -> None:
        # The core wants each settled weight once, not every frame of it.
        if not stable:
            self._last_stable = None
            return
        if kg != self._last_stable:
            self._last_stable = kg
            self.runtime.feed(WeightStable(kg))

    def _device_health(self, device: str, health: Health, reason: str) -> None:
        if health is Health.FAULTY:
            self.runtime.feed(DeviceFault(device, reason))
        elif health is Health.OK:
            self.runtime.feed(DeviceRecovered(device))

    def _stepped(self, runtime: LaneRuntime) -> None:
        # Published whole after each step: readers on other threads never see a core mid-step.
        self.view = self.core.snapshot()

    # ------------------------------------------------------------ running

    async def run(self) -> None:
        """The lane's drivers and runtime, on the control loop, until cancelled. A lane
        whose runtime fails (a gatectl bug) is started again from the journal and its last
        inputs, as after a crash (S7), without stopping the other lanes."""
        names = lane_authorities(self.config)
        if names:
            self.runtime.authority = LaneAuthority(
                {kind: make_authority(self.site.config.authorities[name]) for kind, name in names.items()},
                self.site.config.site.id, self.config)
        tasks = [asyncio.create_task(self.card_reader.run(), name=f"{self.id}:card_reader")]
        if self.weighbridge is not None:
            tasks.append(asyncio.create_task(self.weighbridge.run(), name=f"{self.id}:weighbridge"))
        backoff = RESTART_BACKOFF_S[0]
        try:
            while True:
                try:
                    await self.runtime.run()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - one lane's bug must not stop the others
                    await self._restart(exc, backoff)
                    backoff = min(backoff * 2, RESTART_BACKOFF_S[1])
        finally:
            try:
                await cancel_all(tasks)
            finally:
                authority = self.runtime.authority
                if authority is not None:
                    await authority.close()

    async def _restart(self, exc: BaseException, pause: float) -> None:
        self.restarts += 1
        log.error("lane runtime failed; starting the lane again from the journal", lane=self.id,
                  error=repr(exc), restarts=self.restarts, exc_info=(type(exc), exc, exc.__traceback__))
        old = self.runtime
        old.fail_pending(exc)
        inputs = dict(self.core.inputs)
        await asyncio.sleep(pause)
        # Everything the failed runtime handed the journal is committed before it is read back.
        with contextlib.suppress(JournalError):
            await asyncio.wrap_future(self.site.journal.append(self.id, []))
        self._start_core(old.authority)
        self.runtime.feed_poll(inputs)

    @property
    def running(self) -> bool:
        return self.core.running

    def snapshot(self) -> dict[str, Any]:
        """The lane as the API, MQTT and the screen show it (safe from any thread)."""
        snap = dict(self.view)
        snap["name"] = self.config.name
        snap["kind"] = self.config.kind
        snap["direction"] = self.config.direction
        devices: dict[str, Any] = {"card_reader": self.card_reader.counters}
        if self.weighbridge is not None:
            devices["weighbridge"] = self.weighbridge.counters
        for name in self._modules:
            module = self.site.io.modules[name]
            devices[name] = {"health": module.health.value if module.health else None, **module.counters}
        snap["devices"] = devices
        snap["spot_checks"] = {"hold_next": self.core.spot_hold_next, "fraction": self.core.spot_fraction}
        now = self.site.now()
        snap["open_now"] = self.core.is_open_at(now)
        # Open for some vehicle now, by the hours and customs' order (a shared lane: any kind).
        snap["open"] = self.core.open_at(now)
        snap["last_seq"] = self.site.journal.last_seq(self.id)
        return snap


def _who_ordered(journal: Journal, record: LaneRecord) -> LaneRecord:
    """``record`` with who gave the hours order and who started the drill in force (the
    lane's view shows them), read back from their events when the record lacks them: the
    ``lanes`` table keeps only the order and the drill themselves."""
    fields: dict[str, Any] = {}
    try:
        if record.hours_open is not None and not record.hours_by:
            last = _last_event(journal, record.lane_id, "hours.ordered")
            if last is not None and isinstance(last.event, ev.HoursOrderedEvent) and not last.event.clear:
                fields["hours_by"] = last.event.by
        if record.drill and record.drill_since is None:
            last = _last_event(journal, record.lane_id, "drill.started")
            if last is not None and isinstance(last.event, ev.DrillStarted):
                fields.update(drill_by=last.event.by, drill_note=last.event.note, drill_since=last.ts)
    except Exception as exc:  # noqa: BLE001 - only the view's names are missing; the lane starts
        log.warning("who ordered the lane's hours or drill is not known", lane=record.lane_id, error=repr(exc))
    return replace(record, **fields) if fields else record


def _last_event(journal: Journal, lane_id: str, type_: str) -> Stamped | None:
    row = journal.reader().execute(
        "SELECT body FROM events INDEXED BY events_type WHERE type = ? AND lane_id = ? ORDER BY seq DESC LIMIT 1",
        (type_, lane_id)).fetchone()
    return ev.loads(row[0]) if row is not None else None


class ControlLoop:
    """The lanes' own thread and event loop."""

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._main: asyncio.Task | None = None

    def start(self, main: Callable[[], Any]) -> None:
        def run() -> None:
            loop = asyncio.new_event_loop()
            self.loop = loop
            asyncio.set_event_loop(loop)
            try:
                self._main = loop.create_task(main(), name="control")
                self._ready.set()
                loop.run_until_complete(self._main)
            except BaseException:  # noqa: BLE001 - reported through the task's result
                pass
            finally:
                with contextlib.suppress(Exception):
                    loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._thread = threading.Thread(target=run, name="control-loop", daemon=True)
        self._thread.start()
        self._ready.wait()

    def call(self, fn: Callable[..., Any], *args: Any) -> None:
        assert self.loop is not None
        self.loop.call_soon_threadsafe(fn, *args)

    def run_coroutine(self, coro) -> concurrent.futures.Future:
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def stop(self) -> None:
        if self.loop is not None and self._main is not None and not self._main.done():
            self.loop.call_soon_threadsafe(self._main.cancel)

    def join(self, timeout: float = 30.0) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def result(self) -> BaseException | None:
        """Why the control loop ended, if not by being stopped."""
        main = self._main
        if main is None or not main.done() or main.cancelled():
            return None
        return main.exception()


class Site:
    """Everything one gatectl process runs. See the module docstring."""

    def __init__(self, config: SiteConfig, now: Callable[[], datetime] | None = None) -> None:
        self.config = config
        self.tz = config.site.tz
        self._now = now
        self.journal = Journal(config.journal.path, config.site.id)
        self.cards = CardRegistry()
        self.io = IoRouting(config, BusRegistry())
        self.lanes: dict[str, LaneService] = {lane.id: LaneService(self, lane) for lane in config.lanes}
        self.orders = Orders(self)
        self.outbox: dict[str, OutboxSender] = {}
        for name, auth in config.authorities.items():
            if any(name in lane_authorities(lane).values() for lane in config.lanes):
                self.outbox[f"authority:{name}"] = OutboxSender(
                    self.journal, f"authority:{name}", self._confirmer(auth), self.now
                )
        self.control = ControlLoop()
        self._subscribers: list[Callable[[list[Stamped]], None]] = []
        self._extra_tasks: list[tuple[Callable[[], Any], str]] = []
        self._service_loop: asyncio.AbstractEventLoop | None = None
        #: Observers of each loop's lag (``name``, seconds) and of decision latencies.
        self.lag_observers: list[Callable[[str, float], None]] = []
        self.decision_observers: list[Callable[[str, str, float], None]] = []
        self.journal.subscribe(self._committed)
        self.journal.on_health(self._journal_health)

    def now(self) -> datetime:
        return self._now() if self._now is not None else datetime.now(self.tz)

    @property
    def buses(self) -> BusRegistry:
        return self.io.buses

    @staticmethod
    def _confirmer(cfg):
        authority = make_authority(cfg)

        async def deliver(kind: str, payload: dict) -> None:
            if kind != "pass_confirmation":
                raise ValueError(f"cannot deliver {kind} to an authority")
            await authority.confirm(
                request_id=payload["request_id"],
                instruction_id=payload["instruction_id"],
                lane_id=payload["lane_id"],
                result=payload["result"],
                passed_at=datetime.fromisoformat(payload["passed_at"]),
                gross_weight_kg=payload["gross_weight_kg"],
            )

        deliver.close = authority.close  # type: ignore[attr-defined]
        return deliver

    # ------------------------------------------------------------ the lanes' side

    async def submit(self, lane_id: str, event: Input) -> None:
        """Hand a lane's core an order and wait until it was handled (from any loop)."""
        lane = self.lanes[lane_id]
        loop = self.control.loop
        if loop is None:
            raise RuntimeError("the lanes are not running")
        if loop is asyncio.get_running_loop():
            await lane.runtime.submit(event)
            return
        await asyncio.wrap_future(self.control.run_coroutine(lane.runtime.submit(event)))

    def decided(self, lane_id: str, source: str, seconds: float) -> None:
        for cb in self.decision_observers:
            cb(lane_id, source, seconds)

    def _journal_health(self, ok: bool, reason: str) -> None:
        """The journal stopped (or resumed) taking writes: every lane fails closed (S6)."""
        if self.control.loop is None:
            return
        for lane in self.lanes.values():
            event = DeviceRecovered("journal") if ok else DeviceFault("journal", reason)
            self.control.call(lane.runtime.feed, event)

    async def _control_main(self) -> None:
        io_tasks = [asyncio.create_task(m.run(), name=f"io:{n}") for n, m in self.io.modules.items()]
        lane_tasks = [asyncio.create_task(lane.run(), name=f"lane:{lane.id}") for lane in self.lanes.values()]
        tasks = [*io_tasks, *lane_tasks, asyncio.create_task(self._watch_lag("control"), name="lag:control")]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task.exception() is not None:
                    exc = task.exception()
                    log.error("control loop task ended", task=task.get_name(), error=repr(exc),
                              exc_info=(type(exc), exc, exc.__traceback__))
                    raise task.exception()  # type: ignore[misc]
        finally:
            # In this order: the lanes finish their pulses (a coil switched off) while the
            # IO modules still poll, whose loop switches off a coil a pulse could not;
            # then the modules stop; then their buses are let go. Each step even if the
            # one before was cancelled again (told to stop twice): it raises when done.
            try:
                await cancel_all(lane_tasks)
            finally:
                try:
                    await cancel_all(tasks)
                finally:
                    self.io.close()

    async def _watch_lag(self, name: str) -> None:
        """How late this loop wakes a task that asked to sleep: the time any input of
        the loop's waits before it is looked at."""
        loop = asyncio.get_running_loop()
        while True:
            start = loop.time()
            await asyncio.sleep(LAG_SAMPLE_S)
            lag = max(0.0, loop.time() - start - LAG_SAMPLE_S)
            for cb in self.lag_observers:
                cb(name, lag)

    # ------------------------------------------------------------ the service side

    def _committed(self, written: list[Stamped]) -> None:
        """In the writer's thread: hand the events to the service loop's subscribers."""
        loop = self._service_loop
        if loop is None or loop.is_closed():
            self._publish(written)
            return
        with contextlib.suppress(RuntimeError):  # the loop is closing: nobody listens any more
            loop.call_soon_threadsafe(self._publish, written)

    def _publish(self, written: list[Stamped]) -> None:
        if any(isinstance(s.event, (ev.PassageClosed, ev.LaneRecovered)) for s in written):
            self.outbox_added()  # a pass confirmation may be waiting
        for cb in self._subscribers:
            try:
                cb(written)
            except Exception:  # noqa: BLE001 - one subscriber must not starve the others
                log.exception("event subscriber failed", subscriber=getattr(cb, "__qualname__", repr(cb)))

    def subscribe(self, callback: Callable[[list[Stamped]], None]) -> None:
        """``callback(events)`` on the service loop after each commit, in commit order."""
        self._subscribers.append(callback)

    async def record(self, lane_id: str, event: ev.Event, ts: datetime | None = None) -> Stamped:
        """Journal one event that is a record, not a lane rule (an alarm acknowledged, a
        ledger written, a refused approval for no lane). ``lane_id`` is a configured lane
        or ``SITE_LANE``. Raises JournalError if it could not be recorded."""
        if lane_id != SITE_LANE and lane_id not in self.lanes:
            raise ValueError(f"unknown lane {lane_id!r}")
        written = await asyncio.wrap_future(self.journal.append(lane_id, [Entry(event, ts or self.now())]))
        return written[0]

    def add_task(self, factory: Callable[[], Any], name: str) -> None:
        """Run ``factory()`` (a coroutine) on the service loop for as long as the site
        runs; started again (after a pause) if it ever fails."""
        self._extra_tasks.append((factory, name))

    def outbox_added(self) -> None:
        for sender in self.outbox.values():
            sender.wake()

    @property
    def running(self) -> bool:
        return all(lane.core.running for lane in self.lanes.values())

    async def _supervise(self, factory: Callable[[], Any], name: str) -> None:
        """Keep a service task alive: a failure is logged and the task started again."""
        backoff = RESTART_BACKOFF_S[0]
        while True:
            started = time.monotonic()
            try:
                await factory()
                log.warning("service task ended; starting it again", task=name)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the lanes go on; the task comes back
                log.error("service task failed; starting it again", task=name, error=repr(exc),
                          exc_info=sys.exc_info())
            if time.monotonic() - started > 60:
                backoff = RESTART_BACKOFF_S[0]
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, RESTART_BACKOFF_S[1])

    async def run(self, stop: asyncio.Event, started: Callable[[], None] | None = None, *,
                  freeze_heap: bool = False) -> None:
        """Run until ``stop``. ``freeze_heap``: the process is this site's alone (``gatectl
        run``), so what start-up built may leave the garbage collector's view for good
        (``gatectl.heap``); a process that builds and drops sites must not."""
        self._service_loop = asyncio.get_running_loop()
        switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(min(switch_interval, SWITCH_INTERVAL_S))
        try:
            await self._run(stop, started, freeze_heap)
        finally:
            sys.setswitchinterval(switch_interval)

    async def _run(self, stop: asyncio.Event, started: Callable[[], None] | None, freeze_heap: bool) -> None:
        self.journal.start()
        self.control.start(self._control_main)
        jobs = [(s.run, f"outbox:{t}") for t, s in self.outbox.items()]
        jobs.append((self.orders.run, "inbox"))
        jobs.append((lambda: self._watch_lag("service"), "lag:service"))
        jobs += self._extra_tasks
        tasks = [asyncio.create_task(self._supervise(factory, name), name=name) for factory, name in jobs]
        control_done = asyncio.ensure_future(self._wait_control())
        if started is not None:
            started()
        if freeze_heap:
            freeze_after_start(asyncio.get_running_loop())
        stopper = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait([stopper, control_done], return_when=asyncio.FIRST_COMPLETED)
            if control_done.done() and self.control.result is not None:
                raise self.control.result
        finally:
            stopper.cancel()
            self.control.stop()
            await asyncio.to_thread(self.control.join)
            control_done.cancel()
            await cancel_all(tasks)
            for sender in self.outbox.values():
                with contextlib.suppress(Exception):
                    await sender.close()
            await asyncio.to_thread(self.journal.close)

    async def _wait_control(self) -> None:
        await asyncio.to_thread(self.control.join, None)


__all__ = ["Site", "LaneService", "LaneAuthority", "ControlLoop", "SITE_LANE", "cancel_all", "make_authority",
           "lane_rules", "JournalError"]
