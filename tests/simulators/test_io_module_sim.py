"""The IO module simulators with plain pymodbus clients: TCP over 127.0.0.1, RTU over real ptys."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable

import pytest
import serial
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.framer import FramerRTU, FramerType

from simulators.io_module import Barrier, IoModuleSimulator, RtuBusSimulator

UNIT = 3
# Long enough that a loaded machine's Modbus replies come back while the boom still moves.
TRAVEL_S = 0.6


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait until ``predicate()`` holds; fail after ``timeout`` seconds."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.005)


async def connect(sim: IoModuleSimulator) -> AsyncModbusTcpClient:
    # pymodbus's own timeout stays above the bounded waits below, so theirs decide.
    client = AsyncModbusTcpClient(
        "127.0.0.1", port=sim.port, reconnect_delay=0, retries=0, timeout=2
    )
    assert await client.connect()
    return client


@pytest.fixture
async def sim() -> AsyncIterator[IoModuleSimulator]:
    s = IoModuleSimulator(unit=UNIT, inputs=16, coils=16)
    await s.start()
    yield s
    await s.stop()


@pytest.fixture
async def client(sim: IoModuleSimulator) -> AsyncIterator[AsyncModbusTcpClient]:
    c = await connect(sim)
    yield c
    c.close()


def wire_barrier(sim: IoModuleSimulator) -> Barrier:
    return sim.add_barrier(open_coil=0, close_coil=1, up_input=3, down_input=4, travel_s=TRAVEL_S)


async def pulse(client: AsyncModbusTcpClient, coil: int) -> None:
    for value in (True, False):
        rr = await client.write_coil(coil, value, device_id=UNIT)
        assert not rr.isError()


async def test_port_zero_listens_on_a_free_port_and_exposes_it(sim: IoModuleSimulator) -> None:
    assert sim.running
    assert sim.port != 0


async def test_discrete_inputs_read_with_function_2_follow_set_input(
    sim: IoModuleSimulator, client: AsyncModbusTcpClient
) -> None:
    sim.set_input(1, True)
    sim.set_input(15, True)
    rr = await client.read_discrete_inputs(address=0, count=16, device_id=UNIT)
    assert rr.function_code == 2
    assert [i for i, bit in enumerate(rr.bits[:16]) if bit] == [1, 15]
    sim.set_input(1, False)
    rr = await client.read_discrete_inputs(address=0, count=16, device_id=UNIT)
    assert [i for i, bit in enumerate(rr.bits[:16]) if bit] == [15]
    assert sim.input(15) and not sim.input(1)


async def test_reading_past_the_last_input_is_an_illegal_address(
    client: AsyncModbusTcpClient,
) -> None:
    rr = await client.read_discrete_inputs(address=0, count=32, device_id=UNIT)
    assert rr.isError()
    assert rr.exception_code == 2


async def test_coil_writes_are_recorded_in_order_and_reach_the_hooks(
    sim: IoModuleSimulator, client: AsyncModbusTcpClient
) -> None:
    seen: list[tuple[int, bool]] = []
    sim.on_coil_write.append(lambda address, value: seen.append((address, value)))

    rr = await client.write_coil(2, True, device_id=UNIT)  # function 5
    assert not rr.isError()
    assert sim.coil(2)
    rr = await client.write_coils(4, [True, False, True], device_id=UNIT)  # function 15
    assert not rr.isError()
    rr = await client.write_coil(2, False, device_id=UNIT)
    assert not rr.isError()

    expected = [(2, True), (4, True), (5, False), (6, True), (2, False)]
    assert [(a, v) for _, a, v in sim.coil_writes] == expected
    assert seen == expected
    stamps = [t for t, _, _ in sim.coil_writes]
    assert stamps == sorted(stamps)
    rr = await client.read_coils(address=0, count=16, device_id=UNIT)
    assert [i for i, bit in enumerate(rr.bits[:16]) if bit] == [4, 6]


async def test_a_request_for_another_unit_gets_no_answer(
    sim: IoModuleSimulator, client: AsyncModbusTcpClient
) -> None:
    """Copy the device's silence: a module ignores frames for other unit ids."""
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(client.write_coil(0, True, device_id=UNIT + 1), 0.3)
    assert not sim.coil(0)
    assert sim.coil_writes == []


