"""Example-based scenarios of the lane core, one requirement or invariant each.

Where tests/core/test_core_stateful.py throws random event sequences at the core, these
walk the passages of DESIGN.md sections 3-4 step by step, with explicit Asia/Shanghai
timestamps, and check the exact commands of every step (events journaled, pulses, release
requests, authorisation commits, display texts, in order) and ``core.state`` afterwards.

``Lane`` below plays the lane runtime the way ``gatectl.lane.runtime`` does: it
carries out the commands in order, answers ``CommitAuthorisation`` at once, before any
other input, from an in-memory journal (``tests/support/lanelog.py``) that keeps every
event as its JSON body, splits a poll into single edges (``poll_edges``) once the lane
runs, and rebuilds a crashed lane from the journal with the journal's own fold (S7).
"""

from __future__ import annotations

import itertools
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Callable, Iterator
from zoneinfo import ZoneInfo

import pytest

from gatectl import events as ev
from gatectl.lane import display as core_module
from gatectl.lane.commands import (
    CommitAuthorisation,
    Command,
    ConfirmPassage,
    Display,
    Emit,
    Pulse,
    RequestRelease,
)
from gatectl.lane.core import LaneCore, LaneRules, LaneState
from gatectl.lane.errors import LaneProtocolError
from gatectl.lane.inputs import (
    INPUT_POINTS,
    AuthorisationCommitted,
    AuthorisationRefused,
    CardRead,
    DeviceFault,
    DeviceRecovered,
    Input as Event,
    InputChanged,
    InputsSnapshot,
    ReleaseDecided,
    ReleaseFailed,
    Tick,
    WeightStable,
)
from gatectl.lane.inputs import poll_edges
from gatectl.lane.passage import LaneRecord, PassageRecord, fold
from lanelog import LaneLog

S = LaneState
TZ = ZoneInfo("Asia/Shanghai")
#: 09:00 Beijing time on a working day; every step below is T0 plus a few seconds.
T0 = datetime(2026, 11, 27, 9, 0, tzinfo=TZ)

CARD_A = "0100E2850E"
CARD_B = "06008E6D5D"
CARD_C = "3A00F1229B"

BONDED = LaneRules(lane_id="B1-IN", kind="bonded", min_vehicle_kg=500.0)
NO_WEIGHBRIDGE = replace(BONDED, has_weighbridge=False)
NO_EXIT_LOOP = replace(BONDED, has_exit_loop=False)

WELCOME = core_module.TEXT_WELCOME
ASK_CARD = core_module.TEXT_CARD
WEIGHING = core_module.TEXT_WEIGHING
DECIDING = core_module.TEXT_DECIDING
RELEASED = core_module.TEXT_RELEASED
ONE_BY_ONE = core_module.TEXT_ONE_BY_ONE
FORCED = core_module.TEXT_FORCED
EMERGENCY = core_module.TEXT_EMERGENCY
FAULT = core_module.TEXT_FAULT
FAULT_HELD = core_module.HOLD_TEXTS["device_fault"]
INTERRUPTED = core_module.TEXT_INTERRUPTED
INSPECTION_AREA = "待检区"
#: What the core returns when the cleared vehicle lets the barrier come down (S3).
LOWERS = ["Pulse:close:lower", "barrier.lowered", f"Display:{ONE_BY_ONE}"]


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def _no_draws() -> float:
    raise AssertionError("the core drew a random number with no spot-check fraction in force")


# --------------------------------------------------------------------------- the service


class Lane:
    """One lane core and a minimal, synchronous lane runtime around it."""

    def __init__(
        self,
        rules: LaneRules = BONDED,
        *,
        recovered: PassageRecord | None = None,
        lane: LaneRecord | None = None,
        log: LaneLog | None = None,
        ids: Iterator[int] | None = None,
        rand: Callable[[], float] | None = None,
    ) -> None:
        self.rules = rules
        self._ids = ids if ids is not None else itertools.count(1)
        #: The core's random draws for spot-check fractions (R7): never drawn unless set.
        self.rand = rand if rand is not None else _no_draws
        self.core = LaneCore(rules, recovered=recovered, lane=lane, new_id=self.new_id, rand=self.rand)
        self.log = log if log is not None else LaneLog(rules.lane_id)
        #: Every journaled event of the lane as its JSON body (cut its tail to lose writes).
        self.journal: list[dict] = self.log.bodies
        self.requests: list[RequestRelease] = []
        self.inputs = {p: False for p in INPUT_POINTS}

    @property
    def consumed(self) -> set[tuple[str, str]]:
        return self.log.consumed

    @property
    def journal_broken(self) -> bool:
        return self.log.broken

    @journal_broken.setter
    def journal_broken(self, value: bool) -> None:
        self.log.broken = value

    def new_id(self) -> str:
        return f"id-{next(self._ids)}"

    # The runtime's side: carry out commands in order, answer commits at once.

    def feed(self, event: Event, now: datetime) -> list[Command]:
        if isinstance(event, InputChanged):
            self.inputs[event.point] = event.value
        elif isinstance(event, InputsSnapshot):
            self.inputs.update(event.values)
            if self.core.running:
                # A later poll reaches the core one edge at a time, as the runtime feeds it.
                out: list[Command] = []
                for edge in poll_edges(event.values):
                    out += self._execute(self.core.handle(edge, now), now)
                return out
        return self._execute(self.core.handle(event, now), now)

    def _execute(self, commands: list[Command], now: datetime) -> list[Command]:
        done: list[Command] = []
        for cmd in commands:
            done.append(cmd)
            if isinstance(cmd, Emit):
                self.log.emit(cmd)
            elif isinstance(cmd, RequestRelease):
                self.requests.append(cmd)
            elif isinstance(cmd, CommitAuthorisation):
                done.extend(self._execute(self.core.handle(self.log.commit(cmd), now), now))
        return done

    # Shorthands for the steps of a scenario.

    def start(self, now: datetime, **inputs: bool) -> list[Command]:
        values = {p: False for p in INPUT_POINTS}
        values["barrier_down"] = True
        values.update(inputs)
        return self.feed(InputsSnapshot(values), now)

    def set(self, point: str, value: bool, now: datetime) -> list[Command]:
        return self.feed(InputChanged(point, value), now)

    def card(self, card: str, now: datetime, open_elsewhere: str | None = None) -> list[Command]:
        return self.feed(CardRead(card, open_elsewhere), now)

    def weight(self, kg: float, now: datetime) -> list[Command]:
        return self.feed(WeightStable(kg), now)

    def decide(self, decision: str, now: datetime, instruction_id: str | None = None, **kw) -> list[Command]:
        return self.feed(ReleaseDecided(self.requests[-1].request_id, decision, instruction_id, **kw), now)

    def tick(self, now: datetime) -> list[Command]:
        return self.feed(Tick(), now)

    def restart(self, now: datetime, **inputs: bool) -> tuple["Lane", list[Command]]:
        """S7: a new core knowing only the journal and the live inputs, rebuilt with the
        journal's own fold of the lane's events."""
        lane = Lane(self.rules, **self.log.recovery(), log=self.log, ids=self._ids, rand=self.rand)
        return lane, lane.start(now, **inputs)

    # Reading what happened.

    @property
    def state(self) -> LaneState:
        return self.core.state

    def events(self, type_: str) -> list[dict]:
        return self.log.events(type_)

    def alarms(self, alarm: str | None = None) -> list[dict]:
        return [e for e in self.events("alarm.raised") if alarm is None or e["alarm"] == alarm]


def names(commands: list[Command]) -> list[str]:
    """A compact, exact picture of a command list, in order."""
    out = []
    for c in commands:
        if isinstance(c, Emit):
            out.append(f"alarm.raised:{c.data['alarm']}" if c.type == "alarm.raised" else c.type)
        elif isinstance(c, Pulse):
            out.append(f"Pulse:{c.coil}:{c.reason}")
        elif isinstance(c, RequestRelease):
            out.append("RequestRelease")
        elif isinstance(c, CommitAuthorisation):
            out.append(f"Commit:{c.kind}")
        elif isinstance(c, Display):
            out.append(f"Display:{c.text}")
        elif isinstance(c, ConfirmPassage):
            out.append(f"Confirm:{c.result}")
        else:  # pragma: no cover - a new command type must be added here
            raise AssertionError(f"unknown command {c!r}")
    return out


def emitted(commands: list[Command], type_: str) -> list[dict]:
    return [c.data for c in commands if isinstance(c, Emit) and c.type == type_]


def only(commands: list[Command], kind: type) -> list:
    return [c for c in commands if isinstance(c, kind)]


def open_pulses(commands: list[Command]) -> list[Pulse]:
    return [c for c in only(commands, Pulse) if c.coil == "open"]


# ------------------------------------------------------------------ scenario building blocks


def up_to_deciding(lane: Lane, t: float = 1.0, card: str = CARD_A, kg: float = 31250.0) -> float:
    """Arrival, card and (if the lane has one) a stable weight; returns the time of the last step."""
    lane.set("arrival_loop", True, at(t))
    lane.card(card, at(t + 1))
    if lane.rules.has_weighbridge:
        lane.weight(kg, at(t + 2))
    assert lane.state is S.DECIDING
    return t + 2


def release(lane: Lane, t: float, instruction: str = "CMD-1") -> list[Command]:
    out = lane.decide("release", at(t), instruction, form_id="HF-2026-1", hint=None)
    assert lane.state is S.OPEN
    return out


def barrier_rises(lane: Lane, t: float) -> None:
    lane.set("barrier_down", False, at(t))
    lane.set("barrier_up", True, at(t + 1.5))


def drive_through(lane: Lane, t: float) -> list[Command]:
    """Arrival, safety and exit loops in order (safety only on a lane without an exit loop)."""
    out: list[Command] = []
    out += lane.set("safety_loop", True, at(t))
    out += lane.set("arrival_loop", False, at(t + 0.5))
    if lane.rules.has_exit_loop:
        out += lane.set("exit_loop", True, at(t + 2))
        out += lane.set("safety_loop", False, at(t + 2.5))
        out += lane.set("exit_loop", False, at(t + 4))
    else:
        out += lane.set("safety_loop", False, at(t + 2.5))
    return out


def barrier_falls(lane: Lane, t: float) -> list[Command]:
    out = lane.set("barrier_up", False, at(t))
    out += lane.set("barrier_down", True, at(t + 1.5))
    return out


def full_passage(lane: Lane, t: float, card: str, instruction: str) -> float:
    """One released vehicle from arrival to barrier down; returns the time it ends."""
    t = up_to_deciding(lane, t, card)
    release(lane, t + 1, instruction)
    barrier_rises(lane, t + 1.2)
    drive_through(lane, t + 3)
    barrier_falls(lane, t + 8)
    assert lane.state is S.IDLE
    return t + 10


@pytest.fixture
def lane() -> Lane:
    lane = Lane(BONDED)
    assert names(lane.start(at(0))) == [f"Display:{WELCOME}"]
    assert lane.state is S.IDLE
    return lane


# ============================================================== R3/R4: the happy paths


def test_r3_r4_release_with_weighbridge_and_exit_loop_lifts_once_and_lowers_after_exit(lane: Lane) -> None:
    """R3, R4, S1, S3: one card, one stable weight, one request, one authorisation, one lift."""
    assert names(lane.set("arrival_loop", True, at(1))) == ["loop.changed", "passage.opened", f"Display:{ASK_CARD}"]
    assert lane.state is S.PRESENT
    passage_id = lane.events("passage.opened")[0]["passage_id"]

    assert names(lane.card(CARD_A, at(2))) == ["card.read", f"Display:{WEIGHING}"]
    assert lane.state is S.WEIGHING

    # The truck still rolling onto the scale: below the lane's minimum, not a vehicle weight.
    assert lane.weight(320.0, at(3)) == []
    assert lane.state is S.WEIGHING and lane.requests == []

    out = lane.weight(31250.0, at(4))
    assert names(out) == ["weight.stable", f"Display:{DECIDING}", "release.requested", "RequestRelease"]
    (req,) = only(out, RequestRelease)
    assert (req.passage_id, req.card, req.gross_weight_kg, req.captured_at) == (passage_id, CARD_A, 31250.0, at(4))
    assert lane.state is S.DECIDING

    out = lane.decide("release", at(6), "CMD-1", form_id="HF-2026-1")
    decided = emitted(out, "release.decided")[0]
    assert (decided["source"], decided["decision"], decided["instruction_id"]) == ("authority", "release", "CMD-1")
    # The release text is shown only once the journal has committed the authorisation.
    assert names(out) == [
        "release.decided",
        "Commit:release_instruction",
        "Pulse:open:lift",
        "barrier.lifted",
        f"Display:{RELEASED}",
    ]
    (commit,) = only(out, CommitAuthorisation)
    assert (commit.auth_id, commit.passage_id, commit.ts) == ("CMD-1", passage_id, at(6))
    (pulse,) = only(out, Pulse)
    assert pulse.authorisation == ("release_instruction", "CMD-1")
    assert emitted(out, "barrier.lifted")[0]["authorisation"] == {"kind": "release_instruction", "id": "CMD-1"}
    assert lane.state is S.OPEN
    # S6: the journal recorded the authorisation before the coil was energised.
    types = [e["type"] for e in lane.journal]
    assert types.index("authorisation.committed") < types.index("barrier.lifted")

    assert names(lane.set("barrier_down", False, at(6.2))) == ["barrier.position"]
    assert names(lane.set("barrier_up", True, at(8))) == ["barrier.position"]
    assert names(lane.set("safety_loop", True, at(9))) == ["loop.changed"]
    assert names(lane.set("arrival_loop", False, at(9.5))) == ["loop.changed"]
    assert names(lane.set("exit_loop", True, at(11))) == ["loop.changed"]
    assert names(lane.set("safety_loop", False, at(11.5))) == ["loop.changed"]
    assert lane.state is S.OPEN  # still on the exit loop: the boom stays up

    out = lane.set("exit_loop", False, at(13))
    assert names(out) == ["loop.changed", "Confirm:passed", "passage.closed", *LOWERS]
    # CONTRACT 3.1: the authority learns what became of its release, in the step that closes the passage.
    (confirm,) = only(out, ConfirmPassage)
    assert confirm == ConfirmPassage(req.request_id, "CMD-1", "passed", at(13), 31250.0)
    (closed,) = emitted(out, "passage.closed")
    assert closed["outcome"] == "passed"
    assert closed["passage_id"] == passage_id
    assert (closed["card"], closed["gross_weight_kg"], closed["decision"]) == (CARD_A, 31250.0, "release")
    assert closed["authorisation"] == {"kind": "release_instruction", "id": "CMD-1"}
    assert lane.state is S.LOWERING

    assert names(lane.set("barrier_up", False, at(13.2))) == ["barrier.position"]
    assert names(lane.set("barrier_down", True, at(15))) == ["barrier.position", f"Display:{WELCOME}"]
    assert lane.state is S.IDLE
    assert lane.core.passage is None and lane.core.lift is None

    assert len(lane.requests) == 1
    assert lane.alarms() == []
    of_vehicle = [e for e in lane.journal if e["type"].startswith(("card.", "release.", "weight."))]
    assert {e["passage_id"] for e in of_vehicle} == {passage_id}


def test_r3_without_weighbridge_the_card_alone_starts_the_request() -> None:
    """R3: a lane with no weighbridge asks the authority as soon as the card is read."""
    lane = Lane(NO_WEIGHBRIDGE)
    lane.start(at(0))
    lane.set("arrival_loop", True, at(1))
    out = lane.card(CARD_A, at(2))
    assert names(out) == ["card.read", f"Display:{DECIDING}", "release.requested", "RequestRelease"]
    (req,) = only(out, RequestRelease)
    assert (req.card, req.gross_weight_kg) == (CARD_A, None)
    assert lane.state is S.DECIDING

    assert names(release(lane, 3)) == [
        "release.decided",
        "Commit:release_instruction",
        "Pulse:open:lift",
        "barrier.lifted",
        f"Display:{RELEASED}",
    ]
    barrier_rises(lane, 3.2)
    out = drive_through(lane, 6)
    assert names(out)[-5:] == ["Confirm:passed", "passage.closed", *LOWERS]
    assert emitted(out, "passage.closed")[0]["outcome"] == "passed"
    barrier_falls(lane, 11)
    assert lane.state is S.IDLE


