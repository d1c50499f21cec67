"""Every device format and transport through the daemon, and device faults injected for
real: the lane fails closed, the fault events appear, and after the device returns the
lane passes vehicles again with no restart (S5, R15)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from gatectl.api import start_api
from gatectl.config import parse_config
from gatectl.service import Site
from simulators.authority_http import HttpAuthoritySimulator
from simulators.card_reader import CardReaderSimulator
from simulators.io_module import RtuBusSimulator
from simulators.site import LaneSpec, Vehicle, free_tcp_port
from simulators.weighbridge import WeighbridgeSimulator

from .conftest import Running, wait_until

TRUCK = Vehicle("06008E6D5D", "云A12345", 27460)
TOLEDO = LaneSpec("T1-IN", "保税进区(托利多)", "bonded", "in", "K011", card_format="stx-bin-bcc",
                  weigh_format="toledo-continuous")
ASCII = LaneSpec("T2-OUT", "保税出区", "bonded", "out", "K012", card_format="ascii-line")


def outcomes(r: Running, lane: str) -> list[str]:
    return [e["outcome"] for e in r.events(lane, "passage.closed")]


@pytest.mark.parametrize("lane_specs", [[TOLEDO, ASCII]])
async def test_toledo_and_stx_bin_bcc_lanes_pass_vehicles(running: Running) -> None:
    """CONTRACT 2.1, 2.2: a lane with a Toledo indicator and an stx-bin-bcc reader, and one
    with an ascii-line reader, each pass a released vehicle end to end."""
    running.sim.authority.script(TRUCK.card, "release")
    toledo = running.sim.lane("T1-IN")
    other = running.sim.lane("T2-OUT")
    assert await toledo.drive(TRUCK) == "passed"
    assert await other.drive(TRUCK) == "passed"
    await wait_until(lambda: outcomes(running, "T1-IN") == ["passed"] and outcomes(running, "T2-OUT") == ["passed"])
    weighed = running.events("T1-IN", "weight.stable")
    assert [w["gross_weight_kg"] for w in weighed] == [TRUCK.gross_kg]
    assert running.events("T1-IN", "card.read")[0]["card"] == TRUCK.card
    assert toledo.opens == 1 and other.opens == 1


async def test_card_reader_unplugged_fails_closed_then_passes_after_replug(running: Running) -> None:
    """S5, R15: the USB serial adapter of the card reader vanishes: fault opened and alarmed,
    a released vehicle is held; plugged back, the lane passes vehicles with no restart."""
    sim = running.sim
    sim.authority.script(TRUCK.card, "release")
    lane = sim.lane("B1-IN")
    lane.reader.unplug()
    await wait_until(lambda: any(e["device"] == "card_reader" for e in running.events("B1-IN", "fault.opened")))
    assert "device_fault" in running.alarms("B1-IN")
    assert "设备故障" in running.site.lanes["B1-IN"].core.display
    await lane.reader.replug()
    await wait_until(lambda: running.events("B1-IN", "fault.closed") != [], timeout=15)
    assert await lane.drive(TRUCK) == "passed"
    await wait_until(lambda: outcomes(running, "B1-IN") == ["passed"])
    assert lane.opens == 1


async def test_weighbridge_silent_fails_closed_and_recovers(running: Running) -> None:
    """S5, R15: the weighing indicator stops streaming: after silence_ms it is faulty, a
    vehicle being weighed is held, nothing lifts; frames again: it recovers by itself."""
    sim = running.sim
    sim.authority.script(TRUCK.card, "release")
    lane = sim.lane("B1-IN")
    lane.scale.silent = True
    await wait_until(lambda: any(e["device"] == "weighbridge" for e in running.events("B1-IN", "fault.opened")))
    assert await lane.drive(TRUCK, wait_for_lift_s=1.5) == "backed_out"
    await wait_until(lambda: outcomes(running, "B1-IN") == ["held"])
    assert lane.opens == 0
    lane.scale.silent = False
    await wait_until(lambda: running.events("B1-IN", "fault.closed") != [], timeout=15)
    assert await lane.drive(TRUCK) == "passed"
    await wait_until(lambda: outcomes(running, "B1-IN") == ["held", "passed"])
    assert lane.opens == 1


async def test_stuck_limit_switch_is_a_barrier_fault(running: Running) -> None:
    """R9: the up limit never comes after a lift (switch frozen): barrier_fault, an incident,
    and the lane holds the next vehicle until the barrier reports sane again."""
    sim = running.sim
    sim.authority.script(TRUCK.card, "release")
    lane = sim.lane("B1-IN")
    lane.barrier.stuck = True
    lane.set_loop("arrival", True)
    lane.weigh(TRUCK.gross_kg)
    await asyncio.sleep(0.3)
    lane.reader.present(TRUCK.card)
    await wait_until(lambda: "barrier_fault" in running.alarms("B1-IN"), timeout=15)
    assert running.events("B1-IN", "incident.opened")[0]["kind"] == "barrier_fault"
    assert lane.opens == 1


async def test_modbus_rtu_lane_passes_and_survives_a_dead_line(tmp_path: Path) -> None:
    """CONTRACT 1 (modbus-rtu), S5: a lane on an RS-485 IO module (RTU over a pty pair)
    passes a vehicle; the line goes dead: fault, nothing lifts; the line returns: the lane
    passes vehicles again without a restart."""
    line = RtuBusSimulator(units=[3], inputs=8, coils=2)
    await line.start()
    unit = line[3]
    barrier = unit.add_barrier(0, 1, 3, 4, travel_s=0.2)
    reader = CardReaderSimulator("stx-hex-xor")
    scale = WeighbridgeSimulator("xk3190-tf0", interval_s=0.05)
    authority = HttpAuthoritySimulator()
    for s in (reader, scale, authority):
        await s.start()
    authority.script(TRUCK.card, "release")
    text = f"""
