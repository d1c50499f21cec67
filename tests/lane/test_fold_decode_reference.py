"""The passage fold, the lane fold and the event decoder are written for speed (copies by
slot, a decoder generated per class); they must do exactly what the plain versions did.

The plain versions are kept here, as they were (``dataclasses.replace`` at each step,
fields decoded one by one through ``_FIELDS`` and a keyword call), as the reference:
random bodies of every type (fields absent, null, of the wrong JSON kind, extra keys) and
random passage streams must decode and fold to equal values, the same object where the
reference returns the same object, and the same error where it raises.

S7: recovery and the central's passages are both this fold over the journal.
"""

from __future__ import annotations

import dataclasses
from dataclasses import replace
from typing import Any, Mapping

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gatectl import events as ev
from gatectl.events import ENVELOPE, EventDecodeError, Stamped, Unknown, decode, decode_event, event_class
from gatectl.frozen import evolver, maker
from gatectl.lane.passage import LaneRecord, PassageRecord, fold, fold_lane

PROPS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ---------------------------------------------------------------------------- the reference


def ref_decode_event(type_: str, body: Mapping[str, Any]) -> ev.Event:
    cls = event_class(type_, body)
    if cls is None:
        return Unknown(type=type_, fields={k: v for k, v in body.items() if k not in ENVELOPE})
    kwargs: dict[str, Any] = {}
    for f in cls._FIELDS:
        if f.key in body:
            value = body[f.key]
            kwargs[f.attr] = ev.Authorisation.from_json(value) if f.auth else value
        elif f.required:
            raise EventDecodeError(f"{type_} without {f.key!r}")
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise EventDecodeError(f"{type_}: {exc}") from None


def ref_decode(body: Mapping[str, Any]) -> Stamped:
    if not isinstance(body, Mapping):
        raise EventDecodeError(f"an event is a JSON object, not {type(body).__name__}")
    try:
        event_id, seq, site_id, lane_id, type_, ts = (body[k] for k in ENVELOPE)
    except KeyError as exc:
        raise EventDecodeError(f"event without {exc.args[0]!r}") from None
    if not isinstance(type_, str) or not isinstance(seq, int) or isinstance(seq, bool) or not isinstance(ts, str):
        raise EventDecodeError("an event's type and ts are text and its seq a whole number")
    return Stamped(str(event_id), seq, str(site_id), str(lane_id), ts, ref_decode_event(type_, body))


def ref_fold(record: PassageRecord | None, st: Stamped) -> PassageRecord | None:
    e = st.event
    if isinstance(e, ev.PassageOpened):
        return PassageRecord(e.passage_id or st.event_id, st.lane_id, st.seq, st.ts, drill=bool(e.drill))
    if record is None or record.closed_at is not None or st.passage_id != record.passage_id:
        return record
    match e:
        case ev.CardRead():
            return replace(record, card=e.card)
        case ev.PlateRead():
            return replace(record, plate=e.plate)
        case ev.WeightStable():
            return replace(record, gross_weight_kg=e.gross_weight_kg)
        case ev.ReleaseRequested():
            return replace(record, request_id=e.request_id, decision=None, decided_at=None, instruction_id=None,
                           form_id=None, hint=None, hold_reason=None)
        case ev.AuthorityDecision():
            return replace(record, decision=e.decision, decided_at=st.ts, instruction_id=e.instruction_id,
                           form_id=e.form_id, hint=e.hint, lane_kind=e.lane_kind or record.lane_kind)
        case ev.LocalDecision():
            return replace(record, decision=e.decision, decided_at=st.ts)
        case ev.AuthorisationCommitted() if e.authorisation is not None:
            return replace(record, auth_kind=e.authorisation.kind, auth_id=e.authorisation.id, last_seen_at=st.ts)
        case ev.BarrierLifted() if e.reason == "lift":
            return replace(record, lifted_at=record.lifted_at or st.ts, last_seen_at=st.ts)
        case ev.LoopChanged():
            entered = record.entered or (record.lifted and e.occupied and e.loop != "arrival_loop")
            return replace(record, last_seen_at=st.ts, entered=entered)
        case ev.PassageHeld():
            return replace(record, hold_reason=e.reason)
        case ev.PassageClosed():
            return replace(record, closed_at=st.ts, outcome=e.outcome, reason=e.reason,
                           plate=e.plate or record.plate, lane_kind=e.lane_kind or record.lane_kind)
    return record


