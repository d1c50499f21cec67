"""The lane core: every rule of one checkpoint lane, sans-IO.

``LaneCore.handle(event, now) -> list[Command]`` is the only code that changes a lane's
state. It owns no clock, socket or task: the lane service feeds it timestamped events
(inputs, cards, weights, the authority's answers, the journal's answers, ticks) and
carries out the commands it returns, in order. That keeps one vehicle, one card, one
lift (R4, S1-S3) provable by reading this file and by hypothesis over random event
sequences (tests/core/test_core_stateful.py).

The happy path of one passage::

    IDLE --arrival loop--> PRESENT --card--> WEIGHING --stable weight--> DECIDING
      --release--> AUTHORISING --journal committed--> OPEN --vehicle cleared--> LOWERING
      --down limit--> IDLE

A vehicle that is not released goes to HELD and the lane waits for it to back out (R5,
R6). Lifts happen only from AUTHORISING, i.e. only after the journal has recorded the
authorisation as consumed (S6), and each authorisation is committed once (S1).
"""

from __future__ import annotations

import enum
import random
import uuid
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta, tzinfo
from typing import Callable, Mapping

from gatectl.lane.commands import (
    CommitAuthorisation,
    Command,
    ConfirmPassage,
    Display,
    Emit,
    Pulse,
    RequestRelease,
)
from gatectl.lane.errors import LaneProtocolError
from gatectl.lane.events import (
    INPUT_POINTS,
    AuthorisationCommitted,
    AuthorisationRefused,
    CardRead,
    CoilWriteFailed,
    DeviceFault,
    DeviceRecovered,
    Event,
    InputChanged,
    InputsSnapshot,
    Recovered,
    ReleaseDecided,
    ReleaseFailed,
    SpotCheckOrdered,
    ApprovalAccepted,
    ApprovalRefused,
    EmergencyAccount,
    Tick,
    WeightStable,
)


class LaneState(enum.StrEnum):
    STARTING = "starting"  # waiting for the first reading of the inputs
    IDLE = "idle"  # barrier down, no vehicle
    PRESENT = "present"  # a vehicle is on the arrival loop, no card yet
    WEIGHING = "weighing"  # card read, waiting for a stable weight
    DECIDING = "deciding"  # one release request outstanding
    AUTHORISING = "authorising"  # the journal is recording the authorisation
    OPEN = "open"  # lifted under an authorisation; the vehicle has not cleared
    LOWERING = "lowering"  # lower commanded, waiting for the down limit
    HELD = "held"  # not released: waiting for the vehicle to back out


S = LaneState

#: Legal state changes. ``_goto`` refuses anything else: a wrong move is a gatectl bug.
TRANSITIONS: dict[LaneState, frozenset[LaneState]] = {
    S.STARTING: frozenset({S.IDLE, S.PRESENT, S.WEIGHING, S.DECIDING, S.OPEN, S.HELD}),
    S.IDLE: frozenset({S.PRESENT, S.AUTHORISING}),
    S.PRESENT: frozenset({S.WEIGHING, S.DECIDING, S.HELD, S.IDLE, S.AUTHORISING}),
    S.WEIGHING: frozenset({S.DECIDING, S.HELD, S.IDLE, S.AUTHORISING}),
    S.DECIDING: frozenset({S.AUTHORISING, S.HELD, S.IDLE}),
    S.AUTHORISING: frozenset({S.OPEN, S.HELD, S.IDLE}),
    S.OPEN: frozenset({S.LOWERING, S.HELD}),
    S.LOWERING: frozenset({S.OPEN, S.IDLE, S.PRESENT, S.AUTHORISING}),
    S.HELD: frozenset({S.IDLE, S.AUTHORISING}),
}

GOODS_KINDS = frozenset({"bonded", "ecommerce_9610", "non_bonded"})

TEXT_WELCOME = "欢迎通行，请停车刷卡"
TEXT_CARD = "请刷IC卡"
TEXT_WEIGHING = "正在称重，请停稳"
TEXT_DECIDING = "正在核验，请稍候"
TEXT_RELEASED = "核放通过，请通行"
TEXT_INSPECTION = "请驶入待检区，打开箱门等候海关查验"
TEXT_NO_ANSWER = "海关系统无应答，暂不放行"
TEXT_FAULT = "设备故障，暂停自动放行，请联系值班人员"
TEXT_NO_CARD = "未读到IC卡，暂不放行"
TEXT_NO_WEIGHT = "未能稳定称重，暂不放行"
TEXT_NO_AUTHORITY = "本通道未配置放行系统，暂不放行"
TEXT_EMERGENCY = "特种车辆紧急放行"
TEXT_ONE_BY_ONE = "请勿跟车，一车一杆"
TEXT_FORCED = "闯卡报警！已通知海关及园区管理方"
TEXT_INTERRUPTED = "抬杆中断，请联系值班人员"
TEXT_CLOSED = "本通道现为非开放时间，暂停自动放行"
TEXT_GUARD = "请联系值班保安"

HOLD_TEXTS = {
    "no_authority": TEXT_NO_AUTHORITY,
    "device_fault": TEXT_FAULT,
    "journal_error": TEXT_FAULT,
    "instruction_replay": "放行指令已使用过，不予重复抬杆",
    "no_card": TEXT_NO_CARD,
    "no_stable_weight": TEXT_NO_WEIGHT,
    "lift_interrupted": TEXT_INTERRUPTED,
    "forced_passage": TEXT_FORCED,
    "closed_hours": TEXT_CLOSED,
    "not_registered": "未登记车辆，暂不放行",
    "admin_overweight": "行政车辆严禁夹带货物，车重超出登记整备质量",
    "not_staff": "非登记人员卡，暂不放行",
    "spot_check": "海关抽查",
}


