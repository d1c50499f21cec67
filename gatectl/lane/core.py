"""The lane core: every rule of one checkpoint lane, sans-IO.

``LaneCore.handle(input, now) -> list[Command]`` is the only code that changes a lane's
state. It owns no clock, socket or task: the lane runtime (``gatectl.lane.runtime``) feeds
it timestamped inputs (loops, limits, buttons, cards, weights, the authority's answers,
the journal's answers, ticks) one at a time and carries out the commands it returns, in
order. That keeps one vehicle, one card, one lift (R4, S1-S3) provable by reading this
file and by hypothesis over random input sequences (tests/core/test_core_stateful.py).

The happy path of one passage::

    IDLE --arrival loop--> PRESENT --card--> WEIGHING --stable weight--> DECIDING
      --release--> AUTHORISING --journal committed--> OPEN --vehicle cleared--> LOWERING
      --down limit--> IDLE

A vehicle that is not released goes to HELD and the lane waits for it to back out (R5,
R6). Lifts happen only from AUTHORISING, i.e. only after the journal has recorded the
authorisation as consumed (S6), and each authorisation is committed once (S1). While
AUTHORISING the core takes nothing but the journal's answer (``ACCEPTS``): the runtime
hands it over before any other input, so no rule ever runs half-authorised.

Each rule has one home: a passage is built by ``_new_passage``, the open pulse sent by
``_pulse_open``, the close pulse by ``_pulse_close``, tailgating raised by
``_tailgating``, a faulty device holds a vehicle by ``_fails_closed``, the authority hears
what became of its release by ``_confirm``. ``_start`` (after a restart, S7) only decides
which of the ordinary states the lane is in and enters it through them.
"""

from __future__ import annotations

import enum
import random
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Callable, Mapping

from gatectl import events as ev
from gatectl.events import Authorisation
from gatectl.lane.commands import (
    CommitAuthorisation,
    Command,
    ConfirmPassage,
    Display,
    Emit,
    Pulse,
    RequestRelease,
)
from gatectl.lane.display import (
    TEXT_CARD,
    TEXT_CLOSED,
    TEXT_DECIDING,
    TEXT_EMERGENCY,
    TEXT_FAULT,
    TEXT_FORCED,
    TEXT_ONE_BY_ONE,
    TEXT_RELEASED,
    TEXT_WEIGHING,
    TEXT_WELCOME,
    card_open_elsewhere,
    hold_text,
)
from gatectl.lane.errors import LaneProtocolError
from gatectl.lane.hours import Schedule
from gatectl.lane.inputs import (
    INPUT_POINTS,
    ApprovalAccepted,
    ApprovalRefused,
    AuthorisationCommitted,
    AuthorisationRefused,
    CardRead,
    CoilWriteFailed,
    DeviceFault,
    DeviceRecovered,
    DrillOrdered,
    EmergencyAccount,
    HoursOrdered,
    Input,
    InputChanged,
    InputsSnapshot,
    PlateRead,
    ReleaseDecided,
    ReleaseFailed,
    SpotCheckOrdered,
    Tick,
    WeightStable,
)
from gatectl.lane.passage import LaneRecord, PassageRecord


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

#: Where a remote approval lifts (R17): never while an authority's answer or a lift is
#: under way, so one passage has one authorisation.
REMOTE_LIFT_STATES: frozenset[LaneState] = frozenset({S.IDLE, S.PRESENT, S.WEIGHING, S.HELD})

#: Legal state changes. ``_goto`` refuses anything else: a wrong move is a gatectl bug.
TRANSITIONS: dict[LaneState, frozenset[LaneState]] = {
    S.STARTING: frozenset({S.IDLE, S.PRESENT, S.WEIGHING, S.DECIDING, S.OPEN, S.HELD, S.AUTHORISING}),
    S.IDLE: frozenset({S.PRESENT, S.AUTHORISING}),
    S.PRESENT: frozenset({S.WEIGHING, S.DECIDING, S.HELD, S.IDLE, S.AUTHORISING}),
    S.WEIGHING: frozenset({S.DECIDING, S.HELD, S.IDLE, S.AUTHORISING}),
    S.DECIDING: frozenset({S.AUTHORISING, S.HELD, S.IDLE}),
    S.AUTHORISING: frozenset({S.OPEN, S.HELD, S.IDLE}),
    S.OPEN: frozenset({S.LOWERING, S.HELD}),
    S.LOWERING: frozenset({S.OPEN, S.IDLE, S.PRESENT, S.AUTHORISING}),
    S.HELD: frozenset({S.IDLE, S.AUTHORISING}),
}

#: Inputs a state takes, where it does not take them all. Anything else is a runtime bug
#: (``LaneProtocolError``) and changes nothing.
ACCEPTS: dict[LaneState, tuple[type[Input], ...]] = {
    # The journal's answer comes next, before anything else (S6).
    S.AUTHORISING: (AuthorisationCommitted, AuthorisationRefused),
}
#: The first reading starts the lane; later polls arrive as single edges (``poll_edges``).
SNAPSHOT_STATES = frozenset({S.STARTING})

__all__ = ["LaneCore", "LaneRules", "LaneState", "TRANSITIONS", "ACCEPTS", "Passage", "Lift"]


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
    #: R2: when the lane releases automatically (weekdays, holidays); None means always.
    hours: Schedule | None = None
    #: R7: administrative lanes release registered cards: card -> curb weight (kg), or
    #: None for a lane that does not weigh.
    whitelist: Mapping[str, float | None] = field(default_factory=dict)
    #: The plate each registered card belongs to: with a plate camera, card and plate must match.
    registered_plates: Mapping[str, str] = field(default_factory=dict)
    curb_tolerance_kg: float = 300.0
    #: A plate camera reports the vehicles' plates (CONTRACT 8); a read older than
    #: ``plate_max_age`` is not the vehicle's.
    has_camera: bool = False
    plate_max_age: timedelta = timedelta(seconds=30)
    #: A shared lane (kind "shared") serves these kinds with one set of devices, asking
    #: each kind's authority; each passage goes under the kind whose authority claims it.
    shared_kinds: tuple[str, ...] = ()
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
    authorisation: Authorisation | None = None
    lifted: bool = False
    hold_reason: str | None = None
    forced: bool = False  # went through the barrier line without a lift (S4)
    left_scale: bool = False  # off the arrival loop (and the weighbridge) since weighed
    instruction_id: str | None = None
    refused_cards: set[str] = field(default_factory=set)
    plate: str | None = None
    #: The kind it goes under: the lane's, or on a shared lane the one decided for it.
    kind: str | None = None
    #: On a shared lane: the requests out (request id -> kind) and the answers in.
    requests: dict[str, str] = field(default_factory=dict)
    answers: dict[str, ReleaseDecided | ReleaseFailed] = field(default_factory=dict)


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
    countersigned: bool = False


