"""A whole simulated checkpoint site on one machine: every device, one authority, vehicles.

Used by ``gatectl demo`` (a terminal view that runs this site and the real daemon in one
event loop) and by end-to-end tests that run the real daemon against it. Everything
speaks the real wire formats: one Modbus TCP IO module (``simulators.io_module``) with a
barrier per lane, a card reader per lane and a weighing indicator per weighed lane on
real ptys, and one ``http-json`` release authority (``customs``) on a real socket::

    site = SimulatedSite(tmp_path, [LaneSpec("B1-IN", "保税货物进区1号", "bonded", "in", "K001")])
    await site.start()
    config = site.write_config(api_listen="127.0.0.1:8470")   # gatectl run --config config
    lane = site.lane("B1-IN")
    outcome = await lane.drive(FLEET[0])                      # "passed" or "backed_out"
    await site.stop()

Address plan on ``io1``, lane ``i`` (from 0, in the order given): discrete inputs
``8i+0..6`` = arrival_loop, safety_loop, exit_loop, barrier_up, barrier_down,
manual_lift_button, emergency_button; coils ``2i`` (open) and ``2i+1`` (close). A lane
without an exit loop leaves ``8i+2`` unwired.

A lane may have a plate camera (``LaneSpec(..., plate_camera=True)``,
``simulators.plate_camera``): each vehicle driving onto its arrival loop is read (or
missed, or misread by a character) and the read posted to the daemon's local API with the
``camera`` user's token that :meth:`SimulatedSite.config_yaml` writes (``users=DEMO_USERS``).

The site decides nothing. Vehicles react to the boom the way drivers do: they pull onto
the arrival loop and the weighbridge, show their card, and drive on when the boom is up,
or back out when it never comes up. Which vehicles pass is the daemon's business.

Timing: the pauses a driver takes are divided by :attr:`SimulatedSite.speed`, but never
made shorter than :attr:`SimulatedSite.min_dwell_s` (2.5 IO polls), so a daemon polling
the IO module every ``poll_ms`` still sees every loop change, in order. Barrier travel is
``travel_s``, not scaled; how long a vehicle waits for the lift is not scaled either.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import json
import logging
import random
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from simulators.authority_http import HttpAuthoritySimulator
from simulators.card_reader import CardReaderSimulator
from simulators.io_module import Barrier, IoModuleSimulator, SimulatedUnit
from simulators.plate_camera import PlateCameraSimulator
from simulators.weighbridge import WeighbridgeSimulator

__all__ = [
    "ADMIN_TRAFFIC",
    "AUTHORITY_NAME",
    "DEMO_USERS",
    "FLEET",
    "FORM_IDS",
    "INTRUDERS",
    "IO_MODULE_NAME",
    "LANE_INPUTS",
    "PERSONNEL_TRAFFIC",
    "REGISTERED_VEHICLES",
    "SCRIPT",
    "SITE_ID",
    "SITE_NAME",
    "STAFF",
    "TRAFFIC_MIX",
    "LaneSpec",
    "RegisteredVehicle",
    "SimLane",
    "SimulatedSite",
    "StaffCard",
    "Trip",
    "Vehicle",
    "expected_decision",
    "free_tcp_port",
    "plan_trip",
    "vehicle_for_card",
]

log = logging.getLogger(__name__)

DEMO_USERS: Final[dict[str, tuple[str, str]]] = {
    "guard": ("王保安", "demo-guard"),
    "customs": ("海关查验科", "demo-customs"),
    "park": ("园区管理办", "demo-park"),
    "camera": ("车牌识别相机", "demo-camera"),
}
"""Users of the local API for ``config_yaml(users=...)``: role -> (name, bearer token)."""

SITE_ID: Final = "demo-site"
SITE_NAME: Final = "昆明综合保税区模拟卡口"
AUTHORITY_NAME: Final = "customs"
IO_MODULE_NAME: Final = "io1"

GOODS_KINDS: Final = frozenset({"bonded", "ecommerce_9610", "non_bonded"})
LANE_KINDS: Final = frozenset(GOODS_KINDS | {"administrative", "personnel"})
CARD_FORMATS: Final = frozenset({"ascii-line", "stx-hex-xor", "stx-bin-bcc"})
WEIGH_FORMATS: Final = frozenset({"xk3190-tf0", "toledo-continuous"})

LANE_INPUTS: Final[tuple[str, ...]] = (
    "arrival_loop",
    "safety_loop",
    "exit_loop",
    "barrier_up",
    "barrier_down",
    "manual_lift_button",
    "emergency_button",
)
"""Discrete inputs of lane ``i``, at ``8i + position in this tuple``."""
INPUTS_PER_LANE: Final = 8
COILS_PER_LANE: Final = 2

LoopName = Literal["arrival", "safety", "exit"]
ButtonName = Literal["manual_lift", "emergency"]

# Base pauses of a driver at speed 1.0, in seconds (divided by SimulatedSite.speed).
APPROACH_S: Final = 0.8  # front wheels on the arrival loop -> rolling onto the bridge
WEIGH_STEP_S: Final = 0.5  # each unsettled reading while the lorry rolls and stops
CARD_S: Final = 1.2  # stopped -> card held to the reader
STEP_S: Final = 0.7  # between loop changes while driving through
BACK_OUT_S: Final = 1.2  # between loop changes while reversing
RUSH_S: Final = 0.25  # a forced passage does not hang about
PRESS_S: Final = 0.3  # a guard's button press (not scaled: the poller must see it)
TRAFFIC_GAP_S: Final = (2.0, 6.0)  # between vehicles in run_traffic
CLEAR_BARRIER_WAIT_S: Final = 8.0  # longest a driver waits for the last vehicle's boom to come down


# --------------------------------------------------------------------------------------
# Vehicles, the fleet and its script


@dataclass(frozen=True, slots=True)
class Vehicle:
    """A vehicle (or a person, on a personnel lane). ``card`` None: it has no card."""

    card: str | None
    plate: str
    gross_kg: float
    kind: str = "truck"


@dataclass(frozen=True, slots=True)
class RegisteredVehicle:
    """An administrative-lane vehicle in the config's ``administrative_vehicles``."""

    card: str
    plate: str
    curb_weight_kg: float