async def test_silent_module_accepts_connections_but_never_answers_or_acts(
    sim: IoModuleSimulator,
) -> None:
    sim.silent = True
    silent_client = await connect(sim)  # the TCP connection is accepted
    try:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(silent_client.write_coil(0, True, device_id=UNIT), 0.3)
        assert not sim.coil(0)
        assert sim.coil_writes == []
    finally:
        silent_client.close()

    sim.silent = False
    talking = await connect(sim)
    try:
        rr = await talking.write_coil(0, True, device_id=UNIT)
        assert not rr.isError()
        assert sim.coil(0)
    finally:
        talking.close()


async def test_stop_drops_clients_and_refuses_connects_then_start_reuses_the_port(
    sim: IoModuleSimulator, client: AsyncModbusTcpClient
) -> None:
    port = sim.port
    sim.set_input(7, True)
    await client.write_coil(9, True, device_id=UNIT)

    await sim.stop()
    assert not sim.running
    await until(lambda: not client.connected)
    refused = AsyncModbusTcpClient("127.0.0.1", port=port, reconnect_delay=0, retries=0, timeout=2)
    assert not await refused.connect()
    refused.close()

    await sim.start()
    assert sim.port == port
    again = await connect(sim)
    try:
        rr = await again.read_discrete_inputs(address=0, count=16, device_id=UNIT)
        assert rr.bits[7]
        rr = await again.read_coils(address=0, count=16, device_id=UNIT)
        assert rr.bits[9]
    finally:
        again.close()


async def test_barrier_starts_down(sim: IoModuleSimulator) -> None:
    barrier = wire_barrier(sim)
    assert barrier.position == "down"
    assert sim.input(4) and not sim.input(3)
    assert (barrier.opens, barrier.closes) == (0, 0)


async def test_barrier_open_pulse_leaves_down_limit_at_once_and_reaches_up_limit(
    sim: IoModuleSimulator, client: AsyncModbusTcpClient
) -> None:
    barrier = wire_barrier(sim)
    await client.write_coil(0, True, device_id=UNIT)
    assert barrier.position == "moving_up"
    assert not sim.input(4) and not sim.input(3)
    await client.write_coil(0, True, device_id=UNIT)  # held on: no new rising edge
    await client.write_coil(0, False, device_id=UNIT)
    await until(lambda: barrier.position == "up")
    assert sim.input(3) and not sim.input(4)
    assert (barrier.opens, barrier.closes) == (1, 0)

    await pulse(client, 1)
    assert barrier.position == "moving_down"
    assert not sim.input(3)
    await until(lambda: barrier.position == "down")
    assert sim.input(4) and not sim.input(3)
    assert (barrier.opens, barrier.closes) == (1, 1)


async def test_barrier_open_while_travelling_down_reverses_it(
    sim: IoModuleSimulator, client: AsyncModbusTcpClient
) -> None:
    # The return takes as long as the boom had travelled down, so it must travel a while
    # first: reversed at once, it is back up before a loaded machine's next reply arrives.
    barrier = sim.add_barrier(open_coil=0, close_coil=1, up_input=3, down_input=4, travel_s=TRAVEL_S)
    await pulse(client, 0)
    await until(lambda: barrier.position == "up")
    await pulse(client, 1)
    assert barrier.position == "moving_down"
    await asyncio.sleep(TRAVEL_S / 2)
    rr = await client.write_coil(0, True, device_id=UNIT)
    assert not rr.isError()
    assert barrier.position == "moving_up"
    await client.write_coil(0, False, device_id=UNIT)
    await until(lambda: barrier.position == "up")
    assert sim.input(3) and not sim.input(4)
    assert (barrier.opens, barrier.closes) == (2, 1)


async def test_stuck_barrier_freezes_its_limit_switches(
    sim: IoModuleSimulator, client: AsyncModbusTcpClient
) -> None:
    barrier = wire_barrier(sim)
    barrier.stuck = True
    await pulse(client, 0)
    await until(lambda: barrier.position == "up")
    assert sim.input(4) and not sim.input(3)  # still reads "down"
    assert barrier.opens == 1


# ---------------------------------------------------------------------- several units behind TCP