def test_r3_s3_without_exit_loop_the_safety_loop_clearing_means_passed() -> None:
    """S3: on a lane with no exit loop the vehicle has cleared when the safety loop clears."""
    lane = Lane(NO_EXIT_LOOP)
    lane.start(at(0))
    t = up_to_deciding(lane, 1)
    release(lane, t + 1)
    barrier_rises(lane, t + 1.2)
    assert names(lane.set("safety_loop", True, at(7))) == ["loop.changed"]
    assert names(lane.set("arrival_loop", False, at(7.5))) == ["loop.changed"]
    out = lane.set("safety_loop", False, at(9))
    assert names(out) == ["loop.changed", "Confirm:passed", "passage.closed", *LOWERS]
    assert emitted(out, "passage.closed")[0]["outcome"] == "passed"
    assert lane.state is S.LOWERING
    barrier_falls(lane, 10)
    assert lane.state is S.IDLE


def test_r5_next_vehicle_waiting_on_arrival_loop_gets_its_passage_when_the_barrier_is_down(lane: Lane) -> None:
    """R5: one at a time: the waiting vehicle's passage opens only once the barrier is down."""
    t = up_to_deciding(lane, 1)
    release(lane, t + 1)
    barrier_rises(lane, t + 1.2)
    drive_through(lane, 6)
    assert names(lane.set("arrival_loop", True, at(10.5))) == ["loop.changed"]  # next truck, boom still coming down
    assert lane.state is S.LOWERING and lane.core.passage is None
    lane.set("barrier_up", False, at(11))
    out = lane.set("barrier_down", True, at(12))
    assert names(out) == ["barrier.position", f"Display:{WELCOME}", "passage.opened", f"Display:{ASK_CARD}"]
    assert lane.state is S.PRESENT
    assert len(lane.events("passage.opened")) == 2


# ===================================================== cards read around the arrival loop


def test_r4_card_read_just_before_the_arrival_loop_is_used(lane: Lane) -> None:
    """R4: a reader firing a moment before the loop: the card, within its grace, is the vehicle's."""
    assert lane.card(CARD_A, at(1)) == []
    assert lane.state is S.IDLE and lane.events("card.read") == []
    out = lane.set("arrival_loop", True, at(1 + 4.9))
    assert names(out) == ["loop.changed", "passage.opened", f"Display:{ASK_CARD}", "card.read", f"Display:{WEIGHING}"]
    assert emitted(out, "card.read")[0]["card"] == CARD_A
    assert lane.state is S.WEIGHING


def test_r4_card_read_before_the_grace_is_not_used(lane: Lane) -> None:
    """R4: a card read too long before the vehicle arrived belongs to nobody."""
    lane.card(CARD_A, at(1))
    out = lane.set("arrival_loop", True, at(1 + 5.5))
    assert names(out) == ["loop.changed", "passage.opened", f"Display:{ASK_CARD}"]
    assert lane.state is S.PRESENT and lane.core.passage.card is None


def test_r4_a_tick_after_the_grace_forgets_the_early_card(lane: Lane) -> None:
    lane.card(CARD_A, at(1))
    assert lane.core.next_deadline == at(6)
    assert lane.tick(at(6.5)) == []
    assert lane.core.next_deadline is None
    lane.set("arrival_loop", True, at(7))
    assert lane.state is S.PRESENT and lane.events("card.read") == []


def test_s7_r4_a_card_read_before_the_first_poll_is_not_kept() -> None:
    """S7, R4: the card reader's port opens before the lane has read its loops; a card read
    then cannot be placed (its vehicle may have left, another pulled up), so it is nobody's:
    the vehicle on the loop is asked for its card."""
    lane = Lane(BONDED)
    assert lane.card(CARD_A, at(0)) == []
    out = lane.start(at(0.5), arrival_loop=True)
    assert names(out) == [f"Display:{WELCOME}", "passage.opened", f"Display:{ASK_CARD}"]
    assert lane.state is S.PRESENT and lane.core.passage.card is None
    assert names(lane.card(CARD_B, at(1))) == ["card.read", f"Display:{WEIGHING}"]


@pytest.mark.parametrize("how", ["reverses", "follows_under_the_boom"])
def test_r4_s8_a_card_shown_at_a_boom_still_up_leaves_with_its_vehicle(lane: Lane, how: str) -> None:
    """R4, S8: the next vehicle pulls up while the boom is coming down for the one before,
    shows its card (kept for its passage) and then leaves the arrival loop, backwards or
    under the boom. Its card goes with it: the vehicle after it, within the card's grace,
    gets a passage without a card and is asked about its own."""
    t = up_to_deciding(lane, 1)
    release(lane, t + 1)
    barrier_rises(lane, t + 1.2)
    drive_through(lane, 6)  # passage closed at 10, lowering
    assert lane.state is S.LOWERING
    lane.set("arrival_loop", True, at(10.2))
    assert lane.card(CARD_B, at(10.5)) == []  # kept for the passage it would get
    if how == "reverses":
        lane.set("arrival_loop", False, at(11))
    else:
        lane.set("safety_loop", True, at(10.8))  # the boom rises again over it (S2)
        lane.set("arrival_loop", False, at(11))
        lane.set("exit_loop", True, at(11.2))
        lane.set("safety_loop", False, at(11.4))
        lane.set("exit_loop", False, at(11.6))
        assert lane.alarms("tailgating")
    barrier_falls(lane, 12)
    assert lane.state is S.IDLE
    out = lane.set("arrival_loop", True, at(13.5))  # within 5 s of card B
    assert names(out) == ["loop.changed", "passage.opened", f"Display:{ASK_CARD}"]
    assert lane.core.passage.card is None and lane.requests[1:] == []
    out = lane.card(CARD_C, at(14))
    assert emitted(out, "card.read")[0]["card"] == CARD_C


def test_r3_r4_s7_a_card_shown_under_a_lift_found_after_a_crash_is_not_the_next_vehicles(lane: Lane) -> None:
    """R3, R4, S7, as the kill -9 campaign saw it: A was lifted and the daemon died; A went
    through unseen. The restarted lane keeps the boom up for A; a lorry with card B, tired
    of waiting, pulls up under it, shows its card and drives through. The lorry after it
    must be asked about its own card C, not about B."""
    t = up_to_deciding(lane, 1)
    release(lane, t + 1, "CMD-7")  # lifted at 4
    lane, out = lane.restart(at(6), barrier_up=True, barrier_down=False)
    assert lane.state is S.OPEN
    lane.set("arrival_loop", True, at(7))
    assert lane.card(CARD_B, at(7.5)) == []
    out = []
    for i, (loop, on) in enumerate([("safety_loop", True), ("arrival_loop", False), ("exit_loop", True),
                                    ("safety_loop", False), ("exit_loop", False)]):
        out += lane.set(loop, on, at(7.6 + i / 10))
    assert emitted(out, "passage.closed")[0]["card"] == CARD_A and lane.state is S.LOWERING
    barrier_falls(lane, 8.1)
    lane.set("arrival_loop", True, at(10))  # within 5 s of card B
    assert lane.state is S.PRESENT and lane.core.passage.card is None
    lane.card(CARD_C, at(10.3))
    lane.weight(18420.0, at(10.4))
    assert [r.card for r in lane.requests] == [CARD_C]


# =========================================================================== S8: cards


def test_s8_rereads_of_the_same_card_are_idempotent() -> None:
    """S8: five reads of one card: one card.read, one release request."""
    lane = Lane(NO_WEIGHBRIDGE)
    lane.start(at(0))
    lane.set("arrival_loop", True, at(1))
    first = lane.card(CARD_A, at(2))
    assert names(first)[0] == "card.read"
    for i in range(4):
        assert lane.card(CARD_A, at(2.2 + i * 0.2)) == []
    assert len(lane.events("card.read")) == 1
    assert len(lane.requests) == 1
    assert lane.state is S.DECIDING


def test_s8_rereads_while_weighing_do_not_request_twice(lane: Lane) -> None:
    lane.set("arrival_loop", True, at(1))
    lane.card(CARD_A, at(2))
    lane.weight(31250.0, at(3))
    for i in range(4):
        assert lane.card(CARD_A, at(3.5 + i)) == []
    assert len(lane.events("card.read")) == 1 and len(lane.requests) == 1


def test_s8_a_second_card_during_a_passage_is_refused_once_as_lane_busy(lane: Lane) -> None:
    """S8, R5: the lane serves one vehicle; another card is refused, once, and changes nothing."""
    up_to_deciding(lane, 1)
    out = lane.card(CARD_B, at(4))
    assert names(out) == ["card.refused"]
    assert emitted(out, "card.refused")[0] == {
        "card": CARD_B,
        "reason": "lane_busy",
        "passage_id": lane.core.passage.passage_id,
    }
    assert lane.card(CARD_B, at(4.5)) == []
    assert lane.state is S.DECIDING and lane.core.passage.card == CARD_A
    assert len(lane.requests) == 1


def test_s8_a_card_open_on_another_lane_is_refused_and_not_asked_about(lane: Lane) -> None:
    """S8: a card with an open passage elsewhere gets no passage and no request here."""
    lane.set("arrival_loop", True, at(1))
    out = lane.card(CARD_A, at(2), open_elsewhere="N2-OUT")
    assert names(out) == ["card.refused", "Display:该卡在N2-OUT通道尚有未完成通行，请联系值班人员"]
    assert emitted(out, "card.refused")[0]["reason"] == "open_elsewhere"
    assert emitted(out, "card.refused")[0]["lane"] == "N2-OUT"
    assert lane.card(CARD_A, at(2.5), open_elsewhere="N2-OUT") == []
    assert lane.state is S.PRESENT and lane.core.passage.card is None
    assert lane.requests == [] and lane.events("card.read") == []


# ============================================================= R5/R6: hold, inspect, deny


@pytest.mark.parametrize("decision", ["hold", "inspect", "deny"])
def test_r6_not_released_sends_the_vehicle_to_the_inspection_area(lane: Lane, decision: str) -> None:
    """R5, R6: no lift; a hold or an inspection sends the vehicle to the inspection area, a
    denial backs it out (nothing to inspect); the passage closes as held."""
    up_to_deciding(lane, 1)
    out = lane.decide(decision, at(5), hint="申报重量不符")
    where = core_module.TEXT_BACK_OUT if decision == "deny" else core_module.TEXT_INSPECTION
    held_text = f"申报重量不符；{where}"
    assert names(out) == ["release.decided", f"Display:{held_text}", "passage.held"]
    (text,) = [c.text for c in only(out, Display)]
    assert (INSPECTION_AREA in text) == (decision != "deny")
    assert emitted(out, "passage.held")[0]["reason"] == decision
    assert open_pulses(out) == [] and only(out, CommitAuthorisation) == []
    assert lane.state is S.HELD

    out = lane.set("arrival_loop", False, at(20))
    assert names(out) == ["loop.changed", "passage.closed", f"Display:{WELCOME}"]
    (closed,) = emitted(out, "passage.closed")
    assert (closed["outcome"], closed["decision"], closed["reason"]) == ("held", decision, decision)
    assert closed["authorisation"] is None
    assert lane.state is S.IDLE and lane.core.passage is None

    # The next vehicle gets a passage of its own, its own request, and may be released.
    first = lane.events("passage.opened")[0]["passage_id"]
    t = up_to_deciding(lane, 30, CARD_B)
    second = lane.core.passage.passage_id
    assert second != first
    assert lane.requests[-1].passage_id == second and lane.requests[-1].card == CARD_B
    assert names(release(lane, t + 1, "CMD-2"))[-3:] == ["Pulse:open:lift", "barrier.lifted", f"Display:{RELEASED}"]


def test_r6_hold_without_a_hint_still_names_the_inspection_area(lane: Lane) -> None:
    up_to_deciding(lane, 1)
    out = lane.decide("hold", at(5))
    (text,) = [c.text for c in only(out, Display)]
    assert INSPECTION_AREA in text
    assert lane.state is S.HELD


def test_r5_r6_held_vehicle_card_rereads_and_other_cards_change_nothing(lane: Lane) -> None:
    up_to_deciding(lane, 1)
    lane.decide("inspect", at(5))
    assert lane.card(CARD_A, at(6)) == []
    assert names(lane.card(CARD_B, at(7))) == ["card.refused"]
    assert lane.state is S.HELD and lane.requests[-1].card == CARD_A and len(lane.requests) == 1


def test_r5_vehicle_backing_out_before_the_decision_closes_backed_out_and_the_late_answer_is_ignored(
    lane: Lane,
) -> None:
    """R5: a vehicle may back out; the late answer then changes nothing (h11: refused, no effect)."""
    up_to_deciding(lane, 1)
    out = lane.set("arrival_loop", False, at(4))
    assert names(out) == ["loop.changed", "passage.closed", f"Display:{WELCOME}"]
    assert emitted(out, "passage.closed")[0]["outcome"] == "backed_out"
    assert lane.state is S.IDLE

    before = lane.core.snapshot()
    journal_len = len(lane.journal)
    assert lane.decide("release", at(5), "CMD-1") == []
    assert lane.feed(ReleaseFailed(lane.requests[-1].request_id, "timeout"), at(5.5)) == []
    assert lane.core.snapshot() == before
    assert lane.state is S.IDLE and len(lane.journal) == journal_len
    assert ("release_instruction", "CMD-1") not in lane.consumed


def test_r5_vehicle_backing_out_before_its_card_closes_backed_out(lane: Lane) -> None:
    lane.set("arrival_loop", True, at(1))
    out = lane.set("arrival_loop", False, at(3))
    assert names(out) == ["loop.changed", "passage.closed", f"Display:{WELCOME}"]
    assert emitted(out, "passage.closed")[0]["outcome"] == "backed_out"
    assert lane.state is S.IDLE


def test_r5_no_card_within_card_wait_holds(lane: Lane) -> None:
    lane.set("arrival_loop", True, at(1))
    assert lane.tick(at(60)) == []
    out = lane.tick(at(61))
    assert names(out) == [f"Display:{core_module.TEXT_NO_CARD}；{core_module.TEXT_INSPECTION}", "passage.held"]
    assert emitted(out, "passage.held")[0]["reason"] == "no_card"
    assert lane.state is S.HELD


# =========================================================================== S5: fail closed


def test_s5_authority_failure_holds_and_alarms(lane: Lane) -> None:
    """S5: the authority failing is a hold plus an authority_unreachable alarm, never a lift."""
    up_to_deciding(lane, 1)
    out = lane.feed(ReleaseFailed(lane.requests[-1].request_id, "connection", "refused"), at(4))
    assert names(out) == [
        "release.failed",
        "alarm.raised:authority_unreachable",
        f"Display:{core_module.TEXT_NO_ANSWER}；{core_module.TEXT_INSPECTION}",
        "passage.held",
    ]
    assert emitted(out, "passage.held")[0]["reason"] == "authority_connection"
    assert lane.state is S.HELD
    out = lane.set("arrival_loop", False, at(10))
    assert emitted(out, "passage.closed")[0]["outcome"] == "held"


def test_s5_no_answer_by_the_decision_deadline_holds_and_a_late_release_lifts_nothing(lane: Lane) -> None:
    """S5: decision_wait (4 s) passes without an answer: hold; the late release is ignored."""
    t = up_to_deciding(lane, 1)  # request at t=3
    assert lane.core.next_deadline == at(t + 4)
    assert lane.tick(at(t + 3.9)) == []
    assert lane.state is S.DECIDING
    out = lane.tick(at(t + 4))
    assert names(out) == [
        "release.failed",
        "alarm.raised:authority_unreachable",
        f"Display:{core_module.TEXT_NO_ANSWER}；{core_module.TEXT_INSPECTION}",
        "passage.held",
    ]
    assert emitted(out, "release.failed")[0]["reason"] == "timeout"
    assert lane.state is S.HELD

    before = lane.core.snapshot()
    assert lane.decide("release", at(t + 5), "CMD-1") == []
    assert lane.state is S.HELD and lane.core.snapshot() == before
    assert lane.consumed == set()


