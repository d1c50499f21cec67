"""A site stopped in the middle of a barrier pulse, over real Modbus TCP (the pymodbus
simulator) and real serial ptys.

S1/S3: the daemon stopping never leaves a barrier coil energised. The lane's pulse under
way finishes (or is cancelled and switches its coil off) before the lanes let go, while
the IO module still polls, and before its bus is closed. No task at all is left pending
for the control loop to destroy when it closes: not a pulse, nor the serial transports'
close of the card reader's and the weighbridge's ports, however often the stop cancels.
"""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path
from typing import Any

import pytest
from pymodbus.pdu import ModbusPDU

from drivers.stopping import wait_through
from gatectl.config import load_config
from gatectl.service import Site, cancel_all
from simulators.site import SimLane, SimulatedSite, free_tcp_port


async def wait_until(predicate, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


async def stop_as_the_barrier_lifts(
    sim: SimulatedSite, tmp_path: Path, stop_again_after_s: float | None = None
) -> tuple[Site, SimLane, list[dict[str, Any]]]:
    """Run a site, lift its barrier by the emergency button (R11: at once, no authority
    asked) and stop the site as the open coil goes on (a 300 ms pulse); the stopped site
    and what its control loop reported to its exception handler (a task destroyed while
    pending among it). ``stop_again_after_s``: the control loop is told to stop a second
    time that long after the first, while the lanes still finish their pulses."""
    path = sim.write_config(tmp_path / "site.yaml", journal_path=str(tmp_path / "gatectl.db"),
                            api_listen=f"127.0.0.1:{free_tcp_port()}")
    site = Site(load_config(path))
    stop = asyncio.Event()
    task = asyncio.create_task(site.run(stop))
    lane = sim.lane("B1-IN")
    await wait_until(lambda: site.running or task.done())
    assert not task.done(), task.exception()
    reported: list[dict[str, Any]] = []
    site.control.loop.set_exception_handler(lambda loop, context: reported.append(context))

    def stop_once_lifting(address: int, value: bool) -> None:
        if (address, value) == (lane.open_coil, True) and not stop.is_set():
            stop.set()
            if stop_again_after_s is not None:
                asyncio.get_running_loop().call_later(stop_again_after_s, site.control.stop)

    sim.io.on_coil_write.append(stop_once_lifting)
    await lane.press("emergency")
    await wait_until(stop.is_set)
    await asyncio.wait_for(task, 30)
    return site, lane, reported


def assert_stopped_cleanly(
    sim: SimulatedSite, site: Site, lane: SimLane, reported: list[dict[str, Any]]
) -> None:
    writes = [(a, v) for _, a, v in sim.io.coil_writes if a == lane.open_coil]
    assert writes[-2:] == [(lane.open_coil, True), (lane.open_coil, False)]
    assert not sim.io.coil(lane.open_coil)
    loop = site.control.loop
    assert loop is not None and loop.is_closed()
    pending = [t.get_coro().__qualname__ for t in asyncio.all_tasks(loop)]
    assert pending == []  # none left for the closed loop to destroy
    gc.collect()  # (a pending task nothing refers to any more is reported as destroyed)
    assert [c["message"] for c in reported] == []


async def test_s1_a_site_stopped_mid_pulse_switches_the_coil_off_and_leaves_no_pulse_pending(
    fast_sim: SimulatedSite, tmp_path: Path
) -> None:
    site, lane, reported = await stop_as_the_barrier_lifts(fast_sim, tmp_path)
    assert_stopped_cleanly(fast_sim, site, lane, reported)


async def test_s1_a_lost_off_write_at_shutdown_is_retried_while_the_module_still_polls(
    fast_sim: SimulatedSite, tmp_path: Path
) -> None:
    """The pulse's off write is lost on the line as the site stops. The module still
    answers its polls, so the pulse writes off again: the IO modules stop after the
    lanes, not beside them (a pulse gives up on a module no longer polled)."""
    lane = fast_sim.lane("B1-IN")
    lost: list[ModbusPDU] = []

    def lose_the_first_off_write_after_the_lift(pdu: ModbusPDU) -> bool:
        if (pdu.function_code == 5 and pdu.address == lane.open_coil and not pdu.bits[0]
                and fast_sim.io.coil(lane.open_coil) and not lost):
            lost.append(pdu)
            return True
        return False

    fast_sim.io.lose = lose_the_first_off_write_after_the_lift
    site, lane, reported = await stop_as_the_barrier_lifts(fast_sim, tmp_path)
    assert len(lost) == 1
    assert_stopped_cleanly(fast_sim, site, lane, reported)


async def test_s1_a_control_loop_told_to_stop_twice_still_stops_its_io_modules_after_the_lanes(
    fast_sim: SimulatedSite, tmp_path: Path
) -> None:
    """The second stop lands while the lanes finish their pulses: the IO modules are still
    stopped and their buses let go afterwards, nothing is left pending (a stop that skipped
    them would leave the modules' poll tasks to be destroyed with the loop)."""
    site, lane, reported = await stop_as_the_barrier_lifts(fast_sim, tmp_path, stop_again_after_s=0.05)
    assert_stopped_cleanly(fast_sim, site, lane, reported)
    assert not any(bus.connected for bus in site.buses)


async def test_s1_a_stop_cancelling_again_waits_for_the_clean_up_of_the_tasks_it_cancelled() -> None:
    """A stop cancels a lane again and again while the lane stops its card reader and
    weighbridge (``cancel_all``): those repeats must not cut the lane's wait short, or the
    drivers' close of their ports is left pending. The repeat is raised once they are done."""
    closed = asyncio.get_running_loop().create_future()

    async def device() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            await wait_through([closed], 30.0)  # its port closing
            raise

    child = asyncio.create_task(device())
    await asyncio.sleep(0)
    lane = asyncio.create_task(cancel_all([child]))
    try:
        for _ in range(5):
            await asyncio.sleep(0)
            lane.cancel()  # a stop one level up, cancelling again
        assert not lane.done() and not child.done()
    finally:
        closed.set_result(None)
    with pytest.raises(asyncio.CancelledError):
        await lane
    assert child.cancelled()