def ref_fold_lane(record: LaneRecord, st: Stamped) -> LaneRecord:
    e = st.event
    match e:
        case ev.PassageOpened():
            return replace(record, last_lift=None) if record.last_lift is not None else record
        case ev.BarrierLifted() if e.authorisation is not None:
            return replace(record, last_lift=e.authorisation)
        case ev.SpotCheckOrdered() | ev.SpotCheckApplied():
            return replace(record, spot_hold_next=int(e.remaining), spot_fraction=float(e.fraction))
        case ev.HoursOrderedEvent():
            if e.clear:
                return replace(record, hours_open=None, hours_until=None, hours_reason="", hours_by="")
            return replace(record, hours_open=e.open, hours_until=e.until, hours_reason=e.reason, hours_by=e.by)
        case ev.DrillStarted():
            return replace(record, drill=True, drill_by=e.by, drill_note=e.note, drill_since=st.ts)
        case ev.DrillEnded():
            return replace(record, drill=False, drill_by="", drill_note="", drill_since=None)
    return record


# ---------------------------------------------------------------------------- bodies

TYPES = sorted(ev.TYPES) + ["no.such.type"]
FOLDED = ["passage.opened", "passage.opened", "card.read", "plate.read", "weight.stable", "release.requested", "release.decided",
          "authorisation.committed", "barrier.lifted", "loop.changed", "passage.held", "passage.closed",
          "spot_check.ordered", "spot_check.applied", "hours.ordered", "drill.started", "drill.ended",
          "barrier.lowered", "alarm.raised"]
AUTH_KINDS = ["release_instruction", "whitelist", "approval", "emergency"]

scalars = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.floats(-1e3, 1e3, allow_nan=False),
                    st.sampled_from(["", "P1", "P2", "x", "lift", "safety_reverse", "arrival_loop", "safety_loop",
                                     "release", "hold", "authority", "local", "forced_passage", "tailgating"]))
auths = st.one_of(st.none(), st.builds(lambda k, i: {"kind": k, "id": i}, st.sampled_from(AUTH_KINDS),
                                       st.sampled_from(["CMD-1", "AP-1#1", "W-1"])),
                  st.fixed_dictionaries({"kind": st.integers()}), st.just("not an object"))
values = st.one_of(scalars, auths, st.lists(scalars, max_size=3), st.dictionaries(st.sampled_from("abc"), scalars,
                                                                                  max_size=2))


@st.composite
def bodies(draw: st.DrawFn, types: list[str] = TYPES) -> dict[str, Any]:
    type_ = draw(st.sampled_from(types))
    body: dict[str, Any] = {"event_id": draw(st.sampled_from(["e1", "e2", 7])), "seq": draw(st.integers(1, 9)),
                            "site_id": "pc-1", "lane_id": "L1", "type": type_,
                            "ts": draw(st.sampled_from(["2026-12-03T08:00:00+08:00", "2026-12-03T08:00:01+08:00"]))}
    classes = ev._TYPES.get(type_, [])
    keys = {f.key for c in classes for f in c._FIELDS} | {k for c in classes for k in c.FIXED} | {"extra"}
    for k in sorted(keys):
        if draw(st.integers(0, 3)) == 0:
            continue  # absent
        fixed = {c.FIXED[k] for c in classes if k in c.FIXED}
        body[k] = draw(st.sampled_from(sorted(fixed)) if fixed and draw(st.booleans()) else values)
    if draw(st.integers(0, 9)) == 0:
        body.pop(draw(st.sampled_from(ENVELOPE)))
    if draw(st.integers(0, 9)) == 0:
        body[draw(st.sampled_from(["seq", "type", "ts"]))] = draw(st.one_of(st.booleans(), st.none(), st.text(max_size=2)))
    return body


def outcome(fn, *args):  # noqa: ANN001, ANN201
    try:
        return "ok", fn(*args)
    except EventDecodeError as exc:
        return "error", str(exc)


# ---------------------------------------------------------------------------- properties


@PROPS
@given(bodies())
def test_decode_equals_the_field_by_field_reference(body: dict[str, Any]) -> None:
    fast, ref = outcome(decode, body), outcome(ref_decode, body)
    assert fast == ref
    if fast[0] == "ok":
        assert type(fast[1].event) is type(ref[1].event)
        assert ev.encode(fast[1]) == ev.encode(ref[1])
    if "type" in body and isinstance(body["type"], str):
        assert outcome(decode_event, body["type"], body) == outcome(ref_decode_event, body["type"], body)