def test_s5_device_fault_then_release_holds_without_committing_and_recovery_restores_release(lane: Lane) -> None:
    """S5: a faulty device means no automatic lift; DeviceRecovered closes the fault."""
    t = up_to_deciding(lane, 1)
    out = lane.feed(DeviceFault("io1", "modbus timeout"), at(t + 0.5))
    assert names(out) == ["fault.opened", "alarm.raised:device_fault"]
    out = lane.decide("release", at(t + 1), "CMD-1")
    assert names(out) == ["release.decided", f"Display:{FAULT_HELD}；{core_module.TEXT_INSPECTION}", "passage.held"]
    assert emitted(out, "passage.held")[0]["reason"] == "device_fault"
    assert only(out, CommitAuthorisation) == [] and open_pulses(out) == []
    assert lane.state is S.HELD and lane.consumed == set()

    out = lane.set("arrival_loop", False, at(10))
    assert names(out) == ["loop.changed", "Confirm:not_passed", "passage.closed", f"Display:{FAULT}"]
    assert emitted(out, "passage.closed")[0]["reason"] == "device_fault"
    assert lane.state is S.IDLE

    out = lane.feed(DeviceRecovered("io1"), at(20))
    assert names(out) == ["fault.closed", f"Display:{WELCOME}"]
    assert lane.core.faults == {}
    t = up_to_deciding(lane, 30, CARD_B)
    out = release(lane, t + 1, "CMD-1")  # the instruction was never consumed: it may lift now
    assert names(out)[-4:] == ["Commit:release_instruction", "Pulse:open:lift", "barrier.lifted", f"Display:{RELEASED}"]


def test_s5_a_fault_while_idle_shows_on_the_display(lane: Lane) -> None:
    out = lane.feed(DeviceFault("card_reader", "port vanished"), at(1))
    assert names(out) == ["fault.opened", "alarm.raised:device_fault", f"Display:{FAULT}"]
    assert lane.feed(DeviceFault("card_reader", "port vanished"), at(2)) == []  # already open
    assert lane.state is S.IDLE


def test_s5_recovering_a_device_that_never_failed_changes_nothing(lane: Lane) -> None:
    before = lane.core.snapshot()
    assert lane.feed(DeviceRecovered("weighbridge"), at(1)) == []
    assert lane.core.snapshot() == before


# =============================================================== S1/S6: the journal decides


def test_s1_a_replayed_instruction_is_refused_by_the_journal_and_lifts_nothing(lane: Lane) -> None:
    """S1, S6: the journal refuses an instruction already consumed: replay alarm, hold, no pulse."""
    lane.consumed.add(("release_instruction", "CMD-1"))
    t = up_to_deciding(lane, 1)
    out = lane.decide("release", at(t + 1), "CMD-1")
    # The journal refused it, so the vehicle is never told it is released.
    assert names(out) == [
        "release.decided",
        "Commit:release_instruction",
        "alarm.raised:instruction_replay",
        f"Display:放行指令已使用过，不予重复抬杆；{core_module.TEXT_INSPECTION}",
        "passage.held",
    ]
    assert emitted(out, "alarm.raised")[0]["authorisation"] == {"kind": "release_instruction", "id": "CMD-1"}
    assert open_pulses(out) == []
    assert lane.state is S.HELD and lane.core.lift is None and lane.core.passage.authorisation is None


def test_s6_a_journal_error_means_no_lift(lane: Lane) -> None:
    """S6: the authorisation could not be recorded, so the coil is never energised."""
    lane.journal_broken = True
    t = up_to_deciding(lane, 1)
    out = lane.decide("release", at(t + 1), "CMD-1")
    assert names(out) == [
        "release.decided",
        "Commit:release_instruction",
        "alarm.raised:journal_fault",
        f"Display:{FAULT_HELD}；{core_module.TEXT_INSPECTION}",
        "passage.held",
    ]
    assert emitted(out, "passage.held")[0]["reason"] == "journal_error"
    assert only(out, Pulse) == []
    assert lane.state is S.HELD and lane.events("authorisation.committed") == []


def test_s1_the_same_instruction_offered_for_the_next_vehicle_is_refused_as_replay(lane: Lane) -> None:
    """S1: each authorisation lifts at most once: CMD-1 for a second vehicle is a replay."""
    end = full_passage(lane, 1, CARD_A, "CMD-1")
    t = up_to_deciding(lane, end + 1, CARD_B)
    out = lane.decide("release", at(t + 1), "CMD-1")
    assert "alarm.raised:instruction_replay" in names(out)
    assert open_pulses(out) == []
    assert lane.state is S.HELD
    assert sum(1 for e in lane.events("barrier.lifted")) == 1


# ============================================================ S2: never lower onto a vehicle


def lifted_and_through(lane: Lane) -> None:
    t = up_to_deciding(lane, 1)
    release(lane, t + 1)
    barrier_rises(lane, t + 1.2)
    drive_through(lane, 6)
    assert lane.state is S.LOWERING


def test_s2_safety_loop_occupied_while_lowering_raises_the_barrier_again(lane: Lane) -> None:
    """S2: under the same authorisation, reason safety_reverse; S3: it is a second vehicle."""
    lifted_and_through(lane)
    lane.set("barrier_up", False, at(10.3))
    out = lane.set("safety_loop", True, at(10.8))
    assert names(out) == ["loop.changed", "Pulse:open:safety_reverse", "barrier.lifted", "alarm.raised:tailgating"]
    (pulse,) = only(out, Pulse)
    assert pulse.authorisation == ("release_instruction", "CMD-1")
    assert emitted(out, "barrier.lifted")[0]["reason"] == "safety_reverse"
    assert lane.state is S.OPEN

    # It stays up while the thing is under the boom, however long it waits there.
    lane.set("barrier_up", True, at(12))
    assert lane.tick(at(30)) == []
    assert lane.state is S.OPEN
    out = lane.set("exit_loop", True, at(31))
    out += lane.set("safety_loop", False, at(31.5))
    assert only(out, Pulse) == []
    out = lane.set("exit_loop", False, at(33))
    assert names(out) == ["loop.changed", "Pulse:close:lower", "barrier.lowered"]
    assert len(lane.alarms("tailgating")) == 1
    assert lane.consumed == {("release_instruction", "CMD-1")}


def test_s2_no_lower_while_the_vehicle_stands_on_the_safety_loop(lane: Lane) -> None:
    """S2: a vehicle stopped under the boom: no close pulse, whatever time passes, until it clears."""
    t = up_to_deciding(lane, 1)
    release(lane, t + 1)
    barrier_rises(lane, t + 1.2)
    out = lane.set("safety_loop", True, at(7))
    out += lane.set("arrival_loop", False, at(7.5))
    for s in (10, 20, 60, 120):
        out += lane.tick(at(s))
    assert only(out, Pulse) == []
    assert lane.state is S.OPEN
    out = lane.set("exit_loop", True, at(121))
    out += lane.set("safety_loop", False, at(122))
    out += lane.set("exit_loop", False, at(123))
    assert [c.coil for c in only(out, Pulse)] == ["close"]


def test_s2_without_exit_loop_no_lower_until_the_safety_loop_clears() -> None:
    lane = Lane(NO_EXIT_LOOP)
    lane.start(at(0))
    t = up_to_deciding(lane, 1)
    release(lane, t + 1)
    barrier_rises(lane, t + 1.2)
    out = lane.set("safety_loop", True, at(7)) + lane.set("arrival_loop", False, at(7.5))
    out += lane.tick(at(60))
    assert only(out, Pulse) == [] and lane.state is S.OPEN
    out = lane.set("safety_loop", False, at(61))
    assert names(out)[1:4] == ["Confirm:passed", "passage.closed", "Pulse:close:lower"]


# ================================================================== S3: tailgating


def test_s3_two_vehicles_under_one_lift_raise_exactly_one_tailgating_alarm(lane: Lane) -> None:
    """S3: the exit loop cycles twice under one lift: one tailgating alarm, then the barrier lowers."""
    t = up_to_deciding(lane, 1)
    release(lane, t + 1)
    barrier_rises(lane, t + 1.2)
    out: list[Command] = []
    out += lane.set("safety_loop", True, at(7))  # first truck
    out += lane.set("arrival_loop", False, at(7.5))
    out += lane.set("exit_loop", True, at(8))
    out += lane.set("safety_loop", False, at(8.5))
    out += lane.set("arrival_loop", True, at(8.6))  # second truck, close behind, no card
    out += lane.set("safety_loop", True, at(8.8))
    out += lane.set("exit_loop", False, at(9))  # first truck out: the second is under the boom
    assert only(out, Pulse) == [] and lane.alarms("tailgating") == []
    out += lane.set("arrival_loop", False, at(9.2))
    out += lane.set("exit_loop", True, at(9.5))
    out += lane.set("safety_loop", False, at(10))
    last = lane.set("exit_loop", False, at(11))
    assert names(last) == [
        "loop.changed",
        "alarm.raised:tailgating",
        "Confirm:passed",
        "passage.closed",
        "Pulse:close:lower",
        "barrier.lowered",
        f"Display:{ONE_BY_ONE}",
    ]
    (alarm,) = lane.alarms("tailgating")
    assert alarm["authorisation"] == {"kind": "release_instruction", "id": "CMD-1"} and alarm["vehicles"] == 2
    assert len(lane.events("passage.opened")) == 1  # the tailgater got no passage of its own
    assert len(lane.events("barrier.lifted")) == 1


def test_s3_three_vehicles_under_one_lift_still_one_alarm(lane: Lane) -> None:
    t = up_to_deciding(lane, 1)
    release(lane, t + 1)
    barrier_rises(lane, t + 1.2)
    lane.set("safety_loop", True, at(7))
    lane.set("arrival_loop", False, at(7.2))
    now = 7.5
    for _ in range(3):
        lane.set("exit_loop", True, at(now))
        lane.set("safety_loop", True, at(now + 0.1))  # the next one already under the boom
        lane.set("exit_loop", False, at(now + 0.3))
        now += 1
    assert lane.state is S.OPEN
    lane.set("exit_loop", True, at(now))
    lane.set("safety_loop", False, at(now + 0.1))
    lane.set("exit_loop", False, at(now + 0.3))
    assert lane.state is S.LOWERING
    assert len(lane.alarms("tailgating")) == 1


# ===================================================================== S4: forced passage


def test_s4_safety_loop_in_idle_is_a_forced_passage(lane: Lane) -> None:
    """S4: through the barrier line with no lift in progress."""
    out = lane.set("safety_loop", True, at(1))
    assert names(out) == ["loop.changed", "alarm.raised:forced_passage", f"Display:{FORCED}"]
    assert emitted(out, "alarm.raised")[0] == {"alarm": "forced_passage", "loop": "safety_loop", "state": "idle"}
    assert lane.state is S.IDLE and only(out, Pulse) == []


def test_s4_exit_loop_in_idle_is_a_forced_passage(lane: Lane) -> None:
    out = lane.set("exit_loop", True, at(1))
    assert names(out) == ["loop.changed", "alarm.raised:forced_passage", f"Display:{FORCED}"]
    assert emitted(out, "alarm.raised")[0]["loop"] == "exit_loop"


def test_s4_held_vehicle_driving_under_the_boom_is_a_forced_passage(lane: Lane) -> None:
    """S4, R8: a held vehicle that drives on instead of backing out."""
    up_to_deciding(lane, 1)
    lane.decide("deny", at(5))
    out = lane.set("safety_loop", True, at(7))
    assert names(out) == ["loop.changed", "alarm.raised:forced_passage", f"Display:{FORCED}"]
    alarm = emitted(out, "alarm.raised")[0]
    assert (alarm["loop"], alarm["state"], alarm["passage_id"]) == ("safety_loop", "held", lane.core.passage.passage_id)
    assert lane.state is S.HELD and only(out, Pulse) == []


def test_s4_a_vehicle_reaching_the_safety_loop_while_deciding_is_a_forced_passage(lane: Lane) -> None:
    up_to_deciding(lane, 1)
    out = lane.set("safety_loop", True, at(4))
    assert "alarm.raised:forced_passage" in names(out)
    assert lane.state is S.DECIDING


# ============================================================ lifted vehicle that reverses


def test_s3_lifted_vehicle_that_reverses_away_lowers_after_backout_wait(lane: Lane) -> None:
    """S3: off the arrival loop with nothing entered: no lower at once; after backout_wait it is gone."""
    t = up_to_deciding(lane, 1)
    release(lane, t + 1)
    barrier_rises(lane, t + 1.2)
    assert names(lane.set("arrival_loop", False, at(10))) == ["loop.changed"]
    assert lane.state is S.OPEN
    assert lane.core.next_deadline == at(15)
    assert lane.tick(at(14.9)) == []
    out = lane.tick(at(15))
    assert names(out) == ["Confirm:not_passed", "passage.closed", *LOWERS]
    closed = emitted(out, "passage.closed")[0]
    assert (closed["outcome"], closed["reason"]) == ("backed_out", "left_after_lift")
    assert lane.state is S.LOWERING
    barrier_falls(lane, 16)
    assert lane.state is S.IDLE


def test_s3_lifted_vehicle_crossing_the_gap_between_loops_is_a_normal_pass(lane: Lane) -> None:
    """S3: off the arrival loop, onto the safety loop within backout_wait: a normal pass."""
    t = up_to_deciding(lane, 1)
    release(lane, t + 1)
    barrier_rises(lane, t + 1.2)
    lane.set("arrival_loop", False, at(10))
    assert names(lane.set("safety_loop", True, at(13))) == ["loop.changed"]
    assert lane.tick(at(16)) == []  # past the backout deadline: nothing
    assert lane.state is S.OPEN
    lane.set("exit_loop", True, at(17))
    lane.set("safety_loop", False, at(17.5))
    out = lane.set("exit_loop", False, at(19))
    assert emitted(out, "passage.closed")[0]["outcome"] == "passed"
    assert lane.state is S.LOWERING


def test_s3_lifted_vehicle_that_comes_back_onto_the_arrival_loop_cancels_the_backout_timer(lane: Lane) -> None:
    t = up_to_deciding(lane, 1)
    release(lane, t + 1)
    barrier_rises(lane, t + 1.2)
    lane.set("arrival_loop", False, at(10))
    lane.set("arrival_loop", True, at(12))
    assert lane.tick(at(20)) == []
    assert lane.state is S.OPEN and lane.core.passage is not None


# ============================================================ R11: emergency vehicles


def test_r11_emergency_button_in_idle_lifts_at_once_and_alarms(lane: Lane) -> None:
    """R11, S1: the emergency release is its own authorisation, committed before the pulse."""
    out = lane.set("emergency_button", True, at(1))
    assert names(out) == [
        "passage.opened",
        "alarm.raised:emergency_release",
        "Commit:emergency",
        "Pulse:open:lift",
        "barrier.lifted",
        f"Display:{EMERGENCY}",
    ]
    (commit,) = only(out, CommitAuthorisation)
    (pulse,) = only(out, Pulse)
    assert pulse.authorisation == ("emergency", commit.auth_id)
    alarm = emitted(out, "alarm.raised")[0]
    assert alarm["authorisation"] == {"kind": "emergency", "id": commit.auth_id}
    assert emitted(out, "passage.opened")[0]["emergency"] is True
    assert lane.state is S.OPEN

    # Holding the button down is not a second press; releasing it does nothing either.
    assert lane.set("emergency_button", True, at(1.5)) == []
    assert lane.feed(InputsSnapshot({**lane.inputs, "emergency_button": True}), at(1.7)) == []
    assert lane.set("emergency_button", False, at(2)) == []

    barrier_rises(lane, 2.1)
    lane.set("arrival_loop", True, at(5))
    out = drive_through(lane, 6)
    (closed,) = emitted(out, "passage.closed")
    assert closed["outcome"] == "emergency"
    assert closed["authorisation"] == {"kind": "emergency", "id": commit.auth_id}
    assert [p.coil for p in only(out, Pulse)] == ["close"]
    barrier_falls(lane, 11)
    assert lane.state is S.IDLE
    assert len(lane.events("barrier.lifted")) == 1 and lane.alarms("forced_passage") == []


