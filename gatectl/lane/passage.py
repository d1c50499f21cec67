"""The one fold of a lane's journaled events into its passages, and into what the lane
must remember across restarts.

``fold(record, stamped)`` takes a lane's open passage (or None) and that lane's next event
in ``seq`` order and returns the passage as the event leaves it. Everything that needs a
passage reads what this fold made, never the events again:

- the journal keeps the ``passages`` table with it, in the transaction of the events;
- recovery (S7) starts a lane from its open passage's record;
- records, metrics, the guard's screen, the demo and the checkpoint ledger read records;
- the zone central projects its passages table with the same function, so the lane's and
  the zone's ledgers cannot disagree.

``fold_lane`` keeps the few facts about the lane itself that outlive passages: the last
lift's authorisation (what a barrier found up at start is up for) and the customs spot
checks in force.

Pure: no I/O, no clock; times are the events' own ``ts`` text.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from gatectl import events as ev
from gatectl.events import Authorisation, Stamped
from gatectl.frozen import evolver


@dataclass(frozen=True, slots=True)
class PassageRecord:
    """One vehicle's attempt to pass a lane, as its events describe it."""

    passage_id: str
    lane_id: str
    opened_seq: int
    opened_at: str
    closed_at: str | None = None
    card: str | None = None
    plate: str | None = None
    gross_weight_kg: float | None = None
    request_id: str | None = None
    decision: str | None = None
    decided_at: str | None = None  # when the release decision was journaled
    instruction_id: str | None = None
    form_id: str | None = None
    hint: str | None = None
    auth_kind: str | None = None  # the authorisation consumed for it (S1, S6)
    auth_id: str | None = None
    lifted_at: str | None = None  # the lift under that authorisation
    #: Its vehicle was seen on the safety or exit loop after the lift.
    entered: bool = False
    #: When the authorisation, the lift or a loop of the passage was last journaled: how
    #: long nobody has been seen, whatever restarts came since (S7). The authorisation
    #: counts because a kill right after the coil write can take the lift's own record.
    last_seen_at: str | None = None
    hold_reason: str | None = None
    outcome: str | None = None
    reason: str | None = None
    #: On a shared lane: the kind the passage went under (bonded, non_bonded).
    lane_kind: str | None = None
    #: Opened during an emergency drill: kept out of the real statistics.
    drill: bool = False

    @property
    def open(self) -> bool:
        return self.closed_at is None

    @property
    def authorisation(self) -> Authorisation | None:
        if self.auth_kind is None or self.auth_id is None:
            return None
        return Authorisation(self.auth_kind, self.auth_id)

    @property
    def lifted(self) -> bool:
        return self.lifted_at is not None


#: Columns of the journal's ``passages`` table, in this order.
COLUMNS: tuple[str, ...] = tuple(PassageRecord.__dataclass_fields__)


# Copies with a few fields changed, one per step of the folds below: each is what
# ``dataclasses.replace(record, those=...)`` gives, at a sixth of its cost (the folds run
# once per journaled event, on the lane and at the central).
_card = evolver(PassageRecord, "card")
_plate = evolver(PassageRecord, "plate")
_weight = evolver(PassageRecord, "gross_weight_kg")
_requested = evolver(PassageRecord, "request_id", "decision", "decided_at", "instruction_id", "form_id", "hint",
                     "hold_reason")
_decided = evolver(PassageRecord, "decision", "decided_at", "instruction_id", "form_id", "hint", "lane_kind")
_decided_locally = evolver(PassageRecord, "decision", "decided_at")
_authorised = evolver(PassageRecord, "auth_kind", "auth_id", "last_seen_at")
_lifted = evolver(PassageRecord, "lifted_at", "last_seen_at")
_seen = evolver(PassageRecord, "last_seen_at", "entered")
_held = evolver(PassageRecord, "hold_reason")
_closed = evolver(PassageRecord, "closed_at", "outcome", "reason", "plate", "lane_kind")