def test_decode_of_every_type_with_only_its_required_fields_and_defaults() -> None:
    for type_, classes in ev._TYPES.items():
        for cls in classes:
            body = {"event_id": "e", "seq": 1, "site_id": "s", "lane_id": "L", "type": type_, "ts": "t",
                    **cls.FIXED, **{f.key: "v" for f in cls._FIELDS if f.required}}
            if type_ == "incident.opened" and cls is ev.BarrierIncidentOpened:
                body.pop("alarm_event_id", None)
            fast, ref = decode(body), ref_decode(body)
            assert fast == ref and type(fast.event) is cls
            # Default factories give each event its own list or mapping, as __init__ does.
            for f in dataclasses.fields(cls):
                if f.default_factory is not dataclasses.MISSING:
                    assert getattr(fast.event, f.name) is not getattr(decode(body).event, f.name)


#: Plausible values of the fields the folds read (random ones elsewhere).
PLAUSIBLE = {
    "passage_id": st.sampled_from(["P1"] * 8 + ["P2", None]),
    "authorisation": st.one_of(st.none(), st.builds(lambda k, i: {"kind": k, "id": i}, st.sampled_from(AUTH_KINDS),
                                                    st.sampled_from(["CMD-1", "AP-1#1"]))),
    "reason": st.sampled_from(["lift", "lift", "safety_reverse", None, "overweight"]),
    "loop": st.sampled_from(["arrival_loop", "safety_loop", "exit_loop"]),
    "occupied": st.booleans(), "clear": st.booleans(), "open": st.sampled_from([True, False, None]),
    "remaining": st.integers(0, 3), "fraction": st.floats(0, 1), "drill": st.sampled_from([None, True, False]),
    "lane_kind": st.sampled_from([None, "bonded", "non_bonded"]), "plate": st.sampled_from([None, "沪A12345"]),
}


@st.composite
def streams(draw: st.DrawFn) -> list[Stamped]:
    out = []
    for seq in range(1, draw(st.integers(1, 30)) + 1):
        type_ = draw(st.sampled_from(FOLDED))
        cls = draw(st.sampled_from(ev._TYPES[type_]))
        body = {"event_id": f"e{seq}", "seq": seq, "site_id": "pc-1", "lane_id": "L1", "type": type_,
                "ts": f"2026-12-03T08:00:{seq:02d}+08:00", **cls.FIXED}
        for f in cls._FIELDS:
            if f.required or f.key == "passage_id" or draw(st.integers(0, 3)):
                body[f.key] = draw(PLAUSIBLE.get(f.key, scalars))
        out.append(ref_decode(body))
    return out


@PROPS
@given(streams())
def test_s7_the_passage_and_lane_folds_equal_the_replace_reference(stream: list[Stamped]) -> None:
    record = ref_record = None
    lane = ref_lane = LaneRecord("L1")
    for stamped in stream:
        try:
            ref_new = ref_fold(ref_record, stamped)
        except Exception as exc:  # noqa: BLE001 - a field of the wrong kind may fail both the same way
            with pytest.raises(type(exc)):
                fold(record, stamped)
            return
        new = fold(record, stamped)
        assert new == ref_new
        assert (new is record) == (ref_new is ref_record)
        record, ref_record = new, ref_new
        if record is not None and record.closed_at is not None:
            record = ref_record = None
        try:
            ref_lane_new = ref_fold_lane(ref_lane, stamped)
        except Exception as exc:  # noqa: BLE001
            with pytest.raises(type(exc)):
                fold_lane(lane, stamped)
            return
        lane_new = fold_lane(lane, stamped)
        assert lane_new == ref_lane_new and (lane_new is lane) == (ref_lane_new is ref_lane)
        lane, ref_lane = lane_new, ref_lane_new


@PROPS
@given(st.lists(st.sampled_from(tuple(PassageRecord.__dataclass_fields__)), min_size=1, max_size=5, unique=True),
       st.data())
def test_an_evolved_copy_equals_dataclasses_replace(changed: list[str], data: st.DataObject) -> None:
    base = PassageRecord("P1", "L1", 3, "t", card="c", auth_kind="whitelist", auth_id="W-1", entered=True)
    new_values = [data.draw(scalars) for _ in changed]
    copy = evolver(PassageRecord, *changed)(base, *new_values)
    ref = replace(base, **dict(zip(changed, new_values)))
    assert copy == ref and repr(copy) == repr(ref) and hash(copy) == hash(ref)
    assert type(copy) is PassageRecord and copy is not base
    with pytest.raises(dataclasses.FrozenInstanceError):
        copy.card = "other"  # type: ignore[misc]


