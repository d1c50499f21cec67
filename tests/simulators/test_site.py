"""The simulated site, with the daemon's part played by hand over the real wire.

The daemon does not exist yet, so :class:`HandDaemon` plays it for one lane: it decodes the
card reader's and the indicator's frames off their ptys, polls the IO module over Modbus
TCP, pulses the open coil for a released card on an occupied arrival loop with a stable
weight, and the close coil once the vehicle has cleared. What the vehicles do is observed
the way the daemon will observe it: the loop changes it polls, in order. No durations are
asserted.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from gatectl.service import cancel_all
from pymodbus.client import AsyncModbusTcpClient

from drivers.codecs.card import card_codec
from drivers.codecs.weight import StabilityTracker, weight_codec
from simulators.site import (
    ADMIN_TRAFFIC,
    FLEET,
    INTRUDERS,
    LANE_INPUTS,
    SCRIPT,
    LaneSpec,
    SimLane,
    SimulatedSite,
    Vehicle,
    expected_decision,
    plan_trip,
)

FAST = {"speed": 10.0, "travel_s": 0.1, "poll_ms": 20, "weigh_interval_s": 0.02}
WAIT_S = 1.0

BONDED = LaneSpec("B1-IN", "保税货物进区1号", "bonded", "in", "K001")
ADMIN = LaneSpec(
    "A1-OUT", "行政车辆出区", "administrative", "out", "K002",
    card_format="ascii-line", weigh_format=None, exit_loop=False,
)
RELEASED = next(v for v in FLEET if SCRIPT[v.card] == "release")  # type: ignore[index]
HELD = next(v for v in FLEET if SCRIPT[v.card] == "hold")  # type: ignore[index]
LOOPS = ("arrival_loop", "safety_loop", "exit_loop")


async def until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.005)


class HandDaemon:
    """The daemon's part for one lane, by hand, over the real ptys and Modbus TCP."""

    def __init__(self, site: SimulatedSite, lane: SimLane, release: set[str]) -> None:
        self.site, self.lane, self.release = site, lane, release
        self.events: list[tuple[str, bool]] = []
        """Input changes as polled, in order: (role, value)."""
        self.cards: list[str] = []
        self.weights: list[float] = []
        self.lifts = 0
        self._card_codec = card_codec(lane.spec.card_format)
        self._weight_codec = weight_codec(lane.spec.weigh_format) if lane.scale else None
        self._stability = StabilityTracker(5)
        self._stable_kg: float | None = None
        self._authorised: str | None = None
        self._lifted = False
        self._passing = False
        self._state: dict[str, bool] = {}
        self._fds: list[int] = []
        self._client = AsyncModbusTcpClient(
            "127.0.0.1", port=site.io.port, reconnect_delay=0, retries=0, timeout=2
        )
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> HandDaemon:
        loop = asyncio.get_running_loop()
        assert await self._client.connect()
        self._open(loop, self.lane.reader.port, self._on_card_bytes)
        if self.lane.scale is not None:
            self._open(loop, self.lane.scale.port, self._on_weight_bytes)
        self._task = asyncio.create_task(self._poll())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        # pymodbus's wait_for can swallow one cancellation (Python 3.11): cancel until done.
        await cancel_all([self._task])
        loop = asyncio.get_running_loop()
        for fd in self._fds:
            loop.remove_reader(fd)
            os.close(fd)
        self._client.close()

    def loops(self) -> list[tuple[str, bool]]:
        return [(role.removesuffix("_loop"), v) for role, v in self.events if role in LOOPS]

    def _open(self, loop: asyncio.AbstractEventLoop, path: str, feed: Callable[[bytes], None]) -> None:
        fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        self._fds.append(fd)

        def readable() -> None:
            try:
                feed(os.read(fd, 4096))
            except BlockingIOError:
                pass

        loop.add_reader(fd, readable)

    def _on_card_bytes(self, data: bytes) -> None:
        self._card_codec.feed(data)
        for card in self._card_codec.frames():
            self.cards.append(card)
            if card in self.release:
                self._authorised = card

    def _on_weight_bytes(self, data: bytes) -> None:
        assert self._weight_codec is not None
        self._weight_codec.feed(data)
        for frame in self._weight_codec.frames():
            if not self.weights or self.weights[-1] != frame.kg:
                self.weights.append(frame.kg)
            stable = self._stability.update(frame)
            self._stable_kg = frame.kg if stable else None

    async def _pulse(self, coil: int) -> None:
        for value in (True, False):
            rr = await self._client.write_coil(coil, value, device_id=1)
            assert not rr.isError()
            await asyncio.sleep(0.03)

    async def _poll(self) -> None:
        base = 8 * self.lane.index
        while True:
            rr = await self._client.read_discrete_inputs(address=base, count=8, device_id=1)
            assert not rr.isError()
            now = dict(zip(LANE_INPUTS, rr.bits[:7]))
            for role, value in now.items():
                if self._state.get(role, False) != value:
                    self.events.append((role, value))
            self._state = now
            await self._decide(now)
            await asyncio.sleep(0.005)

    async def _decide(self, s: dict[str, bool]) -> None:
        weighed = self.lane.scale is None or (self._stable_kg or 0) >= 500
        if not self._lifted and self._authorised and s["arrival_loop"] and weighed:
            self._authorised = None
            self._lifted, self._passing = True, False
            self.lifts += 1
            await self._pulse(self.lane.open_coil)
        elif self._lifted:
            if s["safety_loop"]:
                self._passing = True
            elif self._passing and not s["exit_loop"]:
                self._lifted = False
                await self._pulse(self.lane.close_coil)


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[SimulatedSite]:
    s = SimulatedSite(tmp_path, [BONDED, ADMIN], **FAST)  # type: ignore[arg-type]
    await s.start()
    yield s
    await s.stop()


