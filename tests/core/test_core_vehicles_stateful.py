"""R3, R4, S7, S8: the lane asks only about the card of the vehicle at its reader, crashes included.

``tests/core/test_core_stateful.py`` throws random inputs at the core; this machine drives
*vehicles* instead, so it knows what the core cannot: which vehicle is on the arrival loop
(in front of the card reader) at every moment. Vehicles arrive, show their card (on the
loop, or a moment before it), are weighed, drive through whatever the boom does, or back
out; the daemon crashes and restarts while they keep moving, and a card shown while it is
down is lost, as a real reader's frame would be. After every step: each card the lane
takes into a passage (``card.read``) and each release request names the card of the
vehicle on the arrival loop right then, and a passage that holds a card (held ones too:
their text tells that vehicle where to go, R6) holds that vehicle's. A card the lane kept
from a vehicle that has since gone (through the barrier line, backwards, or while the
daemon was down) would be asked about on behalf of the next vehicle: that vehicle would
be released or held on another's card; a hold recovered after a restart would send
whoever pulled up meanwhile to the inspection area.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from gatectl.lane.commands import CommitAuthorisation, Emit, RequestRelease
from gatectl.lane.core import LaneCore, LaneRules, LaneState
from gatectl.lane.inputs import (
    INPUT_POINTS,
    CardRead,
    InputChanged,
    InputsSnapshot,
    ReleaseDecided,
    Tick,
    WeightStable,
)
from lanelog import LaneLog
from machines import NO_EXPLAIN, machine_tests

TZ = ZoneInfo("Asia/Shanghai")


@dataclass(frozen=True)
class Vehicle:
    card: str
    kg: float


FLEET = [
    Vehicle("3A00F1229B", 31250.0),
    Vehicle("06008E6D5D", 42680.0),
    Vehicle("6E3390FF14", 36120.0),
    Vehicle("8A5B6C7D8E", 8650.0),
]


class VehiclesAtTheLane(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = datetime(2026, 11, 27, 9, 0, tzinfo=TZ)
        self._ids = itertools.count(1)
        self.log = LaneLog("B1-IN")
        self.inputs = {p: False for p in INPUT_POINTS}
        self.inputs["barrier_down"] = True
        self.core: LaneCore | None = None
        #: The vehicle on the arrival loop, in front of the reader.
        self.at_reader: Vehicle | None = None
        #: A vehicle that showed its card a moment before reaching the loop: it comes next.
        self.approaching: Vehicle | None = None
        self.requests: list[str] = []

    def new_id(self) -> str:
        return f"id-{next(self._ids)}"

    @initialize(weighbridge=st.booleans())
    def start(self, weighbridge: bool) -> None:
        self.rules = LaneRules(lane_id="B1-IN", kind="bonded", has_weighbridge=weighbridge, min_vehicle_kg=500)
        self.core = LaneCore(self.rules, new_id=self.new_id)
        self.feed(InputsSnapshot(dict(self.inputs)))

    # ------------------------------------------------------------ the service

    @property
    def running(self) -> bool:
        return self.core is not None and self.core.running

    def feed(self, event) -> None:
        assert self.core is not None
        self.execute(self.core.handle(event, self.now))

    def execute(self, commands: list) -> None:
        assert self.core is not None
        for cmd in commands:
            if isinstance(cmd, Emit):
                self.log.emit(cmd)
                if cmd.type == "card.read":
                    there = self.at_reader.card if self.at_reader is not None else None
                    assert cmd.data["card"] == there, (
                        f"R4, S8: the passage took card {cmd.data['card']} with {there} at the reader")
            elif isinstance(cmd, RequestRelease):
                self.requests.append(cmd.request_id)
                there = self.at_reader.card if self.at_reader is not None else None
                assert cmd.card == there, f"R3: asked about card {cmd.card} for the vehicle with {there}"
            elif isinstance(cmd, CommitAuthorisation):
                self.execute(self.core.handle(self.log.commit(cmd), self.now))

    def set_input(self, point: str, value: bool) -> None:
        """A loop or limit changes; a running lane sees the edge, a dead or starting one
        finds the result in its first poll."""
        if self.inputs[point] == value:
            return
        self.inputs[point] = value
        if self.running:
            self.feed(InputChanged(point, value))

    def show(self, card: str) -> None:
        if self.core is not None:  # while the daemon is down the frame is lost
            self.feed(CardRead(card))

    # --------------------------------------------------------------- vehicles

    @precondition(lambda self: self.at_reader is None and self.approaching is None)
    @rule(vehicle=st.sampled_from(FLEET))
    def arrive(self, vehicle: Vehicle) -> None:
        self.at_reader = vehicle
        self.set_input("arrival_loop", True)

    @precondition(lambda self: self.at_reader is None and self.approaching is None)
    @rule(vehicle=st.sampled_from(FLEET))
    def arrive_showing_its_card(self, vehicle: Vehicle) -> None:
        """The common case, so that sequences of many vehicles come up often."""
        self.arrive(vehicle)
        self.show(vehicle.card)

    @precondition(lambda self: self.at_reader is None and self.approaching is None)
    @rule(vehicle=st.sampled_from(FLEET))
    def card_before_the_loop(self, vehicle: Vehicle) -> None:
        """The reader fires a moment before the vehicle reaches the loop."""
        self.approaching = vehicle
        self.show(vehicle.card)

    @precondition(lambda self: self.approaching is not None)
    @rule()
    def arrives_after_its_card(self) -> None:
        self.at_reader, self.approaching = self.approaching, None
        self.set_input("arrival_loop", True)

    @precondition(lambda self: self.at_reader is not None)
    @rule()
    def show_card(self) -> None:
        assert self.at_reader is not None
        self.show(self.at_reader.card)

    @precondition(lambda self: self.at_reader is not None and self.core is not None)
    @rule()
    def weighed(self) -> None:
        assert self.at_reader is not None
        self.feed(WeightStable(self.at_reader.kg))

    @precondition(lambda self: self.at_reader is not None)
    @rule()
    def drive_forward(self) -> None:
        """Under the boom and away, whatever the boom does."""
        self.set_input("safety_loop", True)
        self.at_reader = None
        self.set_input("arrival_loop", False)
        self.set_input("exit_loop", True)
        self.set_input("safety_loop", False)
        self.set_input("exit_loop", False)

    @precondition(lambda self: self.running and self.core.state is LaneState.IDLE and self.at_reader is None
                  and self.approaching is None)
    @rule(vehicle=st.sampled_from(FLEET))
    def released_vehicle_drives_through(self, vehicle: Vehicle) -> None:
        """A whole released passage, so that lifts (and vehicles behind them) come up often."""
        self.arrive_showing_its_card(vehicle)
        self.weighed()
        if self.core is not None and self.core.state is LaneState.DECIDING:
            self.authority_answers("release")
            self.barrier_reaches_limit()
            self.drive_forward()

    @precondition(lambda self: self.running and self.core.state is LaneState.IDLE and self.at_reader is None
                  and self.approaching is None)
    @rule(vehicle=st.sampled_from(FLEET), decision=st.sampled_from(["hold", "inspect", "deny"]))
    def held_vehicle(self, vehicle: Vehicle, decision: str) -> None:
        """A passage up to customs' hold, so that restarts while a vehicle is held come up often."""
        self.arrive_showing_its_card(vehicle)
        self.weighed()
        if self.core is not None and self.core.state is LaneState.DECIDING:
            self.authority_answers(decision)

    @precondition(lambda self: self.running and self.core.state in (LaneState.OPEN, LaneState.LOWERING)
                  and self.at_reader is None and self.approaching is None)
    @rule(vehicle=st.sampled_from(FLEET), forward=st.booleans())
    def next_vehicle_at_a_raised_boom(self, vehicle: Vehicle, forward: bool) -> None:
        """A vehicle pulls up while the boom is still up for the one before, shows its card,
        and follows under it, or thinks better of it and reverses."""
        self.arrive_showing_its_card(vehicle)
        if forward:
            self.drive_forward()
        else:
            self.back_out()

    @precondition(lambda self: self.at_reader is not None)
    @rule()
    def back_out(self) -> None:
        self.at_reader = None
        self.set_input("arrival_loop", False)

    # ----------------------------------------------------- the lane's world

    @precondition(lambda self: self.running and self.core.state is LaneState.DECIDING)
    @rule(decision=st.sampled_from(["release", "release", "hold", "deny"]))
    def authority_answers(self, decision: str) -> None:
        instruction = f"CMD-{len(self.requests)}" if decision == "release" else None
        self.feed(ReleaseDecided(self.requests[-1], decision, instruction, "HF1", None))

    @precondition(lambda self: self.running)
    @rule()
    def barrier_reaches_limit(self) -> None:
        assert self.core is not None
        up = self.core.state is LaneState.OPEN
        self.set_input("barrier_down" if up else "barrier_up", False)
        self.set_input("barrier_up" if up else "barrier_down", True)

    @precondition(lambda self: self.core is not None)
    @rule(seconds=st.sampled_from([0.5, 2.0, 6.0]))
    def time_passes(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)
        if self.running:
            self.feed(Tick())

    @precondition(lambda self: self.core is not None)
    @rule()
    def crash(self) -> None:
        self.core = None

    @precondition(lambda self: self.core is None)
    @rule(seconds=st.sampled_from([0.5, 2.0]))
    def daemon_starts(self, seconds: float) -> None:
        """Started again from the journal; its serial ports are open before its first poll."""
        self.now += timedelta(seconds=seconds)
        self.core = LaneCore(self.rules, **self.log.recovery(), new_id=self.new_id)

    @precondition(lambda self: self.core is not None and not self.core.running)
    @rule()
    def first_poll(self) -> None:
        self.feed(InputsSnapshot(dict(self.inputs)))

    @precondition(lambda self: self.running and self.at_reader is not None)
    @rule(vehicle=st.sampled_from(FLEET), shown_while_starting=st.booleans(), then_shown=st.booleans())
    def another_vehicle_by_the_restart(self, vehicle: Vehicle, shown_while_starting: bool, then_shown: bool) -> None:
        """The daemon dies (deciding, held, lifted...); the vehicle at the reader reverses
        away and another (or the same one) pulls up, while it is down or (having shown its
        card to the starting daemon) before the daemon's first poll; asked for its card, it
        shows it at once, or later."""
        self.crash()
        if shown_while_starting:
            self.daemon_starts(0.5)
            self.show_card()
        self.back_out()
        self.arrive(vehicle)
        if not shown_while_starting:
            self.daemon_starts(0.5)
        self.first_poll()
        if then_shown:
            self.show_card()

    @invariant()
    def one_passage_holds_one_vehicles_card(self) -> None:
        """S8, R6: an open passage's card, once taken, is the card of the vehicle at the
        reader; a held one's too, since its hold text tells that vehicle where to go."""
        core = self.core
        if core is None or not core.running or core.passage is None or core.passage.card is None:
            return
        if core.state in (LaneState.PRESENT, LaneState.WEIGHING, LaneState.DECIDING, LaneState.HELD):
            there = self.at_reader.card if self.at_reader is not None else None
            assert core.passage.card == there, f"passage holds {core.passage.card}, {there} at the reader"


TestVehiclesAtTheLane, TestVehiclesAtTheLaneSoak = machine_tests(
    VehiclesAtTheLane, examples=300, steps=40, soak_steps=100, phases=NO_EXPLAIN)