def test_r11_emergency_while_held_lifts_for_the_held_vehicle(lane: Lane) -> None:
    """R11: the guard releases a held police vehicle: the passage closes as emergency."""
    up_to_deciding(lane, 1)
    lane.decide("hold", at(5))
    passage_id = lane.core.passage.passage_id
    out = lane.set("emergency_button", True, at(8))
    assert names(out) == [
        "alarm.raised:emergency_release",
        "Commit:emergency",
        "Pulse:open:lift",
        "barrier.lifted",
        f"Display:{EMERGENCY}",
    ]
    assert only(out, CommitAuthorisation)[0].passage_id == passage_id
    assert lane.state is S.OPEN
    barrier_rises(lane, 8.1)
    out = drive_through(lane, 11)
    (closed,) = emitted(out, "passage.closed")
    assert (closed["outcome"], closed["passage_id"]) == ("emergency", passage_id)
    # Released: the hold no longer describes the passage.
    assert "reason" not in closed
    assert lane.state is S.LOWERING


def test_r11_emergency_while_deciding_ignores_the_late_answer(lane: Lane) -> None:
    up_to_deciding(lane, 1)
    lane.set("emergency_button", True, at(4))
    assert lane.state is S.OPEN
    before = lane.core.snapshot()
    assert lane.decide("release", at(5), "CMD-1") == []
    assert lane.core.snapshot() == before
    assert ("release_instruction", "CMD-1") not in lane.consumed


def test_r11_second_press_while_open_alarms_but_does_not_lift_again(lane: Lane) -> None:
    lane.set("emergency_button", True, at(1))
    lane.set("emergency_button", False, at(2))
    out = lane.set("emergency_button", True, at(3))
    assert names(out) == ["alarm.raised:emergency_release"]
    assert emitted(out, "alarm.raised")[0]["note"] == "barrier_already_up"
    assert len(lane.events("barrier.lifted")) == 1


# ================================================================ R10: manual lift button


def test_r10_manual_lift_without_approval_is_refused_and_logged(lane: Lane) -> None:
    """R10: no approval, no lift; the refused attempt is journaled."""
    out = lane.set("manual_lift_button", True, at(1))
    assert names(out) == ["manual_lift.refused"]
    assert emitted(out, "manual_lift.refused")[0]["reason"] == "no_valid_approval"
    assert lane.state is S.IDLE
    assert lane.set("manual_lift_button", False, at(2)) == []


def test_r10_manual_lift_while_held_is_refused(lane: Lane) -> None:
    up_to_deciding(lane, 1)
    lane.decide("deny", at(5))
    out = lane.set("manual_lift_button", True, at(6))
    assert names(out) == ["manual_lift.refused"]
    assert lane.state is S.HELD and lane.consumed == set()


# ====================================================================== R9: travel timeout


def test_r9_barrier_that_never_reaches_up_opens_a_fault_and_closes_it_on_arrival(lane: Lane) -> None:
    """R9: lift commanded, the up limit never comes within travel_timeout: barrier fault."""
    t = up_to_deciding(lane, 1)
    release(lane, t + 1)  # lift at t=4, travel_timeout 6 s
    lane.set("barrier_down", False, at(4.3))
    assert lane.tick(at(9.9)) == []
    out = lane.tick(at(10))
    assert names(out) == ["fault.opened", "alarm.raised:barrier_fault", "incident.opened"]
    assert emitted(out, "fault.opened")[0]["reason"] == "travel_timeout_up"
    assert lane.core.faults == {"barrier": "travel_timeout_up"}
    assert lane.tick(at(20)) == []  # raised once
    out = lane.set("barrier_up", True, at(21))
    assert names(out) == ["barrier.position", "fault.closed"]
    assert lane.core.faults == {} and lane.state is S.OPEN


def test_r9_barrier_that_never_reaches_down_opens_a_fault(lane: Lane) -> None:
    lifted_and_through(lane)  # lowered at t=10
    lane.set("barrier_up", False, at(10.2))
    out = lane.tick(at(16))
    assert names(out) == ["fault.opened", "alarm.raised:barrier_fault", "incident.opened"]
    assert emitted(out, "fault.opened")[0]["reason"] == "travel_timeout_down"
    out = lane.set("barrier_down", True, at(17))
    assert names(out) == ["barrier.position", "fault.closed", f"Display:{WELCOME}"]
    assert lane.state is S.IDLE


# ======================================================================== S7: restarts


def test_s7_crash_right_after_the_lift_never_lifts_again_and_the_vehicle_passes(lane: Lane) -> None:
    """S7: the consumed authorisation is recovered as a lift in progress; no open pulse ever."""
    t = up_to_deciding(lane, 1)
    release(lane, t + 1, "CMD-7")
    passage_id = lane.core.passage.passage_id
    # Crash. The barrier finished rising while the daemon was down.
    lane, out = lane.restart(at(10), barrier_up=True, barrier_down=False, arrival_loop=True)
    assert names(out) == ["lane.recovered", f"Display:{RELEASED}"]
    assert emitted(out, "lane.recovered")[0]["authorisation"] == {"kind": "release_instruction", "id": "CMD-7"}
    assert lane.state is S.OPEN and lane.core.passage.passage_id == passage_id

    out = drive_through(lane, 11)
    out += barrier_falls(lane, 16)
    assert open_pulses(out) == []
    assert [p.reason for p in only(out, Pulse)] == ["lower"]
    (closed,) = emitted(out, "passage.closed")
    assert (closed["outcome"], closed["passage_id"]) == ("passed", passage_id)
    assert closed["authorisation"] == {"kind": "release_instruction", "id": "CMD-7"}
    assert lane.state is S.IDLE
    assert len(lane.events("barrier.lifted")) == 1


def test_s7_crash_after_commit_with_barrier_still_down_holds_as_lift_interrupted(lane: Lane) -> None:
    """S7: committed but the coil never moved: the authorisation is spent; no lift, hold.
    The vehicle on the loop shows its card before it is told (R4, R6)."""
    t = up_to_deciding(lane, 1)
    lane.decide("release", at(t + 1), "CMD-8")
    # The crash came between the journal commit and the pulse: drop what followed the commit.
    cut = next(i for i, e in enumerate(lane.journal) if e["type"] == "authorisation.committed")
    del lane.journal[cut + 1 :]
    lane, out = lane.restart(at(10), arrival_loop=True)
    assert names(out) == ["lane.recovered", f"Display:{ASK_CARD}", "passage.held"]
    assert emitted(out, "passage.held")[0] == {
        "passage_id": lane.core.passage.passage_id, "reason": "lift_interrupted", "display": INTERRUPTED}
    assert only(out, Pulse) == [] and only(out, CommitAuthorisation) == []
    assert lane.state is S.HELD and lane.core.lift is None
    assert names(lane.card(CARD_A, at(10.5))) == ["card.read", f"Display:{INTERRUPTED}"]

    # The same instruction offered again cannot lift either (the journal has it consumed).
    assert lane.card(CARD_A, at(11)) == []
    out = lane.set("arrival_loop", False, at(20))
    closed = emitted(out, "passage.closed")[0]
    assert (closed["outcome"], closed["reason"]) == ("held", "lift_interrupted")
    assert lane.state is S.IDLE


def test_s7_crash_while_deciding_asks_again_with_a_new_request_id_once_the_card_is_shown_again() -> None:
    """S7, R3: nothing decided before the crash: the vehicle on the loop shows its card
    again (it may not be the one whose card was read), then the lane asks again, as a new
    request, once."""
    lane = Lane(NO_WEIGHBRIDGE)
    lane.start(at(0))
    up_to_deciding(lane, 1)
    old = lane.requests[-1]
    lane, out = lane.restart(at(10), arrival_loop=True)
    assert names(out) == ["lane.recovered", f"Display:{ASK_CARD}"]
    assert lane.state is S.PRESENT and lane.requests == []
    out = lane.card(CARD_A, at(10.5))
    assert names(out) == ["card.read", f"Display:{DECIDING}", "release.requested", "RequestRelease"]
    (req,) = only(out, RequestRelease)
    assert req.request_id != old.request_id
    assert (req.passage_id, req.card) == (old.passage_id, CARD_A)
    assert lane.state is S.DECIDING
    assert len(lane.events("passage.opened")) == 1  # the same passage, its card shown twice
    assert [e["card"] for e in lane.events("card.read")] == [CARD_A, CARD_A]

    # The answer to the request from before the crash is no longer awaited.
    before = lane.core.snapshot()
    assert lane.feed(ReleaseDecided(old.request_id, "release", "CMD-OLD"), at(11)) == []
    assert lane.core.snapshot() == before
    out = lane.decide("release", at(12), "CMD-9")
    assert names(out)[-3:] == ["Pulse:open:lift", "barrier.lifted", f"Display:{RELEASED}"]


def test_s7_contract_3_1_a_release_decided_but_never_committed_is_confirmed_not_passed() -> None:
    """S7, CONTRACT 3.1: the crash came after the release was journaled and before its
    authorisation was: the lane asks again, and the authority hears that the first
    release was not used, instead of waiting for it for ever."""
    lane = Lane(NO_WEIGHBRIDGE)
    lane.start(at(0))
    up_to_deciding(lane, 1)
    old = lane.requests[-1]
    lane.decide("release", at(3), "CMD-OLD", form_id="HF-1")
    cut = next(i for i, e in enumerate(lane.journal) if e["type"] == "release.decided")
    del lane.journal[cut + 1 :]
    lane.consumed.clear()
    lane, out = lane.restart(at(10), arrival_loop=True)
    confirms = only(out, ConfirmPassage)
    assert [(c.request_id, c.instruction_id, c.result) for c in confirms] == [(old.request_id, "CMD-OLD", "not_passed")]
    out = lane.card(CARD_A, at(10.5))
    assert names(out)[-1] == "RequestRelease" and lane.state is S.DECIDING
    assert only(out, ConfirmPassage) == []  # confirmed once, at the restart


def test_s7_crash_while_deciding_with_a_weighbridge_asks_again_with_a_fresh_weight(lane: Lane) -> None:
    """S7: weight journaled, nothing decided: the card shown again, the lane asks again
    (new request_id) with the weight the scale shows now, not the one journaled."""
    up_to_deciding(lane, 1)
    old = lane.requests[-1]
    lane, out = lane.restart(at(10), arrival_loop=True)
    assert names(out) == ["lane.recovered", f"Display:{ASK_CARD}"]
    assert lane.weight(31200.0, at(10.2)) == []  # the scale, read again since the restart
    out = lane.card(CARD_A, at(10.5))
    assert names(out) == ["card.read", f"Display:{WEIGHING}", "weight.stable", f"Display:{DECIDING}",
                          "release.requested", "RequestRelease"]
    assert lane.state is S.DECIDING
    (req,) = only(out, RequestRelease)
    assert req.request_id != old.request_id
    assert (req.passage_id, req.card, req.gross_weight_kg) == (old.passage_id, CARD_A, 31200.0)
    # A weight settling now changes nothing: the request is out.
    assert lane.weight(31250.0, at(11)) == []
    assert lane.requests == [req]  # the restarted lane's requests: this one only
    # The answer to the request from before the crash is no longer awaited.
    assert lane.feed(ReleaseDecided(old.request_id, "release", "CMD-OLD"), at(11.5)) == []
    assert lane.state is S.DECIDING and ("release_instruction", "CMD-OLD") not in lane.consumed
    lane.decide("hold", at(12))
    out = lane.set("arrival_loop", False, at(13))
    closed = emitted(out, "passage.closed")[0]
    assert (closed["card"], closed["gross_weight_kg"], closed["outcome"]) == (CARD_A, 31200.0, "held")


#: Another vehicle's card after a restart, its weight already stable: the recovered passage
#: closes and the vehicle's own passage is asked about at once.
ANOTHER_VEHICLE_ASKED_ABOUT = [
    "passage.closed", f"Display:{WELCOME}", "passage.opened", f"Display:{ASK_CARD}",
    "card.read", f"Display:{WEIGHING}", "weight.stable", f"Display:{DECIDING}", "release.requested",
    "RequestRelease",
]


def test_r3_r4_s7_another_vehicle_at_the_reader_after_a_restart_is_not_asked_about_the_card_before_it(
    lane: Lane,
) -> None:
    """R3, R4, S7: card A read and asked about, the daemon died, and while it was down that
    vehicle reversed away and another pulled up (the loop is occupied either way). The
    restarted lane does not ask about card A for it: the other card it shows closes A's
    passage (gone unseen) and opens one of its own, asked about with its own card and weight."""
    up_to_deciding(lane, 1)
    old = lane.requests[-1]
    lane, out = lane.restart(at(10), arrival_loop=True)
    assert only(out, RequestRelease) == []
    assert lane.weight(42680.0, at(10.2)) == []
    out = lane.card(CARD_B, at(10.5))
    assert names(out) == ANOTHER_VEHICLE_ASKED_ABOUT
    closed = emitted(out, "passage.closed")[0]
    assert (closed["passage_id"], closed["outcome"], closed["reason"]) == (old.passage_id, "backed_out",
                                                                           "daemon_restart")
    assert (closed["card"], closed["gross_weight_kg"]) == (CARD_A, 31250.0)  # as journaled before the crash
    (req,) = only(out, RequestRelease)
    assert req.passage_id == emitted(out, "passage.opened")[0]["passage_id"] != old.passage_id
    assert (req.card, req.gross_weight_kg) == (CARD_B, 42680.0)
    assert [r.card for r in lane.requests] == [CARD_B]
    # Card A, if its vehicle comes back to the reader, is refused while B's passage is open.
    assert names(lane.card(CARD_A, at(11))) == ["card.refused"]


def closed_record(lane: Lane, passage_id: str) -> PassageRecord:
    """The journal's record of a closed passage, folded as the journal folds it."""
    record = None
    for body in lane.journal:
        record = fold(record, ev.decode(body))
        if record is not None and record.closed_at is not None:
            if record.passage_id == passage_id:
                return record
            record = None
    raise AssertionError(f"passage {passage_id} never closed")


def held_before_a_restart(lane: Lane, decision: str = "inspect") -> tuple[Lane, str, str]:
    """Card A asked about and held by customs, then a restart with a vehicle on the loop:
    the restarted lane, the held passage and its hold text."""
    up_to_deciding(lane, 1)
    lane.decide(decision, at(5), hint="布控查验" if decision == "inspect" else None)
    assert lane.state is S.HELD
    passage_id, held_text = lane.core.passage.passage_id, lane.core.display
    lane, out = lane.restart(at(10), arrival_loop=True)
    # R4, R6: whoever is on the loop shows a card before anyone is told the hold.
    assert names(out) == ["lane.recovered", f"Display:{ASK_CARD}"]
    assert lane.state is S.HELD and lane.core.passage.passage_id == passage_id
    return lane, passage_id, held_text


def test_r4_r6_s7_another_vehicle_at_the_reader_after_a_restart_is_not_shown_the_hold_before_it(
    lane: Lane,
) -> None:
    """R4, R6, S7: card A held by customs (sent to the inspection area), the daemon died,
    and while it was down that vehicle reversed away and another pulled up. The restarted
    lane neither shows A's hold to it nor refuses its card: the other card closes A's
    passage held (gone unseen, with A's card and hold reason) and opens one of its own,
    asked about and released like any other."""
    lane, old, _ = held_before_a_restart(lane)
    assert lane.requests == [] and lane.core.passage.hold_reason == "inspect"
    assert lane.weight(42680.0, at(10.2)) == []
    out = lane.card(CARD_B, at(10.5))
    assert names(out) == ANOTHER_VEHICLE_ASKED_ABOUT
    closed = emitted(out, "passage.closed")[0]
    assert (closed["passage_id"], closed["outcome"], closed["reason"]) == (old, "held", "daemon_restart")
    assert (closed["card"], closed["gross_weight_kg"], closed["decision"]) == (CARD_A, 31250.0, "inspect")
    record = closed_record(lane, old)
    assert (record.outcome, record.reason, record.hold_reason, record.card) == ("held", "daemon_restart", "inspect",
                                                                               CARD_A)
    (req,) = only(out, RequestRelease)
    assert req.passage_id == emitted(out, "passage.opened")[0]["passage_id"] != old
    assert (req.card, req.gross_weight_kg) == (CARD_B, 42680.0)
    out = lane.decide("release", at(11), "CMD-B", form_id="HF-2", hint=None)
    assert [p.authorisation for p in open_pulses(out)] == [("release_instruction", "CMD-B")]
    assert lane.state is S.OPEN and INSPECTION_AREA not in "".join(c.text for c in only(out, Display))