async def test_units_added_behind_the_tcp_server_answer_for_themselves() -> None:
    """A TCP gateway with an RS-485 line behind it: each unit id has its own state."""
    sim = IoModuleSimulator(unit=UNIT)
    other = sim.add_unit(UNIT + 1, inputs=8, coils=8)
    with pytest.raises(ValueError, match="already simulated"):
        sim.add_unit(UNIT)
    await sim.start()
    client = await connect(sim)
    try:
        assert set(sim.units) == {UNIT, UNIT + 1} and sim.units[UNIT] is sim
        sim.set_input(0, True)
        other.set_input(5, True)
        rr = await client.read_discrete_inputs(address=0, count=16, device_id=UNIT)
        assert [i for i, bit in enumerate(rr.bits[:16]) if bit] == [0]
        rr = await client.read_discrete_inputs(address=0, count=8, device_id=UNIT + 1)
        assert [i for i, bit in enumerate(rr.bits[:8]) if bit] == [5]
        assert not (await client.write_coil(3, True, device_id=UNIT + 1)).isError()
        assert other.coil(3) and not sim.coil(3)
        assert [(a, v) for _, a, v in other.coil_writes] == [(3, True)] and sim.coil_writes == []
        kinds = [(kind, unit) for _, kind, unit, _ in sim.traffic]
        assert kinds[-2:] == [("request", UNIT + 1), ("answer", UNIT + 1)]
    finally:
        client.close()
        await sim.stop()


# ---------------------------------------------------------------------- RTU line over ptys

RTU_UNITS = (1, 2)


@pytest.fixture
async def line() -> AsyncIterator[RtuBusSimulator]:
    s = RtuBusSimulator(units=RTU_UNITS, inputs=16, coils=16)
    await s.start()
    yield s
    await s.close()


async def rtu_connect(line: RtuBusSimulator) -> AsyncModbusSerialClient:
    client = AsyncModbusSerialClient(
        line.port, framer=FramerType.RTU, baudrate=9600, reconnect_delay=0, retries=0, timeout=2
    )
    assert await client.connect()
    return client


@pytest.fixture
async def rtu(line: RtuBusSimulator) -> AsyncIterator[AsyncModbusSerialClient]:
    c = await rtu_connect(line)
    yield c
    c.close()


def rtu_frame(unit: int, pdu: bytes) -> bytes:
    frame = bytes([unit]) + pdu
    return frame + FramerRTU.compute_CRC(frame).to_bytes(2, "big")


async def test_rtu_ends_the_driver_opens_a_stable_link_to_its_pty_the_server_the_other(
    line: RtuBusSimulator,
) -> None:
    assert os.path.islink(line.port)
    assert os.path.realpath(line.port) == line.tty
    assert line.tty.startswith("/dev/pts/") and line.device_tty.startswith("/dev/pts/")
    assert line.tty != line.device_tty
    assert line.running and line.plugged
    with pytest.raises(ValueError, match="1..247"):
        line.add_unit(248)


async def test_rtu_each_unit_answers_function_2_with_its_own_inputs(
    line: RtuBusSimulator, rtu: AsyncModbusSerialClient
) -> None:
    line[1].set_input(1, True)
    line[2].set_input(15, True)
    rr = await rtu.read_discrete_inputs(address=0, count=16, device_id=1)
    assert rr.function_code == 2
    assert [i for i, bit in enumerate(rr.bits[:16]) if bit] == [1]
    rr = await rtu.read_discrete_inputs(address=0, count=16, device_id=2)
    assert [i for i, bit in enumerate(rr.bits[:16]) if bit] == [15]
    rr = await rtu.read_discrete_inputs(address=0, count=32, device_id=2)
    assert rr.isError() and rr.exception_code == 2  # past the last input
    assert [(kind, unit, fc) for _, kind, unit, fc in line.traffic] == [
        ("request", 1, 2), ("answer", 1, 2),
        ("request", 2, 2), ("answer", 2, 2),
        ("request", 2, 2), ("answer", 2, 0x82),
    ]


async def test_rtu_coil_writes_are_per_unit_in_order_and_reach_the_hooks(
    line: RtuBusSimulator, rtu: AsyncModbusSerialClient
) -> None:
    seen: list[tuple[int, bool]] = []
    line[2].on_coil_write.append(lambda address, value: seen.append((address, value)))
    for unit, coil, value in ((2, 0, True), (1, 0, True), (2, 0, False), (2, 4, True)):
        rr = await rtu.write_coil(coil, value, device_id=unit)
        assert not rr.isError() and rr.bits[0] == value
    assert [(a, v) for _, a, v in line[2].coil_writes] == [(0, True), (0, False), (4, True)]
    assert seen == [(0, True), (0, False), (4, True)]
    assert [(a, v) for _, a, v in line[1].coil_writes] == [(0, True)]
    assert line[1].coil(0) and not line[2].coil(0) and line[2].coil(4)