# ------------------------------------------------------------------------------ config


async def test_generated_config_validates_and_points_at_the_simulators(site: SimulatedSite) -> None:
    from gatectl.config import load_config

    path = site.write_config(api_listen="127.0.0.1:18470", token="demo-token")
    assert path == site.workdir / "site.yaml"
    config = load_config(path)

    assert config.site.id == "demo-site" and config.site.timezone == "Asia/Shanghai"
    assert config.journal.path == site.workdir / "gatectl.db"
    assert config.local_api.listen == "127.0.0.1:18470" and config.local_api.token == "demo-token"
    customs = config.authorities["customs"]
    assert customs.protocol == "http-json" and customs.timeout_ms == 3000
    assert str(customs.url).rstrip("/") == site.authority.url.rstrip("/")
    io1 = config.io_modules["io1"]
    assert (io1.port, io1.unit, io1.poll_ms) == (site.io.port, 1, site.poll_ms)

    bonded, admin = config.lane("B1-IN"), config.lane("A1-OUT")
    assert bonded.authority == "customs" and admin.authority is None
    assert bonded.card_reader.port == site.lane("B1-IN").reader.port
    assert bonded.weighbridge is not None
    assert bonded.weighbridge.port == site.lane("B1-IN").scale.port  # type: ignore[union-attr]
    assert (bonded.weighbridge.format, bonded.card_reader.format) == ("xk3190-tf0", "stx-hex-xor")
    assert admin.weighbridge is None and admin.card_reader.format == "ascii-line"
    assert [str(p) for _, p in bonded.points.items()] == [
        *(f"io1:di:{n}" for n in range(7)), "io1:coil:0", "io1:coil:1",
    ]
    assert admin.points.exit_loop is None
    assert str(admin.points.arrival_loop) == "io1:di:8" and str(admin.points.barrier_open) == "io1:coil:2"
    assert (bonded.barrier.pulse_ms, bonded.barrier.travel_timeout_ms, bonded.barrier.card_wait_ms) == (
        300, 6000, 60000,
    )
    # The whitelist covers the registered administrative traffic.
    registered = {v.card for v in config.administrative_vehicles}
    assert {v.card for v in ADMIN_TRAFFIC if expected_decision("administrative", v) == "release"} <= registered