def test_r5_r6_s7_the_held_vehicle_showing_its_card_after_a_restart_is_held_as_before(lane: Lane) -> None:
    """R5, R6, S7: the held vehicle itself shows its card after the restart: the hold goes
    on as before the crash (its text, HELD, other cards busy), and the passage closes held
    for its reason once the vehicle backs out."""
    lane, old, held_text = held_before_a_restart(lane, "deny")
    out = lane.card(CARD_A, at(11))
    assert names(out) == ["card.read", f"Display:{held_text}"]
    assert "倒车" in held_text and lane.state is S.HELD
    p = lane.core.passage
    assert (p.passage_id, p.card, p.weight_kg, p.hold_reason) == (old, CARD_A, 31250.0, "deny")
    assert lane.card(CARD_A, at(12)) == []  # S8: a re-read
    assert emitted(lane.card(CARD_B, at(13)), "card.refused")[0]["reason"] == "lane_busy"
    assert lane.tick(at(200)) == [] and lane.requests == [] and lane.events("barrier.lifted") == []
    out = lane.set("arrival_loop", False, at(210))
    closed = emitted(out, "passage.closed")[0]
    assert (closed["passage_id"], closed["outcome"], closed["reason"], closed["card"]) == (old, "held", "deny", CARD_A)
    assert len(lane.events("passage.opened")) == 1


def test_r5_s7_a_held_vehicle_leaving_before_it_shows_its_card_after_a_restart_closes_held(lane: Lane) -> None:
    """R5, S7: asked for its card after the restart, the vehicle backs off the loop instead:
    the held passage closes held, for its reason, with the card journaled for it."""
    lane, old, _ = held_before_a_restart(lane, "hold")
    assert lane.tick(at(100)) == []  # no time limit: the vehicle there is asked until it goes
    out = lane.set("arrival_loop", False, at(120))
    assert names(out) == ["loop.changed", "passage.closed", f"Display:{WELCOME}"]
    closed = emitted(out, "passage.closed")[0]
    assert (closed["passage_id"], closed["outcome"], closed["reason"], closed["card"],
            closed["gross_weight_kg"]) == (old, "held", "hold", CARD_A, 31250.0)
    assert lane.state is S.IDLE and lane.requests == []


def test_r4_s7_a_second_restart_before_the_held_vehicle_showed_its_card_asks_again(lane: Lane) -> None:
    """R4, S7: restarted twice before anyone showed a card: still held, still asking, and
    another card then closes the held passage with the card journaled before the first crash."""
    lane, old, _ = held_before_a_restart(lane)
    lane, out = lane.restart(at(20), arrival_loop=True)
    assert names(out) == ["lane.recovered", f"Display:{ASK_CARD}"]
    assert emitted(out, "lane.recovered")[0]["card"] == CARD_A
    assert lane.state is S.HELD and lane.core.passage.passage_id == old
    lane.weight(42680.0, at(20.5))
    closed = emitted(lane.card(CARD_B, at(21)), "passage.closed")[0]
    assert (closed["passage_id"], closed["outcome"], closed["reason"], closed["card"]) == (old, "held",
                                                                                          "daemon_restart", CARD_A)
    assert [r.card for r in lane.requests] == [CARD_B]


def test_s5_s7_a_lane_faulty_at_the_restart_holds_the_other_vehicle_for_the_fault(lane: Lane) -> None:
    """S5, S7, R4: the weighbridge fails while the lane asks for the card: another card still
    closes the held passage and gets a passage of its own, held at once for the fault (not
    for A's customs hold); A's own card would have resumed A's hold."""
    lane, old, _ = held_before_a_restart(lane)
    lane.feed(DeviceFault("weighbridge", "port vanished"), at(10.5))
    assert lane.core.display == ASK_CARD
    out = lane.card(CARD_B, at(11))
    closed = emitted(out, "passage.closed")[0]
    assert (closed["passage_id"], closed["outcome"], closed["reason"]) == (old, "held", "daemon_restart")
    held = emitted(out, "passage.held")[0]
    assert held["passage_id"] != old and held["reason"] == "device_fault"
    assert lane.core.display.startswith(FAULT_HELD)
    assert lane.core.passage.card == CARD_B and lane.requests == []


def test_s8_s7_a_card_open_on_another_lane_does_not_end_the_recovered_hold(lane: Lane) -> None:
    """S8, S7: while the lane asks for the held vehicle's card, a card open on another lane is
    refused as ever and changes nothing; the held vehicle's own card then resumes its hold."""
    lane, old, held_text = held_before_a_restart(lane)
    out = lane.card(CARD_B, at(11), open_elsewhere="B2-IN")
    assert names(out) == ["card.refused", f"Display:{core_module.card_open_elsewhere('B2-IN')}"]
    assert lane.state is S.HELD and lane.core.passage.passage_id == old and lane.events("passage.closed") == []
    assert names(lane.card(CARD_A, at(12))) == ["card.read", f"Display:{held_text}"]


def test_r4_s7_any_card_after_a_restart_ends_a_hold_that_had_none(lane: Lane) -> None:
    """R4, S7: held for showing no card; after a restart the vehicle on the loop is asked for
    one. Nothing tells whose that passage was, so the card shown gets a passage of its own
    and the held one closes held (daemon_restart)."""
    lane.set("arrival_loop", True, at(1))
    lane.tick(at(61))
    assert lane.core.passage.hold_reason == "no_card"
    old = lane.core.passage.passage_id
    lane, out = lane.restart(at(70), arrival_loop=True)
    assert names(out) == ["lane.recovered", f"Display:{ASK_CARD}"]
    out = lane.card(CARD_B, at(71))
    closed = emitted(out, "passage.closed")[0]
    assert (closed["passage_id"], closed["outcome"], closed["reason"], closed["card"]) == (old, "held",
                                                                                          "daemon_restart", None)
    assert lane.state is S.WEIGHING and lane.core.passage.card == CARD_B


def test_r4_s1_s7_another_vehicle_before_a_lift_lost_in_a_crash_gets_its_own_passage(lane: Lane) -> None:
    """R4, S1, S7, CONTRACT 3.1: A released and its authorisation committed, then the crash
    before the pulse; while the daemon was down A reversed away and B pulled up. B is not
    told A's lift was interrupted: its card closes A's passage held (its release confirmed
    not used), and B is asked about and lifted on an instruction of its own."""
    t = up_to_deciding(lane, 1)
    req_a = lane.requests[-1]
    _crash_after_commit_before_pulse(lane, t + 1, "CMD-8")
    lane, out = lane.restart(at(10), arrival_loop=True)
    assert names(out) == ["lane.recovered", f"Display:{ASK_CARD}", "passage.held"]
    out = lane.weight(42680.0, at(10.2)) + lane.card(CARD_B, at(10.5))
    assert names(out)[:2] == ["Confirm:not_passed", "passage.closed"]
    assert only(out, ConfirmPassage)[0].request_id == req_a.request_id
    closed = emitted(out, "passage.closed")[0]
    assert (closed["outcome"], closed["reason"], closed["card"]) == ("held", "daemon_restart", CARD_A)
    assert closed["authorisation"] == {"kind": "release_instruction", "id": "CMD-8"}
    assert [r.card for r in lane.requests] == [CARD_B]
    out = lane.decide("release", at(11), "CMD-9")
    assert [p.authorisation for p in open_pulses(out)] == [("release_instruction", "CMD-9")]


def test_s7_crash_while_deciding_and_the_vehicle_gone_closes_backed_out(lane: Lane) -> None:
    up_to_deciding(lane, 1)
    lane, out = lane.restart(at(10))
    assert names(out) == ["lane.recovered", "passage.closed", f"Display:{WELCOME}"]
    closed = emitted(out, "passage.closed")[0]
    assert (closed["outcome"], closed["reason"]) == ("backed_out", "daemon_restart")
    assert lane.state is S.IDLE and lane.requests == []


def test_s7_crash_while_held_by_the_authority_stays_held(lane: Lane) -> None:
    """S7, R6: a vehicle held by the authority's decision is still held after a restart,
    and told so once it has shown its card."""
    up_to_deciding(lane, 1)
    lane.decide("inspect", at(5), hint="布控查验")
    lane, out = lane.restart(at(10), arrival_loop=True)
    assert names(out) == ["lane.recovered", f"Display:{ASK_CARD}"]
    assert lane.state is S.HELD and lane.requests == []
    out = lane.card(CARD_A, at(11))
    assert names(out) == ["card.read", f"Display:布控查验；{core_module.TEXT_INSPECTION}"]
    assert lane.state is S.HELD and lane.requests == []
    out = lane.set("arrival_loop", False, at(20))
    assert emitted(out, "passage.closed")[0]["outcome"] == "held"
    assert lane.state is S.IDLE


def test_s7_journal_whose_last_passage_closed_starts_idle(lane: Lane) -> None:
    end = full_passage(lane, 1, CARD_A, "CMD-1")
    lane, out = lane.restart(at(end + 5))
    assert names(out) == [f"Display:{WELCOME}"]
    assert lane.state is S.IDLE and lane.core.passage is None


def test_s7_empty_journal_with_a_vehicle_waiting_opens_a_passage() -> None:
    lane = Lane(BONDED)
    out = lane.start(at(0), arrival_loop=True)
    assert names(out) == [f"Display:{WELCOME}", "passage.opened", f"Display:{ASK_CARD}"]
    assert lane.state is S.PRESENT


def test_s7_inputs_changing_before_the_first_snapshot_only_record_values() -> None:
    """STARTING: nothing is decided before the first full reading of the inputs."""
    lane = Lane(BONDED)
    assert lane.set("safety_loop", True, at(0)) == []
    assert lane.set("emergency_button", True, at(0.1)) == []
    assert lane.state is S.STARTING
    assert lane.core.next_deadline is None


# ===================================================== refused and impossible events


@pytest.fixture
def deciding(lane: Lane) -> Lane:
    up_to_deciding(lane, 1)
    return lane


def test_naive_datetime_is_a_protocol_error_and_changes_nothing(deciding: Lane) -> None:
    before = deciding.core.snapshot()
    with pytest.raises(LaneProtocolError):
        naive = datetime(2026, 11, 27, 9, 1)
        deciding.core.handle(ReleaseDecided(deciding.requests[-1].request_id, "release", "CMD-1"), naive)
    assert deciding.state is S.DECIDING and deciding.core.snapshot() == before
    assert deciding.consumed == set()


@pytest.mark.parametrize(
    "build",
    [
        lambda: InputChanged("barrier_half_way", True),
        lambda: InputsSnapshot({"arrival_loop": True, "boom_broken": True}),
        lambda: CardRead("0100e2850e"),
        lambda: CardRead(""),
        lambda: ReleaseDecided("id-1", "release"),
        lambda: ReleaseDecided("id-1", "release", ""),
        lambda: ReleaseDecided("id-1", "maybe"),
    ],
    ids=["unknown-point", "unknown-point-in-snapshot", "lowercase-card", "empty-card", "release-no-instruction",
         "release-empty-instruction", "unknown-decision"],
)
def test_malformed_events_are_refused_at_birth(build) -> None:
    """Events are checked when built: an adapter building a bad one is a gatectl bug."""
    with pytest.raises(LaneProtocolError):
        build()


def test_commit_of_something_never_asked_is_a_protocol_error_and_changes_nothing(deciding: Lane) -> None:
    before = deciding.core.snapshot()
    with pytest.raises(LaneProtocolError):
        deciding.core.handle(AuthorisationCommitted("release_instruction", "CMD-1"), at(5))
    with pytest.raises(LaneProtocolError):
        deciding.core.handle(AuthorisationRefused("release_instruction", "CMD-1", "replay"), at(5))
    assert deciding.state is S.DECIDING and deciding.core.snapshot() == before


def test_commit_of_a_different_authorisation_than_asked_is_a_protocol_error() -> None:
    """The journal answers the CommitAuthorisation it was given, not another one."""
    lane = Lane(NO_WEIGHBRIDGE)
    lane.start(at(0))
    up_to_deciding(lane, 1)
    out = lane.core.handle(ReleaseDecided(lane.requests[-1].request_id, "release", "CMD-1"), at(4))
    assert names(out)[-1] == "Commit:release_instruction"
    assert lane.state is S.AUTHORISING
    before = lane.core.snapshot()
    with pytest.raises(LaneProtocolError):
        lane.core.handle(AuthorisationCommitted("release_instruction", "CMD-2"), at(4))
    with pytest.raises(LaneProtocolError):
        lane.core.handle(AuthorisationCommitted("emergency", "CMD-1"), at(4))
    assert lane.state is S.AUTHORISING and lane.core.snapshot() == before
    out = lane.core.handle(AuthorisationCommitted("release_instruction", "CMD-1"), at(4))
    assert names(out) == ["Pulse:open:lift", "barrier.lifted", f"Display:{RELEASED}"]


def test_an_event_the_core_has_no_rule_for_is_a_protocol_error(lane: Lane) -> None:
    before = lane.core.snapshot()
    with pytest.raises(LaneProtocolError):
        lane.core.handle(Event(), at(1))
    assert lane.core.snapshot() == before


def test_answers_to_unknown_requests_change_nothing(deciding: Lane) -> None:
    """R3: only the answer to this passage's own request counts."""
    before = deciding.core.snapshot()
    assert deciding.feed(ReleaseDecided("stranger", "release", "CMD-X"), at(4)) == []
    assert deciding.feed(ReleaseFailed("stranger", "timeout"), at(4)) == []
    assert deciding.core.snapshot() == before and deciding.state is S.DECIDING


# ============================================ R12, S6: what the vehicle is told, and when


def test_r12_s6_the_authoritys_hint_is_shown_only_after_the_journal_committed(lane: Lane) -> None:
    """R12, S6: the release text (here the authority's own hint) follows the commit and the lift."""
    t = up_to_deciding(lane, 1)
    out = lane.decide("release", at(t + 1), "CMD-1", hint="请走2号道")
    assert names(out) == [
        "release.decided",
        "Commit:release_instruction",
        "Pulse:open:lift",
        "barrier.lifted",
        "Display:请走2号道",
    ]
    assert lane.core.display == "请走2号道"
    assert lane.state is S.OPEN


def test_r11_s6_emergency_refused_by_the_journal_never_shows_the_emergency_text(lane: Lane) -> None:
    """R11, S6: the journal could not record the emergency release: no lift, and no text saying it lifted."""
    lane.journal_broken = True
    out = lane.set("emergency_button", True, at(1))
    assert names(out)[:4] == [
        "passage.opened",
        "alarm.raised:emergency_release",
        "Commit:emergency",
        "alarm.raised:journal_fault",
    ]
    assert f"Display:{EMERGENCY}" not in names(out)
    assert only(out, Pulse) == []
    assert lane.events("barrier.lifted") == [] and lane.core.lift is None


# ================================================ R3, R7: a weight is one vehicle's


