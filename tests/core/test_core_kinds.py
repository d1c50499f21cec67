"""Example-based scenarios of the lane core's lane kinds (R1, R7), open hours (R2) and
customs spot checks (R7).

Same style as tests/core/test_core_scenarios.py, whose ``Lane`` service, ``names()``
rendering and scenario building blocks these reuse: every step's exact commands, with
Asia/Shanghai timestamps (T0 is 09:00 on a working day).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest

from gatectl.lane import display as core_module
from gatectl.lane.commands import CommitAuthorisation, ConfirmPassage, Pulse, RequestRelease
from gatectl.lane.core import LaneRules, LaneState
from gatectl.lane.errors import LaneProtocolError
from gatectl.lane.inputs import DeviceFault, DeviceRecovered, SpotCheckOrdered
from gatectl.lane.hours import Schedule
from gatectl.lane.passage import LaneRecord
from test_core_scenarios import (
    ASK_CARD,
    BONDED,
    CARD_A,
    CARD_B,
    CARD_C,
    DECIDING,
    EMERGENCY,
    FAULT,
    INSPECTION_AREA,
    RELEASED,
    TZ,
    WEIGHING,
    WELCOME,
    Lane,
    at,
    barrier_falls,
    barrier_rises,
    drive_through,
    emitted,
    names,
    only,
    open_pulses,
    release,
    up_to_deciding,
)

S = LaneState
INSPECTION = core_module.TEXT_INSPECTION
GUARD = core_module.TEXT_GUARD
CLOSED = core_module.TEXT_CLOSED

ADMIN = LaneRules(
    lane_id="A1-IN",
    kind="administrative",
    whitelist={CARD_A: 1800.0, CARD_C: 2500.0},
    curb_tolerance_kg=300.0,
    min_vehicle_kg=500.0,
)
PERSONNEL = LaneRules(
    lane_id="P1-IN",
    kind="personnel",
    has_weighbridge=False,
    has_exit_loop=False,
    staff={CARD_A: "张三"},
)
#: Open 10:00-18:00 site time: T0 (09:00) is before opening, at(3600) is the opening.
DAY_HOURS = replace(BONDED, hours=Schedule.daily(((10 * 60, 18 * 60),), TZ))
OPENING = at(3600)


def start(rules: LaneRules, t: float = 0.0, **kw) -> Lane:
    lane = Lane(rules, **kw)
    lane.start(at(t))
    assert lane.state is S.IDLE
    return lane


def arrive(lane: Lane, t: float, card: str, kg: float | None = None) -> list:
    """Arrival, card and (if given) a stable weight; returns the commands of the last step."""
    lane.set("arrival_loop", True, at(t))
    out = lane.card(card, at(t + 1))
    if kg is not None:
        out = lane.weight(kg, at(t + 2))
    return out


def through_and_down(lane: Lane, t: float) -> list:
    barrier_rises(lane, t)
    out = drive_through(lane, t + 2)
    out += barrier_falls(lane, t + 7)
    assert lane.state is S.IDLE
    return out


# ============================================================ R1, R7: administrative lanes


def test_r7_s1_a_registered_admin_vehicle_within_its_curb_weight_is_released_locally() -> None:
    """R7, R1, S1, S6: the whitelist match is the authorisation (kind whitelist, id = the passage's
    id), committed before the lift; the authority is never asked and nothing is confirmed to it."""
    lane = start(ADMIN)
    out = arrive(lane, 1, CARD_A, 1950.0)
    passage_id = lane.core.passage.passage_id
    assert names(out) == [
        "weight.stable",
        "release.decided",
        "Commit:whitelist",
        "Pulse:open:lift",
        "barrier.lifted",
        f"Display:{RELEASED}",
    ]
    decided = emitted(out, "release.decided")[0]
    assert (decided["decision"], decided["source"], decided["basis"]) == ("release", "local", "whitelist")
    assert decided["passage_id"] == passage_id
    (commit,) = only(out, CommitAuthorisation)
    assert (commit.kind, commit.auth_id, commit.passage_id) == ("whitelist", passage_id, passage_id)
    (pulse,) = open_pulses(out)
    assert pulse.authorisation == ("whitelist", passage_id)
    assert lane.requests == [] and lane.state is S.OPEN
    out = through_and_down(lane, 4)
    closed = emitted(out, "passage.closed")[0]
    assert closed["outcome"] == "passed"
    assert closed["authorisation"] == {"kind": "whitelist", "id": passage_id}
    assert only(out, ConfirmPassage) == []


def test_r7_s1_each_admin_passage_has_an_authorisation_of_its_own() -> None:
    """R7, S1: the same registered vehicle twice is two passages, two authorisations, two lifts."""
    lane = start(ADMIN)
    arrive(lane, 1, CARD_A, 1950.0)
    through_and_down(lane, 4)
    arrive(lane, 20, CARD_A, 1950.0)
    through_and_down(lane, 23)
    auths = [e["authorisation"]["id"] for e in lane.events("barrier.lifted")]
    assert len(auths) == 2 and len(set(auths)) == 2
    assert lane.consumed == {("whitelist", a) for a in auths}


def test_r7_the_curb_weight_plus_tolerance_is_still_released() -> None:
    """R7: exactly registered curb weight + tolerance (1800 + 300) passes."""
    lane = start(ADMIN)
    out = arrive(lane, 1, CARD_A, 2100.0)
    assert "Pulse:open:lift" in names(out)


def test_r7_an_admin_vehicle_heavier_than_curb_weight_plus_tolerance_is_held_for_goods() -> None:
    """R7: "no goods in admin vehicles": over 1800 + 300 kg is held admin_overweight and sent to
    the guard on duty (an administrative car has no cargo doors to open in the inspection area)."""
    lane = start(ADMIN)
    out = arrive(lane, 1, CARD_A, 2100.5)
    text = f"{core_module.HOLD_TEXTS['admin_overweight']}；{GUARD}"
    assert names(out) == ["weight.stable", "release.decided", f"Display:{text}", "passage.held"]
    decided = emitted(out, "release.decided")[0]
    assert (decided["decision"], decided["source"], decided["basis"]) == ("hold", "local", "admin_overweight")
    assert decided["curb_weight_kg"] == 1800.0
    assert emitted(out, "passage.held")[0]["reason"] == "admin_overweight"
    assert only(out, CommitAuthorisation) == [] and only(out, Pulse) == []
    assert lane.requests == [] and lane.state is S.HELD
    out = lane.set("arrival_loop", False, at(10))
    closed = emitted(out, "passage.closed")[0]
    assert (closed["outcome"], closed["reason"], closed["decision"]) == ("held", "admin_overweight", "hold")
    assert only(out, ConfirmPassage) == []


def test_r7_an_unregistered_card_on_an_admin_lane_is_held_not_registered() -> None:
    lane = start(ADMIN)
    out = arrive(lane, 1, CARD_B, 1500.0)
    text = f"{core_module.HOLD_TEXTS['not_registered']}；{GUARD}"
    assert names(out) == ["weight.stable", "release.decided", f"Display:{text}", "passage.held"]
    assert emitted(out, "release.decided")[0]["basis"] == "not_registered"
    assert emitted(out, "passage.held")[0]["reason"] == "not_registered"
    assert lane.requests == [] and lane.consumed == set()


def test_r7_an_admin_lane_without_a_weighbridge_decides_on_the_card() -> None:
    lane = start(replace(ADMIN, has_weighbridge=False))
    out = arrive(lane, 1, CARD_A)
    assert names(out) == [
        "card.read",
        "release.decided",
        "Commit:whitelist",
        "Pulse:open:lift",
        "barrier.lifted",
        f"Display:{RELEASED}",
    ]


def test_r7_s5_a_registered_vehicle_is_held_while_a_device_is_faulty() -> None:
    """R7, S5: a local release still fails closed on a device fault."""
    lane = start(ADMIN)
    lane.feed(DeviceFault("io1", "modbus timeout"), at(0.5))
    out = arrive(lane, 1, CARD_A, 1950.0)
    assert emitted(out, "release.decided")[0]["decision"] == "release"
    assert emitted(out, "passage.held")[0]["reason"] == "device_fault"
    assert only(out, CommitAuthorisation) == [] and only(out, Pulse) == []


def test_r7_s7_a_whitelist_authorisation_committed_before_a_crash_never_lifts_again() -> None:
    """R7, S7, S1: committed, then the crash before the pulse: after the restart it is spent."""
    lane = start(ADMIN)
    lane.set("arrival_loop", True, at(1))
    lane.card(CARD_A, at(2))
    lane.weight(1950.0, at(3))
    cut = next(i for i, e in enumerate(lane.journal) if e["type"] == "authorisation.committed")
    del lane.journal[cut + 1 :]
    lane, out = lane.restart(at(10), arrival_loop=True)
    assert names(out) == ["lane.recovered", f"Display:{ASK_CARD}", "passage.held"]
    assert only(out, CommitAuthorisation) == [] and only(out, Pulse) == []
    assert lane.state is S.HELD and lane.core.passage.hold_reason == "lift_interrupted"
    out = lane.card(CARD_A, at(11))
    assert names(out) == ["card.read", f"Display:{core_module.TEXT_INTERRUPTED}"]
    assert only(out, CommitAuthorisation) == [] and only(out, Pulse) == []


def test_r7_s7_crash_before_a_local_decision_decides_again_locally() -> None:
    """S7: card journaled, nothing decided: after a restart the vehicle shows its card again
    (another may have pulled up meanwhile), is weighed, and the lane decides locally."""
    lane = start(ADMIN)
    lane.set("arrival_loop", True, at(1))
    lane.card(CARD_A, at(2))
    lane, out = lane.restart(at(10), arrival_loop=True)
    assert names(out) == ["lane.recovered", f"Display:{ASK_CARD}"]
    assert names(lane.card(CARD_A, at(10.5))) == ["card.read", f"Display:{WEIGHING}"]
    out = lane.weight(1950.0, at(11))
    assert names(out)[:3] == ["weight.stable", "release.decided", "Commit:whitelist"]
    assert lane.requests == []


# ================================================================ R1: personnel lanes


def test_r1_a_staff_card_on_a_personnel_lane_is_released_under_its_own_authorisation() -> None:
    """R1, S1: the staff-card match is the authorisation (kind staff_card, id = the passage's id)."""
    lane = start(PERSONNEL)
    out = arrive(lane, 1, CARD_A)
    passage_id = lane.core.passage.passage_id
    assert names(out) == [
        "card.read",
        "release.decided",
        "Commit:staff_card",
        "Pulse:open:lift",
        "barrier.lifted",
        f"Display:{RELEASED}",
    ]
    decided = emitted(out, "release.decided")[0]
    assert (decided["source"], decided["basis"], decided["name"]) == ("local", "staff_card", "张三")
    assert only(out, CommitAuthorisation)[0].auth_id == passage_id
    assert lane.requests == []
    out = through_and_down(lane, 3)
    assert emitted(out, "passage.closed")[0]["authorisation"] == {"kind": "staff_card", "id": passage_id}
    assert only(out, ConfirmPassage) == []


def test_r1_a_card_not_on_the_staff_list_is_held_and_sent_to_the_guard_not_the_inspection_area() -> None:
    """R1: personnel lanes are guard-managed: the held person is told 请联系值班保安."""
    lane = start(PERSONNEL)
    out = arrive(lane, 1, CARD_B)
    text = f"{core_module.HOLD_TEXTS['not_staff']}；{GUARD}"
    assert names(out) == ["card.read", "release.decided", f"Display:{text}", "passage.held"]
    assert emitted(out, "passage.held")[0]["reason"] == "not_staff"
    assert INSPECTION_AREA not in lane.core.display
    assert lane.state is S.HELD and lane.consumed == set()


def test_r1_every_hold_on_a_personnel_lane_names_the_guard() -> None:
    lane = start(PERSONNEL)
    lane.feed(DeviceFault("io1", "modbus timeout"), at(0.5))
    arrive(lane, 1, CARD_A)
    assert lane.core.display == f"{core_module.HOLD_TEXTS['device_fault']}；{GUARD}"
    assert "值班" in lane.core.display and INSPECTION_AREA not in lane.core.display


@pytest.mark.parametrize("kind", ["bonded", "ecommerce_9610", "non_bonded"])
def test_r1_r3_goods_lanes_always_ask_their_authority_never_a_local_list(kind: str) -> None:
    """R1, R3: a goods lane lifts only on its authority's instruction, even for a card on a list."""
    lane = start(replace(ADMIN, kind=kind))
    out = arrive(lane, 1, CARD_A, 1950.0)
    assert names(out) == ["weight.stable", f"Display:{DECIDING}", "release.requested", "RequestRelease"]
    assert only(out, CommitAuthorisation) == []


# ======================================================================== R2: open hours


def test_r2_outside_open_hours_a_card_is_held_closed_hours_without_asking() -> None:
    """R2: before opening the idle display says so, and a vehicle is held without any RequestRelease."""
    lane = Lane(DAY_HOURS)
    assert names(lane.start(at(0))) == [f"Display:{CLOSED}"]
    assert "非开放时间" in lane.core.display
    lane.set("arrival_loop", True, at(1))
    lane.card(CARD_A, at(2))
    out = lane.weight(31250.0, at(3))
    text = f"{CLOSED}；{INSPECTION}"
    assert names(out) == ["weight.stable", f"Display:{text}", "passage.held"]
    assert emitted(out, "passage.held")[0]["reason"] == "closed_hours"
    assert lane.requests == [] and only(out, RequestRelease) == [] and lane.state is S.HELD
    out = lane.set("arrival_loop", False, at(10))
    assert names(out) == ["loop.changed", "passage.closed", f"Display:{CLOSED}"]
    assert emitted(out, "passage.closed")[0]["reason"] == "closed_hours"


def test_r2_the_idle_display_changes_at_the_window_boundary_on_a_tick() -> None:
    """R2: next_deadline includes the opening and the closing; a Tick there changes the idle display."""
    lane = Lane(DAY_HOURS)
    lane.start(at(0))
    assert lane.core.next_deadline == OPENING
    assert lane.tick(OPENING - timedelta(seconds=1)) == []
    assert names(lane.tick(OPENING)) == [f"Display:{WELCOME}"]
    closing = datetime(2026, 11, 27, 18, 0, tzinfo=TZ)
    assert lane.core.next_deadline == closing
    assert names(lane.tick(closing)) == [f"Display:{CLOSED}"]
    assert lane.core.next_deadline == datetime(2026, 11, 28, 10, 0, tzinfo=TZ)


def test_r2_inside_open_hours_the_authority_is_asked() -> None:
    lane = Lane(DAY_HOURS)
    lane.start(at(0))
    lane.tick(OPENING)
    t = up_to_deciding(lane, 3601)
    assert len(lane.requests) == 1
    assert names(release(lane, t + 1))[-3:] == ["Pulse:open:lift", "barrier.lifted", f"Display:{RELEASED}"]


def test_r2_a_window_running_past_midnight() -> None:
    """R2: 22:00-06:00 (end excluded), site time."""
    lane = Lane(replace(BONDED, hours=Schedule.daily(((22 * 60, 6 * 60),), TZ)))
    day = datetime(2026, 11, 27, tzinfo=TZ)
    assert lane.core.is_open_at(day.replace(hour=23))
    assert lane.core.is_open_at(day.replace(hour=5, minute=59))
    assert not lane.core.is_open_at(day.replace(hour=6))
    assert not lane.core.is_open_at(day.replace(hour=21, minute=59))
    assert lane.core.is_open_at(day.replace(hour=22))


def test_r2_open_hours_are_in_site_time_whatever_zone_now_is_given_in() -> None:
    """R2: 01:30 UTC is 09:30 in Shanghai: before a 10:00 opening; 02:00 UTC is the opening."""
    lane = Lane(DAY_HOURS)
    assert not lane.core.is_open_at(datetime(2026, 11, 27, 1, 30, tzinfo=timezone.utc))
    assert lane.core.is_open_at(datetime(2026, 11, 27, 2, 0, tzinfo=timezone.utc))


def test_r2_a_midday_break_between_two_windows() -> None:
    rules = replace(BONDED, hours=Schedule.daily(((8 * 60, 12 * 60), (13 * 60, 18 * 60)), TZ))
    lane = Lane(rules)
    noon = datetime(2026, 11, 27, 12, 30, tzinfo=TZ)
    lane.start(noon)
    assert lane.core.display == CLOSED
    assert lane.core.next_deadline == datetime(2026, 11, 27, 13, 0, tzinfo=TZ)
    assert names(lane.tick(datetime(2026, 11, 27, 13, 0, tzinfo=TZ))) == [f"Display:{WELCOME}"]


def test_r2_r7_local_lists_release_nothing_outside_open_hours() -> None:
    """R2: an administrative lane with hours holds a registered vehicle before opening, deciding nothing."""
    lane = Lane(replace(ADMIN, hours=Schedule.daily(((10 * 60, 18 * 60),), TZ)))
    lane.start(at(0))
    out = arrive(lane, 1, CARD_A, 1950.0)
    assert names(out) == ["weight.stable", f"Display:{CLOSED}；{GUARD}", "passage.held"]
    assert lane.events("release.decided") == [] and lane.consumed == set()


def test_r2_r11_the_emergency_button_still_lifts_outside_open_hours() -> None:
    """R2, R11: only automatic releases stop outside open hours."""
    lane = Lane(DAY_HOURS)
    lane.start(at(0))
    out = lane.set("emergency_button", True, at(1))
    assert names(out)[-3:] == ["Pulse:open:lift", "barrier.lifted", f"Display:{EMERGENCY}"]


def test_r2_s5_a_fault_outranks_the_closed_text_and_the_closed_text_returns_after_it() -> None:
    lane = Lane(DAY_HOURS)
    lane.start(at(0))
    assert names(lane.feed(DeviceFault("card_reader", "port vanished"), at(1)))[-1] == f"Display:{FAULT}"
    assert names(lane.feed(DeviceRecovered("card_reader"), at(2))) == ["fault.closed", f"Display:{CLOSED}"]


# ================================================================ R7: customs spot checks


def test_r7_hold_next_n_holds_the_next_n_released_vehicles_then_releases_again() -> None:
    """R7: spot_check.ordered with what is left; each of the next N releases is held spot_check
    (spot_check.applied with the remaining count), never committed; then the lane lifts again."""
    lane = start(BONDED)
    out = lane.feed(SpotCheckOrdered(hold_next=2, source="customs"), at(0.5))
    assert names(out) == ["spot_check.ordered"]
    ordered = emitted(out, "spot_check.ordered")[0]
    assert (ordered["remaining"], ordered["fraction"], ordered["source"]) == (2, 0.0, "customs")
    assert ordered["order"] == {"hold_next": 2, "fraction": None, "clear": False}
    spot_text = f"{core_module.HOLD_TEXTS['spot_check']}；{INSPECTION}"
    t = 1.0
    for remaining in (1, 0):
        up_to_deciding(lane, t, CARD_A)
        req = lane.requests[-1]
        out = lane.decide("release", at(t + 3), f"CMD-{t}")
        assert names(out) == ["release.decided", "spot_check.applied", f"Display:{spot_text}", "passage.held"]
        assert emitted(out, "spot_check.applied")[0]["remaining"] == remaining
        assert emitted(out, "passage.held")[0]["reason"] == "spot_check"
        assert only(out, CommitAuthorisation) == [] and only(out, Pulse) == []
        out = lane.set("arrival_loop", False, at(t + 5))
        # The authority released it, so it is told the vehicle did not pass.
        assert only(out, ConfirmPassage)[0].request_id == req.request_id
        assert only(out, ConfirmPassage)[0].result == "not_passed"
        t += 10
    assert lane.core.spot_hold_next == 0
    up_to_deciding(lane, t)
    assert names(release(lane, t + 3, "CMD-3"))[-3:] == ["Pulse:open:lift", "barrier.lifted", f"Display:{RELEASED}"]
    assert lane.consumed == {("release_instruction", "CMD-3")}


def test_r7_vehicles_the_authority_holds_anyway_do_not_use_up_the_spot_checks() -> None:
    """R7: the spot check applies to vehicles that would be released, not to those held anyway."""
    lane = start(BONDED)
    lane.feed(SpotCheckOrdered(hold_next=1), at(0.5))
    up_to_deciding(lane, 1)
    out = lane.decide("inspect", at(4))
    assert emitted(out, "spot_check.applied") == [] and lane.core.spot_hold_next == 1
    lane.set("arrival_loop", False, at(5))
    up_to_deciding(lane, 10, CARD_B)
    out = lane.decide("release", at(13), "CMD-2")
    assert emitted(out, "passage.held")[0]["reason"] == "spot_check"


def test_r7_s5_a_vehicle_held_for_a_fault_does_not_use_up_a_spot_check() -> None:
    lane = start(BONDED)
    lane.feed(SpotCheckOrdered(hold_next=1), at(0.5))
    lane.feed(DeviceFault("io1", "modbus timeout"), at(0.6))
    up_to_deciding(lane, 1)
    out = lane.decide("release", at(4), "CMD-1")
    assert emitted(out, "passage.held")[0]["reason"] == "device_fault"
    assert emitted(out, "spot_check.applied") == [] and lane.core.spot_hold_next == 1


def test_r7_a_random_fraction_uses_the_injected_draw() -> None:
    """R7: fraction f holds a released vehicle when the core's draw is below f; the draw is journaled."""
    draws = iter([0.05, 0.9])
    lane = start(BONDED, rand=lambda: next(draws))
    out = lane.feed(SpotCheckOrdered(fraction=0.1, source="customs"), at(0.5))
    ordered = emitted(out, "spot_check.ordered")[0]
    assert (ordered["remaining"], ordered["fraction"]) == (0, 0.1)
    up_to_deciding(lane, 1)
    out = lane.decide("release", at(4), "CMD-1")
    applied = emitted(out, "spot_check.applied")[0]
    assert (applied["remaining"], applied["fraction"], applied["draw"]) == (0, 0.1, 0.05)
    assert emitted(out, "passage.held")[0]["reason"] == "spot_check"
    lane.set("arrival_loop", False, at(5))
    up_to_deciding(lane, 10, CARD_B)
    out = release(lane, 13, "CMD-2")  # drew 0.9: released
    assert emitted(out, "spot_check.applied") == []


def test_r7_clear_cancels_both_orders_and_no_draw_is_made_after() -> None:
    """R7: clear resets hold-next and the fraction; the core then never draws."""
    lane = start(BONDED)  # Lane's default rand fails the test if the core ever draws
    lane.feed(SpotCheckOrdered(hold_next=3), at(0.2))
    out = lane.feed(SpotCheckOrdered(fraction=0.5), at(0.3))
    ordered = emitted(out, "spot_check.ordered")[0]
    assert (ordered["remaining"], ordered["fraction"]) == (3, 0.5)  # both in force
    out = lane.feed(SpotCheckOrdered(clear=True, source="customs"), at(0.4))
    ordered = emitted(out, "spot_check.ordered")[0]
    assert (ordered["remaining"], ordered["fraction"]) == (0, 0.0)
    t = up_to_deciding(lane, 1)
    assert "Pulse:open:lift" in names(release(lane, t + 1))


def test_r7_a_new_hold_next_replaces_the_count_left() -> None:
    lane = start(BONDED)
    lane.feed(SpotCheckOrdered(hold_next=5), at(0.2))
    out = lane.feed(SpotCheckOrdered(hold_next=1), at(0.3))
    assert emitted(out, "spot_check.ordered")[0]["remaining"] == 1


def test_r7_spot_checks_apply_to_local_whitelist_releases_too() -> None:
    """R7: customs may spot-check the administrative lane's registered vehicles."""
    lane = start(ADMIN)
    lane.feed(SpotCheckOrdered(hold_next=1, source="customs"), at(0.5))
    out = arrive(lane, 1, CARD_A, 1950.0)
    assert names(out)[:2] == ["weight.stable", "release.decided"]
    assert emitted(out, "passage.held")[0]["reason"] == "spot_check"
    assert only(out, CommitAuthorisation) == [] and lane.consumed == set()


def test_r7_r11_an_emergency_lift_is_not_spot_checked() -> None:
    lane = start(BONDED)
    lane.feed(SpotCheckOrdered(hold_next=1), at(0.5))
    out = lane.set("emergency_button", True, at(1))
    assert "Pulse:open:lift" in names(out)
    assert lane.core.spot_hold_next == 1


def test_r7_s7_spot_checks_in_force_are_restored_from_the_core_arguments() -> None:
    """R7, S7: LaneCore(lane=LaneRecord(spot checks)) is what the journal says is still in force."""
    lane = start(BONDED, lane=LaneRecord("B1-IN", spot_hold_next=1))
    up_to_deciding(lane, 1)
    out = lane.decide("release", at(4), "CMD-1")
    assert emitted(out, "passage.held")[0]["reason"] == "spot_check"
    assert emitted(out, "spot_check.applied")[0]["remaining"] == 0


def test_r7_s7_spot_checks_survive_a_restart_through_the_journal() -> None:
    """R7, S7: two ordered, one applied, crash: after the restart exactly one is left."""
    lane = start(BONDED)
    lane.feed(SpotCheckOrdered(hold_next=2, source="customs"), at(0.5))
    up_to_deciding(lane, 1)
    lane.decide("release", at(4), "CMD-1")
    lane.set("arrival_loop", False, at(5))
    lane, _ = lane.restart(at(6))
    assert lane.core.spot_hold_next == 1
    up_to_deciding(lane, 10, CARD_B)
    out = lane.decide("release", at(13), "CMD-2")
    assert emitted(out, "passage.held")[0]["reason"] == "spot_check"
    lane.set("arrival_loop", False, at(14))
    lane, _ = lane.restart(at(15))
    assert lane.core.spot_hold_next == 0


def test_r7_s7_a_spot_checked_vehicle_is_still_held_after_a_restart() -> None:
    lane = start(BONDED)
    lane.feed(SpotCheckOrdered(hold_next=1), at(0.5))
    up_to_deciding(lane, 1)
    lane.decide("release", at(4), "CMD-1")
    held_text = lane.core.display
    lane, out = lane.restart(at(10), arrival_loop=True)
    assert names(out) == ["lane.recovered", f"Display:{ASK_CARD}"]
    assert names(lane.card(CARD_A, at(11))) == ["card.read", f"Display:{held_text}"]
    assert lane.state is S.HELD and lane.core.passage.hold_reason == "spot_check"
    assert lane.requests == [] and lane.consumed == set()


@pytest.mark.parametrize(
    "kw",
    [{}, {"hold_next": 1, "fraction": 0.1}, {"hold_next": 1, "clear": True}, {"hold_next": -1},
     {"hold_next": True}, {"fraction": 1.5}, {"fraction": -0.1}],
    ids=["none", "two", "count-and-clear", "negative", "bool-count", "fraction-over-1", "fraction-below-0"],
)
def test_r7_malformed_spot_check_orders_are_refused_at_birth(kw: dict) -> None:
    with pytest.raises(LaneProtocolError):
        SpotCheckOrdered(**kw)


def test_r7_spot_check_orders_change_nothing_mid_passage_but_the_count() -> None:
    """R7: an order arriving while a vehicle is being decided applies to that vehicle's release."""
    lane = start(BONDED)
    up_to_deciding(lane, 1)
    out = lane.feed(SpotCheckOrdered(hold_next=1), at(3.5))
    assert names(out) == ["spot_check.ordered"] and lane.state is S.DECIDING
    out = lane.decide("release", at(4), "CMD-1")
    assert emitted(out, "passage.held")[0]["reason"] == "spot_check"