async def test_config_without_token_and_with_mqtt_still_validates(site: SimulatedSite) -> None:
    from gatectl.config import load_config

    path = site.write_config(
        site.workdir / "other.yaml", journal_path="db/j.db", api_listen="127.0.0.1:18471",
        token=None, mqtt="127.0.0.1:1883",
    )
    config = load_config(path)
    assert config.local_api.token is None
    assert config.mqtt is not None and config.mqtt.port == 1883
    assert config.journal.path == site.workdir / "db" / "j.db"


async def test_config_needs_a_started_site(tmp_path: Path) -> None:
    s = SimulatedSite(tmp_path, [BONDED])
    with pytest.raises(RuntimeError):
        s.config_yaml()


def test_lane_specs_refuse_what_the_config_would() -> None:
    with pytest.raises(ValueError):
        LaneSpec("X", "x", "bonded", "in", "K9", weigh_format=None)  # goods lanes weigh
    with pytest.raises(ValueError):
        LaneSpec("X", "x", "airport", "in", "K9")
    with pytest.raises(ValueError):
        SimulatedSite(Path("."), [BONDED, BONDED])


# ------------------------------------------------------------------------------ devices


async def test_io_module_is_sized_and_wired_per_lane(site: SimulatedSite) -> None:
    b1, a1 = site.lane("B1-IN"), site.lane("A1-OUT")
    assert (b1.index, a1.index) == (0, 1)
    assert a1.input_address("barrier_down") == 12 and a1.close_coil == 3
    assert site.io.input(4) and site.io.input(12)  # both booms start down
    a1.set_loop("arrival", True)
    assert site.io.input(8) and a1.loop("arrival_loop") and not b1.loop("arrival")
    a1.set_loop("arrival", False)
    with pytest.raises(ValueError):
        a1.set_loop("exit", True)  # that lane has no exit loop
    with pytest.raises(KeyError):
        site.lane("nope")


async def test_press_holds_the_button_long_enough_to_poll(site: SimulatedSite) -> None:
    lane = site.lane("B1-IN")
    async with HandDaemon(site, lane, set()) as daemon:
        await lane.press("emergency")
        await asyncio.sleep(site.min_dwell_s)  # two presses, not one poll apart
        await lane.press("manual_lift_button")
        await until(lambda: ("manual_lift_button", False) in daemon.events)
    buttons = [e for e in daemon.events if e[0].endswith("_button")]
    assert buttons == [
        ("emergency_button", True), ("emergency_button", False),
        ("manual_lift_button", True), ("manual_lift_button", False),
    ]


async def test_scale_streams_zero_when_empty(site: SimulatedSite) -> None:
    lane = site.lane("B1-IN")
    async with HandDaemon(site, lane, set()) as daemon:
        await until(lambda: daemon.weights == [0.0])
    assert site.lane("A1-OUT").scale is None


# ------------------------------------------------------------------------------ vehicles


async def test_released_lorry_weighs_shows_its_card_and_drives_through_in_loop_order(
    site: SimulatedSite,
) -> None:
    lane = site.lane("B1-IN")
    async with HandDaemon(site, lane, {RELEASED.card}) as daemon:  # type: ignore[arg-type]
        outcome = await lane.drive(RELEASED, wait_for_lift_s=WAIT_S)
        await until(lambda: lane.barrier.position == "down")
    assert outcome == "passed" and lane.last_outcome == "passed"
    assert daemon.cards == [RELEASED.card]
    assert daemon.loops() == [
        ("arrival", True), ("safety", True), ("arrival", False),
        ("exit", True), ("safety", False), ("exit", False),
    ]
    # Three unsettled readings while it rolls on, then its weight, then empty again.
    assert daemon.weights[0] == 0
    assert daemon.weights[-2:] == [RELEASED.gross_kg, 0]
    rolling = daemon.weights[1:-2]
    assert len(rolling) == 3 and RELEASED.gross_kg not in rolling
    assert (lane.opens, lane.closes, daemon.lifts) == (1, 1, 1)
    assert lane.current is None