def test_r3_the_previous_vehicles_weight_is_not_reused_for_the_next(lane: Lane) -> None:
    """R3: the stable weight of a vehicle that passed belongs to its passage; the next one is weighed afresh."""
    end = full_passage(lane, 1, CARD_A, "CMD-1")  # weighed 31250 kg
    assert lane.core.last_weight_kg is None
    lane.set("arrival_loop", True, at(end + 1))
    out = lane.card(CARD_B, at(end + 2))
    assert names(out) == ["card.read", f"Display:{WEIGHING}"]
    assert lane.state is S.WEIGHING and len(lane.requests) == 1
    out = lane.weight(18400.0, at(end + 3))
    (req,) = only(out, RequestRelease)
    assert (req.card, req.gross_weight_kg) == (CARD_B, 18400.0)


def test_r3_a_held_vehicles_weight_is_not_reused_for_the_next(lane: Lane) -> None:
    up_to_deciding(lane, 1)
    lane.decide("inspect", at(5))
    lane.set("arrival_loop", False, at(8))
    lane.set("arrival_loop", True, at(20))
    out = lane.card(CARD_B, at(21))
    assert names(out) == ["card.read", f"Display:{WEIGHING}"]
    assert lane.state is S.WEIGHING and len(lane.requests) == 1


def test_r3_a_weight_settled_before_the_card_is_the_vehicles_own(lane: Lane) -> None:
    """R3: the truck settles on the scale, then presents its card: that weight is used at once."""
    lane.set("arrival_loop", True, at(1))
    assert lane.weight(31250.0, at(2)) == []
    out = lane.card(CARD_A, at(3))
    assert names(out) == [
        "card.read",
        f"Display:{WEIGHING}",
        "weight.stable",
        f"Display:{DECIDING}",
        "release.requested",
        "RequestRelease",
    ]
    assert only(out, RequestRelease)[0].gross_weight_kg == 31250.0


def test_s5_no_stable_weight_within_weigh_wait_holds(lane: Lane) -> None:
    """S5: a card but no stable weight within weigh_wait (60 s): held, nothing asked."""
    lane.set("arrival_loop", True, at(1))
    lane.card(CARD_A, at(2))
    assert lane.core.next_deadline == at(62)
    assert lane.tick(at(61.9)) == []
    out = lane.tick(at(62))
    assert names(out) == [f"Display:{core_module.TEXT_NO_WEIGHT}；{core_module.TEXT_INSPECTION}", "passage.held"]
    assert emitted(out, "passage.held")[0]["reason"] == "no_stable_weight"
    assert lane.state is S.HELD and lane.requests == []
    # A weight settling now is too late for this passage.
    assert lane.weight(31250.0, at(63)) == []
    assert lane.state is S.HELD and lane.requests == []
    out = lane.set("arrival_loop", False, at(70))
    closed = emitted(out, "passage.closed")[0]
    assert (closed["outcome"], closed["reason"]) == ("held", "no_stable_weight")


def test_s5_weighbridge_fault_while_weighing_holds_at_once(lane: Lane) -> None:
    """S5: the weighbridge fails while the vehicle waits to be weighed: held now, not after weigh_wait."""
    lane.set("arrival_loop", True, at(1))
    lane.card(CARD_A, at(2))
    out = lane.feed(DeviceFault("weighbridge", "port vanished"), at(3))
    assert names(out) == [
        "fault.opened",
        "alarm.raised:device_fault",
        f"Display:{FAULT_HELD}；{core_module.TEXT_INSPECTION}",
        "passage.held",
    ]
    assert emitted(out, "passage.held")[0]["reason"] == "device_fault"
    assert lane.state is S.HELD
    assert lane.weight(31250.0, at(4)) == [] and lane.requests == []


def test_s5_card_read_while_the_weighbridge_is_faulty_holds_at_once(lane: Lane) -> None:
    lane.feed(DeviceFault("weighbridge", "port vanished"), at(0.5))
    lane.set("arrival_loop", True, at(1))
    out = lane.card(CARD_A, at(2))
    assert names(out) == [
        "card.read",
        f"Display:{WEIGHING}",
        f"Display:{FAULT_HELD}；{core_module.TEXT_INSPECTION}",
        "passage.held",
    ]
    assert emitted(out, "passage.held")[0]["reason"] == "device_fault"
    assert lane.state is S.HELD and lane.requests == []


# ================================================ S3: a lift nobody drives through


def test_s3_lifted_vehicle_backing_off_the_safety_loop_closes_backed_out_and_lowers_after_backout_wait(
    lane: Lane,
) -> None:
    """S3: it reached the safety loop, never the exit loop, and reversed away: after backout_wait, lower."""
    t = up_to_deciding(lane, 1)
    release(lane, t + 1)
    barrier_rises(lane, t + 1.2)
    lane.set("safety_loop", True, at(7))
    lane.set("arrival_loop", False, at(7.5))
    lane.set("arrival_loop", True, at(9))  # reversing
    assert names(lane.set("safety_loop", False, at(9.5))) == ["loop.changed"]
    assert lane.state is S.OPEN and lane.core.next_deadline is None  # still on the arrival loop
    assert names(lane.set("arrival_loop", False, at(11))) == ["loop.changed"]
    assert lane.core.next_deadline == at(16)
    assert lane.tick(at(15.9)) == []
    out = lane.tick(at(16))
    assert names(out) == ["Confirm:not_passed", "passage.closed", *LOWERS]
    closed = emitted(out, "passage.closed")[0]
    assert (closed["outcome"], closed["reason"]) == ("backed_out", "left_after_lift")
    barrier_falls(lane, 17)
    assert lane.state is S.IDLE
    assert lane.alarms() == [] and len(lane.events("barrier.lifted")) == 1


def test_r11_s3_emergency_lift_nobody_uses_lowers_after_backout_wait(lane: Lane) -> None:
    """R11, S3: the guard pressed emergency but no vehicle came: the boom does not stay up."""
    lane.set("emergency_button", True, at(1))
    barrier_rises(lane, 1.1)
    assert lane.core.next_deadline == at(6)
    assert lane.tick(at(5.9)) == []
    out = lane.tick(at(6))
    assert names(out) == ["passage.closed", *LOWERS]
    closed = emitted(out, "passage.closed")[0]
    assert (closed["outcome"], closed["reason"]) == ("backed_out", "left_after_lift")
    assert closed["authorisation"]["kind"] == "emergency"
    barrier_falls(lane, 7)
    assert lane.state is S.IDLE


# ============================================ R4, S8: cards read outside a passage


def test_s8_card_open_elsewhere_read_just_before_the_arrival_loop_stays_refused(lane: Lane) -> None:
    """S8: the early read keeps its open_elsewhere; applied when the passage opens, it is refused."""
    assert lane.card(CARD_A, at(1), open_elsewhere="N2-OUT") == []
    out = lane.set("arrival_loop", True, at(3))
    assert names(out) == [
        "loop.changed",
        "passage.opened",
        f"Display:{ASK_CARD}",
        "card.refused",
        "Display:该卡在N2-OUT通道尚有未完成通行，请联系值班人员",
    ]
    refused = emitted(out, "card.refused")[0]
    assert (refused["reason"], refused["lane"]) == ("open_elsewhere", "N2-OUT")
    assert lane.state is S.PRESENT and lane.core.passage.card is None
    assert lane.events("card.read") == [] and lane.requests == []


def test_r4_the_card_of_the_vehicle_that_just_passed_is_not_given_to_the_next(lane: Lane) -> None:
    """R4: the leaving vehicle's card, re-read as it drives off, is nobody's next card."""
    t = up_to_deciding(lane, 1)
    release(lane, t + 1)
    barrier_rises(lane, t + 1.2)
    drive_through(lane, 6)  # passage closed at t=10, lowering
    assert lane.card(CARD_A, at(10.5)) == []
    lane.set("barrier_up", False, at(11))
    lane.set("barrier_down", True, at(12))
    assert lane.card(CARD_A, at(12.5)) == []  # still in the field, barrier down: still ignored
    out = lane.set("arrival_loop", True, at(13))
    assert names(out) == ["loop.changed", "passage.opened", f"Display:{ASK_CARD}"]
    assert lane.state is S.PRESENT and lane.core.passage.card is None
    assert len(lane.events("card.read")) == 1


def test_r4_the_next_vehicles_own_card_read_while_the_barrier_lowers_is_used(lane: Lane) -> None:
    t = up_to_deciding(lane, 1)
    release(lane, t + 1)
    barrier_rises(lane, t + 1.2)
    drive_through(lane, 6)
    lane.card(CARD_A, at(10.2))  # the leaving vehicle: ignored
    assert lane.card(CARD_B, at(10.5)) == []  # the next one: kept
    lane.set("arrival_loop", True, at(11))
    lane.set("barrier_up", False, at(11.2))
    out = lane.set("barrier_down", True, at(12))
    assert names(out) == [
        "barrier.position",
        f"Display:{WELCOME}",
        "passage.opened",
        f"Display:{ASK_CARD}",
        "card.read",
        f"Display:{WEIGHING}",
    ]
    assert emitted(out, "card.read")[0]["card"] == CARD_B


# ================================================================ S4, R8: forced passage


def test_s4_one_forced_passage_alarm_per_vehicle(lane: Lane) -> None:
    """S4, R8: a vehicle crossing safety then exit loop is one forced passage, one alarm."""
    assert "alarm.raised:forced_passage" in names(lane.set("safety_loop", True, at(1)))
    assert names(lane.set("exit_loop", True, at(2))) == ["loop.changed"]
    assert names(lane.set("safety_loop", False, at(2.5))) == ["loop.changed"]
    assert names(lane.set("exit_loop", False, at(4))) == ["loop.changed"]
    assert len(lane.alarms("forced_passage")) == 1
    # The next vehicle doing the same is a forced passage of its own.
    assert "alarm.raised:forced_passage" in names(lane.set("safety_loop", True, at(10)))
    assert len(lane.alarms("forced_passage")) == 2
    assert lane.state is S.IDLE and lane.events("barrier.lifted") == []


def test_s4_a_vehicle_going_through_while_deciding_closes_its_passage_as_forced(lane: Lane) -> None:
    """S4, R8: not backed_out when it leaves the arrival loop forwards; forced once every loop is clear."""
    up_to_deciding(lane, 1)
    passage_id = lane.core.passage.passage_id
    out = lane.set("safety_loop", True, at(4))
    assert names(out) == ["loop.changed", "alarm.raised:forced_passage", f"Display:{FORCED}"]
    assert names(lane.set("arrival_loop", False, at(4.5))) == ["loop.changed"]
    assert names(lane.set("exit_loop", True, at(5))) == ["loop.changed"]
    assert names(lane.set("safety_loop", False, at(5.5))) == ["loop.changed"]
    out = lane.set("exit_loop", False, at(7))
    assert names(out) == ["loop.changed", "passage.closed", f"Display:{WELCOME}"]
    closed = emitted(out, "passage.closed")[0]
    assert (closed["outcome"], closed["passage_id"], closed["card"]) == ("forced", passage_id, CARD_A)
    assert lane.state is S.IDLE and len(lane.alarms("forced_passage")) == 1
    # The authority's answer comes too late to lift anything.
    assert lane.decide("release", at(8), "CMD-1") == []
    assert lane.consumed == set() and lane.events("barrier.lifted") == []


def test_s4_a_held_vehicle_driving_through_closes_as_forced(lane: Lane) -> None:
    up_to_deciding(lane, 1)
    lane.decide("deny", at(5))
    lane.set("safety_loop", True, at(7))
    lane.set("arrival_loop", False, at(7.5))
    lane.set("exit_loop", True, at(8))
    lane.set("safety_loop", False, at(8.5))
    out = lane.set("exit_loop", False, at(10))
    closed = emitted(out, "passage.closed")[0]
    assert (closed["outcome"], closed["decision"]) == ("forced", "deny")
    assert "reason" not in closed
    assert lane.state is S.IDLE and len(lane.alarms("forced_passage")) == 1


# ======================================================== S7: restarts, round two


def _crash_after_commit_before_pulse(lane: Lane, t: float, instruction: str) -> None:
    lane.decide("release", at(t), instruction)
    cut = next(i for i, e in enumerate(lane.journal) if e["type"] == "authorisation.committed")
    del lane.journal[cut + 1 :]


def test_s7_restart_while_the_barrier_rises_with_the_vehicle_on_arrival_opens_without_a_new_lift(
    lane: Lane,
) -> None:
    """S7: both limits off (the boom in travel), vehicle waiting: OPEN, no open pulse, it passes."""
    t = up_to_deciding(lane, 1)
    release(lane, t + 1, "CMD-7")
    lane, out = lane.restart(at(5), arrival_loop=True, barrier_down=False, barrier_up=False)
    assert names(out) == ["lane.recovered", f"Display:{RELEASED}"]
    assert lane.state is S.OPEN and only(out, Pulse) == []
    out = lane.set("barrier_up", True, at(6))
    out += drive_through(lane, 7)
    out += barrier_falls(lane, 12)
    assert open_pulses(out) == []
    (closed,) = emitted(out, "passage.closed")
    assert closed["outcome"] == "passed"
    assert lane.state is S.IDLE
    assert len(lane.events("barrier.lifted")) == 1 and lane.consumed == {("release_instruction", "CMD-7")}


def test_s7_restart_with_the_vehicle_on_the_exit_loop_lowers_once_it_clears(lane: Lane) -> None:
    """S7: the exit loop occupied at restart counts as the exit reached: clearing it is the pass."""
    t = up_to_deciding(lane, 1)
    release(lane, t + 1, "CMD-7")
    barrier_rises(lane, t + 1.2)
    lane.set("safety_loop", True, at(7))
    lane.set("arrival_loop", False, at(7.5))
    lane.set("exit_loop", True, at(8))
    lane.set("safety_loop", False, at(8.5))
    lane, out = lane.restart(at(9), barrier_up=True, barrier_down=False, exit_loop=True)
    assert names(out) == ["lane.recovered", f"Display:{RELEASED}"]
    assert lane.state is S.OPEN
    out = lane.set("exit_loop", False, at(10))
    assert names(out) == ["loop.changed", "Confirm:passed", "passage.closed", *LOWERS]
    assert emitted(out, "passage.closed")[0]["outcome"] == "passed"
    barrier_falls(lane, 10.2)
    assert lane.state is S.IDLE and len(lane.events("barrier.lifted")) == 1


def test_s7_s3_restart_after_its_vehicle_was_under_the_boom_closes_passed_and_lowers_at_once(lane: Lane) -> None:
    """S7, S3: the lifted vehicle was journaled on the safety loop, the daemon died, and on
    restart the boom is up with nobody on any loop: it went through unseen. The passage
    closes ``passed`` (unobserved) and the boom lowers at once, so the next vehicle cannot
    drive through on this lift (the kill -9 campaign saw exactly that)."""
    t = up_to_deciding(lane, 1)
    release(lane, t + 1, "CMD-7")
    barrier_rises(lane, t + 1.2)
    lane.set("safety_loop", True, at(6))
    lane.set("arrival_loop", False, at(6.5))
    lane, out = lane.restart(at(9), barrier_up=True, barrier_down=False)
    closed = emitted(out, "passage.closed")[0]
    assert (closed["outcome"], closed["reason"]) == ("passed", "recovered_unobserved")
    assert [p.reason for p in only(out, Pulse)] == ["lower"] and lane.state is S.LOWERING
    assert [c.result for c in only(out, ConfirmPassage)] == ["passed"]
    barrier_falls(lane, 9.2)
    assert lane.state is S.IDLE
    # The next vehicle gets a passage and a decision of its own.
    t2 = up_to_deciding(lane, 12, card=CARD_B)
    assert lane.state is S.DECIDING and t2 == 14


def test_s7_restart_with_its_vehicle_seen_entering_but_someone_on_the_arrival_loop_keeps_the_lift(lane: Lane) -> None:
    """S7: seen under the boom before the crash, but the arrival loop is occupied on
    restart (it may be reversing): nothing is concluded, the lift stays up for it."""
    t = up_to_deciding(lane, 1)
    release(lane, t + 1, "CMD-7")
    barrier_rises(lane, t + 1.2)
    lane.set("safety_loop", True, at(6))
    lane, out = lane.restart(at(9), barrier_up=True, barrier_down=False, arrival_loop=True)
    assert emitted(out, "passage.closed") == [] and only(out, Pulse) == []
    assert lane.state is S.OPEN