@dataclass(frozen=True, slots=True)
class StaffCard:
    """A staff member in the config's ``staff`` (opens personnel lanes)."""

    card: str
    name: str


FLEET: Final[tuple[Vehicle, ...]] = (
    Vehicle("3A00F1229B", "云A12345", 31250),
    Vehicle("06008E6D5D", "云A7K208", 42680),
    Vehicle("1F0A22C401", "云AD3391", 18420),
    Vehicle("2B7705E91C", "云E51620", 27900),
    Vehicle("44C0193AA2", "云A9L672", 48750),
    Vehicle("5D12E0B736", "云K08315", 12960),
    Vehicle("9C01D4E2F3", "云G33106", 40210),
    Vehicle("6E3390FF14", "云A55T09", 36120),
    Vehicle("A1B2C3D4E5", "云H2B748", 23480),
    Vehicle("7F4821AC6B", "云H20748", 21170),
    Vehicle("8A5B6C7D8E", "云A0Q557", 8650),
)
"""Goods lorries for bonded, ecommerce_9610 and non_bonded lanes; weights 8-49 t."""

SCRIPT: Final[dict[str, str]] = {
    "3A00F1229B": "release",
    "06008E6D5D": "release",
    "1F0A22C401": "release",
    "2B7705E91C": "release",
    "44C0193AA2": "release",
    "5D12E0B736": "release",
    "9C01D4E2F3": "release",
    "6E3390FF14": "hold",
    "A1B2C3D4E5": "hold",
    "7F4821AC6B": "inspect",
    "8A5B6C7D8E": "deny",
}
"""The decision the ``customs`` authority simulator gives each fleet card (set by start())."""

FORM_IDS: Final[dict[str, str]] = {
    card: f"HF53012026112700{n:04d}" for n, card in enumerate(SCRIPT, start=101)
}
"""The release form (核放单) id the authority names for each fleet card."""

INTRUDERS: Final[tuple[Vehicle, ...]] = (
    Vehicle(None, "云A3X882", 15400),
    Vehicle(None, "川A6M021", 22800),
    Vehicle(None, "贵A90K17", 9800, "van"),
)
"""Vehicles without a card: the tailgaters and forced passages of run_traffic."""

REGISTERED_VEHICLES: Final[tuple[RegisteredVehicle, ...]] = (
    RegisteredVehicle("0100E2850E", "云A0G001", 1800),
    RegisteredVehicle("0100E2850F", "云A0G002", 2350),
    RegisteredVehicle("0100E28510", "云A0G003", 1650),
)
"""Written to the config's ``administrative_vehicles`` whitelist."""

ADMIN_TRAFFIC: Final[tuple[Vehicle, ...]] = (
    Vehicle(REGISTERED_VEHICLES[0].card, REGISTERED_VEHICLES[0].plate, 1850, "car"),
    Vehicle(REGISTERED_VEHICLES[1].card, REGISTERED_VEHICLES[1].plate, 2410, "car"),
    # registered, but carrying goods (R7)
    Vehicle(REGISTERED_VEHICLES[2].card, REGISTERED_VEHICLES[2].plate, 3900, "van"),
    Vehicle("0BADCAFE00", "云A8U514", 2100, "car"),  # not registered
)
"""Vehicles for administrative lanes: the registered ones carry the card and the plate of
their whitelist entry (the lane matches both where a plate camera reads them)."""

STAFF: Final[tuple[StaffCard, ...]] = (
    StaffCard("5A5A5A5A5A", "王保安"),
    StaffCard("5A5A5A5A5B", "李保安"),
    StaffCard("5A5A5A5A5C", "张丽"),
)
"""Written to the config's ``staff``."""

PERSONNEL_TRAFFIC: Final[tuple[Vehicle, ...]] = (
    *(Vehicle(s.card, s.name, 70, "person") for s in STAFF),
    Vehicle("0DDBA11000", "访客", 65, "person"),  # not staff
)
"""People for personnel lanes (``plate`` is the person's name)."""

TRAFFIC_MIX: Final[dict[str, float]] = {"tailgate": 0.08, "forced": 0.03}
"""run_traffic odds per trip on goods lanes: a cardless tailgater behind a released lorry,
and a forced passage (a cardless vehicle through the closed boom)."""

ADMIN_TOLERANCE_KG: Final = 300  # the config default curb_weight_tolerance_kg