async def test_lane_without_exit_loop_or_scale_drives_through(site: SimulatedSite) -> None:
    lane = site.lane("A1-OUT")
    car = ADMIN_TRAFFIC[0]
    async with HandDaemon(site, lane, {car.card}) as daemon:  # type: ignore[arg-type]
        outcome = await lane.drive(car, wait_for_lift_s=WAIT_S)
        await until(lambda: lane.barrier.position == "down")
    assert outcome == "passed"
    assert daemon.cards == [car.card]
    assert daemon.loops() == [
        ("arrival", True), ("safety", True), ("arrival", False), ("safety", False),
    ]


async def test_vehicle_backs_out_when_the_boom_never_lifts(site: SimulatedSite) -> None:
    lane = site.lane("B1-IN")
    async with HandDaemon(site, lane, set()) as daemon:
        outcome = await lane.drive(HELD, wait_for_lift_s=WAIT_S)
        await until(lambda: daemon.weights[-1:] == [0.0])
    assert outcome == "backed_out"
    assert daemon.cards == [HELD.card]
    assert daemon.loops() == [("arrival", True), ("arrival", False)]
    assert lane.opens == 0 and lane.barrier.position == "down"
    assert HELD.gross_kg in daemon.weights


async def test_cardless_vehicle_shows_no_card_and_backs_out(site: SimulatedSite) -> None:
    lane = site.lane("B1-IN")
    async with HandDaemon(site, lane, set()) as daemon:
        outcome = await lane.drive(INTRUDERS[0], wait_for_lift_s=WAIT_S)
    assert outcome == "backed_out" and daemon.cards == []


async def test_tailgater_follows_under_the_same_lift(site: SimulatedSite) -> None:
    lane = site.lane("B1-IN")
    async with HandDaemon(site, lane, {RELEASED.card}) as daemon:  # type: ignore[arg-type]
        outcome = await lane.drive(RELEASED, wait_for_lift_s=WAIT_S, tailgate=INTRUDERS[1])
        await until(lambda: lane.barrier.position == "down")
    assert outcome == "passed+tailgater"
    assert daemon.cards == [RELEASED.card]  # the tailgater showed nothing
    assert daemon.lifts == 1 and lane.opens == 1
    assert daemon.loops() == [
        ("arrival", True), ("safety", True), ("arrival", False),  # first under the boom
        ("arrival", True),  # second closes up behind it
        ("exit", True), ("safety", False),  # first leaves the boom...
        ("safety", True),  # ...second under it at once
        ("exit", False), ("arrival", False), ("exit", True), ("safety", False), ("exit", False),
    ]
    assert daemon.weights[-1] == 0


async def test_forced_passage_goes_under_the_closed_boom(site: SimulatedSite) -> None:
    lane = site.lane("B1-IN")
    async with HandDaemon(site, lane, set()) as daemon:
        outcome = await lane.force_through(INTRUDERS[2])
        await until(lambda: ("exit_loop", False) in daemon.events)
    assert outcome == "forced"
    assert lane.opens == 0 and lane.barrier.position == "down"
    assert daemon.cards == []
    assert daemon.loops() == [
        ("arrival", True), ("safety", True), ("arrival", False),
        ("exit", True), ("safety", False), ("exit", False),
    ]


async def test_next_vehicle_waits_for_the_arrival_loop_to_clear(site: SimulatedSite) -> None:
    lane = site.lane("A1-OUT")
    first, second = ADMIN_TRAFFIC[0], ADMIN_TRAFFIC[1]
    async with HandDaemon(site, lane, {first.card, second.card}) as daemon:  # type: ignore[arg-type]
        outcomes = await asyncio.gather(
            lane.drive(first, wait_for_lift_s=WAIT_S), lane.drive(second, wait_for_lift_s=WAIT_S)
        )
        await until(lambda: lane.barrier.position == "down")
    assert outcomes == ["passed", "passed"]
    assert daemon.cards == [first.card, second.card]
    # One vehicle on the arrival loop at a time.
    assert daemon.loops() == 2 * [
        ("arrival", True), ("safety", True), ("arrival", False), ("safety", False),
    ]