def test_s7_s3_restarts_in_a_row_do_not_keep_the_boom_up_for_the_next_vehicle(lane: Lane) -> None:
    """S7, S3: lifted, then crashes one after another with nobody on any loop: each restart
    waits backout_wait from the lift, not from itself, so the boom comes down before the
    next lorry can drive through on this lift (the kill -9 campaign saw it, 11 times in
    200 passages)."""
    t = up_to_deciding(lane, 1)
    release(lane, t + 1, "CMD-7")  # lifted at 4
    lane, out = lane.restart(at(5), barrier_up=True, barrier_down=False)
    assert lane.core.next_deadline == at(9)
    lane, out = lane.restart(at(8.5), barrier_up=True, barrier_down=False)
    assert lane.core.next_deadline == at(9)
    lane, out = lane.restart(at(12), barrier_up=True, barrier_down=False)
    assert lane.core.next_deadline <= at(12)
    out = lane.tick(at(12))
    assert [p.reason for p in only(out, Pulse)] == ["lower"]
    assert emitted(out, "passage.closed")[0]["outcome"] == "backed_out"


def test_s7_s3_restarts_in_a_row_after_a_lift_whose_record_a_kill_took_do_not_keep_the_boom_up(lane: Lane) -> None:
    """S7, S3: the kill came right after the coil write, before the lift's own
    ``barrier.lifted`` was committed (the authorisation, committed before the coil, is
    there). Nobody on any loop at each restart: the wait for the vehicle counts from the
    authorisation's commit, not afresh from each restart (the kill -9 campaign saw the
    boom kept up 10 s this way, and the next lorry drive under it)."""
    t = up_to_deciding(lane, 1)
    _crash_after_commit_before_pulse(lane, t + 1, "CMD-7")  # committed at 4; the lift's record lost
    lane, out = lane.restart(at(6), barrier_up=True, barrier_down=False)
    assert lane.state is S.OPEN and lane.core.next_deadline == at(9)
    lane, out = lane.restart(at(8.5), barrier_up=True, barrier_down=False)
    assert lane.core.next_deadline == at(9)
    out = lane.tick(at(9))
    assert [p.reason for p in only(out, Pulse)] == ["lower"]
    assert emitted(out, "passage.closed")[0]["outcome"] == "backed_out"


def test_s7_restart_with_the_barrier_up_and_nobody_there_lowers_after_backout_wait(lane: Lane) -> None:
    """S7, S3: an authorised passage, boom up, no vehicle on any loop: closed as left, lowered."""
    t = up_to_deciding(lane, 1)
    release(lane, t + 1, "CMD-7")
    barrier_rises(lane, t + 1.2)
    lane.set("arrival_loop", False, at(6))
    lane, out = lane.restart(at(8), barrier_up=True, barrier_down=False)
    assert names(out) == ["lane.recovered", f"Display:{RELEASED}"]
    # backout_wait from when it was last seen (off the arrival loop at 6), not from the restart
    assert lane.state is S.OPEN and lane.core.next_deadline == at(11)
    assert lane.tick(at(10.9)) == []
    out = lane.tick(at(11))
    assert names(out) == ["Confirm:not_passed", "passage.closed", *LOWERS]
    closed = emitted(out, "passage.closed")[0]
    assert (closed["outcome"], closed["reason"]) == ("backed_out", "left_after_lift")
    assert open_pulses(out) == []
    barrier_falls(lane, 14)
    assert lane.state is S.IDLE


def test_s7_restart_with_an_authorised_passage_nobody_there_and_the_barrier_down_closes_unobserved(
    lane: Lane,
) -> None:
    t = up_to_deciding(lane, 1)
    _crash_after_commit_before_pulse(lane, t + 1, "CMD-7")
    lane, out = lane.restart(at(10))
    assert names(out) == ["lane.recovered", "Confirm:not_passed", "passage.closed", f"Display:{WELCOME}"]
    closed = emitted(out, "passage.closed")[0]
    assert (closed["outcome"], closed["reason"]) == ("backed_out", "recovered_unobserved")
    assert only(out, Pulse) == [] and lane.state is S.IDLE


def test_s7_restart_after_a_closed_passage_with_the_barrier_up_lowers_it(lane: Lane) -> None:
    """S7: the passage closed and the close pulse was lost in the crash: lower, no alarm (it was a lift)."""
    lifted_and_through(lane)  # closed and lowering at t=10
    lane, out = lane.restart(at(11), barrier_up=True, barrier_down=False)
    assert names(out) == LOWERS
    (pulse,) = only(out, Pulse)
    assert pulse.authorisation == ("release_instruction", "CMD-1")
    assert lane.alarms("barrier_fault") == [] and lane.core.faults == {}
    out = barrier_falls(lane, 11.2)
    assert names(out) == ["barrier.position", "barrier.position", f"Display:{WELCOME}"]
    assert lane.state is S.IDLE


def test_s7_restart_after_a_closed_passage_with_the_barrier_up_waits_for_the_safety_loop(lane: Lane) -> None:
    """S7, S2: something under the boom at restart: the close pulse waits until it has cleared."""
    lifted_and_through(lane)
    lane, out = lane.restart(at(11), barrier_up=True, barrier_down=False, safety_loop=True)
    assert only(out, Pulse) == [] and lane.state is S.OPEN
    out = lane.set("safety_loop", False, at(12))
    assert names(out) == ["loop.changed", *LOWERS]


def test_s7_barrier_up_at_restart_with_no_lift_in_the_journal_is_a_barrier_fault() -> None:
    """S7, R9: nothing in the journal explains the boom being up: lower it and raise a barrier fault."""
    lane = Lane(BONDED)
    out = lane.start(at(0), barrier_up=True, barrier_down=False)
    assert names(out) == ["fault.opened", "alarm.raised:barrier_fault", "incident.opened", *LOWERS]
    assert emitted(out, "fault.opened")[0] == {"device": "barrier", "reason": "up_without_lift"}
    assert emitted(out, "alarm.raised")[0]["reason"] == "up_without_lift"
    assert open_pulses(out) == []
    barrier_falls(lane, 1)
    assert lane.state is S.IDLE


def test_s7_barrier_up_at_restart_after_a_held_passage_is_a_barrier_fault(lane: Lane) -> None:
    """S7: the last passage was held and never lifted: the boom found up is up for nothing."""
    up_to_deciding(lane, 1)
    lane.decide("deny", at(5))
    lane.set("arrival_loop", False, at(8))
    lane, out = lane.restart(at(10), barrier_up=True, barrier_down=False)
    assert names(out) == ["fault.opened", "alarm.raised:barrier_fault", "incident.opened", *LOWERS]


def _hold_by(lane: Lane, how: str) -> None:
    """Bring a fresh lane's first vehicle to HELD in one of the ways the core holds."""
    if how == "no_card":
        lane.set("arrival_loop", True, at(1))
        lane.tick(at(61))
        return
    if how == "no_stable_weight":
        lane.set("arrival_loop", True, at(1))
        lane.card(CARD_A, at(2))
        lane.tick(at(62))
        return
    if how == "device_fault_weighing":
        lane.set("arrival_loop", True, at(1))
        lane.card(CARD_A, at(2))
        lane.feed(DeviceFault("weighbridge", "port vanished"), at(3))
        return
    t = up_to_deciding(lane, 1)
    if how in ("hold", "inspect", "deny"):
        lane.decide(how, at(t + 1))
    elif how == "authority_timeout":
        lane.tick(at(t + 4))
    elif how == "authority_connection":
        lane.feed(ReleaseFailed(lane.requests[-1].request_id, "connection", "refused"), at(t + 1))
    elif how == "device_fault_release":
        lane.feed(DeviceFault("io1", "modbus timeout"), at(t + 0.5))
        lane.decide("release", at(t + 1), "CMD-1")
    elif how == "instruction_replay":
        lane.consumed.add(("release_instruction", "CMD-1"))
        lane.decide("release", at(t + 1), "CMD-1")
    elif how == "journal_error":
        lane.journal_broken = True
        lane.decide("release", at(t + 1), "CMD-1")
    else:  # pragma: no cover
        raise AssertionError(how)


HOLDS = {
    "no_card": "no_card",
    "no_stable_weight": "no_stable_weight",
    "device_fault_weighing": "device_fault",
    "hold": "hold",
    "inspect": "inspect",
    "deny": "deny",
    "authority_timeout": "authority_timeout",
    "authority_connection": "authority_connection",
    "device_fault_release": "device_fault",
    "instruction_replay": "instruction_replay",
    "journal_error": "journal_error",
}


@pytest.mark.parametrize("how", list(HOLDS))
def test_s7_every_hold_survives_a_restart(lane: Lane, how: str) -> None:
    """S7, R6: whatever held the vehicle holds it after a restart: HELD, no request, no lift."""
    _hold_by(lane, how)
    assert lane.state is S.HELD and lane.core.passage.hold_reason == HOLDS[how]
    held_text = lane.core.display
    assert lane.events("passage.held")[-1]["display"] == held_text
    requests_before = list(lane.requests)
    lane.journal_broken = False
    lane, out = lane.restart(at(100), arrival_loop=True)
    assert names(out) == ["lane.recovered", f"Display:{ASK_CARD}"]
    assert lane.state is S.HELD and lane.core.passage.hold_reason == HOLDS[how]
    # The answer to a request from before the crash cannot reopen the decision.
    if requests_before:
        assert lane.feed(ReleaseDecided(requests_before[-1].request_id, "release", "CMD-9"), at(101)) == []
    if how != "no_card":  # (a card shown for a passage held without one starts a passage of its own)
        # R6, R12: its card shown, the vehicle is told after the restart what it was told before it.
        assert names(lane.card(CARD_A, at(101.5))) == ["card.read", f"Display:{held_text}"]
        assert INSPECTION_AREA in lane.core.display or "倒车" in lane.core.display
        # A card now is a re-read (nothing) or another card, refused as lane_busy.
        assert lane.card(CARD_A, at(102)) == []
        assert names(lane.card(CARD_B, at(102.5))) == ["card.refused"]
    assert lane.weight(31250.0, at(103)) == []
    assert lane.tick(at(200)) == []
    assert lane.state is S.HELD and lane.requests == [] and ("release_instruction", "CMD-9") not in lane.consumed
    out = lane.set("arrival_loop", False, at(210))
    closed = emitted(out, "passage.closed")[0]
    assert (closed["outcome"], closed["reason"]) == ("held", HOLDS[how])
    assert lane.state is S.IDLE and lane.events("barrier.lifted") == []


def test_s7_lift_interrupted_survives_a_second_restart(lane: Lane) -> None:
    t = up_to_deciding(lane, 1)
    _crash_after_commit_before_pulse(lane, t + 1, "CMD-8")
    lane, _ = lane.restart(at(10), arrival_loop=True)
    lane, out = lane.restart(at(20), arrival_loop=True)
    assert names(out) == ["lane.recovered", f"Display:{ASK_CARD}", "passage.held"]
    assert lane.state is S.HELD and lane.core.passage.hold_reason == "lift_interrupted"
    assert only(out, Pulse) == [] and lane.requests == []
    assert names(lane.card(CARD_A, at(21))) == ["card.read", f"Display:{INTERRUPTED}"]


def test_s5_s7_a_release_after_restart_cannot_lift_a_vehicle_held_for_a_device_fault(lane: Lane) -> None:
    """S5, S7: held for a fault after the authority said release; after a restart nothing asks or lifts again."""
    t = up_to_deciding(lane, 1)
    lane.feed(DeviceFault("io1", "modbus timeout"), at(t + 0.5))
    lane.decide("release", at(t + 1), "CMD-1")
    old = lane.requests[-1]
    assert lane.state is S.HELD
    lane, out = lane.restart(at(10), arrival_loop=True)
    assert only(out, RequestRelease) == [] and lane.state is S.HELD
    # The authority's release, offered again (a retry of the same request), changes nothing.
    assert lane.feed(ReleaseDecided(old.request_id, "release", "CMD-1"), at(11)) == []
    # Nor does the device coming back.
    lane.feed(DeviceRecovered("io1"), at(12))
    assert lane.state is S.HELD and lane.requests == [] and lane.consumed == set()
    assert lane.events("barrier.lifted") == []


def test_s7_r12_an_authority_timeout_hold_shows_no_answer_after_a_restart_not_lift_interrupted(lane: Lane) -> None:
    """S7, R6, R12: after a restart the hold text follows the hold reason: 海关系统无应答, not 抬杆中断."""
    t = up_to_deciding(lane, 1)
    lane.tick(at(t + 4))
    lane, out = lane.restart(at(30), arrival_loop=True)
    no_answer = f"{core_module.TEXT_NO_ANSWER}；{core_module.TEXT_INSPECTION}"
    assert names(out) == ["lane.recovered", f"Display:{ASK_CARD}"]
    assert names(lane.card(CARD_A, at(31))) == ["card.read", f"Display:{no_answer}"]
    assert INTERRUPTED not in lane.core.display
    assert lane.state is S.HELD and lane.core.passage.hold_reason == "authority_timeout"


# ======================================== CONTRACT 3.1: confirming the authority's releases


@pytest.mark.parametrize("how", ["device_fault_release", "instruction_replay", "journal_error"])
def test_contract_3_1_a_release_that_never_lifted_is_confirmed_not_passed_when_the_vehicle_leaves(
    lane: Lane, how: str
) -> None:
    """CONTRACT 3.1, S5, S1, S6: released by the authority but held here: confirmed not_passed, once, just
    before the passage closes, naming the request and the instruction."""
    _hold_by(lane, how)
    req = lane.requests[-1]
    assert lane.state is S.HELD
    lane.journal_broken = False
    out = lane.set("arrival_loop", False, at(20))
    assert names(out)[:3] == ["loop.changed", "Confirm:not_passed", "passage.closed"]
    (confirm,) = only(out, ConfirmPassage)
    assert confirm == ConfirmPassage(req.request_id, "CMD-1", "not_passed", at(20), 31250.0)
    assert lane.events("barrier.lifted") == []


@pytest.mark.parametrize("how", ["hold", "inspect", "deny", "authority_timeout", "authority_connection"])
def test_contract_3_1_no_confirmation_when_the_authority_did_not_release(lane: Lane, how: str) -> None:
    """CONTRACT 3.1: only a release is confirmed; a hold or a failed request has nothing to confirm."""
    _hold_by(lane, how)
    out = lane.set("arrival_loop", False, at(20))
    assert names(out) == ["loop.changed", "passage.closed", f"Display:{WELCOME}"]
    assert only(out, ConfirmPassage) == []


def test_contract_3_1_a_vehicle_backing_out_before_any_answer_is_not_confirmed(lane: Lane) -> None:
    up_to_deciding(lane, 1)
    out = lane.set("arrival_loop", False, at(4))
    assert only(out, ConfirmPassage) == []
    assert lane.decide("release", at(5), "CMD-1") == []


def test_r11_contract_3_1_an_emergency_lift_with_no_authority_release_is_not_confirmed(lane: Lane) -> None:
    lane.set("emergency_button", True, at(1))
    barrier_rises(lane, 1.1)
    lane.set("arrival_loop", True, at(3))
    out = drive_through(lane, 4)
    assert emitted(out, "passage.closed")[0]["outcome"] == "emergency"
    assert only(out, ConfirmPassage) == []


def test_s7_contract_3_1_a_release_recovered_after_a_crash_is_confirmed_with_its_request_and_instruction(
    lane: Lane,
) -> None:
    """S7, CONTRACT 3.1: the confirmation after a restart still names the request and instruction of
    the release from before the crash (rebuilt from the journal), and says passed."""
    t = up_to_deciding(lane, 1)
    req = lane.requests[-1]
    release(lane, t + 1, "CMD-7")
    lane, _ = lane.restart(at(10), barrier_up=True, barrier_down=False, arrival_loop=True)
    out = drive_through(lane, 11)
    assert names(out)[-6:] == ["loop.changed", "Confirm:passed", "passage.closed", *LOWERS]
    (confirm,) = only(out, ConfirmPassage)
    assert confirm == ConfirmPassage(req.request_id, "CMD-7", "passed", at(15), 31250.0)