def expected_decision(kind: str, vehicle: Vehicle) -> str:
    """What a correct daemon should do with ``vehicle`` on a lane of ``kind``.

    ``release`` / ``hold`` / ``inspect`` / ``deny`` from the script for goods lanes; for
    administrative lanes ``release`` for a registered vehicle within curb weight plus
    tolerance, else ``hold``; for personnel lanes ``release`` for staff, else ``hold``.
    """
    if vehicle.card is None:
        return "hold"
    card = vehicle.card.upper()
    if kind in GOODS_KINDS:
        return SCRIPT.get(card, "hold")
    if kind == "administrative":
        reg = next((r for r in REGISTERED_VEHICLES if r.card == card), None)
        if reg is None or vehicle.gross_kg > reg.curb_weight_kg + ADMIN_TOLERANCE_KG:
            return "hold"
        return "release"
    if kind == "personnel":
        return "release" if any(s.card == card for s in STAFF) else "hold"
    return "hold"


def vehicle_for_card(card: str) -> Vehicle | None:
    """The fleet, administrative or personnel entry with this card, for labels."""
    card = card.upper()
    for vehicle in (*FLEET, *ADMIN_TRAFFIC, *PERSONNEL_TRAFFIC):
        if vehicle.card == card:
            return vehicle
    return None


@dataclass(slots=True)
class Trip:
    """One vehicle's trip through a lane in :meth:`SimulatedSite.run_traffic`."""

    lane_id: str
    vehicle: Vehicle
    expected: str
    """``release``/``hold``/``inspect``/``deny``, or ``forced`` for a forced passage."""
    tailgater: Vehicle | None = None
    forced: bool = False
    outcome: str | None = None
    """What :meth:`SimLane.drive` returned (``passed``, ``backed_out``, ``passed+tailgater``),
    ``forced``, or ``error: ...``; None while the trip is under way."""
    started_at: float = 0.0
    ended_at: float | None = None


def plan_trip(spec: LaneSpec, rng: random.Random) -> Trip:
    """Pick the next vehicle for a lane of ``spec``'s kind (pure; uses only ``rng``)."""
    if spec.kind in GOODS_KINDS:
        roll = rng.random()
        if roll < TRAFFIC_MIX["forced"]:
            return Trip(spec.id, rng.choice(INTRUDERS), "forced", forced=True)
        vehicle = rng.choice(FLEET)
        expected = expected_decision(spec.kind, vehicle)
        tailgater = None
        if expected == "release" and roll < TRAFFIC_MIX["forced"] + TRAFFIC_MIX["tailgate"]:
            tailgater = rng.choice(INTRUDERS)
        return Trip(spec.id, vehicle, expected, tailgater=tailgater)
    pool = ADMIN_TRAFFIC if spec.kind == "administrative" else PERSONNEL_TRAFFIC
    vehicle = rng.choice(pool)
    return Trip(spec.id, vehicle, expected_decision(spec.kind, vehicle))


# --------------------------------------------------------------------------------------
# Lanes


@dataclass(frozen=True, slots=True)
class LaneSpec:
    """One simulated lane. ``weigh_format`` None: no weighbridge (administrative and
    personnel lanes only, as the config requires); ``exit_loop`` False: no exit loop."""

    id: str
    name: str
    kind: str
    direction: str
    channel_no: str
    card_format: str = "stx-hex-xor"
    weigh_format: str | None = "xk3190-tf0"
    exit_loop: bool = True
    plate_camera: bool = False
    """A plate camera over the arrival loop (:mod:`simulators.plate_camera`), posting to
    the daemon's API; written to the config as ``plate_camera``."""

    def __post_init__(self) -> None:
        if self.kind not in LANE_KINDS:
            raise ValueError(f"lane {self.id}: kind must be one of {sorted(LANE_KINDS)}")
        if self.direction not in ("in", "out"):
            raise ValueError(f"lane {self.id}: direction must be 'in' or 'out'")
        if self.card_format not in CARD_FORMATS:
            raise ValueError(f"lane {self.id}: card_format must be one of {sorted(CARD_FORMATS)}")
        if self.weigh_format is not None and self.weigh_format not in WEIGH_FORMATS:
            raise ValueError(f"lane {self.id}: weigh_format must be one of {sorted(WEIGH_FORMATS)}")
        if self.kind in GOODS_KINDS and self.weigh_format is None:
            raise ValueError(f"lane {self.id}: {self.kind} lanes weigh every vehicle")
        if self.plate_camera and self.kind == "personnel":
            raise ValueError(f"lane {self.id}: people carry no plates")


