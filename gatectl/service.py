"""The lane service: wires drivers, the authority and the journal to each lane core.

One ``Site`` per process holds the journal, the IO modules (shared by the lanes that use
them) and one ``LaneService`` per lane. A lane service owns an event queue; its loop
takes one event at a time, timestamps it, hands it to ``LaneCore.handle`` and carries
out the commands in order. The service decides nothing: every rule is in the core.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import structlog

from drivers.health import Health
from drivers.modbus_io import BusRegistry, IoModule, IoModuleError
from drivers.serial_device import CardReader, Weighbridge
from gatectl.authorities.base import AuthorityError, PassRequest
from gatectl.authorities.http_json import HttpJsonAuthority
from gatectl.config import LaneConfig, SiteConfig
from gatectl.journal import AuthorisationReplay, Journal, JournalError, OutboxItem, PendingEvent
from gatectl.lane.commands import (
    CommitAuthorisation,
    Command,
    ConfirmPassage,
    Display,
    Emit,
    Pulse,
    RequestRelease,
)
from gatectl.lane.core import LaneCore, LaneRules
from gatectl.ids import time_ordered_id
from gatectl.outbox import OutboxSender
from gatectl.lane.events import (
    ApprovalAccepted,
    ApprovalRefused,
    AuthorisationCommitted,
    AuthorisationRefused,
    CardRead,
    CoilWriteFailed,
    DeviceFault,
    DeviceRecovered,
    EmergencyAccount,
    Event,
    InputsSnapshot,
    ReleaseDecided,
    ReleaseFailed,
    Tick,
    WeightStable,
)

log = structlog.get_logger("gatectl.service")

#: Margin the core waits beyond the authority client's own timeout before holding.
DECISION_MARGIN = timedelta(seconds=1)
#: How often the daemon looks for orders the CLI left in the journal.
INBOX_POLL_S = 1.0
#: Lane id of site-wide events that belong to no configured lane.
SITE_LANE = "_site"


async def cancel_all(tasks) -> None:
    """Cancel ``tasks`` and wait for them, cancelling again any that swallowed it.

    Libraries waiting with ``asyncio.wait_for`` on Python 3.11 can lose a cancellation
    that lands as their future completes; a stop must not hang on that.
    """
    pending = {t for t in tasks if not t.done()}
    for _ in range(50):
        if not pending:
            return
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.2)
    log.error("tasks did not stop", tasks=[t.get_name() for t in pending])


def make_authority(cfg):
    """The client for one configured release authority."""
    if cfg.protocol == "http-json":
        return HttpJsonAuthority(cfg.url, cfg.timeout_ms)
    if cfg.protocol == "gather-xml":
        from gatectl.authorities.gather_xml import GatherXmlAuthority

        return GatherXmlAuthority(
            cfg.host, cfg.port, cfg.area_id, cfg.timeout_ms, list(cfg.release_codes), byte_order=cfg.byte_order
        )
    raise ValueError(f"unknown authority protocol {cfg.protocol!r}")


def make_io_modules(
    config: SiteConfig,
    points_by_module: dict[str, list[tuple[str, str, int]]],
    on_inputs: Callable[[str], Callable[[dict[int, bool], bool], None]],
    on_health: Callable[[str, Health, str], None],
    registry: BusRegistry | None = None,
) -> dict[str, IoModule]:
    """One driver per configured IO module, on one bus per physical line (a TCP gateway
    or an RS-485 port shared by several units), reading inputs 0..the highest used."""
    registry = registry if registry is not None else BusRegistry()
    modules: dict[str, IoModule] = {}
    for name, mod in config.io_modules.items():
        count = max((addr for _, _, addr in points_by_module.get(name, [])), default=0) + 1
        if mod.protocol == "modbus-tcp":
            bus = registry.tcp(mod.host, mod.port)
        else:
            bus = registry.rtu(mod.port, mod.baudrate, mod.parity, mod.stopbits)
        modules[name] = IoModule.on_bus(
            name,
            bus,
            mod.unit,
            mod.poll_ms,
            count,
            on_inputs=on_inputs(name),
            on_health=lambda h, reason, name=name: on_health(name, h, reason),
        )
    return modules


def lane_rules(lane: LaneConfig, site: SiteConfig) -> LaneRules:
    timeout_ms = 3000
    if lane.authority is not None:
        timeout_ms = site.authorities[lane.authority].timeout_ms
    return LaneRules(
        lane_id=lane.id,
        kind=lane.kind,
        has_authority=lane.authority is not None,
        has_weighbridge=lane.weighbridge is not None,
        has_exit_loop=lane.points.exit_loop is not None,
        min_vehicle_kg=lane.weighbridge.min_vehicle_kg if lane.weighbridge else 0.0,
        card_wait=timedelta(milliseconds=lane.barrier.card_wait_ms),
        decision_wait=timedelta(milliseconds=timeout_ms) + DECISION_MARGIN,
        travel_timeout=timedelta(milliseconds=lane.barrier.travel_timeout_ms),
        open_hours=None if lane.open_hours == "always" else tuple((w.start, w.end) for w in lane.open_hours),
        tz=site.site.tz,
        whitelist={v.card: v.curb_weight_kg for v in site.administrative_vehicles},
        curb_tolerance_kg=lane.curb_weight_tolerance_kg,
        staff={m.card: m.name for m in site.staff},
        barrier_devices=frozenset(
            getattr(lane.points, role).module for role in ("barrier_up", "barrier_down", "barrier_open", "barrier_close")
        ),
    )


class LaneService:
    def __init__(self, site: "Site", lane: LaneConfig) -> None:
        self.site = site
        self.config = lane
        self.id = lane.id
        self.log = log.bind(lane=lane.id)
        self.queue: asyncio.Queue[Event] = asyncio.Queue()
        recovered, last_lift = site.journal.recover(lane.id)
        self.core = LaneCore(
            lane_rules(lane, site.config),
            recovered=recovered,
            last_lift=last_lift,
            spot_check=site.journal.spot_checks(lane.id),
            new_id=time_ordered_id,
        )
        for a in site.journal.approvals_for(lane.id, site.now()):
            self.queue.put_nowait(
                ApprovalAccepted(a["approval_id"], a["trigger"], a["max_lifts"], a["valid_from"], a["valid_until"],
                                 a["lifts_used"], a["document"].get("plate"), restored=True)
            )
        self.authority = site.authorities.get(lane.authority) if lane.authority else None
        self._unwritten: list[PendingEvent] = []
        self._unsent: list[OutboxItem] = []
        self._journal_faulty = False
        self._unpublished: list[dict] = []
        self._outbox_added = False
        self._pulse_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task] = set()
        # Inputs per IO module until every module of the lane has reported once.
        self._first_inputs: dict[str, dict[str, bool]] = {}
        self._modules = sorted({p.module for _, p in lane.points.items() if p.kind == "di"})
        self._last_stable: float | None = None
        self.card_reader = CardReader(
            f"{lane.id}/card_reader",
            lane.card_reader.port,
            lane.card_reader.baudrate,
            lane.card_reader.format,
            on_card=lambda card: self.queue.put_nowait(CardRead(card)),
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

    # ---------------------------------------------------------- driver facts

    def _on_weight(self, kg: float, stable: bool) -> None:
        # The core wants each settled weight once, not every frame of it.
        if not stable:
            self._last_stable = None
            return
        if kg != self._last_stable:
            self._last_stable = kg
            self.queue.put_nowait(WeightStable(kg))

    def _device_health(self, device: str, health: Health, reason: str) -> None:
        if health is Health.FAULTY:
            self.queue.put_nowait(DeviceFault(device, reason))
        elif health is Health.OK:
            self.queue.put_nowait(DeviceRecovered(device))

    def on_module_inputs(self, module: str, values: dict[str, bool], snapshot: bool) -> None:
        """Inputs of one IO module, already mapped to this lane's point names."""
        if not self.core.running and module in self._modules:
            self._first_inputs.setdefault(module, {}).update(values)
            if set(self._first_inputs) >= set(self._modules):
                merged: dict[str, bool] = {}
                for part in self._first_inputs.values():
                    merged.update(part)
                self.queue.put_nowait(InputsSnapshot(merged))
            return
        # One event per poll: the core orders the edges it saw together.
        self.queue.put_nowait(InputsSnapshot(values))

    # ------------------------------------------------------------ the loop

    async def run(self) -> None:
        drivers = [self.card_reader.run()]
        if self.weighbridge is not None:
            drivers.append(self.weighbridge.run())
        for coro in drivers:
            self._spawn(coro)
        try:
            while True:
                item = await self._next_event()
                if isinstance(item, tuple):
                    event, done = item
                    try:
                        await self.handle(event)
                    except Exception as exc:
                        if not done.done():
                            done.set_exception(exc)
                        raise
                    if not done.done():
                        done.set_result(None)
                else:
                    await self.handle(item)
        finally:
            await cancel_all(self._tasks)

    async def submit(self, event: Event) -> None:
        """Hand the core an order from outside (API, MQTT) and wait until it was handled."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.queue.put_nowait((event, done))  # type: ignore[arg-type]
        await done

    async def _next_event(self) -> Event:
        deadline = self.core.next_deadline
        if deadline is None:
            return await self.queue.get()
        wait = (deadline - self.site.now()).total_seconds()
        if wait <= 0:
            return Tick()
        try:
            # (asyncio.timeout, not wait_for: no task per wait on the decision's path)
            async with asyncio.timeout(wait):
                return await self.queue.get()
        except TimeoutError:
            return Tick()

    async def handle(self, event: Event) -> None:
        if isinstance(event, CardRead) and event.open_elsewhere is None:
            event = CardRead(event.card, self.site.card_open_elsewhere(event.card, self.id))
        commands = self.core.handle(event, self.site.now())
        await self._execute(commands)

    async def _execute(self, commands: list[Command]) -> None:
        lifts: list[Pulse] = []
        for cmd in commands:
            if isinstance(cmd, Emit):
                self._unwritten.append(PendingEvent(cmd.type, cmd.ts, cmd.data))
            elif isinstance(cmd, ConfirmPassage):
                self._unsent.append(
                    OutboxItem(
                        f"authority:{self.config.authority}",
                        "pass_confirmation",
                        {
                            "request_id": cmd.request_id,
                            "instruction_id": cmd.instruction_id,
                            "lane_id": self.id,
                            "result": cmd.result,
                            "passed_at": cmd.passed_at.isoformat(),
                            "gross_weight_kg": cmd.gross_weight_kg,
                        },
                        cmd.passed_at,
                    )
                )
            elif isinstance(cmd, Display):
                self.log.info("display", text=cmd.text)
            elif isinstance(cmd, CommitAuthorisation):
                reply = self._commit(cmd)
                await self._execute(self.core.handle(reply, self.site.now()))
            elif isinstance(cmd, Pulse) and cmd.coil == "open":
                lifts.append(cmd)  # after this step's events (barrier.lifted follows it)
            elif isinstance(cmd, Pulse):
                self._flush()
                self._spawn(self._pulse(cmd))
            elif isinstance(cmd, RequestRelease):
                self._flush()
                self._spawn(self._ask(cmd))
        if lifts:
            # The authorisation is durable already (S6); the lift's own record is written
            # before the coil but made durable just after it, not in the way of the truck.
            self._flush(durable=False)
            for cmd in lifts:
                self._spawn(self._pulse(cmd))
        else:
            self._flush()
        self._publish()

    def _commit(self, cmd: CommitAuthorisation) -> Event:
        """S6: the authorisation is durable before any coil moves, or nothing moves."""
        try:
            written = self.site.journal.write(
                self.id,
                self._unwritten,
                authorisation=(cmd.kind, cmd.auth_id, cmd.passage_id, cmd.ts),
                outbox=self._unsent,
            )
        except AuthorisationReplay as exc:
            self.log.error("authorisation replay", kind=cmd.kind, id=cmd.auth_id)
            return AuthorisationRefused(cmd.kind, cmd.auth_id, "replay", str(exc))
        except JournalError as exc:
            self.log.error("authorisation not recorded", kind=cmd.kind, id=cmd.auth_id, error=str(exc))
            return AuthorisationRefused(cmd.kind, cmd.auth_id, "journal_error", str(exc))
        self._written(written)
        return AuthorisationCommitted(cmd.kind, cmd.auth_id)

    def _flush(self, durable: bool = True) -> None:
        if not self._unwritten and not self._unsent:
            return
        try:
            written = self.site.journal.write(self.id, self._unwritten, outbox=self._unsent, durable=durable)
        except JournalError as exc:
            # Keep them, in order, for the next write; the lane fails closed meanwhile.
            if not self._journal_faulty:
                self._journal_faulty = True
                self.log.error("journal write failed", error=str(exc), pending=len(self._unwritten))
                self.queue.put_nowait(DeviceFault("journal", str(exc)))
            return
        if self._journal_faulty:
            self._journal_faulty = False
            self.log.info("journal writable again")
            self.queue.put_nowait(DeviceRecovered("journal"))
        self._written(written)

    def _written(self, written: list[dict]) -> None:
        self._outbox_added = self._outbox_added or bool(self._unsent)
        self._unwritten, self._unsent = [], []
        self._unpublished.extend(written)

    def _publish(self) -> None:
        # Once the step's coils are on their way: screen, MQTT and records wait, a lift not.
        written, self._unpublished = self._unpublished, []
        if written:
            self.site.published(written)
        if self._outbox_added:
            self._outbox_added = False
            self.site.outbox_added()

    def _spawn(self, coro) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.log.error("lane task failed", error=repr(task.exception()))

    async def _pulse(self, cmd: Pulse) -> None:
        point = self.config.points.barrier_open if cmd.coil == "open" else self.config.points.barrier_close
        module = self.site.io[point.module]
        # One coil at a time per barrier: open and close must never be energised together.
        async with self._pulse_lock:
            try:
                await module.pulse(point.address, self.config.barrier.pulse_ms,
                                   on_energised=self._sync_journal if cmd.coil == "open" else None)
            except IoModuleError as exc:
                self.log.error("coil pulse failed", coil=cmd.coil, error=str(exc))
                # (The driver has reported the module faulty already; this says which pulse.)
                self.queue.put_nowait(CoilWriteFailed(point.module, cmd.coil))

    def _sync_journal(self) -> None:
        try:
            self.site.journal.sync()
        except OSError as exc:
            self.log.error("journal sync failed", error=str(exc))

    async def _ask(self, cmd: RequestRelease) -> None:
        assert self.authority is not None
        req = PassRequest(
            request_id=cmd.request_id,
            site_id=self.site.config.site.id,
            lane_id=self.id,
            channel_no=self.config.channel_no,
            direction=self.config.direction,
            lane_kind=self.config.kind,
            card_no=cmd.card,
            plate=None,
            gross_weight_kg=cmd.gross_weight_kg,
            captured_at=cmd.captured_at,
        )
        try:
            d = await self.authority.request(req)
        except AuthorityError as exc:
            self.queue.put_nowait(ReleaseFailed(cmd.request_id, exc.reason, exc.detail))
            return
        self.queue.put_nowait(
            ReleaseDecided(d.request_id, d.decision, d.instruction_id, d.form_id, d.hint, d.declared_weight_kg)
        )

    def snapshot(self) -> dict[str, Any]:
        snap = self.core.snapshot()
        snap["name"] = self.config.name
        snap["kind"] = self.config.kind
        snap["direction"] = self.config.direction
        devices: dict[str, Any] = {"card_reader": self.card_reader.counters}
        if self.weighbridge is not None:
            devices["weighbridge"] = self.weighbridge.counters
        for name in sorted({p.module for _, p in self.config.points.items()}):
            module = self.site.io[name]
            devices[name] = {"health": module.health.value if module.health else None, **module.counters}
        snap["devices"] = devices
        snap["spot_checks"] = {"hold_next": self.core.spot_hold_next, "fraction": self.core.spot_fraction}
        snap["open_now"] = self.core.is_open_at(self.site.now())
        snap["last_seq"] = self.site.journal.last_seq(self.id)
        return snap


class Site:
    """Everything one gatectl process runs."""

    def __init__(self, config: SiteConfig, now: Callable[[], datetime] | None = None) -> None:
        self.config = config
        self.tz = config.site.tz
        self._now = now
        self.journal = Journal(config.journal.path, config.site.id)
        self.authorities = {name: make_authority(auth) for name, auth in config.authorities.items()}
        self.outbox: dict[str, OutboxSender] = {}
        for name, auth in self.authorities.items():
            if any(lane.authority == name for lane in config.lanes):
                self.outbox[f"authority:{name}"] = OutboxSender(
                    self.journal, f"authority:{name}", self._confirmer(auth), self.now
                )
        self.lanes: dict[str, LaneService] = {lane.id: LaneService(self, lane) for lane in config.lanes}
        self.io: dict[str, IoModule] = {}
        self._subscribers: list[Callable[[list[dict]], None]] = []
        self._extra_tasks: list[tuple[Callable[[], Any], str]] = []
        self._io_points: dict[str, list[tuple[LaneService, int, str]]] = {}
        for lane in self.lanes.values():
            for role, point in lane.config.points.items():
                if point.kind == "di":
                    self._io_points.setdefault(point.module, []).append((lane, point.address, role))
        self.buses = BusRegistry()
        self.io = make_io_modules(
            config,
            {m: [(lane.id, role, addr) for lane, addr, role in pts] for m, pts in self._io_points.items()},
            lambda name: lambda values, snapshot: self._dispatch_inputs(name, values, snapshot),
            self._module_health,
            self.buses,
        )
        # A daemon killed inside a pulse left that coil on: off before the first poll.
        for lane in self.lanes.values():
            for point in (lane.config.points.barrier_open, lane.config.points.barrier_close):
                self.io[point.module].own_coils([point.address])

    def now(self) -> datetime:
        return self._now() if self._now is not None else datetime.now(self.tz)

    @staticmethod
    def _confirmer(authority):
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

        return deliver

    # ------------------------------------------------------ approvals (R10, R17)

    async def accept_approval(self, raw: bytes | str | dict, source: str) -> dict[str, Any]:
        """Verify an approval; journal and apply it if valid. Returns what happened:
        ``{"status": "accepted", ...}`` or ``{"status": "refused", "reason": ..., ...}``."""
        from gatectl.approvals import ApprovalRefused as Refused, lane_kinds, parse_document, verify

        now = self.now()
        approval_id = lane_id = None
        try:
            doc = parse_document(raw)
            approval_id = doc.get("approval_id") if isinstance(doc.get("approval_id"), str) else None
            lane_id = doc.get("lane_id") if isinstance(doc.get("lane_id"), str) else None
            used = self.journal.approval_uses(approval_id) if approval_id else 0
            verified = verify(doc, trust=self.config.trust, lanes=lane_kinds(self.config), now=now, lifts_used=used)
        except Refused as exc:
            result = {"status": "refused", "approval_id": approval_id, **exc.to_dict()}
            lane = self.lanes.get(lane_id) if lane_id else None
            event = ApprovalRefused(approval_id, exc.code, exc.message, source)
            if lane is not None:
                await lane.submit(event)
            else:
                self.record(
                    SITE_LANE,
                    "approval.refused",
                    {"approval_id": approval_id, "reason": exc.code, "message": exc.message, "source": source,
                     "lane": lane_id},
                    now,
                )
            log.warning("approval refused", approval_id=approval_id, reason=exc.code, source=source)
            return result
        a = verified.approval
        self.journal.store_approval(
            a.approval_id, a.lane_id, a.trigger, a.max_lifts, a.valid_from, a.valid_until,
            verified.document_json, now,
        )
        await self.lanes[a.lane_id].submit(
            ApprovalAccepted(a.approval_id, a.trigger, a.max_lifts, a.valid_from, a.valid_until, used, a.plate)
        )
        log.info("approval accepted", approval_id=a.approval_id, lane=a.lane_id, trigger=a.trigger, source=source)
        return {"status": "accepted", "approval_id": a.approval_id, "lane_id": a.lane_id, "trigger": a.trigger,
                "max_lifts": a.max_lifts, "lifts_used": used}

    async def add_emergency_account(self, payload: dict[str, Any], lane_id: str | None = None) -> dict[str, Any]:
        """R11: the guard's account (vehicle type, plate) of an emergency release."""
        passage_id = payload.get("passage_id")
        row = self.journal.passage(passage_id) if isinstance(passage_id, str) else None
        rows = [row] if row else []
        if not rows:
            return {"status": "refused", "reason": "unknown_passage", "message": f"no passage {passage_id!r}"}
        row = rows[0]
        if lane_id is not None and row["lane_id"] != lane_id:
            return {"status": "refused", "reason": "other_lane", "message": "that passage belongs to another lane"}
        if row["auth_kind"] != "emergency":
            return {"status": "refused", "reason": "not_emergency", "message": "that passage was no emergency release"}
        vehicle_type = payload.get("vehicle_type")
        if not isinstance(vehicle_type, str) or not vehicle_type.strip():
            return {"status": "refused", "reason": "malformed", "message": "vehicle_type is required"}
        await self.lanes[row["lane_id"]].submit(
            EmergencyAccount(passage_id, vehicle_type.strip(), payload.get("plate"), payload.get("note") or "",
                             payload.get("by") or "")
        )
        return {"status": "accepted", "passage_id": passage_id, "lane_id": row["lane_id"]}

    async def _poll_inbox(self) -> None:
        """Orders the CLI left in the journal for the running daemon."""
        while True:
            try:
                items = self.journal.inbox_pending()
            except JournalError as exc:
                log.error("inbox unreadable", error=str(exc))
                items = []
            for item in items:
                if item["kind"] == "approval":
                    result = await self.accept_approval(item["payload"]["document"], source="cli")
                elif item["kind"] == "emergency_account":
                    result = await self.add_emergency_account(item["payload"])
                else:
                    result = {"status": "refused", "reason": "unknown_kind"}
                self.journal.inbox_done(item["id"], self.now(), result)
            await asyncio.sleep(INBOX_POLL_S)

    def record(self, lane_id: str, type_: str, data: dict[str, Any], ts: datetime | None = None) -> dict[str, Any]:
        """Journal (and publish) one event that is a record, not a lane rule: an alarm
        acknowledged, an incident account, a fault ticket step, a handover, a ledger
        written. ``lane_id`` is a configured lane or ``SITE_LANE`` for site-wide records.
        Raises JournalError if it could not be recorded."""
        if lane_id != SITE_LANE and lane_id not in self.lanes:
            raise ValueError(f"unknown lane {lane_id!r}")
        written = self.journal.write(lane_id, [PendingEvent(type_, ts or self.now(), data)])
        self.published(written)
        return written[0]

    def add_task(self, factory: Callable[[], Any], name: str) -> None:
        """Run ``factory()`` (a coroutine) beside the lanes for as long as the site runs."""
        self._extra_tasks.append((factory, name))

    def outbox_added(self) -> None:
        for sender in self.outbox.values():
            sender.wake()

    def subscribe(self, callback: Callable[[list[dict]], None]) -> None:
        self._subscribers.append(callback)

    def published(self, events: list[dict]) -> None:
        for cb in self._subscribers:
            cb(events)

    @property
    def running(self) -> bool:
        return all(lane.core.running for lane in self.lanes.values())

    def card_open_elsewhere(self, card: str, lane_id: str) -> str | None:
        """S8 across lanes: the other lane whose open passage holds this card."""
        for other in self.lanes.values():
            p = other.core.passage
            if other.id != lane_id and p is not None and p.card == card:
                return other.id
        return None

    def _dispatch_inputs(self, module: str, values: dict[int, bool], snapshot: bool) -> None:
        per_lane: dict[str, tuple[LaneService, dict[str, bool]]] = {}
        for lane, address, role in self._io_points.get(module, []):
            if address in values:
                per_lane.setdefault(lane.id, (lane, {}))[1][role] = values[address]
        for lane, mapped in per_lane.values():
            lane.on_module_inputs(module, mapped, snapshot)

    def _module_health(self, module: str, health: Health, reason: str) -> None:
        # Every lane with any point (input or coil) on the module depends on it.
        for lane in self.lanes.values():
            if any(p.module == module for _, p in lane.config.points.items()):
                lane._device_health(module, health, reason)

    async def run(self, stop: asyncio.Event, started: Callable[[], None] | None = None) -> None:
        tasks = [asyncio.create_task(m.run(), name=f"io:{n}") for n, m in self.io.items()]
        tasks += [asyncio.create_task(s.run(), name=f"outbox:{t}") for t, s in self.outbox.items()]
        tasks.append(asyncio.create_task(self._poll_inbox(), name="inbox"))
        tasks += [asyncio.create_task(factory(), name=name) for factory, name in self._extra_tasks]
        tasks += [asyncio.create_task(lane.run(), name=f"lane:{lane.id}") for lane in self.lanes.values()]
        if started is not None:
            started()
        stopper = asyncio.create_task(stop.wait())
        try:
            done, _ = await asyncio.wait([stopper, *tasks], return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is not stopper and task.exception() is not None:
                    raise task.exception()
        finally:
            stopper.cancel()
            await cancel_all(tasks)
            self.buses.close_all()
            for auth in self.authorities.values():
                with contextlib.suppress(Exception):
                    await auth.close()
            self.journal.close()
