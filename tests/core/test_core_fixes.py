"""Regression scenarios for core rules tightened after review (R2, R9, R11, S2, CONTRACT 3.1)."""

from __future__ import annotations

from dataclasses import replace

from gatectl.lane.commands import ConfirmPassage, Pulse
from gatectl.lane.core import LaneState as S
from gatectl.lane.events import DeviceFault, DeviceRecovered, InputsSnapshot

from test_core_scenarios import (
    BONDED,
    FAULT,
    Lane,
    at,
    barrier_rises,
    drive_through,
    emitted,
    names,
    only,
    release,
    up_to_deciding,
)


def test_contract_3_1_an_emergency_lift_after_a_held_release_is_confirmed_passed() -> None:
    """CONTRACT 3.1, R11: the authority released, a fault held the vehicle, the guard used the
    emergency button; the authority still hears what became of its release."""
    lane = Lane(BONDED)
    lane.start(at(0))
    t = up_to_deciding(lane, 1)
    lane.feed(DeviceFault("weighbridge", "unplugged"), at(t + 0.5))
    lane.decide("release", at(t + 1), "CMD-9", form_id="HF-1")
    assert lane.state is S.HELD
    lane.feed(DeviceRecovered("weighbridge"), at(t + 1.5))
    lane.set("emergency_button", True, at(t + 2))
    barrier_rises(lane, t + 2.2)
    out = drive_through(lane, t + 4)
    confirms = only(out, ConfirmPassage)
    assert [(c.instruction_id, c.result) for c in confirms] == [("CMD-9", "passed")]
    assert emitted(out, "passage.closed")[0]["outcome"] == "emergency"


def test_s2_r9_a_safety_reversal_seen_with_the_up_limit_leaving_is_no_barrier_fault() -> None:
    """S2, R9: lowering, then one poll shows the safety loop occupied and the up limit off:
    the barrier rises again and that is the arm travelling, not a broken arm."""
    lane = Lane(BONDED)
    lane.start(at(0))
    t = up_to_deciding(lane, 1)
    release(lane, t + 1)
    barrier_rises(lane, t + 1.2)
    drive_through(lane, t + 3)
    assert lane.state is S.LOWERING
    out = lane.feed(InputsSnapshot({"safety_loop": True, "barrier_up": False}), at(t + 7.2))
    assert [p.reason for p in only(out, Pulse)] == ["safety_reverse"]
    assert lane.alarms("barrier_fault") == [] and lane.core.faults == {}
    lane.set("barrier_down", False, at(t + 7.3))
    lane.set("barrier_up", True, at(t + 8.5))
    assert lane.alarms("barrier_fault") == [] and lane.state is S.OPEN


def test_r9_a_barrier_fault_while_idle_shows_on_the_display() -> None:
    """R9, R12: vehicles are not invited to stop and swipe at a faulty barrier."""
    lane = Lane(BONDED)
    lane.start(at(0))
    out = lane.set("barrier_down", False, at(1))
    assert names(out)[-1] == f"Display:{FAULT}"


def test_r2_a_release_answered_after_closing_time_lifts_nothing() -> None:
    """R2: the request went out at 08:59:57, the window closed at 09:00, the release came
    at 09:00:01: nothing lifts automatically outside open hours."""
    rules = replace(BONDED, open_hours=((8 * 60, 9 * 60),), has_weighbridge=False)
    lane = Lane(rules)
    morning = at(0).replace(hour=8, minute=59, second=50)
    from datetime import timedelta

    lane.start(morning)
    lane.set("arrival_loop", True, morning + timedelta(seconds=5))
    lane.card("0100E2850E", morning + timedelta(seconds=7))
    assert len(lane.requests) == 1
    out = lane.decide("release", morning + timedelta(seconds=11), "CMD-1")
    assert only(out, Pulse) == []
    assert lane.state is S.HELD
    assert lane.events("passage.held")[-1]["reason"] == "closed_hours"