def fold(record: PassageRecord | None, st: Stamped) -> PassageRecord | None:
    """The lane's passage after ``st``: a new record on ``passage.opened``, the open one
    updated by an event of its own passage, ``record`` itself (the same object) for any
    other event. A closed record is returned once, closed; the caller drops it after."""
    e = st.event
    if isinstance(e, ev.PassageOpened):
        return PassageRecord(e.passage_id or st.event_id, st.lane_id, st.seq, st.ts, drill=bool(e.drill))
    if record is None or record.closed_at is not None or st.passage_id != record.passage_id:
        return record
    match e:
        case ev.CardRead():
            return _card(record, e.card)
        case ev.PlateRead():
            return _plate(record, e.plate)
        case ev.WeightStable():
            return _weight(record, e.gross_weight_kg)
        case ev.ReleaseRequested():
            # Asked (again, after a restart): whatever was decided before no longer holds.
            return _requested(record, e.request_id, None, None, None, None, None, None)
        case ev.AuthorityDecision():
            return _decided(record, e.decision, st.ts, e.instruction_id, e.form_id, e.hint,
                            e.lane_kind or record.lane_kind)
        case ev.LocalDecision():
            return _decided_locally(record, e.decision, st.ts)
        case ev.AuthorisationCommitted() if e.authorisation is not None:
            return _authorised(record, e.authorisation.kind, e.authorisation.id, st.ts)
        case ev.BarrierLifted() if e.reason == "lift":
            return _lifted(record, record.lifted_at or st.ts, st.ts)
        case ev.LoopChanged():
            entered = record.entered or (record.lifted and e.occupied and e.loop != "arrival_loop")
            return _seen(record, st.ts, entered)
        case ev.PassageHeld():
            return _held(record, e.reason)
        case ev.PassageClosed():
            return _closed(record, st.ts, e.outcome, e.reason, e.plate or record.plate, e.lane_kind or record.lane_kind)
    return record


@dataclass(frozen=True, slots=True)
class LaneRecord:
    """What a lane remembers beyond its passages."""

    lane_id: str
    #: The authorisation of the lift since the lane's last passage opened, if any: a
    #: barrier found up at start with no passage open is up for it (else it is a fault).
    last_lift: Authorisation | None = None
    #: Customs spot checks in force (R7): hold the next N released vehicles, or a share.
    spot_hold_next: int = 0
    spot_fraction: float = 0.0
    #: Customs' order over the open hours (R2): open (True) or closed (False), until when
    #: (ISO time; None: until cleared), and why. None: the hours apply.
    hours_open: bool | None = None
    hours_until: str | None = None
    hours_reason: str = ""
    #: An emergency drill is under way on the lane.
    drill: bool = False
    #: Who gave the hours order in force; who started the drill, why and when (ISO time).
    #: Kept for the lane's view; the journal's ``lanes`` table does not keep them, so after
    #: a restart they are read back from the order's and the drill's events.
    hours_by: str = ""
    drill_by: str = ""
    drill_note: str = ""
    drill_since: str | None = None


_last_lift = evolver(LaneRecord, "last_lift")
_spot = evolver(LaneRecord, "spot_hold_next", "spot_fraction")
_hours = evolver(LaneRecord, "hours_open", "hours_until", "hours_reason", "hours_by")
_drill = evolver(LaneRecord, "drill", "drill_by", "drill_note", "drill_since")


def fold_lane(record: LaneRecord, st: Stamped) -> LaneRecord:
    e = st.event
    match e:
        case ev.PassageOpened():
            # A passage opens with the barrier down (or takes the lowering lift over).
            return _last_lift(record, None) if record.last_lift is not None else record
        case ev.BarrierLifted() if e.authorisation is not None:
            return _last_lift(record, e.authorisation)
        case ev.SpotCheckOrdered() | ev.SpotCheckApplied():
            return _spot(record, int(e.remaining), float(e.fraction))
        case ev.HoursOrderedEvent():
            if e.clear:
                return _hours(record, None, None, "", "")
            return _hours(record, e.open, e.until, e.reason, e.by)
        case ev.DrillStarted():
            return _drill(record, True, e.by, e.note, st.ts)
        case ev.DrillEnded():
            return _drill(record, False, "", "", None)
    return record


def project(lane_id: str, events: Iterable[Stamped]) -> tuple[PassageRecord | None, LaneRecord]:
    """A lane's open passage (None if none is open) and its lane record after ``events``
    (the lane's own, oldest first): both folds over a stretch of its journal."""
    record: PassageRecord | None = None
    lane = LaneRecord(lane_id)
    for st in events:
        record = fold(record, st)
        if record is not None and record.closed_at is not None:
            record = None
        lane = fold_lane(lane, st)
    return record, lane


__all__ = ["PassageRecord", "LaneRecord", "COLUMNS", "fold", "fold_lane", "project"]