def test_maker_and_evolver_refuse_what_they_cannot_copy_faithfully() -> None:
    @dataclasses.dataclass(frozen=True)
    class NoSlots:
        a: int

    @dataclasses.dataclass(slots=True)
    class NotFrozen:
        a: int

    @dataclasses.dataclass(frozen=True, slots=True)
    class PostInit:
        a: int

        def __post_init__(self) -> None:
            pass

    for cls in (NoSlots, NotFrozen, PostInit):
        with pytest.raises(TypeError):
            maker(cls)
    with pytest.raises(TypeError):
        evolver(PassageRecord, "no_such_field")
    assert maker(Stamped)("e", 1, "s", "L", "t", ev.DrillEnded()) == Stamped("e", 1, "s", "L", "t", ev.DrillEnded())


def test_s7_passages_in_the_shapes_lanes_journal_fold_as_the_reference_at_every_step() -> None:
    auth = {"kind": "release_instruction", "id": "CMD-1"}
    shapes: list[tuple[str, dict[str, Any]]] = [
        ("hours.ordered", {"open": True, "until": "2026-12-03T20:00:00+08:00", "reason": "专项", "by": "customs"}),
        ("drill.started", {"by": "park", "note": "演练"}),
        ("loop.changed", {"loop": "arrival_loop", "occupied": True}),
        ("passage.opened", {"passage_id": "P1", "drill": True}),
        ("card.read", {"passage_id": "P1", "card": "1234E2850E"}),
        ("plate.read", {"passage_id": "P1", "plate": "沪A12345", "confidence": 0.9}),
        ("weight.stable", {"passage_id": "P1", "gross_weight_kg": 31250.0}),
        ("release.requested", {"passage_id": "P1", "request_id": "R1", "card": "1234E2850E"}),
        ("release.decided", {"passage_id": "P1", "source": "authority", "request_id": "R1", "decision": "hold",
                             "lane_kind": "bonded"}),
        ("passage.held", {"passage_id": "P1", "reason": "hold", "display": "请等待"}),
        ("release.requested", {"passage_id": "P1", "request_id": "R2", "card": "1234E2850E"}),
        ("release.decided", {"passage_id": "P1", "source": "authority", "request_id": "R2", "decision": "release",
                             "instruction_id": "CMD-1", "form_id": "HF1", "hint": "请通行"}),
        ("release.decided", {"passage_id": "P1", "source": "local", "decision": "release", "basis": "whitelist"}),
        ("authorisation.committed", {"passage_id": "P1", "authorisation": auth}),
        ("barrier.lifted", {"passage_id": "P1", "authorisation": auth, "reason": "lift"}),
        ("spot_check.applied", {"passage_id": "P1", "remaining": 1, "fraction": 0.5}),
        ("loop.changed", {"passage_id": "P1", "loop": "safety_loop", "occupied": True}),
        ("barrier.lifted", {"passage_id": "P1", "authorisation": auth, "reason": "safety_reverse"}),
        ("loop.changed", {"passage_id": "P1", "loop": "safety_loop", "occupied": False}),
        ("passage.closed", {"passage_id": "P1", "outcome": "passed", "lane_kind": None}),
        ("card.read", {"passage_id": "P1", "card": "late"}),
        ("drill.ended", {"by": "park"}),
        ("hours.ordered", {"clear": True}),
        ("spot_check.ordered", {"order": {"hold_next": 2}, "source": "customs", "remaining": 2, "fraction": 0.0}),
        ("passage.opened", {}),
    ]
    record = ref_record = None
    lane = ref_lane = LaneRecord("L1")
    steps = 0
    for seq, (type_, data) in enumerate(shapes, 1):
        body = {"event_id": f"e{seq}", "seq": seq, "site_id": "pc-1", "lane_id": "L1", "type": type_,
                "ts": f"2026-12-03T08:00:{seq:02d}+08:00", **data}
        stamped = decode(body)
        assert stamped == ref_decode(body)
        new, ref_new = fold(record, stamped), ref_fold(ref_record, stamped)
        assert new == ref_new and (new is record) == (ref_new is ref_record)
        steps += new is not record
        record, ref_record = new, ref_new
        lane, ref_lane = fold_lane(lane, stamped), ref_fold_lane(ref_lane, stamped)
        assert lane == ref_lane
    assert steps == 16 and record is not None and record.passage_id == "e25"
