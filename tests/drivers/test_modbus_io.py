"""IoModule against the IO module simulator, over real Modbus TCP on 127.0.0.1.

Requirement ids: S5 (an IO module that stops answering is a device fault, the lane
fails closed), S2 (a safety reverse, like every coil write, goes before the polls
waiting for a shared line) and CONTRACT 2.3 (function 2 reads, function 5 writes, a
pulse is on, pulse_ms, off; no answer within 1 s is a device fault).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

import pytest

from drivers import modbus_io
from drivers.health import Health
from drivers.modbus_io import BusRegistry, BusTurns, IoModule, IoModuleError, IoModuleExceptionResponse
from simulators.io_module import IoModuleSimulator

UNIT = 7
TIMEOUT_S = 0.3  # short request timeout keeps the suite fast; one test uses the 1 s default


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait until ``predicate()`` holds; fail after ``timeout`` seconds."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.005)


class Recorder:
    """What the driver reported, in order."""

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
    """An IoModule with its run() task, and what it reported."""

    def __init__(self, module: IoModule, recorder: Recorder) -> None:
        self.module = module
        self.rec = recorder
        self.task = asyncio.create_task(module.run())

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


def start_module(
    port: int, *, unit: int = UNIT, inputs: int = 16, request_timeout_s: float = TIMEOUT_S
) -> Running:
    rec = Recorder()
    module = IoModule(
        "io1",
        "127.0.0.1",
        port,
        unit,
        poll_ms=20,
        inputs=inputs,
        on_inputs=rec.on_inputs,
        on_health=rec.on_health,
        request_timeout_s=request_timeout_s,
    )
    return Running(module, rec)


@pytest.fixture
async def sim() -> AsyncIterator[IoModuleSimulator]:
    s = IoModuleSimulator(unit=UNIT, inputs=16, coils=16)
    await s.start()
    yield s
    await s.stop()


@pytest.fixture
async def io(sim: IoModuleSimulator) -> AsyncIterator[Running]:
    running = start_module(sim.port)
    await until(lambda: running.module.health is Health.OK)
    yield running
    await running.stop()


async def test_first_poll_is_a_snapshot_then_only_changed_inputs_are_reported(
    sim: IoModuleSimulator,
) -> None:
    sim.set_input(2, True)
    io = start_module(sim.port)
    try:
        await until(lambda: io.rec.healths == [Health.OK])
        assert io.rec.inputs[0] == ({i: i == 2 for i in range(16)}, True)

        sim.set_input(5, True)
        await until(lambda: len(io.rec.inputs) == 2)
        assert io.rec.inputs[1] == ({5: True}, False)

        sim.set_input(2, False)
        sim.set_input(5, False)
        await until(lambda: len(io.rec.inputs) == 3)
        assert io.rec.inputs[2] == ({2: False, 5: False}, False)
    finally:
        await io.stop()


async def test_nothing_is_reported_when_nothing_changed(io: Running) -> None:
    reports = len(io.rec.inputs)
    polls = io.module.counters["polls"]
    await until(lambda: io.module.counters["polls"] >= polls + 5)
    assert len(io.rec.inputs) == reports
    assert io.rec.healths == [Health.OK]


async def test_contract_2_3_pulse_writes_on_then_off_with_function_5(
    sim: IoModuleSimulator, io: Running
) -> None:
    await io.module.pulse(0, 50)
    assert [(address, value) for _, address, value in sim.coil_writes] == [(0, True), (0, False)]
    on_at, off_at = sim.coil_writes[0][0], sim.coil_writes[1][0]
    assert on_at < off_at
    assert not sim.coil(0)
    assert io.module.counters["writes"] == 2


async def test_barrier_limits_follow_a_pulse_through_the_driver(sim: IoModuleSimulator) -> None:
    barrier = sim.add_barrier(open_coil=0, close_coil=1, up_input=3, down_input=4, travel_s=0.15)
    io = start_module(sim.port)
    try:
        await until(lambda: io.module.health is Health.OK)
        assert io.rec.snapshots[0][3] is False and io.rec.snapshots[0][4] is True

        await io.module.pulse(0, 30)
        await until(lambda: ({3: True}, False) in io.rec.inputs)
        assert barrier.position == "up"
        assert barrier.opens == 1
        changes = [changed for changed, snapshot in io.rec.inputs if not snapshot]
        assert changes.index({4: False}) < changes.index({3: True})

        await io.module.pulse(1, 30)
        await until(lambda: ({4: True}, False) in io.rec.inputs)
        assert barrier.position == "down"
        assert barrier.closes == 1
    finally:
        await io.stop()


async def test_S5_stopped_server_is_a_device_fault_and_restart_recovers_with_a_new_snapshot(
    sim: IoModuleSimulator, io: Running, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="drivers.modbus_io")
    sim.set_input(1, True)
    await until(lambda: ({1: True}, False) in io.rec.inputs)

    await sim.stop()
    await until(lambda: io.module.health is Health.FAULTY)
    reconnects = io.module.counters["reconnects"]
    # refused, again and again
    await until(lambda: io.module.counters["reconnects"] >= reconnects + 3)
    assert io.rec.healths == [Health.OK, Health.FAULTY]  # FAULTY reported once per outage
    reason = io.rec.health[1][1]
    lost = f"unit {UNIT} read discrete inputs 0-15: connection lost"
    assert lost in reason or "cannot connect" in reason

    sim.set_input(8, True)  # changed while the module was unreachable
    await sim.start()
    await until(lambda: io.rec.healths == [Health.OK, Health.FAULTY, Health.OK])
    assert len(io.rec.snapshots) == 2
    assert io.rec.snapshots[1] == {i: i in (1, 8) for i in range(16)}

    ours = [r for r in caplog.records if r.name == "drivers.modbus_io"]
    errors = [r for r in ours if r.levelno == logging.ERROR]
    infos = [r for r in ours if r.levelno == logging.INFO]
    assert len(errors) == 1, [r.getMessage() for r in errors]  # one ERROR per outage, no flood
    assert "recovered" in infos[-1].getMessage()
    for record in errors + infos:
        assert f"io1 unit {UNIT} at 127.0.0.1:{sim.port}" in record.getMessage()


async def test_contract_2_3_no_answer_within_1_s_is_a_device_fault(sim: IoModuleSimulator) -> None:
    """S5 / CONTRACT 2.3: a module that accepts the connection but stays silent is faulty."""
    io = start_module(sim.port, request_timeout_s=1.0)  # the contract's 1 s
    try:
        await until(lambda: io.module.health is Health.OK)
        sim.silent = True
        await until(lambda: io.module.health is Health.FAULTY)
        health, reason = io.rec.health[-1]
        assert health is Health.FAULTY
        assert "no answer within 1 s" in reason
        assert f"unit {UNIT} read discrete inputs 0-15" in reason
        assert io.module.counters["timeouts"] >= 1

        sim.silent = False
        await until(lambda: io.rec.healths == [Health.OK, Health.FAULTY, Health.OK])
        assert len(io.rec.snapshots) == 2
    finally:
        await io.stop()


async def test_S5_a_module_that_never_answered_is_faulty_without_first_being_ok(
    sim: IoModuleSimulator,
) -> None:
    await sim.stop()  # nothing listens on the port now
    io = start_module(sim.port)
    try:
        assert io.module.health is None  # unknown before the first poll
        await until(lambda: io.module.health is Health.FAULTY)
        assert io.rec.healths == [Health.FAULTY]
        assert "cannot connect" in io.rec.health[0][1]
        assert io.rec.inputs == []
    finally:
        await io.stop()


async def test_S5_wrong_unit_gets_no_answer_and_is_a_device_fault(sim: IoModuleSimulator) -> None:
    io = start_module(sim.port, unit=UNIT + 1)
    try:
        await until(lambda: io.module.health is Health.FAULTY)
        assert "no answer within 0.3 s" in io.rec.health[0][1]
        assert io.rec.inputs == []
    finally:
        await io.stop()


async def test_S5_exception_response_to_a_poll_is_a_device_fault(sim: IoModuleSimulator) -> None:
    io = start_module(sim.port, inputs=32)  # the module has only 16
    try:
        await until(lambda: io.module.health is Health.FAULTY)
        assert "exception response, code 2" in io.rec.health[0][1]
        assert io.module.counters["exceptions"] >= 1
        assert io.rec.inputs == []
    finally:
        await io.stop()


async def test_write_coil_raises_when_not_connected(sim: IoModuleSimulator) -> None:
    rec = Recorder()
    module = IoModule("io1", "127.0.0.1", sim.port, UNIT, 20, 16, rec.on_inputs, rec.on_health)
    with pytest.raises(IoModuleError, match="not connected"):
        await module.write_coil(0, True)
    assert sim.coil_writes == []


async def test_write_coil_raises_on_an_exception_response(io: Running) -> None:
    with pytest.raises(IoModuleExceptionResponse, match="write coil 100 on") as info:
        await io.module.write_coil(100, True)
    assert info.value.code == 2
    assert io.module.counters["exceptions"] == 1
    assert io.module.health is Health.OK  # the module answered; polling is unaffected


async def test_a_coil_left_on_by_a_failed_pulse_is_switched_off_after_reconnecting(
    sim: IoModuleSimulator, io: Running
) -> None:
    """The module goes quiet between on and off: the pulse fails, the coil stays on
    until the module answers again, and then it is switched off before anything else."""

    def go_quiet_once_on(address: int, value: bool) -> None:
        if address == 0 and value:
            sim.silent = True

    sim.on_coil_write.append(go_quiet_once_on)
    with pytest.raises(IoModuleError, match="coil 0 may still be on"):
        await asyncio.wait_for(io.module.pulse(0, 30), 5)
    assert io.module.health is Health.FAULTY
    assert sim.coil(0)  # the off write was never acted on

    sim.on_coil_write.remove(go_quiet_once_on)
    sim.silent = False
    await until(lambda: io.module.health is Health.OK)
    assert not sim.coil(0)
    assert [(a, v) for _, a, v in sim.coil_writes] == [(0, True), (0, False)]


async def test_s5_a_pulse_the_module_refused_is_a_fault_until_the_next_good_poll(io: Running) -> None:
    """S5: the lane must hear both that a pulse failed and when the module is usable again,
    even though its polls never stopped: faulty at once, then a snapshot and OK."""
    await until(lambda: io.rec.snapshots)
    with pytest.raises(IoModuleExceptionResponse):
        await io.module.pulse(100, 10)
    await until(lambda: io.rec.healths[-1:] == [Health.OK] and len(io.rec.healths) >= 3)
    assert io.rec.healths == [Health.OK, Health.FAULTY, Health.OK]
    assert len(io.rec.snapshots) == 2  # the inputs again, before OK


async def test_s1_coils_it_owns_are_switched_off_before_the_first_poll(sim: IoModuleSimulator) -> None:
    """S1: a controller killed inside a pulse left a barrier coil on; the next driver of that
    module switches every coil it owns off before it reads an input, and leaves others alone."""
    sim._coil_written(1, True)  # on since the last controller died mid-pulse
    sim._coil_written(5, True)  # someone else's output on the same module
    sim.coil_writes.clear()
    running = start_module(sim.port)
    running.module.own_coils([0, 1])
    try:
        await until(lambda: running.module.health is Health.OK)
        assert not sim.coil(1) and sim.coil(5)
        assert [(a, v) for _, a, v in sim.coil_writes] == [(0, False), (1, False)]
        assert running.rec.snapshots  # the inputs were read after the coils were safe
    finally:
        await running.stop()


async def test_cancelled_pulse_still_switches_the_coil_off(
    sim: IoModuleSimulator, io: Running
) -> None:
    """S1/S3: a cancelled pulse switches its coil off before it returns, wherever the
    cancellation found it (the test sees the coil on while the answer to the on write may
    still be unread). The one exception is the design's: a module that stopped answering
    meanwhile (faulty; a loaded machine can stall requests past the 0.3 s timeout here)
    has the coil switched off by the poll loop before it counts as OK again."""
    pulse = asyncio.create_task(io.module.pulse(2, 10_000))
    await until(lambda: sim.coil(2))
    pulse.cancel()
    with pytest.raises(asyncio.CancelledError):
        await pulse
    if io.module.health is Health.FAULTY:
        await until(lambda: io.module.health is Health.OK)
    assert not sim.coil(2)
    writes = [(a, v) for _, a, v in sim.coil_writes]
    assert writes[0] == (2, True) and writes[1:] and set(writes[1:]) == {(2, False)}


async def test_s1_a_pulse_cancelled_while_its_on_write_is_answered_still_switches_the_coil_off(
    sim: IoModuleSimulator, io: Running
) -> None:
    """S1/S3: the lane stops a pulse (the daemon shutting down) just as the module acts
    on the on write, before its answer is read. The module switched the coil on; the
    pulse must not return with it left on, nor leave it for anyone later."""
    pulse = asyncio.create_task(io.module.pulse(2, 10_000))

    def cancel_once_on(address: int, value: bool) -> None:
        if (address, value) == (2, True):
            pulse.cancel()  # the answer is on its way; the pulse is still waiting for it

    sim.on_coil_write.append(cancel_once_on)
    with pytest.raises(asyncio.CancelledError):
        await pulse
    assert not sim.coil(2)
    assert [(a, v) for _, a, v in sim.coil_writes] == [(2, True), (2, False)]
    assert io.module.health is Health.OK


async def test_S5_units_behind_one_tcp_gateway_share_one_connection_and_one_silent_unit_stalls_none(
    sim: IoModuleSimulator,
) -> None:
    """S5 / STYLE.md 4 over TCP: two units behind one gateway are one bus (one
    connection, one lock). One silent unit is faulty on its own; the other keeps
    reporting, and the connection stays up for it."""
    await sim.stop()
    other = sim.add_unit(UNIT + 1)
    await sim.start()
    registry = BusRegistry(request_timeout_s=TIMEOUT_S)
    bus = registry.tcp("127.0.0.1", sim.port)
    assert registry.tcp("127.0.0.1", sim.port) is bus
    recs = {UNIT: Recorder(), UNIT + 1: Recorder()}
    modules = {
        unit: IoModule.on_bus(
            f"io{unit}", bus, unit, 20, 16, rec.on_inputs, rec.on_health, suspect_poll_ms=500
        )
        for unit, rec in recs.items()
    }
    tasks = [asyncio.create_task(m.run()) for m in modules.values()]
    try:
        await until(lambda: all(m.health is Health.OK for m in modules.values()))
        other.silent = True
        await until(lambda: modules[UNIT + 1].health is Health.FAULTY)
        reason = recs[UNIT + 1].health[-1][1]
        assert f"unit {UNIT + 1} read discrete inputs 0-15: no answer within 0.3 s" in reason
        await until(lambda: modules[UNIT + 1].suspect)
        for i in range(4):
            sim.set_input(i, True)
            await until(lambda i=i: ({i: True}, False) in recs[UNIT].inputs)
        assert recs[UNIT].healths == [Health.OK]
        assert bus.connected and bus.counters["connects"] == 1 and bus.counters["drops"] == 0

        other.set_input(2, True)
        other.silent = False
        await until(lambda: recs[UNIT + 1].healths == [Health.OK, Health.FAULTY, Health.OK])
        assert recs[UNIT + 1].snapshots[-1] == {i: i == 2 for i in range(16)}

        await sim.stop()  # the gateway goes away: both faulty, the bus reconnects for both
        await until(lambda: all(m.health is Health.FAULTY for m in modules.values()))
        await sim.start()
        await until(lambda: all(m.health is Health.OK for m in modules.values()), timeout=10)
        assert bus.counters["connects"] == 2
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        registry.close_all()
    assert not bus.connected


async def test_a_module_with_its_own_connection_closes_it_when_stopped(io: Running) -> None:
    assert io.module.bus.connected
    await io.stop()
    assert not io.module.bus.connected


# ------------------------------------------------------------------ turns on a shared line


async def test_s2_bus_turns_serve_writes_first_fifo_within_each_kind() -> None:
    """The holder keeps its turn; then every waiting write in arrival order, then the polls."""
    turns = BusTurns()
    order: list[str] = []

    async def request(name: str, kind: str) -> None:
        async with turns.turn(kind, patience_s=60.0):  # type: ignore[arg-type]
            order.append(name)
            await asyncio.sleep(0)

    async with turns.turn("poll"):
        tasks = [
            asyncio.create_task(request(name, kind))
            for name, kind in [("p1", "poll"), ("w1", "write"), ("p2", "poll"), ("w2", "write")]
        ]
        await until(lambda: turns.waiting == {"write": 2, "poll": 2})
        order.append("holder")
    await asyncio.gather(*tasks)
    assert order == ["holder", "w1", "w2", "p1", "p2"]
    assert not turns.held and turns.waiting == {"write": 0, "poll": 0}


async def test_bus_turns_an_overdue_poll_goes_before_waiting_writes_but_not_two_in_a_row() -> None:
    """A poll that waited past its patience (here none at all) is served next, then a write."""
    turns = BusTurns()
    order: list[str] = []

    async def request(name: str, kind: str, patience_s: float) -> None:
        async with turns.turn(kind, patience_s):  # type: ignore[arg-type]
            order.append(name)

    async with turns.turn("write"):
        tasks = [
            asyncio.create_task(request(name, kind, 0.0))
            for name, kind in [("w1", "write"), ("p1", "poll"), ("p2", "poll"), ("w2", "write"), ("p3", "poll")]
        ]
        await until(lambda: turns.waiting == {"write": 2, "poll": 3})
    await asyncio.gather(*tasks)
    # Overdue polls and waiting writes take turns: a write waits for one such poll at most.
    assert order == ["p1", "w1", "p2", "w2", "p3"]


async def test_bus_turns_a_cancelled_waiter_leaves_and_a_cancelled_turn_is_passed_on() -> None:
    turns = BusTurns()
    order: list[str] = []

    async def request(name: str, kind: str) -> None:
        async with turns.turn(kind):  # type: ignore[arg-type]
            order.append(name)

    async with turns.turn("poll"):
        gone = asyncio.create_task(request("gone", "write"))
        granted = asyncio.create_task(request("granted", "write"))
        last = asyncio.create_task(request("last", "poll"))
        await until(lambda: turns.waiting == {"write": 2, "poll": 1})
        gone.cancel()
        await asyncio.gather(gone, return_exceptions=True)
        assert turns.waiting == {"write": 1, "poll": 1}
    # The turn is handed to "granted"; cancelled before it runs, it must hand it on.
    granted.cancel()
    await asyncio.gather(granted, last, return_exceptions=True)
    assert order == ["last"]
    assert not turns.held


@pytest.fixture
async def gateway() -> AsyncIterator[IoModuleSimulator]:
    """A TCP gateway with six slow units behind it (each answer takes 20 ms), so that
    the polls of modules polling together wait for the line."""
    s = IoModuleSimulator(unit=UNIT, inputs=16, coils=16)
    for k in range(1, 6):
        s.add_unit(UNIT + k)
    for unit in s.units.values():
        unit.latency_s = 0.02
    await s.start()
    yield s
    await s.stop()


def requests(sim: IoModuleSimulator, since: int = 0) -> list[tuple[int, int]]:
    """(unit, function code) of every request the server served, from ``since`` on."""
    return [(u, fc) for _, kind, u, fc in sim.traffic[since:] if kind == "request"]


async def test_s2_a_coil_write_goes_before_the_polls_waiting_on_a_shared_line(
    gateway: IoModuleSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """S2 and the lift's latency with many lanes on one line: a coil write waits for
    the request on the wire at most, not for every module's poll queued before it."""
    # Every module a whole interval after its first poll started: all polls queue at once,
    # the worst case for a write (modules normally take phases of their own).
    monkeypatch.setattr(modbus_io, "_poll_phase", lambda: 1.0)
    registry = BusRegistry(request_timeout_s=1.0)
    bus = registry.tcp("127.0.0.1", gateway.port)
    recs = {unit: Recorder() for unit in gateway.units}
    # Polled every second, all at once: six polls of 20 ms, none of them overdue.
    modules = {
        unit: IoModule.on_bus(f"io{unit}", bus, unit, 1000, 16, rec.on_inputs, rec.on_health)
        for unit, rec in recs.items()
    }
    tasks = [asyncio.create_task(m.run()) for m in modules.values()]
    try:
        await until(lambda: all(m.health is Health.OK for m in modules.values()))
        for _ in range(2):
            await until(lambda: bus.turns.waiting["poll"] >= 4)
            mark = len(gateway.traffic)  # no await between the count and the write's request
            await modules[UNIT].write_coil(3, True)
            served = requests(gateway, mark)
            write_at = served.index((UNIT, 5))
            # Before the write: at most the poll that held the line when it asked.
            assert len(served[:write_at]) <= 1, served
            await modules[UNIT].write_coil(3, False)
        # And the polls that waited were served after it: every module still reads.
        mark = len(gateway.traffic)
        await until(lambda: {u for u, fc in requests(gateway, mark) if fc == 2} == set(gateway.units))
        assert all(rec.healths == [Health.OK] for rec in recs.values())
        assert gateway.overlaps == 0
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        registry.close_all()