async def test_rtu_unknown_and_silent_units_never_answer_while_the_others_do(
    line: RtuBusSimulator, rtu: AsyncModbusSerialClient
) -> None:
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(rtu.read_discrete_inputs(address=0, count=16, device_id=3), 0.3)
    line[1].silent = True
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(rtu.write_coil(0, True, device_id=1), 0.3)
    assert not line[1].coil(0) and line[1].coil_writes == []
    rr = await rtu.write_coil(0, True, device_id=2)
    assert not rr.isError() and line[2].coil(0)
    assert [kind for _, kind, unit, _ in line.traffic if unit in (1, 3)] == ["ignored", "ignored"]


async def test_rtu_stop_kills_the_line_but_not_the_port_and_start_serves_the_same_state(
    line: RtuBusSimulator, rtu: AsyncModbusSerialClient
) -> None:
    line[1].set_input(7, True)
    await rtu.write_coil(9, True, device_id=2)
    await line.stop()
    assert not line.running and line.plugged
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(rtu.read_discrete_inputs(address=0, count=16, device_id=1), 0.3)
    assert rtu.connected  # a dead line, not a vanished port
    assert line.dropped > 0

    await line.start()
    rr = await rtu.read_discrete_inputs(address=0, count=16, device_id=1)
    assert rr.bits[7]
    rr = await rtu.read_coils(address=0, count=16, device_id=2)
    assert rr.bits[9]


async def test_rtu_unplug_drops_the_drivers_port_and_replug_brings_the_same_path_back(
    line: RtuBusSimulator, rtu: AsyncModbusSerialClient
) -> None:
    path, old_tty = line.port, line.tty
    line.unplug()
    assert not line.plugged and not os.path.exists(path)
    await until(lambda: not rtu.connected)  # EIO on the driver's end
    gone = AsyncModbusSerialClient(path, reconnect_delay=0, retries=0, timeout=1)
    assert not await gone.connect()
    gone.close()

    line.replug()
    assert line.port == path and os.path.realpath(path) == line.tty
    again = await rtu_connect(line)
    try:
        line[2].set_input(3, True)
        rr = await again.read_discrete_inputs(address=0, count=16, device_id=2)
        assert [i for i, bit in enumerate(rr.bits[:16]) if bit] == [3]
    finally:
        again.close()
    assert old_tty  # the old pty is closed; its number may be reused by any later pty


async def test_rtu_overlapping_requests_are_counted(line: RtuBusSimulator) -> None:
    """The simulator notices a master that talks while a unit is still answering."""
    line[1].latency_s = 0.2
    with serial.Serial(line.port, 9600, timeout=0) as port:
        port.write(rtu_frame(1, bytes([2, 0, 0, 0, 16])))
        await until(lambda: any(kind == "request" for _, kind, _, _ in line.traffic))
        port.write(rtu_frame(2, bytes([2, 0, 0, 0, 16])))
        await until(lambda: line.overlaps == 1)


async def test_rtu_barrier_on_a_unit_follows_its_coils(
    line: RtuBusSimulator, rtu: AsyncModbusSerialClient
) -> None:
    barrier = line[2].add_barrier(open_coil=0, close_coil=1, up_input=3, down_input=4, travel_s=TRAVEL_S)
    for value in (True, False):
        assert not (await rtu.write_coil(0, value, device_id=2)).isError()
    assert barrier.position == "moving_up"
    await until(lambda: barrier.position == "up")
    rr = await rtu.read_discrete_inputs(address=0, count=16, device_id=2)
    assert rr.bits[3] and not rr.bits[4]
    assert barrier.opens == 1


async def test_rtu_close_removes_the_path_and_is_idempotent() -> None:
    line = RtuBusSimulator(units=[5])
    await line.start()
    directory = os.path.dirname(line.port)
    await line.close()
    await line.close()
    assert not os.path.exists(directory)
    assert not line.running and not line.plugged