@dataclass(slots=True)
class Lift:
    """The barrier's current authorised opening; ends when it is down again."""

    authorisation: Authorisation
    outcome: str  # outcome of the passage if the vehicle clears: passed | emergency | manual
    entered: bool = False  # a vehicle reached the safety or exit loop
    exit_seen: bool = False
    vehicles: int = 0  # vehicles counted through under this lift (S3)
    tailgating_raised: bool = False


#: Outcome of a passage lifted under each kind of authorisation.
OUTCOME_OF = {"emergency": "emergency", "approval": "manual"}


def _new_id() -> str:
    return str(uuid.uuid4())


class LaneCore:
    """One lane's state machine. Not thread-safe; one caller at a time."""

    def __init__(
        self,
        rules: LaneRules,
        recovered: PassageRecord | None = None,
        lane: LaneRecord | None = None,
        new_id: Callable[[], str] = _new_id,
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
        self._last_lift = lane.last_lift if lane is not None else None
        self._pending_card: tuple[CardRead, datetime] | None = None
        self._leaving_card: str | None = None
        # A recovered passage's card and weight, read before the restart: the vehicle on
        # the loop now must show that card again before it is asked about (``_start_undecided``)
        # or told its hold (``_start_held``; a held passage may have no card).
        self._unconfirmed: tuple[str | None, float | None] | None = None
        # A recovered hold waits for that card before its text is shown again (``_start_held``).
        self._held_asking = False
        # The arm reached the up limit since the last pulse: only then is losing it a fault.
        self._up_reached = False
        self.spot_hold_next = lane.spot_hold_next if lane is not None else 0
        self.spot_fraction = lane.spot_fraction if lane is not None else 0.0
        #: Customs' order over the open hours: (open, until or None, reason), or None.
        self.hours_order: tuple[bool, datetime | None, str] | None = None
        if lane is not None and lane.hours_open is not None:
            until = datetime.fromisoformat(lane.hours_until) if lane.hours_until else None
            self.hours_order = (lane.hours_open, until, lane.hours_reason)
        #: Who gave the hours order in force (its ``by``).
        self.hours_by = lane.hours_by if lane is not None and self.hours_order is not None else ""
        #: An emergency drill is under way: everything journaled meanwhile is marked.
        self.drill = bool(lane.drill) if lane is not None else False
        #: The drill under way: who started it, their note, and since when (None: not known).
        self.drill_by = lane.drill_by if lane is not None and self.drill else ""
        self.drill_note = lane.drill_note if lane is not None and self.drill else ""
        self.drill_since: datetime | None = (
            datetime.fromisoformat(lane.drill_since) if lane is not None and self.drill and lane.drill_since else None
        )
        # The latest plate read: (plate, when, confidence); taken by the passage it names.
        self._plate: tuple[str, datetime, float | None] | None = None
        self.approvals: dict[str, Approval] = {}
        self._rand = rand
        self._hours_deadline: datetime | None = None
        self._pending_outcome = "passed"
        self._deadline: datetime | None = None  # state deadline (card wait, decision, back-out)
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

    def handle(self, event: Input, now: datetime) -> list[Command]:
        if now.tzinfo is None:
            raise LaneProtocolError("now must be timezone-aware")
        accepted = ACCEPTS.get(self.state)
        if accepted is not None and not isinstance(event, accepted):
            raise LaneProtocolError(f"{type(event).__name__} while {self.state}: the runtime must answer first")
        if isinstance(event, InputsSnapshot) and self.state not in SNAPSHOT_STATES:
            raise LaneProtocolError("a running lane takes polls as single edges (poll_edges)")
        handler = self._HANDLERS.get(type(event))
        if handler is None:
            raise LaneProtocolError(f"no rule for {type(event).__name__}")
        self._out = []
        self._now = now
        handler(self, event)
        if self.state in REMOTE_LIFT_STATES:
            self._remote_lift()
        out, self._out = self._out, []
        return out

    def snapshot(self) -> dict[str, Any]:
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
                "plate": p.plate,
                "lane_kind": p.kind,
            },
            "lift": None
            if self.lift is None
            else {
                "authorisation": _auth_json(self.lift.authorisation),
                "outcome": self.lift.outcome,
                "vehicles": self.lift.vehicles,
            },
            "hours_order": None
            if self.hours_order is None or self._order_over(self._now)
            else {
                "open": self.hours_order[0],
                "until": self.hours_order[1].isoformat() if self.hours_order[1] else None,
                "reason": self.hours_order[2],
                "by": self.hours_by,
            },
            "drill": None
            if not self.drill
            else {
                "by": self.drill_by,
                "note": self.drill_note,
                "since": self.drill_since.isoformat() if self.drill_since else None,
            },
        }

    def _order_over(self, now: datetime | None) -> bool:
        """Customs' hours order ran out (its ``until`` passed): the hours apply again."""
        order = self.hours_order
        return order is not None and order[1] is not None and now is not None and now >= order[1]

    def open_at(self, now: datetime) -> bool:
        """Whether the lane releases automatically at ``now`` for some vehicle (on a shared
        lane: for any of its kinds)."""
        return self._lane_open(now)

    def is_open_at(self, now: datetime, kind: str | None = None) -> bool:
        """R2: whether the lane releases automatically at ``now`` (a passage of ``kind``,
        on a shared lane): customs' order over the hours first, then the hours; non-bonded
        traffic is open 24 h."""
        order = self.hours_order
        if order is not None and (order[1] is None or now < order[1]):
            return order[0]
        if kind == "non_bonded" or self.rules.hours is None:
            return True
        return self.rules.hours.is_open(now)

    # ------------------------------------------------------------- plumbing

    def _emit(self, cls: type[ev.Event], **fields: Any) -> None:
        """Journal an event; a lane event names the open passage unless it names one."""
        assert self._now is not None
        if issubclass(cls, ev.LaneEvent):
            if "passage_id" not in fields and self.passage is not None:
                fields["passage_id"] = self.passage.passage_id
            if self.drill:
                fields["drill"] = True
        self._out.append(Emit(cls(**fields), self._now))

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

    def _vehicle_loops_clear(self) -> bool:
        return not self.inputs["safety_loop"] and not self.inputs["exit_loop"]

    def _nobody_about(self) -> bool:
        return self._vehicle_loops_clear() and not self.inputs["arrival_loop"]

    # ------------------------------------------------------------- passages

    def _new_passage(self, **opened: Any) -> Passage:
        """The one way a passage begins: journaled ``passage.opened`` with what opened it."""
        assert self._now is not None and self.passage is None
        self.passage = Passage(passage_id=self._new_id(), opened_at=self._now,
                               kind=None if self.rules.shared_kinds else self.rules.kind)
        self._leaving_card = self._unconfirmed = None
        self._held_asking = False
        if self.state is S.LOWERING:
            self.lift = None  # a lift for this passage replaces the lowering one
        self._emit(ev.PassageOpened, card=None, **opened)
        self._attach_plate()
        return self.passage

    def _attach_plate(self) -> None:
        """The camera's latest read names the vehicle of the open passage, until it is
        asked about (a read older than ``plate_max_age`` is another vehicle's)."""
        p, read = self.passage, self._plate
        assert self._now is not None
        if p is None or read is None or p.request_id is not None or p.requests:
            return
        plate, at, confidence = read
        if self._now - at > self.rules.plate_max_age or plate == p.plate:
            return
        p.plate = plate
        self._emit(ev.PlateRead, plate=plate, confidence=confidence, captured_at=at.isoformat())

    def _open_passage(self) -> None:
        """A vehicle on the arrival loop of an idle lane."""
        assert self._now is not None
        self._new_passage()
        self._goto(S.PRESENT)
        self._deadline = self._now + self.rules.card_wait
        self._show(TEXT_CARD)
        if self._pending_card is not None:
            read, seen = self._pending_card
            self._pending_card = None
            if self._now - seen <= self.rules.card_grace:
                self._on_card(read)

    def _confirm(self, result: str) -> None:
        """CONTRACT 3.1: tell the authority what became of its release, via the outbox."""
        p = self.passage
        assert p is not None and self._now is not None
        if p.decision == "release" and p.request_id is not None:
            self._out.append(ConfirmPassage(p.request_id, p.instruction_id, result, self._now, p.weight_kg,
                                            p.kind if self.rules.shared_kinds else None))

    def _close_passage(self, outcome: str, reason: str | None = None) -> None:
        p = self.passage
        assert p is not None
        if reason is None and outcome == "held":
            reason = p.hold_reason
        card, kg = (p.card, p.weight_kg) if self._unconfirmed is None else self._unconfirmed
        self._confirm("passed" if outcome in ("passed", "emergency", "manual") else "not_passed")
        self._emit(
            ev.PassageClosed,
            outcome=outcome,
            card=card,
            gross_weight_kg=kg,
            decision=p.decision,
            authorisation=p.authorisation,
            reason=reason,
            plate=p.plate,
            lane_kind=p.kind if self.rules.shared_kinds else None,
        )
        if self._plate is not None and self._plate[0] == p.plate:
            self._plate = None  # spent with its passage
        if card is not None:
            # Its card may still be read as it drives or backs away: it is nobody's next card.
            self._leaving_card = card
        self._unconfirmed = None
        self._held_asking = False
        self.passage = None

    def _to_idle(self) -> None:
        self._goto(S.IDLE)
        self._show_idle()
        if self.inputs["arrival_loop"]:
            self._open_passage()

    def _next_hours_change(self, now: datetime) -> datetime | None:
        times = []
        if self.rules.hours is not None:
            times.append(self.rules.hours.next_change(now))
        if self.hours_order is not None and self.hours_order[1] is not None and self.hours_order[1] > now:
            times.append(self.hours_order[1])
        times = [t for t in times if t is not None]
        return min(times) if times else None

    def _accept_card(self, card: str) -> None:
        p = self.passage
        assert p is not None and p.card is None and self._now is not None
        p.card = card
        self._emit(ev.CardRead, card=card)
        self._deadline = None
        if self.rules.has_weighbridge:
            self._await_weight()
        else:
            self._decide()

    def _await_weight(self) -> None:
        assert self._now is not None
        self._goto(S.WEIGHING)
        self._deadline = self._now + self.rules.weigh_wait
        self._show(TEXT_WEIGHING)
        if self._fails_closed("weighbridge"):
            return
        if self.last_weight_kg is not None and self.last_weight_kg >= self.rules.min_vehicle_kg:
            self._weight_ready(self.last_weight_kg)

    def _weight_ready(self, kg: float) -> None:
        p = self.passage
        assert p is not None
        p.weight_kg = kg
        # A weight is one vehicle's: the next one must be weighed afresh.
        self.last_weight_kg = None
        self._emit(ev.WeightStable, gross_weight_kg=kg)
        self._decide()

    def _lane_open(self, now: datetime) -> bool:
        """Open for some vehicle: on a shared lane, for any of its kinds."""
        if self.rules.shared_kinds:
            return any(self.is_open_at(now, k) for k in self.rules.shared_kinds)
        return self.is_open_at(now)

    def _decide(self) -> None:
        """Card (and weight) known: who says whether this vehicle may pass (R1)?"""
        p = self.passage
        assert p is not None and p.card is not None and self._now is not None
        if not self._lane_open(self._now):
            self._hold("closed_hours")  # R2: nothing is released automatically
            return
        kind = self.rules.kind
        if kind == "administrative":
            self._decide_registered(p)
        elif kind == "personnel":
            if p.card in self.rules.staff:
                self._local_decision("release", "staff_card", name=self.rules.staff[p.card])
            else:
                self._local_decision("hold", "not_staff")
        else:
            self._request_release()

    def _decide_registered(self, p: Passage) -> None:
        """R7: a registered vehicle passes: its card, its plate (with a camera), and no
        more weight than its curb weight allows (no goods in administrative vehicles)."""
        assert p.card is not None
        if p.card not in self.rules.whitelist:
            self._local_decision("hold", "not_registered")
            return
        curb = self.rules.whitelist[p.card]
        registered = self.rules.registered_plates.get(p.card)
        plates = {"plate": p.plate, "registered_plate": registered} if self.rules.has_camera else {}
        if self.rules.has_camera and registered is not None and p.plate != registered:
            self._local_decision("hold", "plate_unread" if p.plate is None else "plate_mismatch", **plates)
        elif curb is not None and p.weight_kg is not None and p.weight_kg > curb + self.rules.curb_tolerance_kg:
            # R7: an administrative vehicle heavier than registered carries goods.
            self._local_decision("hold", "admin_overweight", curb_weight_kg=curb, **plates)
        else:
            self._local_decision("release", "whitelist", **plates)

    def _local_decision(self, decision: str, basis: str, **data: Any) -> None:
        """A decision the lane takes from its own lists (administrative, personnel)."""
        p = self.passage
        assert p is not None
        p.decision = decision
        self._emit(ev.LocalDecision, decision=decision, basis=basis, **data)
        if decision == "release":
            # One authorisation per passage: the list match itself, never reusable.
            self._grant(basis, p.passage_id)
        else:
            self._hold(basis)

    def _fails_closed(self, device: str | None = None) -> bool:
        """S5: hold the vehicle while a device it needs is faulty (``device``, or any)."""
        faulty = device in self.faults if device is not None else bool(self.faults)
        if faulty:
            self._hold("device_fault")
        return faulty

    def _grant(self, kind: str, auth_id: str) -> None:
        """Released: last checks before the lift."""
        p = self.passage
        assert p is not None and self._now is not None
        if p.forced:
            self._hold("forced_passage")
        elif not self.is_open_at(self._now, p.kind):
            self._hold("closed_hours")  # R2: the answer came after closing time
        elif self._fails_closed():
            pass
        elif self._spot_check_due():
            self._hold("spot_check")
        else:
            self._authorise(kind, auth_id, "passed")

    def _spot_check_due(self) -> bool:
        """R7: customs ordered the next N, or a random share, of released vehicles held."""
        if self.spot_hold_next > 0:
            self.spot_hold_next -= 1
            self._emit(ev.SpotCheckApplied, remaining=self.spot_hold_next, fraction=self.spot_fraction)
            return True
        if self.spot_fraction > 0:
            draw = self._rand()
            if draw < self.spot_fraction:
                self._emit(ev.SpotCheckApplied, remaining=0, fraction=self.spot_fraction, draw=draw)
                return True
        return False

    def _request_release(self) -> None:
        """Ask the lane's authority, or on a shared lane each kind's (R1)."""
        p = self.passage
        assert p is not None and p.card is not None and p.request_id is None
        assert self._now is not None
        if not self.rules.has_authority:
            self._hold("no_authority")
            return
        self._goto(S.DECIDING)
        self._deadline = self._now + self.rules.decision_wait
        self._show(TEXT_DECIDING)
        for kind in self.rules.shared_kinds or (None,):
            request_id = self._new_id()
            if kind is None:
                p.request_id = request_id
            else:
                p.requests[request_id] = kind
            self._emit(ev.ReleaseRequested, request_id=request_id, card=p.card, gross_weight_kg=p.weight_kg,
                       plate=p.plate, lane_kind=kind)
            self._out.append(RequestRelease(request_id, p.passage_id, p.card, p.weight_kg, self._now, p.plate, kind))

    def _hold_text(self, reason: str) -> str:
        p = self.passage
        return hold_text(reason, p.hint if p is not None else None, self.rules.kind)

    def _hold(self, reason: str, recovered: bool = False) -> None:
        """Not released: show why, send the vehicle to the inspection area, wait for it to
        back out. ``recovered``: held at a restart with a vehicle on the arrival loop, which
        is asked for its card before it is told (``_start_held``)."""
        p = self.passage
        assert p is not None
        p.hold_reason = reason
        self._goto(S.HELD)
        text = self._hold_text(reason)
        if recovered:
            self._start_held(p)
        else:
            self._show(text)
        self._emit(ev.PassageHeld, reason=reason, display=text)
        if not self.inputs["arrival_loop"]:
            self._close_passage("held")
            self._to_idle()

    def _show_idle(self) -> None:
        assert self._now is not None
        self._hours_deadline = self._next_hours_change(self._now)
        if self.faults:
            self._show(TEXT_FAULT)
        elif not self._lane_open(self._now):
            self._show(TEXT_CLOSED)
        else:
            self._show(TEXT_WELCOME)

    # ---------------------------------------------------------------- lifts

    def _authorise(self, kind: str, auth_id: str, outcome: str) -> None:
        """Ask the journal to consume the authorisation; it lifts once that is durable (S6)."""
        p = self.passage
        assert p is not None and self._now is not None
        p.authorisation = Authorisation(kind, auth_id)
        self._goto(S.AUTHORISING)
        self._pending_outcome = outcome
        self._held_asking = False  # (from HELD only under an approval or the emergency button)
        self._out.append(CommitAuthorisation(kind, auth_id, p.passage_id, self._now, self.drill))

    def _pulse_open(self, lift: Lift, reason: str) -> None:
        """The one open pulse: the lift of an authorisation, or a safety reverse under it."""
        assert self._now is not None
        self._goto(S.OPEN)
        self._out.append(Pulse("open", lift.authorisation, reason))  # type: ignore[arg-type]
        self._up_reached = bool(self.inputs["barrier_up"])
        self._emit(ev.BarrierLifted, authorisation=lift.authorisation, reason=reason)
        if not self.inputs["barrier_up"]:
            self._travel_deadline = self._now + self.rules.travel_timeout

    def _pulse_close(self, retry: bool = False) -> None:
        """The one close pulse; never onto an occupied safety loop (S2)."""
        assert self.lift is not None and self._now is not None
        self._out.append(Pulse("close", self.lift.authorisation, "lower"))
        self._up_reached = False
        self._emit(ev.BarrierLowered, authorisation=self.lift.authorisation, retry=True if retry else None)
        self._travel_deadline = self._now + self.rules.travel_timeout

    def _lift(self) -> None:
        p = self.passage
        assert p is not None and p.authorisation is not None
        self.lift = Lift(authorisation=p.authorisation, outcome=self._pending_outcome)
        p.lifted = True
        self._pulse_open(self.lift, "lift")
        self._show(TEXT_EMERGENCY if self.lift.outcome == "emergency" else (p.hint or TEXT_RELEASED))
        self._check_open()

    def _lower(self) -> None:
        """Lower; never while the safety loop is occupied (S2)."""
        assert self.lift is not None
        if self.inputs["safety_loop"]:
            return
        self._goto(S.LOWERING)
        self._pulse_close()
        self._show(TEXT_ONE_BY_ONE)
        if self.inputs["barrier_down"] and not self.inputs["barrier_up"]:
            # Already down (it never rose, or fell by itself): no edge will come to wait for.
            self._travel_deadline = None
            self.lift = None
            self._to_idle()

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
        elif self._nobody_about():
            if self._deadline is None:
                self._deadline = self._now + self.rules.backout_wait
        else:
            self._deadline = None

    def _tailgating(self, vehicles: int) -> None:
        """S3: a second vehicle under one lift; raised once per lift."""
        lift = self.lift
        assert lift is not None
        if not lift.tailgating_raised:
            lift.tailgating_raised = True
            self._emit(ev.TailgatingAlarm, authorisation=lift.authorisation, vehicles=vehicles)

    # ------------------------------------------------------------- handlers

    def _on_snapshot(self, event: InputsSnapshot) -> None:
        self.inputs.update(event.values)
        self._start()

    def _start(self) -> None:
        """First reading of the inputs: rebuild from the journal and the live inputs (S7),
        by entering the ordinary state the lane is found in."""
        assert self._now is not None
        rec, self._recovered = self._recovered, None
        self._up_reached = self.inputs["barrier_up"]
        barrier_not_down = not self.inputs["barrier_down"] or self.inputs["barrier_up"]
        if self.inputs["barrier_down"] and self.inputs["barrier_up"]:
            self._barrier_fault("both_limits")
        if rec is None:
            if not barrier_not_down:
                self._to_idle()
                return
            # Up (or moving) with no open passage: lower it once nobody is under it.
            if self._last_lift is None:
                self._barrier_fault("up_without_lift")
            self._resume_open(Lift(self._last_lift or Authorisation("none", "barrier_found_up"), "passed",
                                   entered=True, exit_seen=True))
            if self.state is S.OPEN and self._vehicle_loops_clear():
                self._lower()
            return
        p = self.passage = Passage(
            passage_id=rec.passage_id,
            opened_at=datetime.fromisoformat(rec.opened_at),
            card=rec.card,
            weight_kg=rec.gross_weight_kg,
            request_id=rec.request_id,
            decision=rec.decision,
            hint=rec.hint,
            authorisation=rec.authorisation,
            lifted=rec.lifted,
            hold_reason=rec.hold_reason,
            instruction_id=rec.instruction_id,
            plate=rec.plate,
            kind=rec.lane_kind if self.rules.shared_kinds else self.rules.kind,
        )
        self._emit(ev.LaneRecovered, card=p.card, authorisation=p.authorisation)
        if p.authorisation is not None:
            self._start_authorised(rec, p, barrier_not_down)
        elif p.hold_reason is not None:
            self._goto(S.HELD)
            if self.inputs["arrival_loop"]:
                self._start_held(p)
            else:
                self._show(self._hold_text(p.hold_reason))
                self._close_passage("held")
                self._to_idle()
        elif not self.inputs["arrival_loop"]:
            self._close_passage("backed_out", reason="daemon_restart")
            self._to_idle()
        else:
            self._start_undecided(p)

    def _start_authorised(self, rec: PassageRecord, p: Passage, barrier_not_down: bool) -> None:
        """S1, S7: its authorisation was consumed before the crash; it never lifts again,
        whatever happened to the coil."""
        assert p.authorisation is not None and self._now is not None
        outcome = OUTCOME_OF.get(p.authorisation.kind, "passed")
        p.lifted = True
        if rec.entered and barrier_not_down and self._nobody_about():
            # Seen under the boom before the crash, on no loop now: it went through
            # unseen. Waiting for "its" vehicle would let the next one pass on this lift.
            self._resume_open(Lift(p.authorisation, outcome, entered=True, exit_seen=True), check=False)
            self._close_passage(outcome, reason="recovered_unobserved")
            self._lower()
        elif barrier_not_down or not self._vehicle_loops_clear():
            self._resume_open(Lift(p.authorisation, outcome, entered=not self._vehicle_loops_clear(),
                                   exit_seen=self.inputs["exit_loop"]))
            self._show(TEXT_RELEASED)
            if self.state is S.OPEN and self._deadline is not None and rec.last_seen_at is not None:
                # Nobody about: the wait for it to come counts from when it was last seen,
                # not from this restart (restarts in a row must not keep the boom up for
                # whoever comes next).
                seen = datetime.fromisoformat(rec.last_seen_at) + self.rules.backout_wait
                self._deadline = min(self._deadline, seen)
        elif self.inputs["arrival_loop"]:
            # Barrier down with a vehicle before it: the lift was lost (it may not be the
            # vehicle it was for).
            self._hold("lift_interrupted", recovered=True)
        else:
            # Nobody there and the barrier down: whatever happened was not seen.
            self._close_passage("backed_out", reason="recovered_unobserved")
            self._to_idle()

    def _start_undecided(self, p: Passage) -> None:
        """Decided nothing usable yet: ask again, once the vehicle on the arrival loop has
        shown its card. The journal still guarantees one lift per instruction, so a second
        answer naming the same instruction is safe.

        The card read before the crash is not asked about again as it stands: while the
        daemon was down its vehicle may have backed away and another pulled up (nobody saw
        the loops), and that one would be released or held on the other's card (R3, R4).
        The same card shown again continues this passage, weighed afresh; another card
        means its vehicle left unseen, and the new one gets a passage of its own."""
        assert self._now is not None
        # Released, but the crash came before the authorisation was committed: that
        # release was never used, and the authority hears so (CONTRACT 3.1).
        self._confirm("not_passed")
        p.request_id = p.decision = p.hint = None
        p.requests.clear()
        p.answers.clear()
        if self.rules.shared_kinds:
            p.kind = None
        self._goto(S.PRESENT)
        if p.card is not None:
            self._unconfirmed, p.card, p.weight_kg = (p.card, p.weight_kg), None, None
        self._deadline = self._now + self.rules.card_wait
        self._show(TEXT_CARD)

    def _start_held(self, p: Passage) -> None:
        """Held before the crash, a vehicle on the arrival loop now: it shows its card before
        it is told the hold. While the daemon was down the held vehicle may have backed away
        and another pulled up, which the hold text would send to the inspection area on
        another's decision, its own card refused as the lane busy (R4, R6). The passage
        stays held meanwhile: nothing is asked, nothing lifts. The same card continues the
        hold (``_resume_hold``); another card (any card, for a passage held without one)
        closes it held, its vehicle gone unseen, and gets a passage of its own (``_on_card``).
        There is nothing to decide, so no time limit: one would show the hold to whoever is there."""
        self._unconfirmed, p.card, p.weight_kg = (p.card, p.weight_kg), None, None
        self._held_asking = True
        self._show(TEXT_CARD)

    def _resume_hold(self) -> None:
        """The held passage's own card, shown again after a restart: the hold goes on."""
        p = self.passage
        assert p is not None and p.hold_reason is not None and self._unconfirmed is not None
        (p.card, p.weight_kg), self._unconfirmed = self._unconfirmed, None
        self._held_asking = False
        self._emit(ev.CardRead, card=p.card)
        self._show(self._hold_text(p.hold_reason))

    def _resume_open(self, lift: Lift, check: bool = True) -> None:
        """A lift found in force at start (no pulse: the barrier is where it is)."""
        self.lift = lift
        self._goto(S.OPEN)
        if check:
            self._check_open()

    def _on_input(self, event: InputChanged) -> None:
        if self.state is S.STARTING:
            self.inputs[event.point] = event.value
            return
        if self.inputs[event.point] == event.value:
            return
        self.inputs[event.point] = event.value
        point, on = event.point, event.value
        if point in ("arrival_loop", "safety_loop", "exit_loop"):
            self._emit(ev.LoopChanged, loop=point, occupied=on)
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
        if not on:
            # A card kept for the next passage was shown at the reader, on this loop (or
            # just before it): the vehicle leaving it, under a lift or backwards, takes
            # its card along. Left kept, it would be the next vehicle's (R4, S8).
            self._pending_card = None
            if self.passage is not None:
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
                lift.vehicles += 1  # a vehicle left the loops under this lift (S3)
                if lift.vehicles >= 2:
                    self._tailgating(lift.vehicles)
            self._check_open()
            return
        if st is S.LOWERING:
            lift = self.lift
            assert lift is not None
            if not on:
                return
            if point == "safety_loop":
                self._pulse_open(lift, "safety_reverse")  # S2: under the boom while it comes down
            lift.entered = True
            lift.exit_seen = lift.exit_seen or point == "exit_loop"
            # The lift's own vehicle had cleared, so this is a second vehicle (S3).
            self._tailgating(2)
            return
        p = self.passage
        if on:
            other = "exit_loop" if point == "safety_loop" else "safety_loop"
            if not self.inputs[other]:
                # S4, R8: at the barrier line with no lift in progress.
                self._emit(ev.ForcedPassageAlarm, loop=point, state=st.value)
                self._show(TEXT_FORCED)
            if p is not None:
                p.forced = True
            return
        if p is not None and p.forced and self._vehicle_loops_clear():
            # Through (or backed off the line): either way its passage is over; a vehicle
            # now on the arrival loop is another one and gets a passage of its own.
            self._close_passage("forced")
            self._to_idle()

    def _on_limit(self, point: str, on: bool) -> None:
        """Barrier supervision (R9): the limit switches must agree with what was commanded."""
        self._emit(ev.BarrierPosition, limit=point, on=on)
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
        elif point == "barrier_down" and not on and st not in (S.OPEN, S.LOWERING):
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
        self._emit(ev.FaultOpened, device="barrier", reason=reason)
        self._emit(ev.BarrierFaultAlarm, reason=reason)
        self._emit(ev.BarrierIncidentOpened, incident_id=self._new_id(), kind="barrier_fault", reason=reason)
        if self.state is S.IDLE:
            self._show_idle()

    # ------------------------------------------------------------ approvals

    def _usable(self, approval: Approval) -> bool:
        assert self._now is not None
        return approval.valid_from <= self._now < approval.valid_until and approval.used < approval.max_lifts

    def _on_approval(self, event: ApprovalAccepted) -> None:
        known = event.approval_id in self.approvals
        self.approvals[event.approval_id] = Approval(
            event.approval_id, event.trigger, event.max_lifts, event.valid_from, event.valid_until,
            event.lifts_used, event.plate, event.countersigned,
        )
        if not known and not event.restored:
            self._emit(
                ev.ApprovalAccepted,
                approval_id=event.approval_id,
                trigger=event.trigger,
                max_lifts=event.max_lifts,
                lifts_used=event.lifts_used,
                valid_from=event.valid_from.isoformat(),
                valid_until=event.valid_until.isoformat(),
                plate=event.plate,
                countersigned=event.countersigned or None,
            )

    def _on_approval_refused(self, event: ApprovalRefused) -> None:
        self._emit(ev.ApprovalRefused, approval_id=event.approval_id, reason=event.reason, message=event.message,
                   source=event.source)

    def _on_emergency_account(self, event: EmergencyAccount) -> None:
        self._emit(ev.EmergencyAccountGiven, passage_id=event.passage_id, vehicle_type=event.vehicle_type,
                   plate=event.plate, note=event.note, by=event.by)

    def _fresh_plate(self) -> str | None:
        """The camera's latest read, if recent enough to be the vehicle at the lane's."""
        read = self._plate
        assert self._now is not None
        if read is not None and self._now - read[1] <= self.rules.plate_max_age:
            return read[0]
        return None

    def _approval_bars(self, a: Approval) -> str | None:
        """Why ``a`` may not lift the vehicle at the lane now, if it may not (R10): on a
        lane with a plate camera an approval for one plate lifts only that plate read; a manual lift of a non-bonded
        passage (on a shared lane: of one not known to be bonded) needs park management's
        countersignature."""
        if a.plate is not None and self.rules.has_camera:
            # Without a camera the guard checks the plate by eye, as the approval shows it.
            # A remote lift is for the vehicle the lane holds; a panel lift for the one the
            # guard sees at the lane (its plate just read).
            if self._unconfirmed is not None:
                # After a restart the passage's plate, read before it, may be another
                # vehicle's (the lane asks the one there for its card): only a read since
                # names the vehicle at the lane, until it shows that card.
                seen = self._fresh_plate()
            else:
                seen = self.passage.plate if self.passage is not None else None
                if a.trigger == "panel" and seen is None:
                    seen = self._fresh_plate()
            if a.plate != seen:
                return "plate_mismatch"
        if not a.countersigned and self.rules.shared_kinds:
            kind = self.passage.kind if self.passage is not None else None
            if kind != "bonded":
                return "countersignature_required"
        return None

    def _on_manual_lift(self) -> None:
        """R10: the guard's button lifts once per use of a valid approval, and only then."""
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
            self._emit(ev.ManualLiftRefused, reason=reason)
            return
        if self.state is S.OPEN:
            self._emit(ev.ManualLiftRefused, reason="lift_in_progress")
            return
        bars = [self._approval_bars(a) for a in usable]
        fit = [a for a, bar in zip(usable, bars) if bar is None]
        if not fit:
            self._emit(ev.ManualLiftRefused, reason=bars[0])
            return
        self._lift_under_approval(fit[0], "panel")

    def _remote_lift(self) -> None:
        """R17: a remote approval lifts once, when the lane is idle, has a vehicle not yet
        asked about (its card unread or its weight unsettled: often why customs released it
        remotely) or holds one (for a plate: when that vehicle is the one at the lane)."""
        assert self._now is not None
        for a in list(self.approvals.values()):
            if a.trigger != "remote":
                continue
            if self._now >= a.valid_until or a.used >= 1:
                del self.approvals[a.approval_id]
                if a.used == 0:
                    self._emit(ev.ApprovalExpired, approval_id=a.approval_id)
                continue
            if self._usable(a) and self.state in REMOTE_LIFT_STATES and self._approval_bars(a) is None:
                self._lift_under_approval(a, "remote")
                return

    def _lift_under_approval(self, a: Approval, how: str) -> None:
        p = self.passage or self._new_passage(approval_id=a.approval_id)
        p.hold_reason = None  # (a late answer of the authority is ignored: no longer DECIDING)
        a.used += 1  # a refused commit still spends the use: the journal holds it, or it failed
        self._emit(ev.ApprovalUsed, approval_id=a.approval_id, use=a.used, max_lifts=a.max_lifts, trigger=how)
        self._authorise("approval", f"{a.approval_id}#{a.used}", "manual")

    def _on_emergency(self) -> None:
        """R11: lift at once, hold up until the vehicle clears, alarm."""
        if self.state is S.OPEN:
            # Already up: it stays up until the vehicle under it clears.
            self._emit(ev.EmergencyReleaseAlarm, authorisation=None, note="barrier_already_up")
            return
        auth_id = self._new_id()
        p = self.passage or self._new_passage(emergency=True)
        p.hold_reason = None  # (a late answer of the authority is ignored: no longer DECIDING)
        self._emit(ev.EmergencyReleaseAlarm, authorisation=Authorisation("emergency", auth_id), account_pending=True)
        self._authorise("emergency", auth_id, "emergency")

    def _on_card(self, event: CardRead) -> None:
        st = self.state
        p = self.passage
        if p is not None and p.card == event.card:
            return  # S8: a re-read of the card already in this passage changes nothing
        if st is S.STARTING:
            # Read before the lane has seen its loops: which vehicle showed it, and whether
            # it is still there, cannot be told. Asked for its card, the vehicle shows it again.
            return
        if st in (S.IDLE, S.OPEN, S.LOWERING):
            if event.card == self._leaving_card:
                return  # the vehicle that just went through, still in the reader's field
            # Readers often fire a moment before the loop does, or while the vehicle
            # ahead is still passing: keep it briefly for the next passage, unless its
            # vehicle leaves the arrival loop first (``_on_arrival``).
            assert self._now is not None
            self._pending_card = (event, self._now)
            return
        if p is None:
            return
        if p.card is not None or (st is not S.PRESENT and not self._held_asking):
            self._refuse_card(event.card, "lane_busy")
            return
        if event.open_elsewhere is not None:
            if self._refuse_card(event.card, "open_elsewhere", lane=event.open_elsewhere):
                self._show(card_open_elsewhere(event.open_elsewhere))
            return
        if self._unconfirmed is not None:
            if self._unconfirmed[0] != event.card:
                # Not the card read before the restart: that vehicle left while nobody watched.
                self._close_passage("held" if self._held_asking else "backed_out", reason="daemon_restart")
                self._to_idle()  # the arrival loop is occupied: a passage for this vehicle
                if self.state is not S.PRESENT:
                    return
            elif self._held_asking:
                self._resume_hold()
                return
            self._unconfirmed = None
        self._accept_card(event.card)

    def _refuse_card(self, card: str, reason: str, **data: Any) -> bool:
        """Journal a refused card once per passage; True if this was the first time."""
        p = self.passage
        assert p is not None
        if card in p.refused_cards:
            return False
        p.refused_cards.add(card)
        self._emit(ev.CardRefused, card=card, reason=reason, **data)
        return True

    def _on_weight(self, event: WeightStable) -> None:
        p = self.passage
        if p is not None and p.weight_kg is not None and not p.left_scale and event.kg >= self.rules.min_vehicle_kg:
            return  # the weighed vehicle settling again, not the next one
        self.last_weight_kg = event.kg
        if self.state is S.WEIGHING and event.kg >= self.rules.min_vehicle_kg:
            self._weight_ready(event.kg)

    def _on_decided(self, event: ReleaseDecided) -> None:
        p = self.passage
        if self.state is not S.DECIDING or p is None:
            return
        if p.requests:
            self._shared_answer(event)
        elif p.request_id == event.request_id:
            self._apply_decision(event)
        # else: an answer to a request this lane no longer waits for

    def _apply_decision(self, event: ReleaseDecided, kind: str | None = None) -> None:
        """The authority's decision for this passage (R3): only a release may lift."""
        p = self.passage
        assert p is not None
        p.request_id = event.request_id
        p.decision = event.decision
        p.hint = event.hint
        if kind is not None:
            p.kind = kind
        self._emit(
            ev.AuthorityDecision,
            request_id=event.request_id,
            decision=event.decision,
            instruction_id=event.instruction_id,
            form_id=event.form_id,
            hint=event.hint,
            declared_weight_kg=event.declared_weight_kg,
            lane_kind=kind,
        )
        if event.decision != "release":
            self._hold(event.decision)
            return
        assert event.instruction_id is not None
        p.instruction_id = event.instruction_id
        self._grant("release_instruction", event.instruction_id)

    def _on_failed(self, event: ReleaseFailed) -> None:
        p = self.passage
        if self.state is not S.DECIDING or p is None:
            return
        if p.requests:
            self._shared_answer(event)
        elif p.request_id == event.request_id:
            self._authority_failed(event.reason, event.detail)

    def _shared_answer(self, event: ReleaseDecided | ReleaseFailed) -> None:
        """A shared lane: one kind's authority answered; once every one has, decide whose
        vehicle it is."""
        p = self.passage
        assert p is not None
        kind = p.requests.get(event.request_id)
        if kind is None or kind in p.answers:
            return
        p.answers[kind] = event
        if isinstance(event, ReleaseDecided):
            self._emit(ev.ReleaseAnswered, request_id=event.request_id, lane_kind=kind, decision=event.decision,
                       instruction_id=event.instruction_id, form_id=event.form_id, hint=event.hint)
        else:
            self._emit(ev.ReleaseAnswered, request_id=event.request_id, lane_kind=kind, reason=event.reason)
        if len(p.answers) == len(p.requests):
            self._settle_shared()

    def _settle_shared(self) -> None:
        """Whose vehicle is it? Each enterprise declares its vehicle, card and weight in the
        system of its business, so the authority whose answer is not a denial claims the
        passage, and the passage goes under that kind's rules. Any authority without an
        answer: fail closed (S5), whatever the other said. Two claims: held, the lane cannot
        tell (not a device fault: R16). Denials all round: denied."""
        p = self.passage
        assert p is not None
        failed = [(k, a) for k, a in p.answers.items() if isinstance(a, ReleaseFailed)]
        if failed:
            kind, failure = failed[0]
            p.request_id = failure.request_id  # type: ignore[union-attr]
            self._authority_failed(failure.reason, f"{kind}: {failure.detail}")  # type: ignore[union-attr]
            return
        decided = {k: a for k, a in p.answers.items() if isinstance(a, ReleaseDecided)}
        claims = {k: a for k, a in decided.items() if a.decision != "deny"}
        if len(claims) == 1:
            ((kind, answer),) = claims.items()
            self._apply_decision(answer, kind)
        elif claims:
            self._hold("kind_conflict")
        else:
            kind = self.rules.shared_kinds[0]
            self._apply_decision(decided[kind], kind)

    def _authority_failed(self, reason: str, detail: str) -> None:
        p = self.passage
        assert p is not None
        self._emit(ev.ReleaseFailed, request_id=p.request_id, reason=reason, detail=detail)
        self._emit(ev.AuthorityUnreachableAlarm, reason=reason, detail=detail)
        self._hold(f"authority_{reason}")

    def _committed_authorisation(self, kind: str, auth_id: str, what: str) -> Passage:
        p = self.passage
        if self.state is not S.AUTHORISING or p is None or p.authorisation != (kind, auth_id):
            raise LaneProtocolError(f"unexpected {what} of {kind}:{auth_id} in {self.state}")
        return p

    def _on_committed(self, event: AuthorisationCommitted) -> None:
        self._committed_authorisation(event.kind, event.auth_id, "commit")
        self._lift()

    def _on_refused(self, event: AuthorisationRefused) -> None:
        p = self._committed_authorisation(event.kind, event.auth_id, "refusal")
        p.authorisation = None
        if event.reason == "replay":
            self._emit(ev.InstructionReplayAlarm, authorisation=Authorisation(event.kind, event.auth_id))
            self._hold("instruction_replay")
        else:
            # S6: the journal could not record it, so nothing lifts.
            self._emit(ev.JournalFaultAlarm, detail=event.detail)
            self._hold("journal_error")

    def _on_fault(self, event: DeviceFault) -> None:
        if event.device in self.rules.barrier_devices and self.state in (S.OPEN, S.LOWERING):
            self._travel_deadline = None  # blind: timed again when the module is back
        if event.device in self.faults:
            return
        self.faults[event.device] = event.reason
        self._emit(ev.FaultOpened, device=event.device, reason=event.reason)
        self._emit(ev.DeviceFaultAlarm, device=event.device, reason=event.reason)
        if self.state is S.WEIGHING and event.device == "weighbridge":
            self._fails_closed("weighbridge")
        elif self.state is S.IDLE:
            self._show_idle()

    def _on_recovered(self, event: DeviceRecovered) -> None:
        self._clear_fault(event.device)
        if event.device in self.rules.barrier_devices and not self.faults.keys() & self.rules.barrier_devices:
            self._resume_barrier()

    def _on_coil_failed(self, event: CoilWriteFailed) -> None:
        self._failed_coil = event.coil
        if self.state in (S.OPEN, S.LOWERING):
            self._travel_deadline = None
        if event.device not in self.faults:
            self._on_fault(DeviceFault(event.device, f"{event.coil} coil write failed"))

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
                self._emit(ev.BarrierLiftFailed, authorisation=lift.authorisation)
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
                self._pulse_close(retry=True)
            elif self._travel_deadline is None:
                self._travel_deadline = self._now + self.rules.travel_timeout

    def _clear_fault(self, device: str) -> None:
        if device not in self.faults:
            return
        del self.faults[device]
        self._emit(ev.FaultClosed, device=device)
        if self.state is S.IDLE:
            self._show_idle()

    def _on_spot_check(self, event: SpotCheckOrdered) -> None:
        """R7: customs orders spot checks on this lane; journaled with the state they leave."""
        if event.clear:
            self.spot_hold_next, self.spot_fraction = 0, 0.0
        elif event.hold_next is not None:
            self.spot_hold_next = event.hold_next
        elif event.fraction is not None:
            self.spot_fraction = event.fraction
        self._emit(
            ev.SpotCheckOrdered,
            order={"hold_next": event.hold_next, "fraction": event.fraction, "clear": event.clear},
            source=event.source,
            remaining=self.spot_hold_next,
            fraction=self.spot_fraction,
        )

    def _on_plate(self, event: PlateRead) -> None:
        """The plate camera read a plate: the vehicle's at the lane (CONTRACT 8)."""
        assert self._now is not None
        at = event.captured_at if event.captured_at is not None else self._now
        self._plate = (event.plate, min(at, self._now), event.confidence)
        if self.state in (S.PRESENT, S.WEIGHING):
            self._attach_plate()

    def _on_hours(self, event: HoursOrdered) -> None:
        """R2: customs opens or closes the lane now over its hours (or clears that). What
        it may lift is unchanged: a closed lane lifts only under approval or emergency."""
        assert self._now is not None
        if event.clear:
            self.hours_order = None
            self.hours_by = ""
        else:
            assert event.open is not None
            self.hours_order = (event.open, event.until, event.reason)
            self.hours_by = event.by
        self._emit(ev.HoursOrderedEvent, open=event.open, until=event.until.isoformat() if event.until else None,
                   reason=event.reason, clear=event.clear, source=event.source, by=event.by)
        self._hours_deadline = self._next_hours_change(self._now)
        if self.state is S.IDLE:
            self._show_idle()

    def _on_drill(self, event: DrillOrdered) -> None:
        """Park management's emergency drill (应急处置演练): the lane works as ever, and
        what it journals meanwhile is marked, kept out of the real figures."""
        if event.start and not self.drill:
            self.drill = True
            self.drill_by, self.drill_note, self.drill_since = event.by, event.note, self._now
            self._emit(ev.DrillStarted, by=event.by, note=event.note)
        elif not event.start and self.drill:
            self._emit(ev.DrillEnded, by=event.by, note=event.note)
            self.drill = False
            self.drill_by, self.drill_note, self.drill_since = "", "", None

    def _on_tick(self, event: Tick) -> None:
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
            p = self.passage
            if p is not None and p.requests:
                for request_id in p.requests:
                    if p.requests[request_id] not in p.answers:
                        self._shared_answer(ReleaseFailed(request_id, "timeout", "no answer in time"))
            else:
                self._authority_failed("timeout", "no answer in time")
        elif self.state is S.OPEN and self._nobody_about():
            # Lifted, but nobody drove through: the vehicle reversed away (or never came).
            if self.passage is not None:
                self._close_passage("backed_out", reason="left_after_lift")
            self._lower()

    _HANDLERS: dict[type, Callable[["LaneCore", Any], None]] = {
        InputsSnapshot: _on_snapshot,
        InputChanged: _on_input,
        CardRead: _on_card,
        WeightStable: _on_weight,
        ReleaseDecided: _on_decided,
        ReleaseFailed: _on_failed,
        AuthorisationCommitted: _on_committed,
        AuthorisationRefused: _on_refused,
        ApprovalAccepted: _on_approval,
        ApprovalRefused: _on_approval_refused,
        EmergencyAccount: _on_emergency_account,
        DeviceFault: _on_fault,
        DeviceRecovered: _on_recovered,
        CoilWriteFailed: _on_coil_failed,
        Tick: _on_tick,
        SpotCheckOrdered: _on_spot_check,
        PlateRead: _on_plate,
        HoursOrdered: _on_hours,
        DrillOrdered: _on_drill,
    }


def _auth_json(auth: Authorisation | None) -> dict | None:
    return None if auth is None else auth.json()