async def test_polls_are_not_starved_by_coil_writes_that_never_stop(gateway: IoModuleSimulator) -> None:
    """Three writers keep a write waiting for the line at every moment; the poll, overdue
    after one interval, still gets its turns between their writes."""
    registry = BusRegistry(request_timeout_s=1.0)
    bus = registry.tcp("127.0.0.1", gateway.port)
    rec = Recorder()
    poller = IoModule.on_bus("io-poll", bus, UNIT, 10, 16, rec.on_inputs, rec.on_health)
    writer = IoModule.on_bus("io-write", bus, UNIT + 1, 10, 16, Recorder().on_inputs, Recorder().on_health)

    async def write_forever(address: int) -> None:
        value = True
        while True:
            await writer.write_coil(address, value)
            value = not value

    poll_task = asyncio.create_task(poller.run())
    await until(lambda: poller.health is Health.OK)
    mark = len(gateway.traffic)
    writers = [asyncio.create_task(write_forever(a)) for a in range(3)]
    try:
        await until(lambda: bus.turns.waiting["write"] >= 2)
        await until(lambda: sum(1 for u, fc in requests(gateway, mark) if (u, fc) == (UNIT, 2)) >= 5)
        served = requests(gateway, mark)
        polls = [i for i, (u, fc) in enumerate(served) if (u, fc) == (UNIT, 2)]
        # The writes went on meanwhile: between the polls on the line, writes too.
        assert all(served[a + 1:b] for a, b in zip(polls, polls[1:]))
        assert all(fc == 5 for u, fc in served if u == UNIT + 1)
    finally:
        for task in [*writers, poll_task]:
            task.cancel()
        await asyncio.gather(*writers, poll_task, return_exceptions=True)
        registry.close_all()