class SimLane:
    """One lane of a :class:`SimulatedSite`: its devices, and vehicles driving through it."""

    def __init__(self, site: SimulatedSite, index: int, spec: LaneSpec) -> None:
        self.site = site
        self.index = index
        self.spec = spec
        self.io, self.module, self._first_input, first_coil = site.lane_wiring(index)
        # Behind symlinks, as udev names adapters: tests can unplug and replug them.
        (site.workdir / "dev").mkdir(parents=True, exist_ok=True)
        self.reader = CardReaderSimulator(spec.card_format, link=site.workdir / "dev" / f"{spec.id}-reader")
        self.scale: WeighbridgeSimulator | None = (
            WeighbridgeSimulator(
                spec.weigh_format, interval_s=site.weigh_interval_s, link=site.workdir / "dev" / f"{spec.id}-scale"
            )
            if spec.weigh_format is not None
            else None
        )
        self.open_coil = first_coil
        self.close_coil = first_coil + 1
        self.barrier: Barrier = self.io.add_barrier(
            open_coil=self.open_coil,
            close_coil=self.close_coil,
            up_input=self.input_address("barrier_up"),
            down_input=self.input_address("barrier_down"),
            travel_s=site.travel_s,
        )
        self.camera: PlateCameraSimulator | None = None
        if spec.plate_camera:
            self.camera = PlateCameraSimulator(
                spec.id, miss_rate=site.camera_miss_rate, misread_rate=site.camera_misread_rate,
                rng=random.Random(f"{site.camera_seed}/{spec.id}") if site.camera_seed is not None else None,
            )
        self.current: Vehicle | None = None
        """The vehicle being driven through the lane now (by drive or force_through)."""
        self.follower: Vehicle | None = None
        """A tailgater on the lane behind :attr:`current`."""
        self.last_outcome: str | None = None
        self._entry = asyncio.Lock()  # held while one of our vehicles is on the arrival loop

    # ------------------------------------------------------------------ wiring

    @property
    def id(self) -> str:
        return self.spec.id

    def input_address(self, role: str) -> int:
        """Discrete input address of ``role`` (one of :data:`LANE_INPUTS`) on the lane's
        IO module (``io1`` unless the site wires lanes otherwise)."""
        if role not in LANE_INPUTS:
            raise ValueError(f"unknown input {role!r}; one of {LANE_INPUTS}")
        return self._first_input + LANE_INPUTS.index(role)

    def points(self) -> dict[str, str]:
        """The config's ``points`` for this lane (``io1:di:N`` / ``io1:coil:N``)."""
        points = {
            role: f"{self.module}:di:{self.input_address(role)}"
            for role in LANE_INPUTS
            if role != "exit_loop" or self.spec.exit_loop
        }
        points["barrier_open"] = f"{self.module}:coil:{self.open_coil}"
        points["barrier_close"] = f"{self.module}:coil:{self.close_coil}"
        return points

    @property
    def opens(self) -> int:
        """Rising edges seen on the open coil (lifts commanded)."""
        return self.barrier.opens

    @property
    def closes(self) -> int:
        """Rising edges seen on the close coil (lowerings commanded)."""
        return self.barrier.closes

    # ------------------------------------------------------------------ inputs

    def _loop_role(self, name: str) -> str:
        role = name if name.endswith("_loop") else f"{name}_loop"
        if role not in ("arrival_loop", "safety_loop", "exit_loop"):
            raise ValueError(f"unknown loop {name!r}; one of arrival, safety, exit")
        if role == "exit_loop" and not self.spec.exit_loop:
            raise ValueError(f"lane {self.id} has no exit loop")
        return role

    def set_loop(self, name: LoopName | str, occupied: bool) -> None:
        """Occupy (True) or free a loop: ``arrival``, ``safety`` or ``exit``."""
        self.io.set_input(self.input_address(self._loop_role(name)), occupied)

    def loop(self, name: LoopName | str) -> bool:
        """Whether a loop (``arrival``, ``safety``, ``exit``) is occupied."""
        return self.io.input(self.input_address(self._loop_role(name)))

    async def press(self, button: ButtonName | str, hold_s: float = PRESS_S) -> None:
        """Press a panel button (``manual_lift`` or ``emergency``) and release it.

        ``hold_s`` is not divided by the site's speed, and never shorter than the
        site's :attr:`~SimulatedSite.min_dwell_s`: a poller must see the press.
        """
        role = button if button.endswith("_button") else f"{button}_button"
        if role not in ("manual_lift_button", "emergency_button"):
            raise ValueError(f"unknown button {button!r}; one of manual_lift, emergency")
        address = self.input_address(role)
        self.io.set_input(address, True)
        try:
            await asyncio.sleep(max(hold_s, self.site.min_dwell_s))
        finally:
            self.io.set_input(address, False)

    def weigh(self, kg: float, *, moving: bool = False) -> None:
        """Show ``kg`` on this lane's indicator (whole kilograms); no-op without one.

        ``moving`` sets the motion flag where the format has one (toledo-continuous).
        """
        if self.scale is not None:
            self.scale.set_weight(round(kg), motion=moving)

    def arrive(self, vehicle: Vehicle) -> None:
        """``vehicle`` drives onto the arrival loop (and under the plate camera, if any)."""
        self.set_loop("arrival", True)
        if self.camera is not None:
            self.camera.capture(vehicle.plate)

    def clear(self) -> None:
        """Take every vehicle off the lane at once: loops free, scale at 0 kg."""
        for role in ("arrival_loop", "safety_loop", "exit_loop"):
            self.io.set_input(self.input_address(role), False)
        self.weigh(0)
        self.current = self.follower = None

    # ------------------------------------------------------------------ vehicles

    async def drive(
        self,
        vehicle: Vehicle,
        *,
        wait_for_lift_s: float = 8.0,
        tailgate: Vehicle | None = None,
    ) -> str:
        """Drive ``vehicle`` up to the barrier and through it if the boom goes up.

        Waits for the arrival loop to be free of the previous vehicle (and, up to
        8 s, for the previous vehicle's boom to come down), pulls onto the arrival loop
        and the weighbridge (three unsettled readings, then ``gross_kg`` steady), shows
        the card if it has one, then waits up to ``wait_for_lift_s`` for the boom to be
        fully up. Returns:

        - ``"passed"``: it drove through (safety=1, arrival=0, scale 0, exit=1,
          safety=0, exit=0; no exit steps on a lane without an exit loop);
        - ``"backed_out"``: the boom never came up; it reversed off (arrival=0, scale 0);
        - with ``tailgate``, ``"passed+tailgater"``: a cardless second vehicle followed
          bumper to bumper under the same lift (onto the arrival loop as the first left
          it, under the boom as soon as the first left the safety loop); or ``"passed"``
          if the boom was already fully down by then, so the tailgater backed off.
        """
        self._check_vehicle(vehicle)
        if tailgate is not None:
            self._check_vehicle(tailgate)
        async with self._on_arrival() as leave_arrival:
            await self._until(lambda: not self.loop("arrival"))
            await self._barrier_cleared()
            self.current = vehicle
            try:
                self.arrive(vehicle)
                await self._pause(APPROACH_S)
                await self._roll_onto_scale(vehicle)
                if vehicle.card is not None:
                    await self._pause(CARD_S)
                    self.reader.present(vehicle.card)
                if not await self._wait_for_lift(wait_for_lift_s):
                    await self._back_out()
                    leave_arrival()
                    return self._done("backed_out")
                if tailgate is None:
                    await self._drive_through(leave_arrival)
                    return self._done("passed")
                return self._done(await self._drive_through_with(tailgate, leave_arrival))
            finally:
                self.current = self.follower = None

    async def force_through(self, vehicle: Vehicle) -> str:
        """Drive ``vehicle`` straight through, whatever the boom does: a forced passage.

        arrival=1 (and onto the scale), safety=1, arrival=0, scale 0, exit=1, safety=0,
        exit=0, at a rush. Returns ``"forced"``.
        """
        self._check_vehicle(vehicle)
        async with self._on_arrival() as leave_arrival:
            await self._until(lambda: not self.loop("arrival"))
            self.current = vehicle
            try:
                self.arrive(vehicle)
                self.weigh(_unsettled(vehicle.gross_kg, 0.6), moving=True)
                await self._pause(RUSH_S)
                self.set_loop("safety", True)
                await self._pause(RUSH_S)
                self.set_loop("arrival", False)
                leave_arrival()
                self.weigh(0)
                await self._pause(RUSH_S)
                if self.spec.exit_loop:
                    self.set_loop("exit", True)
                    await self._pause(RUSH_S)
                self.set_loop("safety", False)
                if self.spec.exit_loop:
                    await self._pause(RUSH_S)
                    self.set_loop("exit", False)
                return self._done("forced")
            finally:
                self.current = None

    # ------------------------------------------------------------------ driving steps

    @contextlib.asynccontextmanager
    async def _on_arrival(self):  # type: ignore[no-untyped-def]
        """Hold the lane's entry until our vehicle(s) have left the arrival loop."""
        await self._entry.acquire()
        held = True

        def leave() -> None:
            nonlocal held
            if held:
                held = False
                self._entry.release()

        try:
            yield leave
        finally:
            leave()

    async def _roll_onto_scale(self, vehicle: Vehicle) -> None:
        if self.scale is None or vehicle.gross_kg <= 0:
            return
        floor = max(self.site.min_dwell_s, 2 * self.site.weigh_interval_s)
        for fraction in (0.38, 0.81, 1.018):
            self.weigh(_unsettled(vehicle.gross_kg, fraction), moving=True)
            await self._pause(WEIGH_STEP_S, floor)
        self.weigh(vehicle.gross_kg)

    async def _wait_for_lift(self, wait_s: float) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while loop.time() < deadline:
            if self.barrier.position == "up":
                return True
            await asyncio.sleep(0.01)
        # Still rising at the deadline: a driver waits for it to finish.
        if self.barrier.position == "moving_up":
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.barrier.travel_s * 1.5 + 0.5):
                    await self._until(lambda: self.barrier.position != "moving_up")
        return self.barrier.position == "up"

    async def _barrier_cleared(self) -> None:
        """A driver does not pull up under a boom still raised for the vehicle before."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CLEAR_BARRIER_WAIT_S):
                await self._until(lambda: self.barrier.position not in ("up", "moving_up"))

    async def _back_out(self) -> None:
        await self._pause(BACK_OUT_S)
        self.set_loop("arrival", False)
        await self._pause(BACK_OUT_S)
        self.weigh(0)

    async def _drive_through(self, leave_arrival: Callable[[], None]) -> None:
        self.set_loop("safety", True)
        await self._pause(STEP_S)
        self.set_loop("arrival", False)
        leave_arrival()
        await self._pause(STEP_S)
        self.weigh(0)
        await self._pause(STEP_S)
        if self.spec.exit_loop:
            self.set_loop("exit", True)
            await self._pause(STEP_S)
        self.set_loop("safety", False)
        if self.spec.exit_loop:
            await self._pause(STEP_S)
            self.set_loop("exit", False)

    async def _drive_through_with(
        self, tailgater: Vehicle, leave_arrival: Callable[[], None]
    ) -> str:
        tight = self.site.min_dwell_s  # bumper to bumper: as close as a poller can tell apart
        # The first vehicle moves under the boom; the second closes up behind it.
        self.set_loop("safety", True)
        await self._pause(STEP_S)
        self.set_loop("arrival", False)
        await asyncio.sleep(tight)
        self.follower = tailgater
        self.arrive(tailgater)
        self.weigh(_unsettled(tailgater.gross_kg, 0.55), moving=True)
        await self._pause(STEP_S)
        self.weigh(_unsettled(tailgater.gross_kg, 1.02), moving=True)
        if self.spec.exit_loop:
            self.set_loop("exit", True)
            await self._pause(STEP_S)
        self.set_loop("safety", False)  # the first has left the boom...
        await asyncio.sleep(tight)
        if self.barrier.position == "down":
            # ...and the boom is already down in front of the second: it backs off.
            if self.spec.exit_loop:
                self.set_loop("exit", False)
            await self._back_out()
            leave_arrival()
            return "passed"
        self.set_loop("safety", True)  # ...and the second is under it before it closes
        await self._pause(STEP_S)
        if self.spec.exit_loop:
            self.set_loop("exit", False)  # the first is gone
            await self._pause(STEP_S)
        self.set_loop("arrival", False)
        leave_arrival()
        await self._pause(STEP_S)
        self.weigh(0)
        await self._pause(STEP_S)
        if self.spec.exit_loop:
            self.set_loop("exit", True)
            await self._pause(STEP_S)
        self.set_loop("safety", False)
        if self.spec.exit_loop:
            await self._pause(STEP_S)
            self.set_loop("exit", False)
        return "passed+tailgater"

    # ------------------------------------------------------------------ helpers

    def _done(self, outcome: str) -> str:
        self.last_outcome = outcome
        return outcome

    def _check_vehicle(self, vehicle: Vehicle) -> None:
        if self.scale is not None and vehicle.gross_kg > 999_999:
            raise ValueError(f"{vehicle.plate}: {vehicle.gross_kg} kg does not fit the indicator")

    async def _pause(self, base_s: float, floor_s: float | None = None) -> None:
        floor = self.site.min_dwell_s if floor_s is None else floor_s
        await asyncio.sleep(max(base_s / self.site.speed, floor))

    @staticmethod
    async def _until(predicate: Callable[[], bool], step_s: float = 0.01) -> None:
        while not predicate():
            await asyncio.sleep(step_s)


def _unsettled(gross_kg: float, fraction: float) -> int:
    """A reading while the vehicle rolls: a fraction of its weight, in 10 kg steps,
    never equal to the settled weight."""
    reading = int(round(gross_kg * fraction, -1))
    if reading == round(gross_kg):
        reading += 20
    return max(reading, 0)


# --------------------------------------------------------------------------------------
# The site


def free_tcp_port(host: str = "127.0.0.1") -> int:
    """A TCP port free right now on ``host`` (for ``local_api.listen``; racy, as always)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _q(value: str) -> str:
    """A YAML double-quoted scalar (JSON strings are valid YAML)."""
    return json.dumps(value, ensure_ascii=False)