site: {{id: rtu-site, name: RTU测试, timezone: Asia/Shanghai}}
journal: {{path: {tmp_path / 'gatectl.db'}}}
local_api: {{listen: "127.0.0.1:{free_tcp_port()}", token: t}}
authorities: {{customs: {{protocol: http-json, url: "{authority.url}", timeout_ms: 1000}}}}
io_modules:
  panel:
    protocol: modbus-rtu
    port: {line.port}
    baudrate: 9600
    parity: N
    unit: 3
    poll_ms: 50
lanes:
  - id: R1-IN
    name: 保税进区(RS-485)
    kind: bonded
    direction: in
    channel_no: K030
    authority: customs
    card_reader: {{port: {reader.port}, format: stx-hex-xor}}
    weighbridge: {{port: {scale.port}, format: xk3190-tf0, stable_samples: 3}}
    points: {{arrival_loop: "panel:di:0", safety_loop: "panel:di:1", exit_loop: "panel:di:2",
              barrier_up: "panel:di:3", barrier_down: "panel:di:4",
              barrier_open: "panel:coil:0", barrier_close: "panel:coil:1"}}
"""
    site = Site(parse_config(text, base_dir=tmp_path, filename="site.yaml"))
    runner = await start_api(site)
    stop = asyncio.Event()
    task = asyncio.create_task(site.run(stop))

    def events(type_: str) -> list[dict]:
        return [e for e in site.journal.events("R1-IN") if e["type"] == type_]

    async def pass_vehicle() -> None:
        unit.set_input(0, True)
        scale.set_weight(TRUCK.gross_kg)
        await asyncio.sleep(0.4)
        reader.present(TRUCK.card)
        await wait_until(lambda: barrier.position == "up", timeout=10)
        for addr, on in [(1, True), (0, False), (2, True), (1, False), (2, False)]:
            if addr == 0:
                scale.set_weight(0)
            unit.set_input(addr, on)
            await asyncio.sleep(0.2)
        await wait_until(lambda: barrier.position == "down", timeout=10)

    try:
        await wait_until(lambda: site.running, timeout=15)
        await pass_vehicle()
        assert [e["outcome"] for e in events("passage.closed")] == ["passed"]
        await line.stop()
        await wait_until(lambda: any(e["device"] == "panel" for e in events("fault.opened")), timeout=10)
        await line.start()
        await wait_until(lambda: events("fault.closed") != [], timeout=15)
        authority.script(TRUCK.card, "release")
        await pass_vehicle()
        assert [e["outcome"] for e in events("passage.closed")] == ["passed", "passed"]
        assert (barrier.opens, barrier.closes) == (2, 2)
    finally:
        stop.set()
        await task
        await runner.cleanup()
        for s in (reader, scale, authority):
            await s.stop()
        await line.close()
