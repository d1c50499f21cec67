"""Every journaled event, defined once, and the one codec between them and JSON.

An event is a frozen value: the lane core emits them, the records and the ledger write
them, the journal stamps them (``Stamped``: ``event_id``, ``seq``, ``site_id``,
``lane_id``, ``ts``) and stores ``encode(stamped)``, the JSON body that MQTT publishes and
the API serves as it is. Whoever reads a body back (recovery, the passage projection,
records, metrics, the screen, the ledger, the zone central) calls ``decode`` and matches
on the class, never on strings and dicts.

The JSON shape of each type is its fields in order, keys as named (``key=`` where a JSON
key is not a Python name). A field made with ``opt()`` is left out of the JSON while it is
None; every other field is always written, None as ``null``. Types that share one JSON
``type`` (``release.decided`` from the authority or from the lane's own lists,
``alarm.raised`` of each alarm, ``incident.opened`` by the core or by a person) are told
apart by a fixed field (``FIXED``) or, for ``incident.opened``, by which keys are present.

A body whose type this module does not know (an older or newer gatectl) decodes to
``Unknown`` with its fields kept, and encodes back unchanged.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Mapping, NamedTuple

from gatectl.frozen import maker

#: Keys of the envelope the journal stamps on every event.
ENVELOPE = ("event_id", "seq", "site_id", "lane_id", "type", "ts")


class EventDecodeError(ValueError):
    """A body that is not a journaled event of the shape its type says."""


class Authorisation(NamedTuple):
    """What a lift is the effect of (S1): ``(kind, id)``.

    ``kind`` is ``release_instruction``, ``whitelist``, ``staff_card``, ``approval`` (one
    use ``APPROVAL-ID#n`` of an approval) or ``emergency``. A tuple, so it compares equal
    to ``("release_instruction", "CMD-1")``.
    """

    kind: str
    id: str

    def json(self) -> dict[str, str]:
        out = {"kind": self.kind, "id": self.id}
        if self.kind == "approval":
            out["approval_id"] = self.approval_id or self.id
        return out

    @property
    def approval_id(self) -> str | None:
        """The approval a use ``AP-...#n`` belongs to (None for other kinds)."""
        return self.id.rsplit("#", 1)[0] if self.kind == "approval" else None

    @classmethod
    def from_json(cls, value: Any) -> Authorisation | None:
        if value is None:
            return None
        if not isinstance(value, Mapping) or not isinstance(value.get("kind"), str) or not isinstance(value.get("id"), str):
            raise EventDecodeError(f"an authorisation is {{kind, id}}, not {value!r:.80}")
        return cls(value["kind"], value["id"])


# ---------------------------------------------------------------------------- fields


def opt(**kw: Any) -> Any:
    """A field left out of the JSON while it is None."""
    return field(default=None, metadata={"omit": True, **kw.pop("metadata", {})}, **kw)


def key(name: str, **kw: Any) -> Any:
    """A field whose JSON key is ``name`` (e.g. ``from``)."""
    return field(metadata={"key": name}, **kw)


def auth(*, omit: bool = False) -> Any:
    """An ``Authorisation`` field, ``{kind, id}`` in JSON."""
    return field(default=None, metadata={"auth": True, "omit": omit})


@dataclass(frozen=True, slots=True)
class _Field:
    attr: str
    key: str
    omit: bool
    auth: bool
    required: bool


class Event:
    """Base of every journaled event. ``TYPE`` is the JSON ``type``."""

    __slots__ = ()
    TYPE: ClassVar[str] = ""
    #: Fields written with constant values that tell types of one ``TYPE`` apart.
    FIXED: ClassVar[Mapping[str, Any]] = {}
    _FIELDS: ClassVar[tuple[_Field, ...]] = ()
    #: The class's decoder of a body's fields (see ``_decoder``).
    _DECODE: ClassVar[Callable[[Mapping[str, Any], str], Event]]

    @property
    def data(self) -> dict[str, Any]:
        """The event's own JSON fields (no envelope)."""
        return _fields_json(self)


@dataclass(frozen=True, slots=True, kw_only=True)
class LaneEvent(Event):
    """An event of a lane's rules. ``passage_id`` names the passage open when it
    happened (left out when none was); ``drill`` is true for what happened during an
    emergency drill on the lane (left out otherwise)."""

    passage_id: str | None = field(default=None, metadata={"omit": True})
    drill: bool | None = field(default=None, metadata={"omit": True})


_TYPES: dict[str, list[type[Event]]] = {}
_DISPATCH: dict[str, Callable[[Mapping[str, Any]], type[Event]]] = {}


def _register(cls: type[Event]) -> type[Event]:
    fields = []
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        fields.append(_Field(f.name, f.metadata.get("key", f.name), bool(f.metadata.get("omit")),
                             bool(f.metadata.get("auth")), required))
    cls._FIELDS = tuple(fields)
    cls._DECODE = _decoder(cls)
    _TYPES.setdefault(cls.TYPE, []).append(cls)
    return cls


def _decoder(cls: type[Event]) -> Callable[[Mapping[str, Any], str], Event]:
    """``decode(body, type_)``: the event of class ``cls`` from a body's own fields.

    What ``decode_event`` did field by field through ``_FIELDS`` for every event, written
    out once per class as straight-line code: each field in order taken from its key
    (``Authorisation.from_json`` for authorisations), its default when the key is absent,
    ``EventDecodeError`` at the first required one missing; then the instance made without
    the keyword call of ``__init__`` (``gatectl.frozen.maker``)."""
    env: dict[str, Any] = {"_make": maker(cls), "_auth": Authorisation.from_json, "_Error": EventDecodeError}
    body: list[str] = []
    for i, f, d in zip(range(len(cls._FIELDS)), cls._FIELDS, dataclasses.fields(cls)):  # type: ignore[arg-type]
        k = repr(f.key)
        present = f"_auth(body[{k}])" if f.auth else f"body[{k}]"
        if f.required:
            body += [f"if {k} not in body:", f"    raise _Error('%s without %r' % (type_, {k}))", f"v{i} = {present}"]
        elif d.default is not dataclasses.MISSING:
            env[f"_d{i}"] = d.default
            body.append(f"v{i} = {present} if {k} in body else _d{i}" if f.auth else f"v{i} = body.get({k}, _d{i})")
        else:
            env[f"_f{i}"] = d.default_factory
            body.append(f"v{i} = {present} if {k} in body else _f{i}()")
    body.append(f"return _make({', '.join(f'v{i}' for i in range(len(cls._FIELDS)))})")
    src = f"def decode_{cls.__name__}(body, type_):\n" + "".join(f"    {line}\n" for line in body)
    ns: dict[str, Any] = {}
    exec(compile(src, f"<gatectl.events decoder of {cls.__name__}>", "exec"), env, ns)  # noqa: S102
    return ns[f"decode_{cls.__name__}"]


def event(cls: type) -> type:
    """Class decorator: a frozen, slotted, keyword-only event registered by its ``TYPE``."""
    return _register(dataclass(frozen=True, slots=True, kw_only=True)(cls))


def _fields_json(ev: Event) -> dict[str, Any]:
    out: dict[str, Any] = dict(ev.FIXED)
    for f in ev._FIELDS:
        value = getattr(ev, f.attr)
        if value is None and f.omit:
            continue
        if f.auth and value is not None:
            value = value.json()
        out[f.key] = value
    return out


# ============================================================ passages (the lane core)


@event
class PassageOpened(LaneEvent):
    TYPE = "passage.opened"
    card: str | None = None
    approval_id: str | None = opt()  # opened by a manual or remote lift
    emergency: bool | None = opt()  # opened by the emergency button


@event
class PlateRead(LaneEvent):
    """The plate camera's read of the vehicle of the passage (CONTRACT 8)."""

    TYPE = "plate.read"
    plate: str
    confidence: float | None = opt()
    captured_at: str | None = opt()


@event
class CardRead(LaneEvent):
    TYPE = "card.read"
    card: str


@event
class CardRefused(LaneEvent):
    TYPE = "card.refused"
    card: str
    reason: str  # lane_busy | open_elsewhere
    lane: str | None = opt()  # the lane whose open passage holds the card


@event
class WeightStable(LaneEvent):
    TYPE = "weight.stable"
    gross_weight_kg: float


@event
class ReleaseRequested(LaneEvent):
    TYPE = "release.requested"
    request_id: str
    card: str
    gross_weight_kg: float | None = None
    plate: str | None = opt()
    lane_kind: str | None = opt()  # on a shared lane: the kind asked of this authority


@event
class AuthorityDecision(LaneEvent):
    """The release authority's answer (R3)."""

    TYPE = "release.decided"
    FIXED = {"source": "authority"}
    request_id: str
    decision: str  # release | hold | inspect | deny
    instruction_id: str | None = None
    form_id: str | None = None
    hint: str | None = None
    declared_weight_kg: float | None = None
    lane_kind: str | None = opt()  # on a shared lane: the kind the passage goes under


@event
class ReleaseAnswered(LaneEvent):
    """One authority's answer on a shared lane, before the lane decides whose it is."""

    TYPE = "release.answered"
    request_id: str
    lane_kind: str
    decision: str | None = None  # None: no usable answer (see reason)
    instruction_id: str | None = None
    form_id: str | None = None
    hint: str | None = None
    reason: str | None = opt()  # the failure, when it gave no answer


@event
class LocalDecision(LaneEvent):
    """A decision the lane takes from its own lists (administrative, personnel)."""

    TYPE = "release.decided"
    FIXED = {"source": "local"}
    decision: str  # release | hold
    basis: str  # whitelist | staff_card | not_registered | admin_overweight | not_staff | plate_*
    curb_weight_kg: float | None = opt()
    name: str | None = opt()
    plate: str | None = opt()  # the plate read, on an administrative lane with a camera
    registered_plate: str | None = opt()


@event
class ReleaseFailed(LaneEvent):
    TYPE = "release.failed"
    request_id: str | None
    reason: str
    detail: str = ""


@event
class AuthorisationCommitted(LaneEvent):
    """Written by the journal in the transaction that consumes the authorisation (S6)."""

    TYPE = "authorisation.committed"
    passage_id: str | None = None
    authorisation: Authorisation | None = auth()


@event
class BarrierLifted(LaneEvent):
    TYPE = "barrier.lifted"
    authorisation: Authorisation | None = auth()
    reason: str = "lift"  # lift | safety_reverse


@event
class BarrierLowered(LaneEvent):
    TYPE = "barrier.lowered"
    authorisation: Authorisation | None = auth()
    retry: bool | None = opt()  # a lowering pulse sent again after the IO module was away


@event
class BarrierLiftFailed(LaneEvent):
    TYPE = "barrier.lift_failed"
    authorisation: Authorisation | None = auth()


@event
class BarrierPosition(LaneEvent):
    TYPE = "barrier.position"
    limit: str  # barrier_up | barrier_down
    on: bool


@event
class LoopChanged(LaneEvent):
    TYPE = "loop.changed"
    loop: str  # arrival_loop | safety_loop | exit_loop
    occupied: bool


@event
class PassageHeld(LaneEvent):
    TYPE = "passage.held"
    reason: str
    display: str


@event
class PassageClosed(LaneEvent):
    TYPE = "passage.closed"
    outcome: str  # passed | held | backed_out | forced | emergency | manual
    card: str | None = None
    gross_weight_kg: float | None = None
    decision: str | None = None
    authorisation: Authorisation | None = auth()
    reason: str | None = opt()
    plate: str | None = opt()
    lane_kind: str | None = opt()  # on a shared lane: the kind it went under


@event
class LaneRecovered(LaneEvent):
    TYPE = "lane.recovered"
    card: str | None = None
    authorisation: Authorisation | None = auth()


# ============================================================ hours and drills (R2)


@event
class HoursOrderedEvent(LaneEvent):
    """Customs opened or closed the lane now, over its open hours, or cleared that."""

    TYPE = "hours.ordered"
    open: bool | None = None
    until: str | None = None
    reason: str = ""
    clear: bool = False
    source: str = ""
    by: str = ""


@event
class DrillStarted(LaneEvent):
    """Park management started an emergency drill on the lane: what follows is marked."""

    TYPE = "drill.started"
    by: str = ""
    note: str = ""


@event
class DrillEnded(LaneEvent):
    TYPE = "drill.ended"
    by: str = ""
    note: str = ""


# ============================================================ spot checks (R7)


@event
class SpotCheckOrdered(LaneEvent):
    TYPE = "spot_check.ordered"
    order: Mapping[str, Any]  # {hold_next, fraction, clear}
    source: str
    remaining: int
    fraction: float


@event
class SpotCheckApplied(LaneEvent):
    TYPE = "spot_check.applied"
    remaining: int
    fraction: float
    draw: float | None = opt()


# ============================================================ alarms (R8, R9, R11, S4, S5)


class AlarmRaised(LaneEvent):
    """Base of ``alarm.raised``; ``ALARM`` is the JSON ``alarm``."""

    __slots__ = ()
    TYPE = "alarm.raised"
    ALARM: ClassVar[str] = ""

    @property
    def alarm(self) -> str:
        return self.ALARM


def alarm(name: str) -> Callable[[type], type]:
    def wrap(cls: type) -> type:
        cls.ALARM = name
        cls.FIXED = {"alarm": name}
        return event(cls)

    return wrap


@alarm("forced_passage")
class ForcedPassageAlarm(AlarmRaised):
    loop: str
    state: str


@alarm("tailgating")
class TailgatingAlarm(AlarmRaised):
    authorisation: Authorisation | None = auth()
    vehicles: int = 2


@alarm("emergency_release")
class EmergencyReleaseAlarm(AlarmRaised):
    authorisation: Authorisation | None = auth()
    account_pending: bool | None = opt()  # a lift: the guard owes an account of the vehicle
    note: str | None = opt()  # barrier_already_up


@alarm("device_fault")
class DeviceFaultAlarm(AlarmRaised):
    device: str
    reason: str = ""


@alarm("barrier_fault")
class BarrierFaultAlarm(AlarmRaised):
    reason: str


@alarm("authority_unreachable")
class AuthorityUnreachableAlarm(AlarmRaised):
    reason: str
    detail: str = ""


@alarm("instruction_replay")
class InstructionReplayAlarm(AlarmRaised):
    authorisation: Authorisation | None = auth()


@alarm("journal_fault")
class JournalFaultAlarm(AlarmRaised):
    detail: str = ""


# ============================================================ faults and incidents (R9, R15)


@event
class FaultOpened(LaneEvent):
    TYPE = "fault.opened"
    device: str
    reason: str = ""


@event
class FaultClosed(LaneEvent):
    TYPE = "fault.closed"
    device: str


@event
class BarrierIncidentOpened(LaneEvent):
    """The core's own incident record of a barrier fault (R9)."""

    TYPE = "incident.opened"
    incident_id: str
    kind: str
    reason: str


@event
class IncidentOpened(Event):
    """An incident opened for an alarm (``alarm_event_id``) or by a guard (None, ``by``)."""

    TYPE = "incident.opened"
    incident_id: str
    kind: str
    reason: str
    alarm_event_id: str | None
    by: str | None = opt()


@event
class IncidentUpdated(Event):
    TYPE = "incident.updated"
    incident_id: str
    account: Mapping[str, Any]  # {by, what, plate, photos, notified}


@event
class IncidentClosed(Event):
    TYPE = "incident.closed"
    incident_id: str
    by: str
    summary: str


@event
class AlarmAcknowledged(Event):
    TYPE = "alarm.acknowledged"
    alarm_event_id: str
    alarm: str
    by: str
    note: str


@event
class TicketOpened(Event):
    TYPE = "ticket.opened"
    ticket_id: str
    device: str
    reason: str
    source: str  # fault | report
    by: str | None = opt()
    passage_id: str | None = opt()


@event
class TicketAdvanced(Event):
    TYPE = "ticket.advanced"
    ticket_id: str
    from_: str = key("from")
    to: str
    by: str
    note: str = ""
    parties: list[str] | None = opt()  # to notified
    at: str | None = opt()  # to notified
    cause: str | None = opt()  # to fixed
    solution: str | None = opt()
    category: str | None = opt()


# ============================================================ approvals (R10, R11, R17)


@event
class ManualLiftRefused(LaneEvent):
    TYPE = "manual_lift.refused"
    reason: str


@event
class ApprovalAccepted(LaneEvent):
    TYPE = "approval.accepted"
    approval_id: str
    trigger: str
    max_lifts: int
    lifts_used: int
    valid_from: str
    valid_until: str
    plate: str | None = None
    countersigned: bool | None = opt()  # park management signed it too


@event
class ApprovalRefused(LaneEvent):
    TYPE = "approval.refused"
    approval_id: str | None
    reason: str
    message: str = ""
    source: str = ""
    lane: str | None = opt()  # refused for a lane that is not configured (journaled on _site)


@event
class ApprovalUsed(LaneEvent):
    TYPE = "approval.used"
    approval_id: str
    use: int
    max_lifts: int
    trigger: str


@event
class ApprovalExpired(LaneEvent):
    TYPE = "approval.expired"
    approval_id: str


@event
class EmergencyAccountGiven(LaneEvent):
    """The guard's account of an emergency release (R11), naming its passage."""

    TYPE = "emergency.account"
    passage_id: str | None
    vehicle_type: str
    plate: str | None = None
    note: str = ""
    by: str = ""


# ============================================================ duty records (R13, R15)


@event
class ShiftHandover(Event):
    TYPE = "shift.handover"
    outgoing: str
    incoming: str
    notes: str = ""
    open_alarms: list[Any] = field(default_factory=list)
    open_incidents: list[Any] = field(default_factory=list)
    open_tickets: list[Any] = field(default_factory=list)


@event
class ShiftCheck(Event):
    TYPE = "shift.check"
    phase: str  # start | end
    guard: str
    remarks: str = ""
    devices: Mapping[str, Any] = field(default_factory=dict)


@event
class VideoNote(Event):
    TYPE = "video.note"
    guard: str
    note: str


@event
class EquipmentDaily(Event):
    TYPE = "equipment.daily"
    date: str
    device: str
    availability: float
    faults: int
    faulty_s: float
    frames_dropped: int
    checks: int


# ============================================================ the site


@event
class CommandRefused(Event):
    """An inbound command that could not be applied (MQTT)."""

    TYPE = "command.refused"
    source: str
    topic: str
    reason: str
    message: str
    lane: str | None = None
    payload: str = ""
    count: int | None = opt()  # refusals of this topic and reason since the last record


@event
class LedgerExported(Event):
    TYPE = "ledger.exported"
    period_from: str
    period_to: str
    path: str
    format: str
    rows: int
    files: list[str] = field(default_factory=list)
    sheets: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Unknown(Event):
    """A journaled type this gatectl does not know; its fields are kept as they are."""

    type: str
    fields: Mapping[str, Any]

    @property
    def data(self) -> dict[str, Any]:
        return dict(self.fields)


# ---------------------------------------------------------------------------- dispatch


def _by_fixed(type_: str) -> Callable[[Mapping[str, Any]], type[Event]]:
    classes = _TYPES[type_]
    (name,) = {k for c in classes for k in c.FIXED}
    table = {c.FIXED[name]: c for c in classes}

    def pick(body: Mapping[str, Any]) -> type[Event]:
        try:
            return table[body.get(name)]
        except (KeyError, TypeError):
            raise _UnknownVariant from None

    return pick


class _UnknownVariant(Exception):
    pass


for _type, _classes in _TYPES.items():
    if len(_classes) > 1 and all(c.FIXED for c in _classes):
        _DISPATCH[_type] = _by_fixed(_type)
_DISPATCH["incident.opened"] = lambda body: IncidentOpened if "alarm_event_id" in body else BarrierIncidentOpened
del _type, _classes


def event_class(type_: str, body: Mapping[str, Any]) -> type[Event] | None:
    """The class of a body of JSON type ``type_`` (None if unknown)."""
    pick = _DISPATCH.get(type_)
    if pick is not None:
        try:
            return pick(body)
        except _UnknownVariant:
            return None
    classes = _TYPES.get(type_)
    return classes[0] if classes else None


# ---------------------------------------------------------------------------- stamped


@dataclass(frozen=True, slots=True)
class Stamped:
    """A journaled event: the envelope the journal stamped, and the event."""

    event_id: str
    seq: int
    site_id: str
    lane_id: str
    ts: str  # ISO 8601 with offset, as written
    event: Event

    @property
    def type(self) -> str:
        ev = self.event
        return ev.type if isinstance(ev, Unknown) else ev.TYPE

    @property
    def passage_id(self) -> str | None:
        return getattr(self.event, "passage_id", None) if not isinstance(self.event, Unknown) else (
            self.event.fields.get("passage_id"))


def encode(st: Stamped) -> dict[str, Any]:
    """The JSON body of a journaled event, as stored, published and served."""
    return {
        "event_id": st.event_id,
        "seq": st.seq,
        "site_id": st.site_id,
        "lane_id": st.lane_id,
        "type": st.type,
        "ts": st.ts,
        **st.event.data,
    }


def dumps(st: Stamped) -> str:
    return json.dumps(encode(st), ensure_ascii=False)


#: Decoders of the JSON types that are one class (no variant to pick).
_SINGLE: dict[str, Callable[[Mapping[str, Any], str], Event]] = {
    t: classes[0]._DECODE for t, classes in _TYPES.items() if len(classes) == 1 and t not in _DISPATCH}


def decode_event(type_: str, body: Mapping[str, Any]) -> Event:
    """The typed event of one body's own fields (``body`` may include the envelope)."""
    dec = _SINGLE.get(type_)
    if dec is not None:
        return dec(body, type_)
    cls = event_class(type_, body)
    if cls is None:
        return Unknown(type=type_, fields={k: v for k, v in body.items() if k not in ENVELOPE})
    return cls._DECODE(body, type_)


_stamped = maker(Stamped)


def decode(body: Mapping[str, Any]) -> Stamped:
    """A journaled event from its JSON body (as stored or as published)."""
    if type(body) is not dict and not isinstance(body, Mapping):
        raise EventDecodeError(f"an event is a JSON object, not {type(body).__name__}")
    try:
        event_id = body["event_id"]
        seq = body["seq"]
        site_id = body["site_id"]
        lane_id = body["lane_id"]
        type_ = body["type"]
        ts = body["ts"]
    except KeyError as exc:
        raise EventDecodeError(f"event without {exc.args[0]!r}") from None
    if not isinstance(type_, str) or not isinstance(seq, int) or isinstance(seq, bool) or not isinstance(ts, str):
        raise EventDecodeError("an event's type and ts are text and its seq a whole number")
    return _stamped(str(event_id), seq, str(site_id), str(lane_id), ts, decode_event(type_, body))


def loads(text: str | bytes) -> Stamped:
    try:
        body = json.loads(text)
    except ValueError as exc:
        raise EventDecodeError(f"not JSON: {exc}") from None
    return decode(body)


#: Every registered JSON type (for docs and tests).
TYPES: frozenset[str] = frozenset(_TYPES)


__all__ = [name for name, value in globals().items()
           if isinstance(value, type) and issubclass(value, Event)] + [
    "Authorisation", "Stamped", "EventDecodeError", "ENVELOPE", "TYPES",
    "encode", "decode", "decode_event", "dumps", "loads", "event_class",
]
