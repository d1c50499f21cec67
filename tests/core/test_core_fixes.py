"""Regression scenarios for core rules tightened after review (R2, R9, R11, S2, CONTRACT 3.1)."""

from __future__ import annotations

from dataclasses import replace

from gatectl.lane.commands import ConfirmPassage, Pulse
from gatectl.lane.core import LaneState as S
from gatectl.lane.hours import Schedule
from gatectl.lane.inputs import CoilWriteFailed, DeviceFault, DeviceRecovered, InputsSnapshot

from test_core_scenarios import (
    BONDED,
    TZ,
    FAULT,
    Lane,
    at,
    barrier_falls,
    barrier_rises,
    drive_through,
    emitted,
    lifted_and_through,
    names,
    only,
    open_pulses,
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
    rules = replace(BONDED, hours=Schedule.daily(((8 * 60, 9 * 60),), TZ), has_weighbridge=False)
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


# ---- the IO module carrying the barrier drops out while the arm moves (chaos campaign 4)

IO_BONDED = replace(BONDED, barrier_devices=frozenset({"io1"}))


def lowering_after_a_passage() -> tuple[Lane, float]:
    """The scenarios' ``lifted_and_through`` on a lane whose barrier is on ``io1``, and
    its ``t``: lifted at ``t + 1``, the lower pulse sent at ``t + 7``."""
    lane = Lane(IO_BONDED)
    lane.start(at(0))
    lifted_and_through(lane)
    return lane, 3.0


def test_r9_one_poll_with_up_off_and_down_on_is_a_completed_lowering() -> None:
    """R9: the first poll after the IO module returns shows the up limit off and the down
    limit on together: the arm came down meanwhile, which is no ``both_limits`` fault, and
    the lane is idle again."""
    lane, t = lowering_after_a_passage()
    lane.feed(DeviceFault("io1", "no answer"), at(t + 7.5))
    lane.feed(InputsSnapshot({"barrier_up": False, "barrier_down": True}), at(t + 20))
    lane.feed(DeviceRecovered("io1"), at(t + 20))
    assert lane.alarms("barrier_fault") == []
    assert lane.state is S.IDLE and lane.core.faults == {}


def test_s1_r9_a_lift_pulse_the_module_never_acted_on_holds_the_vehicle_and_spends_the_authorisation() -> None:
    """S1, R9: the open pulse failed with the module gone; when it answers again the arm is
    still down. That is no barrier fault (the module's fault was open all along): the lift
    failed, its authorisation is spent and never lifts again, the vehicle is held, and the
    lane takes the next vehicle by itself."""
    lane = Lane(IO_BONDED)
    lane.start(at(0))
    t = up_to_deciding(lane, 1)
    out = release(lane, t + 1)
    assert [p.reason for p in only(out, Pulse)] == ["lift"]
    lane.feed(DeviceFault("io1", "coil write failed"), at(t + 2))
    lane.feed(CoilWriteFailed("io1", "open"), at(t + 2))
    assert lane.tick(at(t + 30)) == []  # blind: no travel timeout blamed on the arm
    out = lane.feed(DeviceRecovered("io1"), at(t + 40))
    assert only(out, Pulse) == []
    assert [e["authorisation"]["id"] for e in emitted(out, "barrier.lift_failed")] == ["CMD-1"]
    assert emitted(out, "passage.held")[0]["reason"] == "lift_interrupted"
    assert lane.state is S.HELD and lane.alarms("barrier_fault") == [] and lane.core.faults == {}
    # The driver shows the card again: the lane is busy with the held passage, no second lift.
    assert open_pulses(lane.card("C-A", at(t + 41))) == []
    out = lane.set("arrival_loop", False, at(t + 45))
    assert emitted(out, "passage.closed")[0]["outcome"] == "held" and lane.state is S.IDLE
    t2 = up_to_deciding(lane, t + 50, card="C-B")
    out = release(lane, t2 + 1, "CMD-2")
    assert [p.authorisation for p in open_pulses(out)] == [("release_instruction", "CMD-2")]


def test_s1_a_lift_pulse_that_did_reach_the_barrier_before_the_module_went_quiet_goes_on() -> None:
    """S1: the on-write timed out but the module had acted: the arm is up when it answers
    again. The lift stands; nothing is held and nothing is pulsed again."""
    lane = Lane(IO_BONDED)
    lane.start(at(0))
    t = up_to_deciding(lane, 1)
    release(lane, t + 1)
    lane.feed(CoilWriteFailed("io1", "open"), at(t + 2))
    lane.feed(InputsSnapshot({"barrier_up": True, "barrier_down": False}), at(t + 10))
    out = lane.feed(DeviceRecovered("io1"), at(t + 10))
    assert only(out, Pulse) == [] and emitted(out, "barrier.lift_failed") == []
    assert lane.state is S.OPEN and lane.alarms("barrier_fault") == []
    out = drive_through(lane, t + 11)
    assert [p.reason for p in only(out, Pulse)] == ["lower"]


def test_s2_r9_a_lowering_pulse_the_module_never_acted_on_is_sent_again() -> None:
    """S2, R9: the close pulse failed and the arm is still up when the module answers
    again: the lane lowers it again instead of waiting in ``lowering`` for ever."""
    lane, t = lowering_after_a_passage()
    lane.feed(DeviceFault("io1", "no answer"), at(t + 7.1))
    lane.feed(CoilWriteFailed("io1", "close"), at(t + 7.2))
    assert lane.tick(at(t + 30)) == []
    out = lane.feed(DeviceRecovered("io1"), at(t + 31))
    assert [p.reason for p in only(out, Pulse)] == ["lower"]
    assert emitted(out, "barrier.lowered")[0]["retry"] is True
    barrier_falls(lane, t + 31.2)
    assert lane.state is S.IDLE and lane.alarms("barrier_fault") == []


def test_s2_a_failed_lowering_with_a_vehicle_under_the_arm_waits_for_it_to_clear() -> None:
    """S2, S3: the close pulse failed and, when the module answers again, a vehicle stands
    on the safety loop: the arm stays up until it has cleared, then lowers."""
    lane, t = lowering_after_a_passage()
    lane.feed(CoilWriteFailed("io1", "close"), at(t + 7.2))
    lane.feed(InputsSnapshot({"safety_loop": True}), at(t + 20))
    out = lane.feed(DeviceRecovered("io1"), at(t + 20))
    assert only(out, Pulse) == [] and lane.state is S.OPEN
    out = lane.set("safety_loop", False, at(t + 22))
    assert [p.reason for p in only(out, Pulse)] == ["lower"]