def test_s7_contract_3_1_a_lift_interrupted_by_a_crash_is_confirmed_not_passed(lane: Lane) -> None:
    t = up_to_deciding(lane, 1)
    req = lane.requests[-1]
    _crash_after_commit_before_pulse(lane, t + 1, "CMD-8")
    lane, out = lane.restart(at(10), arrival_loop=True)
    assert only(out, ConfirmPassage) == []
    out = lane.set("arrival_loop", False, at(20))
    (confirm,) = only(out, ConfirmPassage)
    assert (confirm.request_id, confirm.instruction_id, confirm.result) == (req.request_id, "CMD-8", "not_passed")
    assert names(out)[1:3] == ["Confirm:not_passed", "passage.closed"]


# ================================================ R9: barrier supervision (limit switches)


def _barrier_fault_step(out: list[Command], reason: str) -> None:
    """R9: one fault, one alarm, one incident, in that order, all naming the reason."""
    steps = [n for n in names(out) if not n.startswith("Display:")]
    assert steps[-3:] == ["fault.opened", "alarm.raised:barrier_fault", "incident.opened"]
    assert emitted(out, "fault.opened")[0]["device"] == "barrier"
    assert emitted(out, "fault.opened")[0]["reason"] == reason
    assert emitted(out, "alarm.raised")[0]["reason"] == reason
    incident = emitted(out, "incident.opened")[0]
    assert (incident["kind"], incident["reason"]) == ("barrier_fault", reason)
    assert incident["incident_id"]


def test_r9_both_limit_switches_on_is_a_barrier_fault_that_clears_when_they_agree_again(lane: Lane) -> None:
    """R9: up and down limits both on contradict each other: alarm and incident; cleared once sane."""
    out = lane.set("barrier_up", True, at(1))
    assert names(out) == ["barrier.position", "fault.opened", "alarm.raised:barrier_fault", "incident.opened", f"Display:{FAULT}"]
    _barrier_fault_step(out, "both_limits")
    assert lane.core.faults == {"barrier": "both_limits"}
    assert lane.state is S.IDLE and only(out, Pulse) == []
    out = lane.set("barrier_up", False, at(2))
    assert names(out) == ["barrier.position", "fault.closed", f"Display:{WELCOME}"]
    assert emitted(out, "fault.closed")[0] == {"device": "barrier"}
    assert lane.core.faults == {}


def test_r9_both_limits_at_start_is_a_barrier_fault() -> None:
    lane = Lane(BONDED)
    out = lane.start(at(0), barrier_up=True, barrier_down=True)
    _barrier_fault_step(out[:3], "both_limits")
    assert open_pulses(out) == []


def test_r9_down_limit_lost_with_no_lift_commanded_is_a_barrier_fault(lane: Lane) -> None:
    """R9: the arm left the down limit though nothing lifted it (raised by hand, or broken off)."""
    out = lane.set("barrier_down", False, at(1))
    assert names(out) == ["barrier.position", "fault.opened", "alarm.raised:barrier_fault", "incident.opened", f"Display:{FAULT}"]
    _barrier_fault_step(out, "down_lost")
    # Raised once, however the switches bounce while it lasts.
    assert names(lane.set("barrier_up", True, at(2))) == ["barrier.position"]
    assert names(lane.set("barrier_up", False, at(3))) == ["barrier.position"]
    assert len(lane.events("incident.opened")) == 1
    out = lane.set("barrier_down", True, at(4))
    assert names(out) == ["barrier.position", "fault.closed", f"Display:{WELCOME}"]
    assert lane.core.faults == {}


def test_r9_s5_a_vehicle_released_while_the_barrier_is_faulty_is_held_not_lifted(lane: Lane) -> None:
    """R9, S5: fail closed while the barrier fault is open; once it clears, the next vehicle lifts."""
    lane.set("barrier_down", False, at(0.5))
    t = up_to_deciding(lane, 1)
    out = lane.decide("release", at(t + 1), "CMD-1")
    assert emitted(out, "passage.held")[0]["reason"] == "device_fault"
    assert only(out, CommitAuthorisation) == [] and open_pulses(out) == []
    lane.set("arrival_loop", False, at(10))
    lane.set("barrier_down", True, at(11))
    assert lane.core.faults == {}
    t = up_to_deciding(lane, 20, CARD_B)
    assert names(release(lane, t + 1, "CMD-2"))[-3:] == ["Pulse:open:lift", "barrier.lifted", f"Display:{RELEASED}"]


def test_r9_up_limit_lost_while_open_is_a_barrier_fault(lane: Lane) -> None:
    """R9: up at the top with no lower commanded, then off: the arm broke or was pushed down."""
    t = up_to_deciding(lane, 1)
    release(lane, t + 1)
    barrier_rises(lane, t + 1.2)
    out = lane.set("barrier_up", False, at(8))
    assert names(out) == ["barrier.position", "fault.opened", "alarm.raised:barrier_fault", "incident.opened"]
    _barrier_fault_step(out, "up_lost")
    assert lane.state is S.OPEN and only(out, Pulse) == []
    out = lane.set("barrier_up", True, at(9))
    assert names(out) == ["barrier.position", "fault.closed"]
    assert lane.core.faults == {} and lane.state is S.OPEN


def test_r9_normal_travel_of_the_arm_raises_no_fault(lane: Lane) -> None:
    """R9: the down limit leaving after a lift, and the up limit leaving after a lower, are commanded."""
    full_passage(lane, 1, CARD_A, "CMD-1")
    assert lane.alarms("barrier_fault") == [] and lane.events("incident.opened") == []
    assert lane.core.faults == {}


def test_r9_a_lift_that_never_leaves_the_down_limit_is_never_left_down(lane: Lane) -> None:
    """R9: travel_timeout passes with the down limit still on: a different repair from a slow arm."""
    t = up_to_deciding(lane, 1)
    release(lane, t + 1)  # lift at t=4, travel_timeout 6 s
    assert lane.core.next_deadline == at(10)
    assert lane.tick(at(9.9)) == []
    out = lane.tick(at(10))
    assert names(out) == ["fault.opened", "alarm.raised:barrier_fault", "incident.opened"]
    _barrier_fault_step(out, "never_left_down")
    assert lane.tick(at(20)) == []
    # It rises late after all: the fault clears once the limits show it up.
    lane.set("barrier_down", False, at(21))
    out = lane.set("barrier_up", True, at(22))
    assert names(out) == ["barrier.position", "fault.closed"]
    assert lane.state is S.OPEN


def test_r9_travel_timeouts_open_incidents(lane: Lane) -> None:
    """R9: travel_timeout_up and travel_timeout_down each open an incident of their own."""
    t = up_to_deciding(lane, 1)
    release(lane, t + 1)
    lane.set("barrier_down", False, at(4.3))
    _barrier_fault_step(lane.tick(at(10)), "travel_timeout_up")
    lane.set("barrier_up", True, at(11))
    drive_through(lane, 12)  # lower at t=16
    lane.set("barrier_up", False, at(16.2))
    _barrier_fault_step(lane.tick(at(22)), "travel_timeout_down")
    ids = [e["incident_id"] for e in lane.events("incident.opened")]
    assert len(ids) == 2 and len(set(ids)) == 2


# ============================================== fixes since the last report, one test each


def test_s4_r8_forced_vehicle_closes_forced_with_the_next_vehicle_on_the_arrival_loop(lane: Lane) -> None:
    """S4, R8, R5: the forced vehicle's passage closes ``forced`` once the safety and exit loops clear,
    although another vehicle already waits on the arrival loop; that one gets a passage of its own."""
    up_to_deciding(lane, 1)
    forced_id = lane.core.passage.passage_id
    lane.set("safety_loop", True, at(4))
    lane.set("arrival_loop", False, at(4.5))
    lane.set("exit_loop", True, at(5))
    lane.set("safety_loop", False, at(5.5))
    assert names(lane.set("arrival_loop", True, at(6))) == ["loop.changed"]  # the next vehicle
    out = lane.set("exit_loop", False, at(7))
    assert names(out) == [
        "loop.changed",
        "passage.closed",
        f"Display:{WELCOME}",
        "passage.opened",
        f"Display:{ASK_CARD}",
    ]
    closed = emitted(out, "passage.closed")[0]
    assert (closed["outcome"], closed["passage_id"], closed["card"]) == ("forced", forced_id, CARD_A)
    opened = emitted(out, "passage.opened")[0]
    assert opened["passage_id"] != forced_id
    assert lane.state is S.PRESENT and lane.core.passage.card is None
    # The newcomer is served normally: its own card, weight, request and lift.
    lane.card(CARD_B, at(8))
    lane.weight(18400.0, at(9))
    assert lane.requests[-1].card == CARD_B and lane.requests[-1].passage_id == opened["passage_id"]
    assert names(release(lane, 10, "CMD-2"))[-3:] == ["Pulse:open:lift", "barrier.lifted", f"Display:{RELEASED}"]
    assert len(lane.alarms("forced_passage")) == 1


def test_s4_s1_a_release_for_a_forced_passage_never_lifts(lane: Lane) -> None:
    """S4, S1, R8: the vehicle went under the boom before the answer; the release arrives: held
    ``forced_passage``, nothing committed, nothing lifted, the release confirmed not_passed."""
    up_to_deciding(lane, 1)
    req = lane.requests[-1]
    lane.set("safety_loop", True, at(4))
    out = lane.decide("release", at(4.2), "CMD-1")
    forced_text = f"{FORCED}；{core_module.TEXT_INSPECTION}"
    assert names(out) == ["release.decided", f"Display:{forced_text}", "passage.held"]
    assert emitted(out, "passage.held")[0]["reason"] == "forced_passage"
    assert only(out, CommitAuthorisation) == [] and only(out, Pulse) == []
    assert lane.consumed == set()
    lane.set("arrival_loop", False, at(4.5))
    lane.set("exit_loop", True, at(5))
    lane.set("safety_loop", False, at(5.5))
    out = lane.set("exit_loop", False, at(7))
    assert names(out) == ["loop.changed", "Confirm:not_passed", "passage.closed", f"Display:{WELCOME}"]
    assert only(out, ConfirmPassage)[0].request_id == req.request_id
    assert emitted(out, "passage.closed")[0]["outcome"] == "forced"
    assert lane.events("barrier.lifted") == [] and lane.state is S.IDLE


def test_s4_s1_a_release_after_the_forced_vehicle_backed_off_the_line_still_never_lifts(lane: Lane) -> None:
    """S4, S1: once at the barrier line without a lift, the passage is forced even if it reversed."""
    up_to_deciding(lane, 1)
    lane.set("safety_loop", True, at(4))
    lane.set("safety_loop", False, at(4.5))  # back off the line, still on the arrival loop
    # Its passage closed as forced; the vehicle still on the arrival loop is a new passage.
    assert lane.events("passage.closed")[-1]["outcome"] == "forced"
    assert lane.decide("release", at(5), "CMD-1") == []
    assert lane.consumed == set() and lane.events("barrier.lifted") == []


def test_s3_a_lower_commanded_with_the_barrier_already_down_completes_at_once(lane: Lane) -> None:
    """S3, R5: lifted, but the arm never left the down limit and the vehicle reversed away: the lower
    completes at once (no down edge will come), the lane is IDLE and the next vehicle gets a passage."""
    t = up_to_deciding(lane, 1)
    release(lane, t + 1)  # lift at t=4; the down limit never goes off
    lane.set("arrival_loop", False, at(4.5))
    assert lane.core.next_deadline == at(9.5)
    out = lane.tick(at(9.5))
    assert names(out) == ["Confirm:not_passed", "passage.closed", *LOWERS, f"Display:{WELCOME}"]
    assert lane.state is S.IDLE and lane.core.lift is None and lane.core.next_deadline is None
    out = lane.set("arrival_loop", True, at(12))
    assert names(out) == ["loop.changed", "passage.opened", f"Display:{ASK_CARD}"]
    t = up_to_deciding(lane, 13, CARD_B)
    out = release(lane, t + 1, "CMD-2")
    assert [p.authorisation for p in open_pulses(out)] == [("release_instruction", "CMD-2")]


def test_s3_r5_a_lower_with_the_arm_already_down_opens_the_waiting_vehicles_passage_at_once(lane: Lane) -> None:
    """S3, R5, R9: the arm fell by itself (up_lost) while the vehicle went through; the lower after it
    cleared finds the barrier down: IDLE at once, and the vehicle waiting on the arrival loop gets its passage."""
    t = up_to_deciding(lane, 1)
    release(lane, t + 1)
    barrier_rises(lane, t + 1.2)
    lane.set("safety_loop", True, at(7))
    lane.set("arrival_loop", False, at(7.5))
    lane.set("exit_loop", True, at(8))
    lane.set("barrier_up", False, at(8.2))  # the arm comes down on its own
    lane.set("barrier_down", True, at(9))
    lane.set("safety_loop", False, at(9.5))
    lane.set("arrival_loop", True, at(10))  # the next vehicle
    out = lane.set("exit_loop", False, at(11))
    got = names(out)
    assert got[:6] == ["loop.changed", "Confirm:passed", "passage.closed", *LOWERS]
    # (What the idle display says in between depends on the open up_lost fault; not asserted here.)
    assert got[-2:] == ["passage.opened", f"Display:{ASK_CARD}"]
    assert emitted(out, "passage.opened")[0]["passage_id"] != emitted(out, "passage.closed")[0]["passage_id"]
    assert lane.state is S.PRESENT and lane.core.lift is None
    assert len(lane.events("passage.opened")) == 2


@pytest.mark.parametrize("how", ["held", "backed_out"])
def test_r4_s8_the_leaving_vehicles_card_is_not_given_to_the_next_vehicle(lane: Lane, how: str) -> None:
    """R4, S8: a held or backed-out vehicle's card, read as it leaves the reader's field, belongs to
    nobody: the next vehicle's passage opens without a card, and its own card is taken."""
    up_to_deciding(lane, 1)
    if how == "held":
        lane.decide("inspect", at(5))
    out = lane.set("arrival_loop", False, at(8))
    assert emitted(out, "passage.closed")[0]["outcome"] == how
    assert lane.card(CARD_A, at(8.5)) == []  # backing away past the reader
    out = lane.set("arrival_loop", True, at(10))
    assert names(out) == ["loop.changed", "passage.opened", f"Display:{ASK_CARD}"]
    assert lane.core.passage.card is None and lane.state is S.PRESENT
    out = lane.card(CARD_B, at(11))
    assert names(out) == ["card.read", f"Display:{WEIGHING}"]
    assert emitted(out, "card.read")[0]["card"] == CARD_B


@pytest.mark.parametrize("when", ["deciding", "held", "open"])
def test_r3_the_weighed_vehicle_settling_again_is_not_the_next_vehicles_weight(lane: Lane, when: str) -> None:
    """R3, R7: a new stable weight while the weighed vehicle's passage still owns the scale is that
    vehicle settling again: it changes nothing and is not kept for the next vehicle."""
    t = up_to_deciding(lane, 1)
    if when == "held":
        lane.decide("inspect", at(t + 1))
    elif when == "open":
        release(lane, t + 1)
        barrier_rises(lane, t + 1.2)
    assert lane.weight(31300.0, at(t + 3)) == []
    assert lane.core.last_weight_kg is None and len(lane.events("weight.stable")) == 1
    if when == "deciding":
        lane.decide("hold", at(t + 4))
    if when == "open":
        drive_through(lane, t + 5)
        barrier_falls(lane, t + 10)
    else:
        lane.set("arrival_loop", False, at(t + 5))
    assert lane.state is S.IDLE
    lane.set("arrival_loop", True, at(30))
    out = lane.card(CARD_B, at(31))
    assert names(out) == ["card.read", f"Display:{WEIGHING}"]
    assert lane.state is S.WEIGHING and len(lane.requests) == 1
    out = lane.weight(18400.0, at(32))
    assert only(out, RequestRelease)[0].gross_weight_kg == 18400.0