@dataclass(frozen=True, slots=True)
class LaneRules:
    """What the core needs to know about its lane, taken from the config."""

    lane_id: str
    kind: str
    has_authority: bool = True
    has_weighbridge: bool = True
    has_exit_loop: bool = True
    min_vehicle_kg: float = 500.0
    card_wait: timedelta = timedelta(seconds=60)
    #: How long the core waits for the authority before holding (the client's own
    #: timeout plus a margin, so the client's answer normally comes first).
    decision_wait: timedelta = timedelta(seconds=4)
    travel_timeout: timedelta = timedelta(seconds=6)
    #: A lifted vehicle off the arrival loop that reaches no other loop in this time
    #: has backed out, and the barrier lowers.
    backout_wait: timedelta = timedelta(seconds=5)
    #: A vehicle with its card read but no stable weight after this is held.
    weigh_wait: timedelta = timedelta(seconds=60)
    #: A card read just before the vehicle reaches the arrival loop still counts.
    card_grace: timedelta = timedelta(seconds=5)
    #: R2: daily windows (minutes from midnight, site time, end excluded, may run past
    #: midnight) when the lane releases automatically; None means always.
    open_hours: tuple[tuple[int, int], ...] | None = None
    #: Site time zone for open hours; ``now`` is converted to it.
    tz: tzinfo | None = None
    #: R7: administrative lanes release registered cards: card -> curb weight (kg).
    whitelist: Mapping[str, float] = field(default_factory=dict)
    curb_tolerance_kg: float = 300.0
    #: Personnel lanes release staff cards: card -> name.
    staff: Mapping[str, str] = field(default_factory=dict)
    #: IO modules carrying the barrier's coils and limit switches: while one is faulty
    #: the lane cannot see the arm, so travel is not timed (a blind timeout would blame
    #: the barrier for the module's fault).
    barrier_devices: frozenset[str] = frozenset()


@dataclass(slots=True)
class Passage:
    """One vehicle's attempt to pass the lane."""

    passage_id: str
    opened_at: datetime
    card: str | None = None
    weight_kg: float | None = None
    request_id: str | None = None
    decision: str | None = None
    hint: str | None = None
    authorisation: tuple[str, str] | None = None
    lifted: bool = False
    hold_reason: str | None = None
    forced: bool = False  # went through the barrier line without a lift (S4)
    left_scale: bool = False  # off the arrival loop (and the weighbridge) since weighed
    instruction_id: str | None = None
    refused_cards: set[str] = field(default_factory=set)


@dataclass(slots=True)
class Approval:
    """An accepted approval and the uses spent of it (R10, R17)."""

    approval_id: str
    trigger: str
    max_lifts: int
    valid_from: datetime
    valid_until: datetime
    used: int = 0
    plate: str | None = None


@dataclass(slots=True)
class Lift:
    """The barrier's current authorised opening; ends when it is down again."""

    authorisation: tuple[str, str]
    outcome: str  # outcome of the passage if the vehicle clears: passed | emergency | manual
    entered: bool = False  # a vehicle reached the safety or exit loop
    exit_seen: bool = False
    vehicles: int = 0  # vehicles counted through under this lift (S3)
    tailgating_raised: bool = False


def _new_id() -> str:
    return str(uuid.uuid4())