# ------------------------------------------------------------------------------ traffic


def test_traffic_plan_mixes_decisions_tailgaters_and_forced_passages() -> None:
    rng = random.Random(7)
    trips = [plan_trip(BONDED, rng) for _ in range(600)]
    expected = {t.expected for t in trips}
    assert {"release", "hold", "inspect", "deny", "forced"} <= expected
    releases = sum(t.expected == "release" for t in trips)
    assert releases > len(trips) / 2
    assert any(t.tailgater is not None for t in trips)
    assert all(t.tailgater is None or t.expected == "release" for t in trips)
    assert all(t.forced == (t.expected == "forced") for t in trips)
    assert all(8000 <= t.vehicle.gross_kg <= 49000 for t in trips if not t.forced)
    admin = {plan_trip(ADMIN, rng).vehicle for _ in range(100)}
    assert admin == set(ADMIN_TRAFFIC)


async def test_authority_is_scripted_with_the_fleet(site: SimulatedSite) -> None:
    import aiohttp

    body = {
        "request_id": "r-1", "site_id": "demo-site", "lane_id": "B1-IN", "channel_no": "K001",
        "direction": "I", "lane_kind": "bonded", "card_no": HELD.card, "plate": None,
        "gross_weight_kg": HELD.gross_kg, "captured_at": "2026-11-27T09:15:02+08:00",
    }
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{site.authority.url}gate/v1/pass-requests", json=body) as resp:
            answer = await resp.json()
    assert answer["decision"] == "hold" == SCRIPT[HELD.card]  # type: ignore[index]


async def test_run_traffic_drives_trips_until_stopped_and_leaves_the_lanes_clear(
    site: SimulatedSite,
) -> None:
    site.wait_for_lift_s = WAIT_S
    release = {v.card for v in (*FLEET, *ADMIN_TRAFFIC) if v.card} - {
        v.card for v in FLEET if SCRIPT[v.card] != "release"  # type: ignore[index]
    }
    release -= {v.card for v in ADMIN_TRAFFIC if expected_decision("administrative", v) != "release"}
    b1, a1 = site.lane("B1-IN"), site.lane("A1-OUT")
    stop = asyncio.Event()
    async with HandDaemon(site, b1, release), HandDaemon(site, a1, release):
        traffic = asyncio.create_task(site.run_traffic(stop, random.Random(3)))
        await until(lambda: sum(t.outcome is not None for t in site.trips) >= 6, timeout=60)
        stop.set()
        await asyncio.wait_for(traffic, 10)
    finished = [t for t in site.trips if t.outcome not in (None, "abandoned")]
    assert {t.lane_id for t in finished} == {"B1-IN", "A1-OUT"}
    for trip in finished:
        if trip.forced:
            assert trip.outcome == "forced"
        elif trip.expected == "release":
            assert trip.outcome == ("passed+tailgater" if trip.tailgater else "passed")
        else:
            assert trip.outcome == "backed_out"
    for lane in (b1, a1):
        assert lane.current is None
        assert not any(lane.loop(name) for name in ("arrival", "safety"))
    assert b1.scale is not None and b1.scale.kg == 0


async def test_stop_is_idempotent_and_closes_everything(tmp_path: Path) -> None:
    s = SimulatedSite(tmp_path, [BONDED, ADMIN], **FAST)  # type: ignore[arg-type]
    async with s:
        lane = s.lane("B1-IN")
        assert s.running and lane.reader.running and lane.scale is not None and lane.scale.running
    assert not s.running and not lane.reader.running and not s.io.running and not s.authority.running
    await s.stop()
    with pytest.raises(RuntimeError):
        await s.start()


def test_vehicle_is_a_plain_value() -> None:
    assert Vehicle("3A00F1229B", "云A12345", 31250) == FLEET[0]
    assert Vehicle(None, "x", 1).kind == "truck"