class SimulatedSite:
    """Every device of a checkpoint site, and one release authority, on this machine.

    ``io`` is the one IO module (:class:`IoModuleSimulator`, ``io1``), ``authority`` the
    ``customs`` :class:`HttpAuthoritySimulator` (fleet cards scripted per :data:`SCRIPT`
    by :meth:`start`), ``lanes`` the :class:`SimLane` of each spec, in order.
    """

    def __init__(
        self,
        workdir: Path,
        lanes: list[LaneSpec],
        travel_s: float = 1.4,
        poll_ms: int = 50,
        *,
        speed: float = 1.0,
        weigh_interval_s: float = 0.1,
        camera_miss_rate: float = 0.05,
        camera_misread_rate: float = 0.03,
        camera_seed: int | str | None = None,
    ) -> None:
        if not lanes:
            raise ValueError("a site needs at least one lane")
        ids = [spec.id.casefold() for spec in lanes]
        if len(set(ids)) != len(ids):
            raise ValueError("lane ids must be unique")
        if not speed > 0 or not weigh_interval_s > 0 or poll_ms <= 0:
            raise ValueError("speed, weigh_interval_s and poll_ms must be positive")
        self.workdir = Path(workdir)
        self.specs = list(lanes)
        self.travel_s = travel_s
        self.poll_ms = poll_ms
        self.speed = speed
        """Driver pauses are divided by this (tests: 4-10; the demo: 1)."""
        self.weigh_interval_s = weigh_interval_s
        self.min_dwell_s = max(0.05, 2.5 * poll_ms / 1000)
        """Shortest time any loop state is held, so a poller every poll_ms sees it."""
        self.camera_miss_rate = camera_miss_rate
        self.camera_misread_rate = camera_misread_rate
        """Plate cameras' share of vehicles not read at all, and misread by one character."""
        self.camera_seed = camera_seed
        self.wait_for_lift_s = 8.0
        """How long run_traffic's vehicles wait at the boom before backing out."""
        self.io = IoModuleSimulator(
            "127.0.0.1", 0, unit=1,
            inputs=INPUTS_PER_LANE * len(lanes), coils=COILS_PER_LANE * len(lanes),
        )
        self.authority = HttpAuthoritySimulator("127.0.0.1", 0)
        self.lanes: list[SimLane] = [SimLane(self, i, spec) for i, spec in enumerate(lanes)]
        self.trips: collections.deque[Trip] = collections.deque(maxlen=500)
        """The latest run_traffic trips, oldest first (finished and under way)."""
        self._trip_tasks: set[asyncio.Task[None]] = set()
        self._state: Literal["new", "started", "stopped"] = "new"

    def lane_wiring(self, index: int) -> tuple[SimulatedUnit, str, int, int]:
        """Where lane ``index`` is wired: its IO module, that module's name in the config,
        and the lane's first discrete input and first coil on it. Here every lane is on
        ``io1``, :data:`INPUTS_PER_LANE` inputs and :data:`COILS_PER_LANE` coils each."""
        return self.io, IO_MODULE_NAME, INPUTS_PER_LANE * index, COILS_PER_LANE * index

    def io_modules(self) -> dict[str, SimulatedUnit]:
        """Every IO module of the site by its config name (each serving on its own port)."""
        return {IO_MODULE_NAME: self.io}

    # ------------------------------------------------------------------ lifecycle

    @property
    def running(self) -> bool:
        return self._state == "started"

    async def start(self) -> None:
        """Start the IO module, the authority, and every reader and indicator (0 kg)."""
        if self._state != "new":
            raise RuntimeError("a SimulatedSite starts once; make a new one")
        self._state = "started"
        try:
            self.workdir.mkdir(parents=True, exist_ok=True)
            for module in self.io_modules().values():
                await module.start()  # type: ignore[attr-defined]
            await self.authority.start()
            for lane in self.lanes:
                await lane.reader.start()
                if lane.scale is not None:
                    await lane.scale.start()
        except BaseException:
            await self.stop()
            raise
        self.script_fleet()

    def script_fleet(self) -> None:
        """Script every :data:`FLEET` card on the authority per :data:`SCRIPT`."""
        for vehicle in FLEET:
            assert vehicle.card is not None
            self.authority.script(
                vehicle.card,
                SCRIPT[vehicle.card],
                form_id=FORM_IDS[vehicle.card],
                declared_weight_kg=float(round(vehicle.gross_kg, -1)),
            )

    async def stop(self) -> None:
        """Stop traffic and every simulator (idempotent)."""
        if self._state == "stopped":
            return
        self._state = "stopped"
        await self._cancel_trips()
        for lane in self.lanes:
            if lane.camera is not None:
                await lane.camera.close()
            if lane.scale is not None:
                await lane.scale.stop()
            await lane.reader.stop()
        await self.authority.stop()
        for module in self.io_modules().values():
            await module.stop()  # type: ignore[attr-defined]

    async def __aenter__(self) -> SimulatedSite:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def lane(self, lane_id: str) -> SimLane:
        for lane in self.lanes:
            if lane.id == lane_id:
                return lane
        raise KeyError(lane_id)

    # ------------------------------------------------------------------ config

    def config_yaml(
        self,
        journal_path: str = "gatectl.db",
        api_listen: str = "127.0.0.1:8470",
        token: str | None = "demo-token",
        *,
        mqtt: str | None = None,
        trust: dict[str, list[str]] | None = None,
        users: Mapping[str, tuple[str, str]] | None = None,
    ) -> str:
        """The gatectl site YAML (CONTRACT section 1) for this site, once started.

        ``journal_path`` relative paths are relative to the config file. ``api_listen``
        needs a real port (the config refuses port 0; see :func:`free_tcp_port`).
        ``token`` None leaves the API without one. Optional extras: ``mqtt`` as
        ``"host:port"`` (client id ``demo-lanepc``), ``trust`` as ``{"customs": [b64...],
        "park": [...]}``, ``users`` as ``{role: (name, token)}`` (the local API's users,
        written with the SHA-256 of each token; :data:`DEMO_USERS` has one of each role).

        The lanes' plate cameras (``LaneSpec.plate_camera``) are pointed at
        ``http://{api_listen}`` with the ``camera`` user's token (the full ``token`` if
        ``users`` names no camera): they post to the daemon this config is for.
        """
        if self._state != "started":
            raise RuntimeError("start the site first: the config names its ports")
        out: list[str] = [
            "# gatectl site config for simulators/site.py: every device is a simulator here.",
            "site:",
            f"  id: {SITE_ID}",
            f"  name: {_q(SITE_NAME)}",
            "  timezone: Asia/Shanghai",
            "",
            "journal:",
            f"  path: {_q(journal_path)}",
            "",
            "local_api:",
            f"  listen: {_q(api_listen)}",
        ]
        if token is not None:
            out.append(f"  token: {_q(token)}")
        if users:
            out.append("  users:")
            out += [f"    - {{name: {_q(name)}, role: {role}, token_sha256: {_token_sha256(secret)}}}"
                    for role, (name, secret) in users.items()]
        camera_token = users["camera"][1] if users and "camera" in users else token
        for lane in self.lanes:
            if lane.camera is not None and camera_token is not None:
                lane.camera.connect(f"http://{api_listen}", camera_token)
        if mqtt is not None:
            host, _, port = mqtt.rpartition(":")
            out += [
                "",
                "mqtt:",
                f"  host: {_q(host)}",
                f"  port: {int(port)}",
                f"  topic_prefix: {_q('gatectl/' + SITE_ID)}",
                "  client_id: demo-lanepc",
            ]
        if trust:
            out += ["", "trust:"]
            for role, keys in trust.items():
                out.append(f"  {role}: [{', '.join(_q(k) for k in keys)}]")
        out += [
            "",
            "authorities:",
            f"  {AUTHORITY_NAME}:",
            "    protocol: http-json",
            f"    url: {_q(self.authority.url)}",
            "    timeout_ms: 3000",
            "",
            "io_modules:",
        ]
        for name, module in self.io_modules().items():
            out += [
                f"  {name}:",
                "    protocol: modbus-tcp",
                f"    host: {_q(module.host)}",  # type: ignore[attr-defined]
                f"    port: {module.port}",  # type: ignore[attr-defined]
                f"    unit: {module.unit}",
                f"    poll_ms: {self.poll_ms}",
            ]
        out += [
            "",
            "administrative_vehicles:",
        ]
        out += [
            f"  - {{card: {_q(r.card)}, plate: {_q(r.plate)}, curb_weight_kg: {r.curb_weight_kg:g}}}"
            for r in REGISTERED_VEHICLES
        ]
        out += ["", "staff:"]
        out += [f"  - {{card: {_q(s.card)}, name: {_q(s.name)}}}" for s in STAFF]
        out += ["", "lanes:"]
        for lane in self.lanes:
            spec = lane.spec
            out += [
                f"  - id: {_q(spec.id)}",
                f"    name: {_q(spec.name)}",
                f"    kind: {spec.kind}",
                f"    direction: {spec.direction}",
                f"    channel_no: {_q(spec.channel_no)}",
            ]
            if spec.kind in GOODS_KINDS:
                out.append(f"    authority: {AUTHORITY_NAME}")
            if spec.plate_camera:
                out.append("    plate_camera: {max_age_ms: 30000}")
            out += [
                "    open_hours: always",
                "    card_reader:",
                f"      port: {_q(lane.reader.port)}",
                "      baudrate: 9600",
                f"      format: {spec.card_format}",
            ]
            if lane.scale is not None:
                out += [
                    "    weighbridge:",
                    f"      port: {_q(lane.scale.port)}",
                    "      baudrate: 9600",
                    f"      format: {spec.weigh_format}",
                    "      stable_samples: 5",
                    "      min_vehicle_kg: 500" if spec.kind != "personnel" else "      min_vehicle_kg: 30",
                ]
            elif spec.kind == "administrative":
                # No weighbridge on this lane: say so, or the whitelist's curb weights are refused.
                out.append("    weighs: false")
            out.append("    points:")
            out += [f"      {role}: {point}" for role, point in lane.points().items()]
            out += [
                "    barrier:",
                "      pulse_ms: 300",
                "      travel_timeout_ms: 6000",
                "      card_wait_ms: 60000",
            ]
        return "\n".join(out) + "\n"

    def write_config(
        self,
        path: str | Path | None = None,
        journal_path: str = "gatectl.db",
        api_listen: str = "127.0.0.1:8470",
        token: str | None = "demo-token",
        **extras: object,
    ) -> Path:
        """Write :meth:`config_yaml` to ``path`` (default ``workdir/site.yaml``); return it."""
        target = Path(path) if path is not None else self.workdir / "site.yaml"
        target.parent.mkdir(parents=True, exist_ok=True)
        text = self.config_yaml(journal_path, api_listen, token, **extras)  # type: ignore[arg-type]
        target.write_text(text, encoding="utf-8")
        return target

    # ------------------------------------------------------------------ traffic

    async def run_traffic(self, stop: asyncio.Event, rng: random.Random) -> None:
        """Send vehicles through the lanes until ``stop`` is set (for the demo).

        Picks an idle lane at random, plans a trip (:func:`plan_trip`: mostly fleet
        lorries scripted to release, some hold/inspect/deny, now and then a tailgater
        behind a released lorry, rarely a forced passage; registered cars on
        administrative lanes, staff on personnel lanes), starts it, waits 2-6 s (divided
        by :attr:`speed`) and repeats; lanes run side by side. Each trip is appended to
        :attr:`trips`. When ``stop`` is set, trips under way are abandoned and their
        lanes cleared.
        """
        busy: set[str] = set()
        try:
            while not stop.is_set():
                idle = [lane for lane in self.lanes if lane.id not in busy]
                if idle:
                    lane = rng.choice(idle)
                    trip = plan_trip(lane.spec, rng)
                    busy.add(lane.id)
                    task = asyncio.create_task(self._play(lane, trip), name=f"trip {lane.id}")
                    self._trip_tasks.add(task)
                    task.add_done_callback(self._trip_tasks.discard)
                    task.add_done_callback(lambda _t, lane_id=lane.id: busy.discard(lane_id))
                    gap = rng.uniform(*TRAFFIC_GAP_S) / self.speed
                else:
                    gap = 0.1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), gap)
        finally:
            await self._cancel_trips()

    async def _play(self, lane: SimLane, trip: Trip) -> None:
        trip.started_at = time.time()
        self.trips.append(trip)
        try:
            if trip.forced:
                trip.outcome = await lane.force_through(trip.vehicle)
            else:
                trip.outcome = await lane.drive(
                    trip.vehicle, wait_for_lift_s=self.wait_for_lift_s, tailgate=trip.tailgater
                )
        except asyncio.CancelledError:
            trip.outcome = "abandoned"
            raise
        except Exception as exc:  # a vanished pty, a stopped module: log, keep the demo going
            log.warning("trip on %s failed: %r", lane.id, exc)
            trip.outcome = f"error: {exc}"
        finally:
            trip.ended_at = time.time()

    async def _cancel_trips(self) -> None:
        tasks = list(self._trip_tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
            for lane in self.lanes:
                lane.clear()