class LaneCore:
    """One lane's state machine. Not thread-safe; one caller at a time."""

    def __init__(
        self,
        rules: LaneRules,
        recovered: Recovered | None = None,
        last_lift: tuple[str, str] | None = None,
        new_id: Callable[[], str] = _new_id,
        spot_check: tuple[int, float] = (0, 0.0),
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.rules = rules
        self.state = S.STARTING
        self.inputs: dict[str, bool] = {p: False for p in INPUT_POINTS}
        self.passage: Passage | None = None
        self.lift: Lift | None = None
        self.faults: dict[str, str] = {}
        self.display = ""
        self.last_weight_kg: float | None = None
        self._new_id = new_id
        self._recovered = recovered
        self._last_lift = last_lift
        self._pending_card: tuple[CardRead, datetime] | None = None
        self._leaving_card: str | None = None
        self._deferred: list[InputChanged] = []
        # The arm reached the up limit since the last pulse: only then is losing it a fault.
        self._up_reached = False
        self.spot_hold_next, self.spot_fraction = spot_check
        self.approvals: dict[str, Approval] = {}
        self._rand = rand
        self._hours_deadline: datetime | None = None
        self._pending_outcome = "passed"
        self._deadline: datetime | None = None  # state deadline (card wait, decision)
        self._travel_deadline: datetime | None = None
        # A barrier pulse that may not have reached the barrier, settled when its module
        # answers again (``_resume_barrier``).
        self._failed_coil: str | None = None
        self._out: list[Command] = []
        self._now: datetime | None = None

    # ------------------------------------------------------------------ public

    @property
    def next_deadline(self) -> datetime | None:
        """When the core next wants a ``Tick``, if ever."""
        times = [t for t in (self._deadline, self._travel_deadline, self._hours_deadline) if t is not None]
        if self._pending_card is not None:
            times.append(self._pending_card[1] + self.rules.card_grace)
        return min(times) if times else None

    @property
    def running(self) -> bool:
        return self.state is not S.STARTING

    def handle(self, event: Event, now: datetime) -> list[Command]:
        if now.tzinfo is None:
            raise LaneProtocolError("now must be timezone-aware")
        self._out = []
        self._now = now
        handler = self._HANDLERS.get(type(event))
        if handler is None:
            raise LaneProtocolError(f"no rule for {type(event).__name__}")
        handler(self, event)
        if self.state in (S.IDLE, S.HELD):
            self._remote_lift()
        out, self._out = self._out, []
        return out

    def snapshot(self) -> dict:
        """The lane's state as the local API and MQTT show it."""
        p = self.passage
        return {
            "lane_id": self.rules.lane_id,
            "state": self.state.value,
            "display": self.display,
            "inputs": dict(self.inputs),
            "faults": dict(self.faults),
            "passage": None
            if p is None
            else {
                "passage_id": p.passage_id,
                "opened_at": p.opened_at.isoformat(),
                "card": p.card,
                "weight_kg": p.weight_kg,
                "decision": p.decision,
                "hint": p.hint,
                "authorisation": _auth_json(p.authorisation),
                "hold_reason": p.hold_reason,
            },
            "lift": None
            if self.lift is None
            else {
                "authorisation": _auth_json(self.lift.authorisation),
                "outcome": self.lift.outcome,
                "vehicles": self.lift.vehicles,
            },
        }

    # ------------------------------------------------------------- plumbing

    def _emit(self, type_: str, **data) -> None:
        assert self._now is not None
        if self.passage is not None and "passage_id" not in data:
            data["passage_id"] = self.passage.passage_id
        self._out.append(Emit(type_, self._now, data))

    def _alarm(self, alarm: str, **data) -> None:
        self._emit("alarm.raised", alarm=alarm, **data)

    def _show(self, text: str) -> None:
        if text != self.display:
            self.display = text
            self._out.append(Display(text))

    def _goto(self, new: LaneState) -> None:
        if new is self.state:
            return
        if new not in TRANSITIONS[self.state]:
            raise LaneProtocolError(f"illegal lane transition {self.state} -> {new}")
        self.state = new
        self._deadline = None

    @property
    def _lift_in_progress(self) -> bool:
        return self.state in (S.OPEN, S.LOWERING)

    def _vehicle_loops_clear(self) -> bool:
        return not self.inputs["safety_loop"] and not self.inputs["exit_loop"]

    # ------------------------------------------------------------- passages

    def _open_passage(self) -> None:
        assert self._now is not None and self.passage is None
        self.passage = Passage(passage_id=self._new_id(), opened_at=self._now)
        self._leaving_card = None
        self._emit("passage.opened", card=None)
        self._goto(S.PRESENT)
        self._deadline = self._now + self.rules.card_wait
        self._show(TEXT_CARD)
        if self._pending_card is not None:
            read, seen = self._pending_card
            self._pending_card = None
            if self._now - seen <= self.rules.card_grace:
                self._on_card(read)

    def _close_passage(self, outcome: str, **data) -> None:
        p = self.passage
        assert p is not None
        if p.hold_reason and "reason" not in data and outcome == "held":
            data["reason"] = p.hold_reason
        if p.decision == "release" and p.request_id is not None and self._now is not None:
            # CONTRACT 3.1: tell the authority what became of its release, via the outbox.
            self._out.append(
                ConfirmPassage(
                    request_id=p.request_id,
                    instruction_id=p.instruction_id,
                    result="passed" if outcome in ("passed", "emergency", "manual") else "not_passed",
                    passed_at=self._now,
                    gross_weight_kg=p.weight_kg,
                )
            )
        self._emit(
            "passage.closed",
            outcome=outcome,
            card=p.card,
            gross_weight_kg=p.weight_kg,
            decision=p.decision,
            authorisation=_auth_json(p.authorisation),
            **data,
        )
        if p.card is not None:
            # Its card may still be read as it drives or backs away: it is nobody's next card.
            self._leaving_card = p.card
        self.passage = None

    def _to_idle(self) -> None:
        self._goto(S.IDLE)
        self._show_idle()
        if self.inputs["arrival_loop"]:
            self._open_passage()

    def is_open_at(self, now: datetime) -> bool:
        """R2: whether the lane releases automatically at ``now``."""
        hours = self.rules.open_hours
        if hours is None:
            return True
        local = now.astimezone(self.rules.tz) if self.rules.tz is not None else now
        minute = local.hour * 60 + local.minute
        return any(
            (start <= minute < end) if start < end else (minute >= start or minute < end) for start, end in hours
        )

    def _next_hours_change(self, now: datetime) -> datetime | None:
        hours = self.rules.open_hours
        if hours is None:
            return None
        local = now.astimezone(self.rules.tz) if self.rules.tz is not None else now
        minute = local.hour * 60 + local.minute
        bounds = sorted({b % 1440 for w in hours for b in w})
        later = [b for b in bounds if b > minute]
        day = local.date() if later else local.date() + timedelta(days=1)
        b = later[0] if later else bounds[0]
        return datetime.combine(day, time(b // 60, b % 60), tzinfo=local.tzinfo)

    def _accept_card(self, card: str) -> None:
        p = self.passage
        assert p is not None and p.card is None and self._now is not None
        p.card = card
        self._emit("card.read", card=card)
        self._deadline = None
        if self.rules.has_weighbridge:
            self._goto(S.WEIGHING)
            self._deadline = self._now + self.rules.weigh_wait
            self._show(TEXT_WEIGHING)
            if "weighbridge" in self.faults:
                self._hold("device_fault")
            elif self.last_weight_kg is not None and self.last_weight_kg >= self.rules.min_vehicle_kg:
                self._weight_ready(self.last_weight_kg)
        else:
            self._decide()

    def _weight_ready(self, kg: float) -> None:
        p = self.passage
        assert p is not None
        p.weight_kg = kg
        # A weight is one vehicle's: the next one must be weighed afresh.
        self.last_weight_kg = None
        self._emit("weight.stable", gross_weight_kg=kg)
        self._decide()

    def _decide(self) -> None:
        """Card (and weight) known: who says whether this vehicle may pass (R1)?"""
        p = self.passage
        assert p is not None and p.card is not None and self._now is not None
        if not self.is_open_at(self._now):
            self._hold("closed_hours")  # R2: nothing is released automatically
            return
        kind = self.rules.kind
        if kind == "administrative":
            curb = self.rules.whitelist.get(p.card)
            if curb is None:
                self._local_decision("hold", "not_registered")
            elif p.weight_kg is not None and p.weight_kg > curb + self.rules.curb_tolerance_kg:
                # R7: an administrative vehicle heavier than registered carries goods.
                self._local_decision("hold", "admin_overweight", curb_weight_kg=curb)
            else:
                self._local_decision("release", "whitelist")
        elif kind == "personnel":
            if p.card in self.rules.staff:
                self._local_decision("release", "staff_card", name=self.rules.staff[p.card])
            else:
                self._local_decision("hold", "not_staff")
        else:
            self._request_release()

    def _local_decision(self, decision: str, basis: str, **data) -> None:
        """A decision the lane takes from its own lists (administrative, personnel)."""
        p = self.passage
        assert p is not None
        p.decision = decision
        self._emit("release.decided", decision=decision, source="local", basis=basis, **data)
        if decision == "release":
            # One authorisation per passage: the list match itself, never reusable.
            self._grant(basis, p.passage_id)
        else:
            self._hold(basis)

    def _grant(self, kind: str, auth_id: str) -> None:
        """Released by the lane's authority: last checks before the lift."""
        p = self.passage
        assert p is not None
        assert self._now is not None
        if p.forced:
            self._hold("forced_passage")
        elif not self.is_open_at(self._now):
            self._hold("closed_hours")  # R2: the answer came after closing time
        elif self.faults:
            self._hold("device_fault")  # S5: fail closed while a device is faulty
        elif self._spot_check_due():
            self._hold("spot_check")
        else:
            self._authorise(kind, auth_id, "passed")

    def _spot_check_due(self) -> bool:
        """R7: customs ordered the next N, or a random share, of released vehicles held."""
        if self.spot_hold_next > 0:
            self.spot_hold_next -= 1
            self._emit("spot_check.applied", remaining=self.spot_hold_next, fraction=self.spot_fraction)
            return True
        if self.spot_fraction > 0:
            draw = self._rand()
            if draw < self.spot_fraction:
                self._emit("spot_check.applied", remaining=0, fraction=self.spot_fraction, draw=draw)
                return True
        return False

    def _request_release(self) -> None:
        p = self.passage
        assert p is not None and p.card is not None and p.request_id is None
        assert self._now is not None
        if not self.rules.has_authority:
            self._hold("no_authority")
            return
        p.request_id = self._new_id()
        self._goto(S.DECIDING)
        self._deadline = self._now + self.rules.decision_wait
        self._show(TEXT_DECIDING)
        self._emit("release.requested", request_id=p.request_id, card=p.card, gross_weight_kg=p.weight_kg)
        self._out.append(
            RequestRelease(
                request_id=p.request_id,
                passage_id=p.passage_id,
                card=p.card,
                gross_weight_kg=p.weight_kg,
                captured_at=self._now,
            )
        )

    def _hold_text(self, reason: str) -> str:
        p = self.passage
        if reason in ("hold", "inspect", "deny"):
            text = (p.hint if p is not None else None) or "不予放行"
        elif reason.startswith("authority_"):
            text = TEXT_NO_ANSWER
        else:
            text = HOLD_TEXTS.get(reason, TEXT_FAULT)
        return f"{text}；{TEXT_GUARD if self.rules.kind == 'personnel' else TEXT_INSPECTION}"

    def _hold(self, reason: str) -> None:
        """Not released: show why, send the vehicle to the inspection area, wait for it to back out."""
        p = self.passage
        assert p is not None
        p.hold_reason = reason
        self._goto(S.HELD)
        self._show(self._hold_text(reason))
        self._emit("passage.held", reason=reason, display=self.display)
        if not self.inputs["arrival_loop"]:
            self._close_passage("held")
            self._to_idle()

    def _show_idle(self) -> None:
        assert self._now is not None
        if self.rules.open_hours is not None:
            self._hours_deadline = self._next_hours_change(self._now)
        if self.faults:
            self._show(TEXT_FAULT)
        elif not self.is_open_at(self._now):
            self._show(TEXT_CLOSED)
        else:
            self._show(TEXT_WELCOME)

    # ---------------------------------------------------------------- lifts

    def _authorise(self, kind: str, auth_id: str, outcome: str) -> None:
        p = self.passage
        assert p is not None and self._now is not None
        p.authorisation = (kind, auth_id)
        self._goto(S.AUTHORISING)
        self._pending_outcome = outcome
        self._out.append(CommitAuthorisation(kind, auth_id, p.passage_id, self._now))

    def _lift(self) -> None:
        p = self.passage
        assert p is not None and p.authorisation is not None and self._now is not None
        self.lift = Lift(authorisation=p.authorisation, outcome=self._pending_outcome)
        p.lifted = True
        self._goto(S.OPEN)
        self._out.append(Pulse("open", p.authorisation, "lift"))
        self._up_reached = bool(self.inputs["barrier_up"])
        self._emit("barrier.lifted", authorisation=_auth_json(p.authorisation), reason="lift")
        self._show(TEXT_EMERGENCY if self.lift.outcome == "emergency" else (p.hint or TEXT_RELEASED))
        if not self.inputs["barrier_up"]:
            self._travel_deadline = self._now + self.rules.travel_timeout
        self._check_open()

    def _lower(self) -> None:
        """Lower; never while the safety loop is occupied (S2)."""
        assert self.lift is not None and self._now is not None
        if self.inputs["safety_loop"]:
            return
        self._goto(S.LOWERING)
        self._out.append(Pulse("close", self.lift.authorisation, "lower"))
        self._up_reached = False
        self._emit("barrier.lowered", authorisation=_auth_json(self.lift.authorisation))
        self._show(TEXT_ONE_BY_ONE)
        if self.inputs["barrier_down"] and not self.inputs["barrier_up"]:
            # Already down (it never rose, or fell by itself): no edge will come to wait for.
            self._travel_deadline = None
            self.lift = None
            self._to_idle()
            return
        self._travel_deadline = self._now + self.rules.travel_timeout

    def _check_open(self) -> None:
        """While lifted: lower once the vehicle has cleared (S3), or once nobody is on
        any loop for ``backout_wait`` (it reversed away, or never came)."""
        lift = self.lift
        assert lift is not None and self._now is not None and self.state is S.OPEN
        passed = lift.entered and self._vehicle_loops_clear() and (lift.exit_seen or not self.rules.has_exit_loop)
        if passed:
            self._deadline = None
            if self.passage is not None:
                self._close_passage(lift.outcome)
            self._lower()
        elif self._vehicle_loops_clear() and not self.inputs["arrival_loop"]:
            if self._deadline is None:
                self._deadline = self._now + self.rules.backout_wait
        else:
            self._deadline = None

    def _count_vehicle_out(self) -> None:
        """A vehicle left the loops under the current lift (S3)."""
        lift = self.lift
        assert lift is not None
        lift.vehicles += 1
        if lift.vehicles >= 2 and not lift.tailgating_raised:
            lift.tailgating_raised = True
            self._alarm("tailgating", authorisation=_auth_json(lift.authorisation), vehicles=lift.vehicles)

    # ------------------------------------------------------------- handlers

    def _on_snapshot(self, ev: InputsSnapshot) -> None:
        if self.state is S.STARTING:
            self.inputs.update(ev.values)
            self._start()
            return
        # Changes seen in one poll: a limit switch released first, then rising edges,
        # then the rest. A vehicle reaches the next loop before it leaves the last, so
        # "arrival off, safety on" is a vehicle moving forward, not one backing out; an
        # arm leaves one limit before it reaches the other, so "up off, down on" (as after
        # the IO module was away) is a completed travel, not both limits at once.
        changes = sorted(
            ((p, v) for p, v in ev.values.items() if self.inputs.get(p) != v), key=_edge_order
        )
        for point, value in changes:
            self._on_input(InputChanged(point, value))

    def _start(self) -> None:
        """First reading of the inputs: rebuild from the journal and the live inputs (S7)."""
        assert self._now is not None
        rec, self._recovered = self._recovered, None
        self._up_reached = self.inputs["barrier_up"]
        barrier_not_down = not self.inputs["barrier_down"] or self.inputs["barrier_up"]
        if self.inputs["barrier_down"] and self.inputs["barrier_up"]:
            self._barrier_fault("both_limits")
        if rec is None:
            if barrier_not_down:
                # Up (or moving) with no open passage: lower it once nobody is under it.
                if self._last_lift is None:
                    self._barrier_fault("up_without_lift")
                auth = self._last_lift or ("none", "barrier_found_up")
                self.lift = Lift(authorisation=auth, outcome="passed", entered=True)
                self.lift.exit_seen = True
                self._goto(S.OPEN)
                self._check_open()
                if self.state is S.OPEN and self._vehicle_loops_clear():
                    self._lower()
                return
            self._to_idle()
            return
        p = Passage(
            passage_id=rec.passage_id,
            opened_at=datetime.fromisoformat(rec.opened_at),
            card=rec.card,
            weight_kg=rec.weight_kg,
            request_id=rec.request_id,
            decision=rec.decision,
            hint=rec.hint,
            authorisation=rec.authorisation,
            lifted=rec.lifted,
            hold_reason=rec.hold_reason,
            instruction_id=rec.instruction_id,
        )
        self.passage = p
        self._emit("lane.recovered", card=p.card, authorisation=_auth_json(p.authorisation))
        if p.authorisation is not None:
            # Consumed before the crash: it never lifts again, whatever happened to the coil.
            outcome = {"emergency": "emergency", "approval": "manual"}.get(p.authorisation[0], "passed")
            p.lifted = True
            if rec.entered and barrier_not_down and self._vehicle_loops_clear() and not self.inputs["arrival_loop"]:
                # Seen under the boom before the crash, on no loop now: it went through
                # unseen. Waiting for "its" vehicle would let the next one pass on this lift.
                self.lift = Lift(authorisation=p.authorisation, outcome=outcome, entered=True)
                self.lift.exit_seen = True
                self._goto(S.OPEN)
                self._close_passage(outcome, reason="recovered_unobserved")
                self._lower()
                return
            if barrier_not_down or not self._vehicle_loops_clear():
                self.lift = Lift(authorisation=p.authorisation, outcome=outcome)
                self.lift.entered = not self._vehicle_loops_clear()
                self.lift.exit_seen = self.inputs["exit_loop"]
                self._goto(S.OPEN)
                self._show(TEXT_RELEASED)
                self._check_open()
                if self.state is S.OPEN and self._deadline is not None and rec.last_seen_at is not None:
                    # Nobody about: the wait for it to come counts from when it was last
                    # seen, not from this restart (restarts in a row must not keep the
                    # boom up for whoever comes next).
                    seen = datetime.fromisoformat(rec.last_seen_at) + self.rules.backout_wait
                    self._deadline = min(self._deadline, seen)
            elif self.inputs["arrival_loop"]:
                # Barrier down with the vehicle still before it: the lift was lost.
                self._goto(S.HELD)
                p.hold_reason = "lift_interrupted"
                self._show(TEXT_INTERRUPTED)
                self._emit("passage.held", reason="lift_interrupted", display=self.display)
            else:
                # Nobody there and the barrier down: whatever happened was not seen.
                self._close_passage("backed_out", reason="recovered_unobserved")
                self._to_idle()
            return
        if p.hold_reason is not None:
            self._goto(S.HELD)
            self._show(self._hold_text(p.hold_reason))
            if not self.inputs["arrival_loop"]:
                self._close_passage("held")
                self._to_idle()
            return
        if not self.inputs["arrival_loop"]:
            self._close_passage("backed_out", reason="daemon_restart")
            self._to_idle()
            return
        # Decided nothing yet: ask again. The journal still guarantees one lift per
        # instruction, so a second answer naming the same instruction is safe.
        if p.decision == "release" and p.request_id is not None:
            # Released, but the crash came before the authorisation was committed: that
            # release was never used, and the authority hears so (CONTRACT 3.1).
            self._out.append(ConfirmPassage(p.request_id, p.instruction_id, "not_passed", self._now, p.weight_kg))
        p.request_id = None
        p.decision = None
        p.hint = None
        self._goto(S.PRESENT)
        if p.card is None:
            self._deadline = self._now + self.rules.card_wait
            self._show(TEXT_CARD)
            return
        if self.rules.has_weighbridge and p.weight_kg is None:
            self._goto(S.WEIGHING)
            self._deadline = self._now + self.rules.weigh_wait
            self._show(TEXT_WEIGHING)
            return
        self._decide()

    def _on_input(self, ev: InputChanged) -> None:
        if self.state is S.STARTING:
            self.inputs[ev.point] = ev.value
            return
        if self.state is S.AUTHORISING:
            # The journal's answer comes next; what else this poll saw waits for it.
            self._deferred.append(ev)
            return
        before = self.inputs[ev.point]
        if before == ev.value:
            return
        self.inputs[ev.point] = ev.value
        point, on = ev.point, ev.value
        if point in ("arrival_loop", "safety_loop", "exit_loop"):
            self._emit("loop.changed", loop=point, occupied=on)
        if point == "arrival_loop":
            self._on_arrival(on)
        elif point in ("safety_loop", "exit_loop"):
            self._on_vehicle_loop(point, on)
        elif point in ("barrier_up", "barrier_down"):
            self._on_limit(point, on)
        elif point == "manual_lift_button" and on:
            self._on_manual_lift()
        elif point == "emergency_button" and on:
            self._on_emergency()

    def _on_arrival(self, on: bool) -> None:
        st = self.state
        if not on and self.passage is not None:
            self.passage.left_scale = True
        if st is S.OPEN:
            self._check_open()
            return
        if on:
            if st is S.IDLE:
                self._open_passage()
            return
        # The vehicle left the arrival loop.
        p = self.passage
        if p is not None and p.forced:
            if self._vehicle_loops_clear():
                self._close_passage("forced")
                self._to_idle()
        elif st in (S.PRESENT, S.WEIGHING, S.DECIDING):
            self._close_passage("backed_out")
            self._to_idle()
        elif st is S.HELD:
            self._close_passage("held")
            self._to_idle()

    def _on_vehicle_loop(self, point: str, on: bool) -> None:
        st = self.state
        if st is S.OPEN:
            lift = self.lift
            assert lift is not None
            if on:
                lift.entered = True
                lift.exit_seen = lift.exit_seen or point == "exit_loop"
            elif point == ("exit_loop" if self.rules.has_exit_loop else "safety_loop"):
                self._count_vehicle_out()
            self._check_open()
            return
        if st is S.LOWERING:
            lift = self.lift
            assert lift is not None and self._now is not None
            if not on:
                return
            if point == "safety_loop":
                # S2: something is under the boom while it comes down: rise again.
                self._goto(S.OPEN)
                self._out.append(Pulse("open", lift.authorisation, "safety_reverse"))
                self._up_reached = False
                self._emit("barrier.lifted", authorisation=_auth_json(lift.authorisation), reason="safety_reverse")
                self._travel_deadline = self._now + self.rules.travel_timeout
            lift.entered = True
            lift.exit_seen = lift.exit_seen or point == "exit_loop"
            # The lift's own vehicle had cleared, so this is a second vehicle (S3).
            if not lift.tailgating_raised:
                lift.tailgating_raised = True
                self._alarm("tailgating", authorisation=_auth_json(lift.authorisation), vehicles=2)
            return
        p = self.passage
        if on:
            other = "exit_loop" if point == "safety_loop" else "safety_loop"
            if not self.inputs[other]:
                # S4, R8: at the barrier line with no lift in progress.
                self._alarm("forced_passage", loop=point, state=st.value)
                self._show(TEXT_FORCED)
            if p is not None and st is not S.AUTHORISING:
                p.forced = True
            return
        if p is not None and p.forced and self._vehicle_loops_clear():
            # Through (or backed off the line): either way its passage is over; a vehicle
            # now on the arrival loop is another one and gets a passage of its own.
            self._close_passage("forced")
            self._to_idle()

    def _on_limit(self, point: str, on: bool) -> None:
        """Barrier supervision (R9): the limit switches must agree with what was commanded."""
        self._emit("barrier.position", limit=point, on=on)
        up, down = self.inputs["barrier_up"], self.inputs["barrier_down"]
        st = self.state
        if point == "barrier_up" and on and st is S.OPEN:
            self._travel_deadline = None
            self._up_reached = True
        if up and down:
            self._barrier_fault("both_limits")
        elif point == "barrier_up" and not on and st is S.OPEN and self._up_reached:
            # Nobody commanded a lower: the arm broke, or was pushed down.
            self._barrier_fault("up_lost")
        elif point == "barrier_down" and not on and st not in (S.OPEN, S.LOWERING, S.AUTHORISING):
            # Nobody commanded a lift: the arm was raised by hand, or broken off.
            self._barrier_fault("down_lost")
        elif self._barrier_sane():
            self._clear_fault("barrier")
        if point == "barrier_down" and on and st is S.LOWERING and not up:
            self._travel_deadline = None
            self.lift = None
            self._to_idle()

    def _barrier_sane(self) -> bool:
        """The limit switches show the barrier where the lane last sent it."""
        up, down = self.inputs["barrier_up"], self.inputs["barrier_down"]
        if self.state is S.OPEN:
            return up and not down
        return down and not up

    def _barrier_fault(self, reason: str) -> None:
        """R9: alarm, open an incident, and fail the lane closed until the barrier is sane."""
        if "barrier" in self.faults:
            return
        self.faults["barrier"] = reason
        self._emit("fault.opened", device="barrier", reason=reason)
        self._alarm("barrier_fault", reason=reason)
        self._emit("incident.opened", incident_id=self._new_id(), kind="barrier_fault", reason=reason)
        if self.state is S.IDLE:
            self._show_idle()

    # ------------------------------------------------------------ approvals

    def _usable(self, approval: Approval) -> bool:
        assert self._now is not None
        return approval.valid_from <= self._now < approval.valid_until and approval.used < approval.max_lifts

    def _on_approval(self, ev: ApprovalAccepted) -> None:
        known = ev.approval_id in self.approvals
        self.approvals[ev.approval_id] = Approval(
            ev.approval_id, ev.trigger, ev.max_lifts, ev.valid_from, ev.valid_until, ev.lifts_used, ev.plate
        )
        if not known and not ev.restored:
            self._emit(
                "approval.accepted",
                approval_id=ev.approval_id,
                trigger=ev.trigger,
                max_lifts=ev.max_lifts,
                lifts_used=ev.lifts_used,
                valid_from=ev.valid_from.isoformat(),
                valid_until=ev.valid_until.isoformat(),
                plate=ev.plate,
            )

    def _on_approval_refused(self, ev: ApprovalRefused) -> None:
        self._emit(
            "approval.refused", approval_id=ev.approval_id, reason=ev.reason, message=ev.message, source=ev.source
        )

    def _on_emergency_account(self, ev: EmergencyAccount) -> None:
        self._emit(
            "emergency.account",
            passage_id=ev.passage_id,
            vehicle_type=ev.vehicle_type,
            plate=ev.plate,
            note=ev.note,
            by=ev.by,
        )

    def _on_manual_lift(self) -> None:
        """R10: the guard's button lifts once per use of a valid approval, and only then."""
        st = self.state
        panel = [a for a in self.approvals.values() if a.trigger == "panel"]
        usable = sorted((a for a in panel if self._usable(a)), key=lambda a: a.valid_until)
        if not usable:
            reason = "no_valid_approval"
            if panel:
                assert self._now is not None
                if all(a.used >= a.max_lifts for a in panel):
                    reason = "approval_exhausted"
                elif all(self._now >= a.valid_until for a in panel):
                    reason = "approval_expired"
                elif all(self._now < a.valid_from for a in panel):
                    reason = "approval_not_yet_valid"
            self._emit("manual_lift.refused", reason=reason)
            return
        if st in (S.OPEN, S.AUTHORISING):
            self._emit("manual_lift.refused", reason="lift_in_progress")
            return
        self._lift_under_approval(usable[0], "panel")

    def _remote_lift(self) -> None:
        """R17: a remote approval lifts once, when the lane is idle or holding a vehicle."""
        assert self._now is not None
        for a in list(self.approvals.values()):
            if a.trigger != "remote":
                continue
            if self._now >= a.valid_until or a.used >= 1:
                del self.approvals[a.approval_id]
                if a.used == 0:
                    self._emit("approval.expired", approval_id=a.approval_id)
                continue
            if self._usable(a) and self.state in (S.IDLE, S.HELD):
                self._lift_under_approval(a, "remote")
                return

    def _lift_under_approval(self, a: Approval, how: str) -> None:
        assert self._now is not None
        if self.passage is None:
            self.passage = Passage(passage_id=self._new_id(), opened_at=self._now)
            self._emit("passage.opened", card=None, approval_id=a.approval_id)
            if self.state is S.LOWERING:
                self.lift = None
        p = self.passage
        p.hold_reason = None  # (a late answer of the authority is ignored: no longer DECIDING)
        a.used += 1  # a refused commit still spends the use: the journal holds it, or it failed
        self._emit("approval.used", approval_id=a.approval_id, use=a.used, max_lifts=a.max_lifts, trigger=how)
        self._authorise("approval", f"{a.approval_id}#{a.used}", "manual")

    def _on_emergency(self) -> None:
        """R11: lift at once, hold up until the vehicle clears, alarm."""
        st = self.state
        if st is S.OPEN:
            # Already up: it stays up until the vehicle under it clears.
            self._alarm("emergency_release", authorisation=None, note="barrier_already_up")
            return
        if st is S.AUTHORISING:
            return
        auth_id = self._new_id()
        if self.passage is None:
            assert self._now is not None
            self.passage = Passage(passage_id=self._new_id(), opened_at=self._now)
            self._emit("passage.opened", card=None, emergency=True)
            if st is S.LOWERING:
                self.lift = None
        p = self.passage
        p.hold_reason = None  # (a late answer of the authority is ignored: no longer DECIDING)
        self._alarm("emergency_release", authorisation={"kind": "emergency", "id": auth_id}, account_pending=True)
        self._authorise("emergency", auth_id, "emergency")

    def _on_card(self, ev: CardRead) -> None:
        st = self.state
        p = self.passage
        if p is not None and p.card == ev.card:
            return  # S8: a re-read of the card already in this passage changes nothing
        if st in (S.IDLE, S.OPEN, S.LOWERING, S.STARTING):
            if ev.card == self._leaving_card:
                return  # the vehicle that just went through, still in the reader's field
            # Readers often fire a moment before the loop does, or while the vehicle
            # ahead is still passing: keep it briefly for the next passage.
            assert self._now is not None
            self._pending_card = (ev, self._now)
            return
        if p is None:
            return
        if st is not S.PRESENT or p.card is not None:
            if ev.card not in p.refused_cards:
                p.refused_cards.add(ev.card)
                self._emit("card.refused", card=ev.card, reason="lane_busy")
            return
        if ev.open_elsewhere is not None:
            if ev.card not in p.refused_cards:
                p.refused_cards.add(ev.card)
                self._emit("card.refused", card=ev.card, reason="open_elsewhere", lane=ev.open_elsewhere)
                self._show(f"该卡在{ev.open_elsewhere}通道尚有未完成通行，请联系值班人员")
            return
        self._accept_card(ev.card)

    def _on_weight(self, ev: WeightStable) -> None:
        p = self.passage
        if p is not None and p.weight_kg is not None and not p.left_scale and ev.kg >= self.rules.min_vehicle_kg:
            return  # the weighed vehicle settling again, not the next one
        self.last_weight_kg = ev.kg
        if self.state is S.WEIGHING and ev.kg >= self.rules.min_vehicle_kg:
            self._weight_ready(ev.kg)

    def _on_decided(self, ev: ReleaseDecided) -> None:
        p = self.passage
        if self.state is not S.DECIDING or p is None or p.request_id != ev.request_id:
            return  # an answer to a request this lane no longer waits for
        p.decision = ev.decision
        p.hint = ev.hint
        self._emit(
            "release.decided",
            source="authority",
            request_id=ev.request_id,
            decision=ev.decision,
            instruction_id=ev.instruction_id,
            form_id=ev.form_id,
            hint=ev.hint,
            declared_weight_kg=ev.declared_weight_kg,
        )
        if ev.decision != "release":
            self._hold(ev.decision)
            return
        assert ev.instruction_id is not None
        p.instruction_id = ev.instruction_id
        self._grant("release_instruction", ev.instruction_id)

    def _on_failed(self, ev: ReleaseFailed) -> None:
        p = self.passage
        if self.state is not S.DECIDING or p is None or p.request_id != ev.request_id:
            return
        self._authority_failed(ev.reason, ev.detail)

    def _authority_failed(self, reason: str, detail: str) -> None:
        p = self.passage
        assert p is not None
        self._emit("release.failed", request_id=p.request_id, reason=reason, detail=detail)
        self._alarm("authority_unreachable", reason=reason, detail=detail)
        self._hold(f"authority_{reason}")

    def _on_committed(self, ev: AuthorisationCommitted) -> None:
        p = self.passage
        if self.state is not S.AUTHORISING or p is None or p.authorisation != (ev.kind, ev.auth_id):
            raise LaneProtocolError(f"unexpected commit of {ev.kind}:{ev.auth_id} in {self.state}")
        self._lift()
        self._replay_deferred()

    def _on_refused(self, ev: AuthorisationRefused) -> None:
        p = self.passage
        if self.state is not S.AUTHORISING or p is None or p.authorisation != (ev.kind, ev.auth_id):
            raise LaneProtocolError(f"unexpected refusal of {ev.kind}:{ev.auth_id} in {self.state}")
        p.authorisation = None
        if ev.reason == "replay":
            self._alarm("instruction_replay", authorisation={"kind": ev.kind, "id": ev.auth_id})
            self._hold("instruction_replay")
        else:
            # S6: the journal could not record it, so nothing lifts.
            self._alarm("journal_fault", detail=ev.detail)
            self._hold("journal_error")
        self._replay_deferred()

    def _replay_deferred(self) -> None:
        deferred, self._deferred = self._deferred, []
        for i, ev in enumerate(deferred):
            self._on_input(ev)
            if self.state is S.AUTHORISING:
                self._deferred = deferred[i + 1 :] + self._deferred
                return

    def _on_fault(self, ev: DeviceFault) -> None:
        if ev.device in self.rules.barrier_devices and self.state in (S.OPEN, S.LOWERING):
            self._travel_deadline = None  # blind: timed again when the module is back
        if ev.device in self.faults:
            return
        self.faults[ev.device] = ev.reason
        self._emit("fault.opened", device=ev.device, reason=ev.reason)
        self._alarm("device_fault", device=ev.device, reason=ev.reason)
        if self.state is S.WEIGHING and ev.device == "weighbridge":
            self._hold("device_fault")
        elif self.state is S.IDLE:
            self._show_idle()

    def _on_recovered(self, ev: DeviceRecovered) -> None:
        self._clear_fault(ev.device)
        if ev.device in self.rules.barrier_devices and not self.faults.keys() & self.rules.barrier_devices:
            self._resume_barrier()

    def _on_coil_failed(self, ev: CoilWriteFailed) -> None:
        self._failed_coil = ev.coil
        if self.state in (S.OPEN, S.LOWERING):
            self._travel_deadline = None
        if ev.device not in self.faults:
            self._on_fault(DeviceFault(ev.device, f"{ev.coil} coil write failed"))

    def _resume_barrier(self) -> None:
        """The barrier's IO module answers again: its limits (read just before) say what
        the arm did meanwhile. A lift pulse that never reached it spent its authorisation
        without lifting, so the vehicle is held (S1: never lifted again); a lowering pulse
        that never reached it is sent again (S2: not while the safety loop is occupied)."""
        assert self._now is not None
        failed, self._failed_coil = self._failed_coil, None
        up, down = self.inputs["barrier_up"], self.inputs["barrier_down"]
        st = self.state
        if st is S.OPEN:
            lift = self.lift
            assert lift is not None
            if failed == "open" and down and not up and not self._up_reached:
                self._travel_deadline = None
                self._emit("barrier.lift_failed", authorisation=_auth_json(lift.authorisation))
                if self.passage is not None:
                    self.lift = None
                    self._hold("lift_interrupted")
                else:
                    self._check_open()  # a safety reverse that never rose: lower once clear
                if self._barrier_sane():
                    self._clear_fault("barrier")
            elif not up and not self._up_reached and self._travel_deadline is None:
                self._travel_deadline = self._now + self.rules.travel_timeout
        elif st is S.LOWERING:
            lift = self.lift
            assert lift is not None
            if down and not up:
                return
            if failed == "close" and self.inputs["safety_loop"]:
                # Still up with a vehicle under it: lower once it has cleared (S2, S3).
                self._goto(S.OPEN)
                self._up_reached = up
                lift.entered = lift.exit_seen = True
                self._check_open()
                return
            if failed == "close":
                self._out.append(Pulse("close", lift.authorisation, "lower"))
                self._emit("barrier.lowered", authorisation=_auth_json(lift.authorisation), retry=True)
            if self._travel_deadline is None:
                self._travel_deadline = self._now + self.rules.travel_timeout

    def _clear_fault(self, device: str) -> None:
        if device not in self.faults:
            return
        del self.faults[device]
        self._emit("fault.closed", device=device)
        if self.state is S.IDLE:
            self._show_idle()

    def _on_spot_check(self, ev: SpotCheckOrdered) -> None:
        """R7: customs orders spot checks on this lane; journaled with the state they leave."""
        if ev.clear:
            self.spot_hold_next, self.spot_fraction = 0, 0.0
        elif ev.hold_next is not None:
            self.spot_hold_next = ev.hold_next
        elif ev.fraction is not None:
            self.spot_fraction = ev.fraction
        self._emit(
            "spot_check.ordered",
            order={"hold_next": ev.hold_next, "fraction": ev.fraction, "clear": ev.clear},
            source=ev.source,
            remaining=self.spot_hold_next,
            fraction=self.spot_fraction,
        )

    def _on_tick(self, ev: Tick) -> None:
        now = self._now
        assert now is not None
        if self._pending_card is not None and now - self._pending_card[1] > self.rules.card_grace:
            self._pending_card = None
        if self._hours_deadline is not None and now >= self._hours_deadline:
            self._hours_deadline = self._next_hours_change(now)
            if self.state is S.IDLE:
                self._show_idle()
        if self._travel_deadline is not None and now >= self._travel_deadline:
            self._travel_deadline = None
            if self.state is S.OPEN:
                # A lift that never left the down limit is a different repair from a slow arm.
                self._barrier_fault("never_left_down" if self.inputs["barrier_down"] else "travel_timeout_up")
            else:
                self._barrier_fault("travel_timeout_down")
        if self._deadline is None or now < self._deadline:
            return
        self._deadline = None
        if self.state is S.PRESENT:
            self._hold("no_card")
        elif self.state is S.WEIGHING:
            self._hold("no_stable_weight")
        elif self.state is S.DECIDING:
            self._authority_failed("timeout", "no answer in time")
        elif self.state is S.OPEN and self._vehicle_loops_clear() and not self.inputs["arrival_loop"]:
            # Lifted, but nobody drove through: the vehicle reversed away (or never came).
            if self.passage is not None:
                self._close_passage("backed_out", reason="left_after_lift")
            self._lower()

    _HANDLERS: dict[type, Callable[["LaneCore", Event], None]] = {
        InputsSnapshot: _on_snapshot,
        InputChanged: _on_input,
        CardRead: _on_card,
        WeightStable: _on_weight,
        ReleaseDecided: _on_decided,
        ReleaseFailed: _on_failed,
        AuthorisationCommitted: _on_committed,
        ApprovalAccepted: _on_approval,
        ApprovalRefused: _on_approval_refused,
        EmergencyAccount: _on_emergency_account,
        AuthorisationRefused: _on_refused,
        DeviceFault: _on_fault,
        DeviceRecovered: _on_recovered,
        CoilWriteFailed: _on_coil_failed,
        Tick: _on_tick,
        SpotCheckOrdered: _on_spot_check,
    }


def _edge_order(change: tuple[str, bool]) -> int:
    point, on = change
    if point in ("barrier_up", "barrier_down"):
        return 1 if on else 0
    return 1 if on else 2


def _auth_json(auth: tuple[str, str] | None) -> dict | None:
    if auth is None:
        return None
    out = {"kind": auth[0], "id": auth[1]}
    if auth[0] == "approval":
        # A use "AP-...#n" of an approval: name the approval itself for the ledger.
        out["approval_id"] = auth[1].rsplit("#", 1)[0]
    return out


__all__ = ["LaneCore", "LaneRules", "LaneState", "TRANSITIONS", "GOODS_KINDS"]
