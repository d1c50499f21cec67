"""The lane's rules for its people (issue #15): plates, customs-set hours, drills, the shared
lane, and what the display says to a vehicle that is not released.

Same harness as tests/core/test_core_scenarios.py: exact commands of every step, Asia/Shanghai
time stamps (T0 is 09:00 on Friday 2026-11-27).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import date, datetime, timedelta

import pytest

from gatectl import events as ev
from gatectl.lane import display
from gatectl.lane.commands import CommitAuthorisation, ConfirmPassage, Pulse, RequestRelease
from gatectl.lane.core import LaneRules, LaneState
from gatectl.lane.hours import Schedule
from gatectl.lane.inputs import ApprovalAccepted, DrillOrdered, HoursOrdered, PlateRead, ReleaseDecided, ReleaseFailed
from test_core_scenarios import (
    BONDED,
    CARD_A,
    CARD_B,
    TZ,
    Lane,
    at,
    barrier_falls,
    barrier_rises,
    drive_through,
    emitted,
    names,
    only,
    open_pulses,
    up_to_deciding,
)

S = LaneState
CAMERA = replace(BONDED, has_camera=True)
ADMIN = LaneRules(lane_id="A1-IN", kind="administrative", whitelist={CARD_A: 1800.0}, has_camera=True,
                  registered_plates={CARD_A: "云A12345"}, min_vehicle_kg=500.0)
SHARED = LaneRules(lane_id="S1-IN", kind="shared", shared_kinds=("bonded", "non_bonded"), min_vehicle_kg=500.0)


def started(rules: LaneRules, t: float = 0.0) -> Lane:
    lane = Lane(rules)
    lane.start(at(t))
    assert lane.state is S.IDLE
    return lane


def approval(lane: Lane, approval_id: str, trigger: str = "panel", plate: str | None = None,
             countersigned: bool = False, t: float = 0.0) -> None:
    lane.feed(ApprovalAccepted(approval_id, trigger, 1, at(t - 60), at(t + 3600), plate=plate,
                               countersigned=countersigned), at(t))


# ============================================================ plates (CONTRACT 8)


def test_r3_the_plate_read_at_the_arrival_loop_goes_into_the_request_the_passage_and_its_close() -> None:
    """The camera's read of the vehicle on the arrival loop names the passage: journaled
    with it, sent in the pass request, and kept on its close."""
    lane = started(CAMERA)
    lane.feed(PlateRead("云A12345", 0.97, at(0.5)), at(0.6))
    out = lane.set("arrival_loop", True, at(1))
    assert names(out)[:3] == ["loop.changed", "passage.opened", "plate.read"]
    assert emitted(out, "plate.read")[0]["plate"] == "云A12345"
    lane.card(CARD_A, at(2))
    lane.weight(31250.0, at(3))
    (request,) = lane.requests
    assert request.plate == "云A12345"
    assert lane.events("release.requested")[0]["plate"] == "云A12345"
    lane.decide("hold", at(4))
    out = lane.set("arrival_loop", False, at(10))
    assert emitted(out, "passage.closed")[0]["plate"] == "云A12345"


def test_a_plate_read_of_another_time_is_not_this_vehicles_and_no_read_is_no_fault() -> None:
    """A read older than plate_max_age belongs to some earlier vehicle: the request goes with
    plate null, and nothing is held or alarmed for the missing plate."""
    lane = started(CAMERA)
    lane.feed(PlateRead("云A99999", None, at(0)), at(0))
    up_to_deciding(lane, 60)  # a minute later
    assert lane.requests[0].plate is None
    assert lane.events("plate.read") == [] and lane.events("alarm.raised") == []
    assert lane.state is S.DECIDING


def test_the_latest_read_before_the_request_wins_and_none_after_it() -> None:
    lane = started(CAMERA)
    lane.set("arrival_loop", True, at(1))
    lane.feed(PlateRead("云A0000X", 0.4), at(1.2))
    lane.feed(PlateRead("云A12345", 0.9), at(1.5))
    lane.card(CARD_A, at(2))
    lane.weight(31250.0, at(3))
    assert lane.requests[0].plate == "云A12345"
    lane.feed(PlateRead("云B55555", 0.9), at(3.5))  # the next vehicle, queueing behind
    assert lane.core.passage.plate == "云A12345"
    assert [e["plate"] for e in lane.events("plate.read")] == ["云A0000X", "云A12345"]


def test_r10_a_plate_bound_approval_lifts_only_that_plate() -> None:
    """R10: an approval naming a plate lifts that vehicle only: another plate is refused as
    plate_mismatch, no lift; the right plate lifts once."""
    lane = started(CAMERA)
    approval(lane, "AP-1", plate="云A12345")
    lane.feed(PlateRead("云B00000"), at(1))
    lane.set("arrival_loop", True, at(1.1))
    out = lane.set("manual_lift_button", True, at(2))
    assert names(out) == ["manual_lift.refused"] and emitted(out, "manual_lift.refused")[0]["reason"] == "plate_mismatch"
    lane.set("manual_lift_button", False, at(2.2))
    lane.set("arrival_loop", False, at(3))
    lane.feed(PlateRead("云A12345"), at(4))
    lane.set("arrival_loop", True, at(4.1))
    out = lane.set("manual_lift_button", True, at(5))
    assert [c.reason for c in open_pulses(out)] == ["lift"]


def held_with_its_plate_then_restarted(decision: str) -> Lane:
    """云A12345 read on the loop, card A asked about and not released (``decision``), then a
    restart with a vehicle on the loop: perhaps that one, perhaps another pulled up while
    the daemon was down. The restarted lane asks it for its card."""
    lane = started(CAMERA)
    lane.feed(PlateRead("云A12345", 0.97, at(0.5)), at(0.6))
    lane.set("arrival_loop", True, at(1))
    lane.card(CARD_A, at(2))
    lane.weight(31250.0, at(3))
    lane.decide(decision, at(4))
    lane, _ = lane.restart(at(10), arrival_loop=True)
    return lane


def remote_approval(lane: Lane, approval_id: str, plate: str, t: float) -> list:
    return lane.feed(ApprovalAccepted(approval_id, "remote", 1, at(t - 60), at(t + 3600), plate=plate), at(t))


@pytest.mark.parametrize("decision", ["hold", None])
def test_r10_r17_s7_a_plate_bound_remote_approval_after_a_restart_waits_for_that_vehicle(decision: str | None) -> None:
    """R10, R17, S7: after a restart the plate journaled before it may be another vehicle's
    (the lane asks the vehicle on the loop for its card). A remote approval for that plate
    does not lift whoever is there on the old read; the vehicle's own card, or a read of
    its plate since the restart, lifts it once. (``None``: the daemon died before customs
    answered.)"""
    lane = started(CAMERA)
    if decision is None:
        lane.feed(PlateRead("云A12345", 0.97, at(0.5)), at(0.6))
        up_to_deciding(lane, 1)
        lane, _ = lane.restart(at(10), arrival_loop=True)
    else:
        lane = held_with_its_plate_then_restarted(decision)
    assert open_pulses(remote_approval(lane, "AP-1", "云A12345", 11)) == []
    assert open_pulses(lane.tick(at(12))) == []
    assert lane.events("approval.used") == []
    # Card A shown: the passage's own vehicle, so the approval for its plate lifts it.
    assert [c.reason for c in open_pulses(lane.card(CARD_A, at(13)))] == ["lift"]
    assert [e["approval_id"] for e in lane.events("approval.used")] == ["AP-1"]


def test_r10_r17_s7_a_read_of_the_approvals_plate_since_the_restart_lets_it_lift() -> None:
    """R10, R17, S7: after a restart the camera reads another plate, then the approval's: only
    then is that vehicle at the lane, and the remote approval lifts it once, before any card."""
    lane = held_with_its_plate_then_restarted("hold")
    assert open_pulses(remote_approval(lane, "AP-1", "云A12345", 11)) == []
    assert open_pulses(lane.feed(PlateRead("云B00000", 0.9), at(11.5))) == []  # another vehicle's
    out = lane.feed(PlateRead("云A12345", 0.95), at(12))
    assert [c.reason for c in open_pulses(out)] == ["lift"]
    assert [e["approval_id"] for e in lane.events("approval.used")] == ["AP-1"]


def test_r10_without_a_camera_the_guard_checks_the_approvals_plate_by_eye() -> None:
    """R10: on a lane with no plate camera nothing can read the plate, so a plate-bound
    approval lifts as any other (the guard sees the plate on the approval and the vehicle)."""
    lane = started(BONDED)
    approval(lane, "AP-1", plate="云A12345")
    lane.set("arrival_loop", True, at(1))
    out = lane.set("manual_lift_button", True, at(2))
    assert [c.reason for c in open_pulses(out)] == ["lift"]


def test_r17_a_remote_approval_lifts_a_vehicle_whose_card_was_never_read() -> None:
    """R17: a vehicle on the arrival loop whose card cannot be read is why customs release
    it remotely: it lifts at once, not after the card wait has held it."""
    lane = started(BONDED)
    lane.set("arrival_loop", True, at(1))
    assert lane.state is S.PRESENT
    out = lane.feed(ApprovalAccepted("AP-R", "remote", 1, at(-60), at(3600)), at(2))
    assert lane.state is S.OPEN and not lane.requests
    assert [c.reason for c in open_pulses(out)] == ["lift"]


def test_r17_a_remote_approval_waits_while_the_authority_is_asked() -> None:
    """R17, S1: while the release authority is being asked, a remote approval waits: one
    passage, one authorisation. A hold then lets it lift."""
    lane = started(BONDED)
    up_to_deciding(lane, 1)
    lane.feed(ApprovalAccepted("AP-R", "remote", 1, at(-60), at(3600)), at(5))
    assert lane.state is S.DECIDING
    out = lane.decide("hold", at(6))
    assert [c.reason for c in open_pulses(out)] == ["lift"]


def test_r17_a_plate_bound_remote_approval_waits_for_that_vehicle() -> None:
    """R17: a remote approval for one plate lifts when that vehicle is at the lane, not
    for another one and not before."""
    lane = started(CAMERA)
    approval(lane, "AP-R", trigger="remote", plate="云A12345", t=1)
    assert lane.core.lift is None and lane.state is S.IDLE
    lane.feed(PlateRead("云B77777"), at(2))
    out = lane.set("arrival_loop", True, at(2.1))
    assert open_pulses(out) == [] and lane.state is S.PRESENT
    lane.set("arrival_loop", False, at(5))  # backs out without a card
    lane.feed(PlateRead("云A12345"), at(8))
    out = lane.set("arrival_loop", True, at(8.1))
    assert lane.state is S.OPEN and [c.reason for c in open_pulses(out)] == ["lift"]


@pytest.mark.parametrize("plate, held", [("云A12345", None), ("云B99999", "plate_mismatch"), (None, "plate_unread")])
def test_r7_an_administrative_vehicle_passes_on_card_and_plate(plate: str | None, held: str | None) -> None:
    """R7, CONTRACT 8: with a camera, the registered card and its registered plate; a card on
    another vehicle is held plate_mismatch, an unread plate plate_unread (sent to the guard)."""
    lane = started(ADMIN)
    if plate is not None:
        lane.feed(PlateRead(plate), at(0.5))
    lane.set("arrival_loop", True, at(1))
    lane.card(CARD_A, at(2))
    out = lane.weight(1900.0, at(3))
    decided = emitted(out, "release.decided")[0]
    assert (decided.get("plate"), decided["registered_plate"]) == (plate, "云A12345")
    if held is None:
        assert decided["decision"] == "release" and only(out, CommitAuthorisation)
    else:
        assert decided["basis"] == held and lane.state is S.HELD and not only(out, Pulse)
        assert display.TEXT_GUARD in lane.core.display and "待检区" not in lane.core.display


# ============================================================ hours (R2)


WEEK = Schedule(
    (((8 * 60 + 30, 12 * 60), (13 * 60 + 30, 17 * 60 + 30)),) * 5 + (((9 * 60, 12 * 60),), ()),
    TZ, holiday=(), holidays=frozenset({date(2027, 1, 1)}),
)


def local(y: int, m: int, d: int, h: int, mi: int = 0) -> datetime:
    return datetime(y, m, d, h, mi, tzinfo=TZ)


@pytest.mark.parametrize("when, open_", [
    (local(2026, 11, 27, 9), True),  # Friday morning
    (local(2026, 11, 27, 12, 30), False),  # lunch
    (local(2026, 11, 28, 10), True),  # Saturday morning
    (local(2026, 11, 28, 14), False),  # Saturday afternoon
    (local(2026, 11, 29, 10), False),  # Sunday
    (local(2027, 1, 1, 10), False),  # a holiday on a Friday
])
def test_r2_hours_by_weekday_and_holiday(when: datetime, open_: bool) -> None:
    lane = Lane(replace(BONDED, hours=WEEK))
    lane.start(when)
    assert lane.core.is_open_at(when) is open_
    assert lane.core.display == (display.TEXT_WELCOME if open_ else display.TEXT_CLOSED)


def test_r2_customs_closes_the_lane_now_until_a_time_then_it_follows_its_hours_again() -> None:
    """R2: customs' order over the hours is journaled, shown, holds released vehicles while
    closed (S-rules unchanged: nothing lifts automatically), and ends at its time."""
    lane = started(replace(BONDED, hours=WEEK))  # open on Friday 09:00
    out = lane.feed(HoursOrdered(open=False, until=at(600), reason="海关临时关闭", source="local_api", by="海关"), at(1))
    assert names(out) == ["hours.ordered", f"Display:{display.TEXT_CLOSED}"]
    assert emitted(out, "hours.ordered")[0] == {"open": False, "until": at(600).isoformat(), "reason": "海关临时关闭",
                                                "clear": False, "source": "local_api", "by": "海关"}
    t = up_to_deciding(lane, 10) if False else None
    lane.set("arrival_loop", True, at(10))
    out = lane.card(CARD_A, at(11)) + lane.weight(31250.0, at(12))
    assert lane.state is S.HELD and lane.core.passage.hold_reason == "closed_hours" and not lane.requests
    lane.set("arrival_loop", False, at(20))
    assert lane.core.next_deadline == at(600)
    assert names(lane.tick(at(600))) == [f"Display:{display.TEXT_WELCOME}"]


def test_r2_s7_customs_order_survives_a_restart_and_clear_ends_it() -> None:
    lane = started(replace(BONDED, hours=WEEK))
    lane.feed(HoursOrdered(open=False, reason="查验", source="mqtt", by="海关"), at(1))
    lane, out = lane.restart(at(30))
    assert lane.core.display == display.TEXT_CLOSED and not lane.core.is_open_at(at(30))
    lane.feed(HoursOrdered(clear=True, source="mqtt", by="海关"), at(40))
    assert lane.core.is_open_at(at(40)) and lane.core.display == display.TEXT_WELCOME


def test_r2_customs_may_open_a_lane_outside_its_hours() -> None:
    sunday = local(2026, 11, 29, 10)
    lane = Lane(replace(BONDED, hours=WEEK))
    lane.start(sunday)
    assert lane.core.display == display.TEXT_CLOSED
    lane.feed(HoursOrdered(open=True, until=sunday + timedelta(hours=2), reason="加班"), sunday)
    assert lane.core.is_open_at(sunday + timedelta(minutes=1)) and lane.core.display == display.TEXT_WELCOME


# ============================================================ drills (应急处置演练)


def test_a_drill_marks_everything_journaled_during_it_and_changes_no_rule() -> None:
    """What happens during a drill is marked drill: its passages, alarms and lifts; the lane
    works exactly as ever (the emergency button lifts); after the drill nothing is marked."""
    lane = started(BONDED)
    out = lane.feed(DrillOrdered(True, by="园区管理办", note="消防演练"), at(1))
    assert emitted(out, "drill.started")[0] == {"drill": True, "by": "园区管理办", "note": "消防演练"}
    lane.set("arrival_loop", True, at(2))
    out = lane.set("emergency_button", True, at(3))
    assert [c.reason for c in open_pulses(out)] == ["lift"]
    barrier_rises(lane, 3.2)
    drive_through(lane, 5)
    barrier_falls(lane, 10)
    during = lane.log.bodies[[b["type"] for b in lane.log.bodies].index("drill.started"):]
    assert during and all(b.get("drill") is True for b in during)
    assert {b["type"] for b in during} >= {"passage.opened", "alarm.raised", "passage.closed", "barrier.lifted"}
    lane.feed(DrillOrdered(False, by="园区管理办"), at(20))
    out = lane.set("arrival_loop", True, at(21))
    assert all("drill" not in c.data for c in out if hasattr(c, "data"))


def test_s7_a_drill_under_way_survives_a_restart() -> None:
    lane = started(BONDED)
    lane.feed(DrillOrdered(True, by="园区管理办"), at(1))
    lane, out = lane.restart(at(5))
    assert lane.core.drill and all(c.data.get("drill") for c in out if hasattr(c, "data"))


# ============================================================ the shared lane (R1)


def shared_to_deciding(lane: Lane, t: float = 1.0) -> tuple[RequestRelease, RequestRelease]:
    lane.set("arrival_loop", True, at(t))
    lane.card(CARD_A, at(t + 1))
    lane.weight(20000.0, at(t + 2))
    bonded, non_bonded = lane.requests[-2:]
    assert (bonded.lane_kind, non_bonded.lane_kind) == ("bonded", "non_bonded")
    return bonded, non_bonded


def test_r1_a_shared_lane_asks_both_authorities_and_the_claiming_one_decides_the_kind() -> None:
    """R1: a non-bonded vehicle on the lane bonded traffic also uses: 云关通 releases it, the
    bonded system denies knowing it: it passes as non-bonded, confirmed to 云关通."""
    lane = started(SHARED)
    bonded, non_bonded = shared_to_deciding(lane)
    assert lane.state is S.DECIDING
    out = lane.feed(ReleaseDecided(bonded.request_id, "deny", hint="无核放单"), at(4))
    assert names(out) == ["release.answered"] and lane.state is S.DECIDING
    out = lane.feed(ReleaseDecided(non_bonded.request_id, "release", "YGT-1", "F-1"), at(4.2))
    decided = emitted(out, "release.decided")[0]
    assert (decided["decision"], decided["lane_kind"], decided["instruction_id"]) == ("release", "non_bonded", "YGT-1")
    assert [c.reason for c in open_pulses(out)] == ["lift"]
    barrier_rises(lane, 4.4)
    out = drive_through(lane, 6)
    closed = emitted(out, "passage.closed")[0]
    assert (closed["outcome"], closed["lane_kind"]) == ("passed", "non_bonded")
    (confirm,) = only(out, ConfirmPassage)
    assert (confirm.request_id, confirm.lane_kind, confirm.result) == (non_bonded.request_id, "non_bonded", "passed")


def test_r1_r2_on_a_shared_lane_each_passage_is_under_its_own_kinds_hours() -> None:
    """R2: bonded traffic keeps customs hours, non-bonded is open 24 h: at 20:00 on a Friday
    the bonded vehicle is held closed_hours, the non-bonded one passes."""
    evening = local(2026, 11, 27, 20)
    lane = Lane(replace(SHARED, hours=WEEK))
    lane.start(evening)
    assert lane.core.display == display.TEXT_WELCOME  # open for some of its traffic
    bonded, non_bonded = shared_to_deciding(lane, 1) if False else (None, None)
    lane.set("arrival_loop", True, evening + timedelta(seconds=1))
    lane.card(CARD_A, evening + timedelta(seconds=2))
    lane.weight(20000.0, evening + timedelta(seconds=3))
    bonded, non_bonded = lane.requests[-2:]
    lane.feed(ReleaseDecided(non_bonded.request_id, "deny"), evening + timedelta(seconds=4))
    lane.feed(ReleaseDecided(bonded.request_id, "release", "CMD-1"), evening + timedelta(seconds=5))
    assert lane.state is S.HELD and lane.core.passage.hold_reason == "closed_hours"
    assert lane.core.passage.kind == "bonded"


@pytest.mark.parametrize("answers, held", [
    (("deny", "deny"), "deny"),
    (("release", "release"), "kind_conflict"),
    (("release", None), "authority_timeout"),
    (("release", "fail"), "authority_connection"),
])
def test_s5_r1_a_shared_lane_fails_closed_when_it_cannot_tell_whose_vehicle_it_is(answers, held) -> None:
    """S5, R16: both deny: denied; both claim: held kind_conflict (declared data, no fault);
    one authority silent or unreachable: held, whatever the other said."""
    lane = started(SHARED)
    requests = shared_to_deciding(lane)
    for request, answer in zip(requests, answers):
        if answer == "fail":
            lane.feed(ReleaseFailed(request.request_id, "connection", "refused"), at(4))
        elif answer is not None:
            lane.feed(ReleaseDecided(request.request_id, answer, "CMD-" + request.lane_kind), at(4))
    if None in answers:
        lane.tick(at(3) + SHARED.decision_wait)
    assert lane.state is S.HELD and lane.core.passage.hold_reason == held
    assert not lane.consumed


def test_r10_a_manual_lift_of_a_non_bonded_passage_needs_park_countersignature() -> None:
    """R10: on a shared lane a manual lift of a passage not known to be bonded needs park
    management's countersignature; a countersigned approval lifts."""
    lane = started(SHARED)
    approval(lane, "AP-C")
    lane.set("arrival_loop", True, at(1))
    out = lane.set("manual_lift_button", True, at(2))
    assert emitted(out, "manual_lift.refused")[0]["reason"] == "countersignature_required"
    lane.set("manual_lift_button", False, at(2.2))
    approval(lane, "AP-P", countersigned=True, t=3)
    out = lane.set("manual_lift_button", True, at(4))
    assert [c.reason for c in open_pulses(out)] == ["lift"]


# ============================================================ the display (R6)


@pytest.mark.parametrize("kind, reason, hint", display.DISPLAY_TABLE)
def test_r6_each_held_vehicle_is_told_where_to_go_once_and_never_two_places(kind, reason, hint) -> None:
    """R6: deny backs out; hold and inspect go to the inspection area, said once; an
    administrative or personnel lane sends to the guard, never to open cargo doors."""
    text = display.hold_text(reason, hint, kind)
    assert text.count("待检区") <= 1
    assert not ("倒车" in text and "待检区" in text)
    if kind in ("administrative", "personnel"):
        assert "待检区" not in text and "箱门" not in text and ("保安" in text or "值班" in text)
    elif reason == "deny":
        assert "倒车" in text and "待检区" not in text
    elif reason != "lift_interrupted":
        assert "待检区" in text
