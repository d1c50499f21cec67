"""The Modbus TCP IO module simulator, over real Modbus TCP with a plain pymodbus client."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest
from pymodbus.client import AsyncModbusTcpClient

from simulators.io_module import Barrier, IoModuleSimulator

UNIT = 3
TRAVEL_S = 0.15


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
    barrier = wire_barrier(sim)
    await pulse(client, 0)
    await until(lambda: barrier.position == "up")
    await pulse(client, 1)
    assert barrier.position == "moving_down"
    await pulse(client, 0)
    assert barrier.position == "moving_up"
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
