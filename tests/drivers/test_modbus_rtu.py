"""IoModules on a shared Modbus RTU bus, against the RTU line simulator over real ptys.

Requirement ids: S5 (an IO module that stops answering is a device fault and the lane
fails closed; here also: one dead unit must not take the others on its line with it)
and CONTRACT 2.3 (function 2 reads, function 5 writes, a pulse is on, pulse_ms, off; no
answer within 1 s is a device fault). STYLE.md 4: one lock per physical bus, a quiet
pause after each request on serial, a silent unit polled less often (home-assistant
#72495). No mocks: ``drivers.modbus_io`` ↔ pymodbus serial client ↔ pty ↔ relay ↔ pty ↔
pymodbus serial server. Waits are bounded; the only timing asserts are lower bounds that
come from sleeps the driver itself makes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

import pytest

from drivers.health import Health
from drivers.modbus_io import (
    SUSPECT_AFTER,
    BusRegistry,
    IoModule,
    ModbusRtuBus,
    rtu_bus_key,
    tcp_bus_key,
)
from simulators.io_module import RtuBusSimulator

TIMEOUT_S = 0.3  # short request timeout keeps the suite fast; one test uses the 1 s default
QUIET_MS = 5
SUSPECT_POLL_MS = 600


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait until ``predicate()`` holds; fail after ``timeout`` seconds."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.005)


class Recorder:
    """What one module reported, in order."""

    def __init__(self) -> None:
        self.inputs: list[tuple[dict[int, bool], bool]] = []
        self.health: list[tuple[Health, str]] = []

    def on_inputs(self, changed: dict[int, bool], snapshot: bool) -> None:
        self.inputs.append((dict(changed), snapshot))

    def on_health(self, health: Health, reason: str) -> None:
        self.health.append((health, reason))

    @property
    def snapshots(self) -> list[dict[int, bool]]:
        return [changed for changed, snapshot in self.inputs if snapshot]

    @property
    def healths(self) -> list[Health]:
        return [health for health, _ in self.health]


class Running:
    """An IoModule on a bus with its run() task, and what it reported."""

    def __init__(self, module: IoModule, recorder: Recorder) -> None:
        self.module = module
        self.rec = recorder
        self.task = asyncio.create_task(module.run())

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


def start_module(bus: ModbusRtuBus, unit: int, name: str | None = None, inputs: int = 16) -> Running:
    rec = Recorder()
    module = IoModule.on_bus(
        name or f"io{unit}",
        bus,
        unit,
        poll_ms=20,
        inputs=inputs,
        on_inputs=rec.on_inputs,
        on_health=rec.on_health,
        suspect_poll_ms=SUSPECT_POLL_MS,
    )
    return Running(module, rec)


@pytest.fixture
async def line() -> AsyncIterator[RtuBusSimulator]:
    sim = RtuBusSimulator(units=[1, 2], inputs=16, coils=16)
    await sim.start()
    yield sim
    await sim.close()


@pytest.fixture
async def bus(line: RtuBusSimulator) -> AsyncIterator[ModbusRtuBus]:
    b = ModbusRtuBus(line.port, 9600, "N", 1, request_timeout_s=TIMEOUT_S, quiet_ms=QUIET_MS, name="rs485-1")
    yield b
    b.close()


@pytest.fixture
async def pair(bus: ModbusRtuBus) -> AsyncIterator[tuple[Running, Running]]:
    """Units 1 and 2 on the one bus, both polling and OK."""
    one, two = start_module(bus, 1), start_module(bus, 2)
    try:
        await until(lambda: one.module.health is Health.OK and two.module.health is Health.OK)
        yield one, two
    finally:
        await one.stop()
        await two.stop()


async def test_rtu_first_poll_is_a_snapshot_then_only_changes(
    line: RtuBusSimulator, bus: ModbusRtuBus
) -> None:
    """CONTRACT 2.3 over RTU: function 2 polls give a snapshot, then only changes."""
    line[1].set_input(2, True)
    io = start_module(bus, 1)
    try:
        await until(lambda: io.rec.healths == [Health.OK])
        assert io.rec.inputs[0] == ({i: i == 2 for i in range(16)}, True)

        line[1].set_input(5, True)
        await until(lambda: len(io.rec.inputs) == 2)
        assert io.rec.inputs[1] == ({5: True}, False)

        line[1].set_input(2, False)
        line[1].set_input(5, False)
        await until(lambda: len(io.rec.inputs) == 3)
        assert io.rec.inputs[2] == ({2: False, 5: False}, False)
        assert {fc for _, kind, _, fc in line.traffic if kind == "request"} == {2}
    finally:
        await io.stop()


async def test_rtu_pulse_writes_on_then_off_and_the_barrier_follows(
    line: RtuBusSimulator, bus: ModbusRtuBus
) -> None:
    """CONTRACT 2.3: a pulse is function 5 on, pulse_ms, function 5 off."""
    barrier = line[1].add_barrier(open_coil=0, close_coil=1, up_input=3, down_input=4, travel_s=0.15)
    io = start_module(bus, 1)
    try:
        await until(lambda: io.module.health is Health.OK)
        assert io.rec.snapshots[0][3] is False and io.rec.snapshots[0][4] is True

        await io.module.pulse(0, 30)
        assert [(a, v) for _, a, v in line[1].coil_writes] == [(0, True), (0, False)]
        assert not line[1].coil(0)
        await until(lambda: ({3: True}, False) in io.rec.inputs)
        assert barrier.position == "up"
        changes = [changed for changed, snapshot in io.rec.inputs if not snapshot]
        assert changes.index({4: False}) < changes.index({3: True})

        await io.module.pulse(1, 30)
        await until(lambda: ({4: True}, False) in io.rec.inputs)
        assert barrier.position == "down"
        assert (barrier.opens, barrier.closes) == (1, 1)
        assert line[2].coil_writes == []  # the other unit on the line saw none of it
    finally:
        await io.stop()


async def test_two_units_share_one_bus_and_requests_never_interleave(
    line: RtuBusSimulator, bus: ModbusRtuBus, pair: tuple[Running, Running]
) -> None:
    """STYLE.md 4: one lock per bus; every request and its quiet pause run under it."""
    one, two = pair
    for unit in line.units.values():
        unit.latency_s = 0.01  # slow devices: an interleaving master would show at once
    start = len(line.traffic)

    pulses = [one.module.pulse(c, 15) for c in (0, 2, 4)] + [two.module.pulse(c, 15) for c in (1, 3, 5)]
    await asyncio.gather(*pulses)
    line[1].set_input(7, True)
    line[2].set_input(9, True)
    await until(lambda: ({7: True}, False) in one.rec.inputs and ({9: True}, False) in two.rec.inputs)

    assert line.overlaps == 0
    traffic = line.traffic[start:]
    kinds = [kind for _, kind, _, _ in traffic]
    assert "ignored" not in kinds
    # Strictly request, its answer, request, its answer ...: one frame on the line at a time.
    for (_, k1, u1, f1), (_, k2, u2, f2) in zip(traffic[0::2], traffic[1::2]):
        assert (k1, k2) == ("request", "answer") and u1 == u2 and f1 == f2
    # After every answer the master kept quiet for quiet_ms before the next request.
    gaps = [
        t2 - t1
        for (t1, k1, _, _), (t2, k2, _, _) in zip(traffic, traffic[1:])
        if (k1, k2) == ("answer", "request")
    ]
    assert gaps and min(gaps) >= QUIET_MS / 1000 * 0.9
    # Each unit got its own coils, each pulse on then off, in order.
    for unit, coils in ((1, (0, 2, 4)), (2, (1, 3, 5))):
        writes = [(a, v) for _, a, v in line[unit].coil_writes]
        assert sorted({a for a, _ in writes}) == list(coils)
        for c in coils:
            assert [v for a, v in writes if a == c] == [True, False]
        assert not any(line[unit].coil(c) for c in coils)
    assert one.rec.healths == [Health.OK] and two.rec.healths == [Health.OK]
    assert bus.counters["connects"] == 1  # one port, opened once, for both modules


async def test_S5_one_silent_unit_is_faulty_while_the_other_keeps_reporting_and_it_recovers(
    line: RtuBusSimulator, bus: ModbusRtuBus, pair: tuple[Running, Running],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """S5 / CONTRACT 2.3: a unit that stops answering is faulty; the rest of its line is
    not (home-assistant#72495). After SUSPECT_AFTER misses it is polled only every
    suspect_poll_ms; its first answer brings it back with a fresh snapshot."""
    caplog.set_level(logging.DEBUG, logger="drivers.modbus_io")
    one, two = pair
    line[1].silent = True
    await until(lambda: one.module.health is Health.FAULTY)
    assert "unit 1 read discrete inputs 0-15: no answer within 0.3 s" in one.rec.health[-1][1]

    await until(lambda: one.module.suspect)
    suspect_since = len(line.requests_for(1))
    # The other unit's loop detectors stay live: every change is reported, promptly enough
    # for the bounded waits, while unit 1 keeps timing out.
    for i in range(6):
        line[2].set_input(i, True)
        await until(lambda i=i: ({i: True}, False) in two.rec.inputs)
    await until(lambda: len(line.requests_for(1)) >= suspect_since + 2)
    assert two.rec.healths == [Health.OK]
    assert one.rec.healths == [Health.OK, Health.FAULTY]  # one report per outage
    # Suspect: polled at most every 0.8 x suspect_poll_ms (the jitter's lower bound).
    asked = line.requests_for(1)[suspect_since - 1 :]
    assert min(b - a for a, b in zip(asked, asked[1:])) >= SUSPECT_POLL_MS / 1000 * 0.8 * 0.95
    assert bus.connected  # one silent unit never drops the line for the others
    assert bus.counters["drops"] == 0

    line[1].set_input(8, True)  # changed while it was silent
    line[1].silent = False
    await until(lambda: one.rec.healths == [Health.OK, Health.FAULTY, Health.OK])
    assert not one.module.suspect
    assert one.rec.snapshots[-1] == {i: i == 8 for i in range(16)}
    # Back to the normal rate: many polls within what used to be one suspect period.
    polls = one.module.counters["polls"]
    await until(lambda: one.module.counters["polls"] >= polls + 5)

    ours = [r for r in caplog.records if r.name == "drivers.modbus_io"]
    errors = [r.getMessage() for r in ours if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "io module io1 unit 1 at " + line.port in errors[0]
    warnings = [r.getMessage() for r in ours if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and f"no answer to {SUSPECT_AFTER} requests in a row" in warnings[0]


async def test_S5_line_dead_makes_both_faulty_and_a_restart_brings_both_back_with_snapshots(
    line: RtuBusSimulator, pair: tuple[Running, Running]
) -> None:
    """S5: the whole line goes quiet (port still open): every module on it is faulty;
    when it answers again each comes back with a snapshot of what changed meanwhile."""
    one, two = pair
    await line.stop()
    await until(lambda: one.module.health is Health.FAULTY and two.module.health is Health.FAULTY)
    for rec, unit in ((one.rec, 1), (two.rec, 2)):
        assert f"unit {unit} read discrete inputs 0-15: no answer within 0.3 s" in rec.health[-1][1]

    line[1].set_input(3, True)
    line[2].set_input(11, True)
    await line.start()
    await until(lambda: one.rec.healths == [Health.OK, Health.FAULTY, Health.OK], timeout=8)
    await until(lambda: two.rec.healths == [Health.OK, Health.FAULTY, Health.OK], timeout=8)
    assert one.rec.snapshots[-1] == {i: i == 3 for i in range(16)}
    assert two.rec.snapshots[-1] == {i: i == 11 for i in range(16)}
    assert len(one.rec.snapshots) == len(two.rec.snapshots) == 2


async def test_S5_port_vanishes_both_faulty_and_replugging_recovers_both(
    line: RtuBusSimulator, bus: ModbusRtuBus, pair: tuple[Running, Running],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """S5: the USB adapter is pulled: the bus drops the port and every module on it is
    faulty; the bus, not the modules, reopens it once it is back."""
    caplog.set_level(logging.DEBUG, logger="drivers.modbus_io")
    one, two = pair
    line.unplug()
    await until(lambda: one.module.health is Health.FAULTY and two.module.health is Health.FAULTY)
    assert not bus.connected
    failures = bus.counters["connect_failures"]
    await until(lambda: bus.counters["connect_failures"] >= failures + 2)  # retried, with backoff
    assert "does not exist" in bus._closed_because

    line[2].set_input(6, True)
    line.replug()
    await until(lambda: one.rec.healths == [Health.OK, Health.FAULTY, Health.OK], timeout=8)
    await until(lambda: two.rec.healths == [Health.OK, Health.FAULTY, Health.OK], timeout=8)
    assert two.rec.snapshots[-1] == {i: i == 6 for i in range(16)}
    assert bus.connected
    # The port was reopened by the bus for both: opened twice in all, not once per module.
    assert bus.counters["connects"] == 2
    bus_records = [r for r in caplog.records if r.name == "drivers.modbus_io.bus"]
    assert len([r for r in bus_records if r.levelno == logging.WARNING]) == 1  # one per outage
    assert "open again" in [r for r in bus_records if r.levelno == logging.INFO][-1].getMessage()


async def test_contract_2_3_rtu_no_answer_within_the_default_1_s_is_a_device_fault(
    line: RtuBusSimulator,
) -> None:
    """CONTRACT 2.3: no answer within 1 s (the bus default) is a device fault; a unit id
    nobody answers to on the line is silent, not an exception response."""
    bus = ModbusRtuBus(line.port)
    assert (bus.request_timeout_s, bus.quiet_s, bus.baudrate) == (1.0, 0.03, 9600)
    ghost, real = start_module(bus, 9), start_module(bus, 1)
    try:
        await until(lambda: ghost.module.health is Health.FAULTY)
        assert "unit 9 read discrete inputs 0-15: no answer within 1 s" in ghost.rec.health[0][1]
        assert ghost.rec.inputs == []
        await until(lambda: real.module.health is Health.OK)
        assert ("ignored" in {kind for _, kind, u, _ in line.traffic if u == 9})
    finally:
        await ghost.stop()
        await real.stop()
        bus.close()


async def test_a_bus_let_go_under_a_waiting_request_says_why(line: RtuBusSimulator, bus: ModbusRtuBus) -> None:
    """The daemon stopping while a poll waits for a unit's answer: the module's fault
    names the shutdown, not a lost connection (and the line is not counted as dropped)."""
    silent = start_module(bus, 3)  # no unit 3 on the line: its poll waits out the timeout
    try:
        await until(lambda: 3 in {u for _, kind, u, _ in line.traffic if kind == "ignored"})
        drops = bus.counters["drops"]
        bus.shutdown("daemon stopping")
        await until(lambda: silent.module.health is Health.FAULTY)
        assert "daemon stopping" in silent.rec.health[-1][1], silent.rec.health
        assert bus.counters["drops"] == drops
    finally:
        await silent.stop()


async def test_a_module_stopping_leaves_the_shared_bus_to_the_others(
    line: RtuBusSimulator, bus: ModbusRtuBus, pair: tuple[Running, Running]
) -> None:
    one, two = pair
    await one.stop()
    assert bus.connected
    line[2].set_input(0, True)
    await until(lambda: ({0: True}, False) in two.rec.inputs)
    assert two.rec.healths == [Health.OK]

    bus.shutdown("daemon stopping")  # the registry's close_all(): nothing reopens the port
    await until(lambda: two.module.health is Health.FAULTY)
    assert "daemon stopping" in two.rec.health[-1][1]
    connects = bus.counters["connects"]
    failures = two.module.counters["reconnects"]
    await until(lambda: two.module.counters["reconnects"] >= failures + 2)
    assert not bus.connected and bus.counters["connects"] == connects


async def test_registry_gives_one_bus_per_physical_line() -> None:
    registry = BusRegistry(request_timeout_s=0.5)
    a = registry.rtu("/dev/ttyUSB0", 19200, "E", 1)
    assert registry.rtu("/dev/ttyUSB0", 19200, "E", 1) is a
    assert a.key == rtu_bus_key("/dev/ttyUSB0") == ("rtu", "/dev/ttyUSB0")
    assert (a.request_timeout_s, a.quiet_s, a.settings) == (0.5, 0.03, (19200, "E", 1))
    with pytest.raises(ValueError, match="already open as 19200/E/1"):
        registry.rtu("/dev/ttyUSB0", 9600, "N", 1)

    t = registry.tcp("GW-1.local", 502)
    assert registry.tcp("gw-1.local", 502) is t
    assert t.key == tcp_bus_key("gw-1.local", 502) == ("tcp", "gw-1.local", 502)
    assert registry.tcp("gw-1.local", 503) is not t
    assert registry.rtu("/dev/ttyUSB1") is not a
    assert len(registry) == 4 and registry.get(a.key) is a

    module = IoModule.on_bus("io1", a, 3, 50, 8, lambda c, s: None, lambda h, r: None)
    assert module.bus is a and module.unit == 3
    registry.close_all()
    assert not any(bus.connected for bus in registry)


async def test_rtu_bus_rejects_bad_line_settings() -> None:
    with pytest.raises(ValueError, match="parity"):
        ModbusRtuBus("/dev/ttyUSB0", parity="X")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="stopbits"):
        ModbusRtuBus("/dev/ttyUSB0", stopbits=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="request_timeout_s"):
        ModbusRtuBus("/dev/ttyUSB0", request_timeout_s=0)
